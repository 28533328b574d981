"""``timm:NAME[.TAG]``: a timm VisionTransformer or Eva (DINOv2, DINOv3, DeiT-III, CLIP).

Export format (shared with ``planted``): ``model.safetensors`` + ``model_spec.json``. Load it with
``timm.create_model(timm_name, pretrained=False, img_size=img_size, num_classes=num_classes, **kwargs)``
then ``load_state_dict(strict=True)``, or ``--model timm:NAME --weights model.safetensors``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..backbones.base import Backbone
from ..backbones.registry import Family, register_family
from ..backbones.saving import spec_name, write_weights_and_spec
from ..errors import ModelSpecError

log = logging.getLogger(__name__)

SPEC_FILE = "model_spec.json"
WEIGHTS_FILE = "model.safetensors"


def load(name: str, spec: str, weights: str | Path | None = None, random_init: bool = False) -> Backbone:
    from ..backbones.timm_loader import load_timm

    return load_timm(name, spec, weights=weights, random_init=random_init)


def recorded_timm_name(backbone: Backbone) -> str:
    """The timm name that re-creates ``backbone``'s architecture."""
    if backbone.timm_name:
        return backbone.timm_name
    if backbone.spec.startswith("timm:"):
        return spec_name(backbone.spec)
    raise ModelSpecError(f"{backbone.spec}: cannot tell which timm model to record; set backbone.timm_name")


def save_timm_format(backbone: Backbone, folder: Path, overwrite: bool) -> Path:
    """Write ``model.safetensors`` + ``model_spec.json`` (the recipe to rebuild the model) under ``folder``."""
    model = backbone.model
    meta = {
        "format": "timm",
        "timm_name": recorded_timm_name(backbone),
        "img_size": int(backbone.image_size),
        "num_classes": int(getattr(model, "num_classes", 0)),
        "kwargs": dict(backbone.timm_kwargs or {}),
        "spec": backbone.spec,
        "family": backbone.family,
    }
    weights = write_weights_and_spec(model, folder / WEIGHTS_FILE, folder / SPEC_FILE, meta, overwrite)
    log.info("wrote %s (timm %s, %d px)", weights, meta["timm_name"], meta["img_size"])
    return weights


def reload_timm_format(backbone: Backbone, path: Path) -> Backbone:
    """Rebuild the model from ``model_spec.json`` and load ``model.safetensors`` strictly."""
    import timm
    from safetensors.torch import load_file

    from ..backbones.timm_loader import wrap_timm

    folder = path.parent if path.is_file() else path
    meta = json.loads((folder / SPEC_FILE).read_text())
    model = timm.create_model(
        meta["timm_name"],
        pretrained=False,
        img_size=meta["img_size"],
        num_classes=meta["num_classes"],
        dynamic_img_size=True,
        **meta["kwargs"],
    )
    model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)), strict=True)
    new = wrap_timm(model, backbone.spec, family=backbone.family)
    new.timm_name, new.timm_kwargs = meta["timm_name"], meta["kwargs"]
    return new


register_family(Family(name="timm", spec_help="timm:NAME[.TAG]", load=load, save=save_timm_format, reload=reload_timm_format, order=10))
