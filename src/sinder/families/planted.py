"""``planted:small``: the built-in ViT-S/14 with planted singular defects (see :mod:`sinder.planted`).

Planted models are timm ``vit_small_patch14_dinov2`` models, so they export like ``timm``.
"""

from __future__ import annotations

from pathlib import Path

from ..backbones.base import Backbone
from ..backbones.convert import timm_to_official_dinov2
from ..backbones.registry import Family, register_family
from ..planted import PRESETS, load_planted
from .timm import reload_timm_format, save_timm_format


def load(name: str, spec: str, weights: str | Path | None = None, random_init: bool = False) -> Backbone:
    # random_init is moot: the model is built from a seed, never downloaded
    return load_planted(name, spec, weights=weights)


register_family(
    Family(
        name="planted",
        spec_help="planted:" + "|".join(PRESETS) + "[@S|B|L|g]",
        load=load,
        save=save_timm_format,
        reload=reload_timm_format,
        key_maps={"official": timm_to_official_dinov2},
        order=40,
    )
)
