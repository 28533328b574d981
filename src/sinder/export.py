"""Write a (repaired) backbone's weights in the format it came in, atomically, and read them back.

Each family (:mod:`sinder.families`) owns its format:

* ``timm`` / ``planted`` → ``model.safetensors`` + ``model_spec.json``; load with
  ``timm.create_model(timm_name, pretrained=False, img_size=img_size, num_classes=num_classes, **kwargs)``
  then ``load_state_dict(strict=True)`` (or ``sinder ... --model timm:NAME --weights model.safetensors``).
* ``hf`` → a ``save_pretrained`` folder (``config.json`` + ``model.safetensors``); ``hf:DIR`` loads it.
* ``dinov2`` → ``<name>_sinder.pth``, a plain state dict with the official keys (loads into the
  official torch.hub model with ``strict=True``, or ``dinov2:NAME --weights FILE.pth``).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .backbones.base import Backbone
from .backbones.registry import get_family


def save_weights(backbone: Backbone, out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``backbone``'s weights under ``out_dir`` in its own family's format; returns the written path."""
    family = get_family(backbone.family)  # an unknown family fails before anything is created
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return family.save(backbone, out, overwrite)


def reload_exported(backbone: Backbone, path: str | os.PathLike) -> Backbone:
    """Load what :func:`save_weights` wrote for ``backbone`` as a fresh backbone (same device and dtype)."""
    new = get_family(backbone.family).reload(backbone, Path(path))
    new.model.eval().to(device=backbone.device, dtype=backbone.dtype)
    return new


@torch.no_grad()
def max_token_diff(a: Backbone, b: Backbone, pixels: torch.Tensor) -> float:
    """Largest absolute difference between the two models' final tokens on ``pixels``."""
    ta = a.model_forward(pixels.to(a.device, a.dtype))
    tb = b.model_forward(pixels.to(b.device, b.dtype))
    return (ta.float().cpu() - tb.float().cpu()).abs().max().item()
