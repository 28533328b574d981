"""``hf:ID_OR_DIR``: transformers Dinov2Model / Dinov2WithRegistersModel / DINOv3ViTModel.

Export format: a ``save_pretrained`` folder (``config.json`` + ``model.safetensors``); ``hf:DIR`` loads it.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from ..backbones.base import Backbone
from ..backbones.convert import hf_dinov2_to_official
from ..backbones.registry import Family, register_family
from ..backbones.saving import refuse_existing

log = logging.getLogger(__name__)

FILES = ("config.json", "model.safetensors")


def load(name: str, spec: str, weights: str | Path | None = None, random_init: bool = False) -> Backbone:
    from ..backbones.hf_loader import load_hf

    return load_hf(name, spec, weights=weights, random_init=random_init)


def save_hf_format(backbone: Backbone, folder: Path, overwrite: bool) -> Path:
    """``save_pretrained`` into a temporary folder beside the target, then move the files in."""
    refuse_existing([folder / f for f in FILES], overwrite)
    tmp = Path(tempfile.mkdtemp(prefix=".sinder-hf-", dir=folder))
    try:
        backbone.model.save_pretrained(tmp)
        # config first, weights last: a folder with new weights always has its matching config
        names = sorted(os.listdir(tmp), key=lambda n: n.endswith(".safetensors"))
        for name in names:
            os.replace(tmp / name, folder / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("wrote %s (transformers save_pretrained)", folder)
    return folder


def reload_hf_format(backbone: Backbone, path: Path) -> Backbone:
    from ..backbones.hf_loader import load_hf

    return load_hf(str(path), backbone.spec)


register_family(
    Family(
        name="hf",
        spec_help="hf:ID_OR_DIR",
        load=load,
        save=save_hf_format,
        reload=reload_hf_format,
        key_maps={"official": hf_dinov2_to_official},  # DINOv2 models only (DINOv3 has no official layout here)
        order=20,
    )
)
