"""``dinov3:vits16|vits16plus|vitb16|vitl16|vith16plus|vit7b16``: Meta's DINOv3 ``.pth`` checkpoints,
run as timm's DINOv3 Eva models (:mod:`sinder.backbones.official_dinov3`).

Export format: ``<name>_sinder.pth``, a plain state dict in Meta's layout, with every key of the
input checkpoint (what timm does not load is written back as it was); it loads into Meta's DINOv3
model with ``strict=True``, or as ``dinov3:NAME --weights FILE.pth``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..backbones.base import Backbone
from ..backbones.convert import timm_to_official_dinov3
from ..backbones.registry import Family, register_family
from ..backbones.saving import cpu_state_dict, spec_name, write_official_pth

log = logging.getLogger(__name__)


def load(name: str, spec: str, weights: str | Path | None = None, random_init: bool = False) -> Backbone:
    from ..backbones.official_dinov3 import load_official_dinov3

    return load_official_dinov3(name, spec, weights=weights, random_init=random_init)


def official_state_dict(backbone: Backbone) -> dict[str, torch.Tensor]:
    extras = getattr(backbone, "official_extras", None) or {}
    heads = backbone.block_view(0).num_heads
    return timm_to_official_dinov3(cpu_state_dict(backbone.model), extras, heads)


def save_official_format(backbone: Backbone, folder: Path, overwrite: bool) -> Path:
    target = write_official_pth(official_state_dict(backbone), backbone.spec, folder, overwrite)
    log.info("wrote %s (DINOv3 state dict in Meta's layout)", target)
    return target


def reload_official_format(backbone: Backbone, path: Path) -> Backbone:
    return load(spec_name(backbone.spec), backbone.spec, weights=path)


register_family(
    Family(
        name="dinov3",
        spec_help="dinov3:vits16|vits16plus|vitb16|vitl16|vith16plus|vit7b16",
        load=load,
        save=save_official_format,
        reload=reload_official_format,
        order=32,
    )
)
