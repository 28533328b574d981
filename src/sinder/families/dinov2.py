"""``dinov2:vits14|vitb14|vitl14|vitg14[_reg]``: official DINOv2 torch.hub state dicts, run as timm models.

Export format: ``<name>_sinder.pth``, a plain state dict with the official keys; it loads into
the official torch.hub model with ``strict=True``, or as ``dinov2:NAME --weights FILE.pth``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..backbones.base import Backbone
from ..backbones.convert import timm_to_official_dinov2
from ..backbones.registry import Family, register_family
from ..backbones.saving import cpu_state_dict, spec_name, write_official_pth

log = logging.getLogger(__name__)


def load(name: str, spec: str, weights: str | Path | None = None, random_init: bool = False) -> Backbone:
    from ..backbones.official_dinov2 import load_official_dinov2

    return load_official_dinov2(name, spec, weights=weights, random_init=random_init)


def save_official_format(backbone: Backbone, folder: Path, overwrite: bool) -> Path:
    target = write_official_pth(timm_to_official_dinov2(cpu_state_dict(backbone.model)), backbone.spec, folder, overwrite)
    log.info("wrote %s (official DINOv2 state dict)", target)
    return target


def reload_official_format(backbone: Backbone, path: Path) -> Backbone:
    return load(spec_name(backbone.spec), backbone.spec, weights=path)


register_family(
    Family(
        name="dinov2",
        spec_help="dinov2:vits14|vitb14|vitl14|vitg14[_reg]",
        load=load,
        save=save_official_format,
        reload=reload_official_format,
        key_maps={"official": timm_to_official_dinov2},
        order=30,
    )
)
