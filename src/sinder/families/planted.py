"""``planted:small``: the built-in ViT-S/14 with planted singular defects (see :mod:`sinder.planted`).

Planted models are timm models (DINOv2, SigLIP and DINOv3 layouts), so they export like ``timm``;
the CLIP-layout member is a transformers ``CLIPVisionModel`` and ``hf_dinov2`` a ``Dinov2Model``,
both exported like ``hf``, and the open_clip member an ``open_clip.CLIP``, exported like
``open_clip`` with the config that rebuilds it.
"""

from __future__ import annotations

from pathlib import Path

from ..backbones.base import Backbone
from ..backbones.convert import timm_to_official_dinov2
from ..backbones.registry import Family, register_family
from ..planted.config import PRESETS
from .hf import reload_hf_format, save_hf_format
from .open_clip import reload_open_clip_format, save_open_clip_format
from .timm import reload_timm_format, save_timm_format


def load(name: str, spec: str, weights: str | Path | None = None, random_init: bool = False) -> Backbone:
    from ..planted.model import load_planted  # the builder (theory, timm) only when a member is built

    # random_init is moot: the model is built from a seed, never downloaded
    return load_planted(name, spec, weights=weights)


def _library(backbone: Backbone) -> str:
    """Which library's format the member exports in: ``hf`` (clip, hf_dinov2), ``open_clip`` or ``timm``."""
    from ..backbones.hf_tower import HFTowerBackbone
    from ..backbones.hf_vit import HFViTBackbone
    from ..backbones.openclip_vit import OpenCLIPBackbone

    if isinstance(backbone, (HFTowerBackbone, HFViTBackbone)):
        return "hf"
    return "open_clip" if isinstance(backbone, OpenCLIPBackbone) else "timm"


def save(backbone: Backbone, folder: Path, overwrite: bool) -> Path:
    writer = {"hf": save_hf_format, "open_clip": save_open_clip_format, "timm": save_timm_format}[_library(backbone)]
    return writer(backbone, folder, overwrite)


def reload(backbone: Backbone, path: Path) -> Backbone:
    library = _library(backbone)
    if library == "timm":
        return reload_timm_format(backbone, path)  # keeps the backbone's family
    again = (reload_hf_format if library == "hf" else reload_open_clip_format)(backbone, path)
    again.family = backbone.family
    return again


register_family(
    Family(
        name="planted",
        spec_help="planted:" + "|".join(PRESETS) + "[@S|B|L|g]",
        load=load,
        save=save,
        reload=reload,
        key_maps={"official": timm_to_official_dinov2},
        order=40,
    )
)
