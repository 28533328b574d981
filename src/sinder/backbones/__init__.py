"""Backbones: load any supported ViT by spec and expose the canonical block view.

Specs:
    ``timm:NAME[.TAG]``            a timm VisionTransformer or Eva (DINOv2, DINOv3, DeiT-III, CLIP)
    ``hf:ID_OR_DIR``               transformers Dinov2Model / Dinov2WithRegistersModel / DINOv3ViTModel
    ``dinov2:vits14|vitb14|vitl14|vitg14[_reg]``  official torch.hub state dicts (``--weights FILE.pth``)
    ``planted:small``              the built-in model with planted singular defects
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ModelSpecError
from .base import Backbone, TokenContext
from .view import BlockView, LinearSlice

FAMILIES = ("timm", "hf", "dinov2", "planted")


def parse_spec(spec: str) -> tuple[str, str]:
    family, sep, name = spec.partition(":")
    if not sep or family not in FAMILIES or not name:
        raise ModelSpecError(
            f"unknown model spec {spec!r}; use timm:NAME, hf:ID_OR_DIR, dinov2:vits14|vitb14|vitl14|vitg14[_reg] or planted:small"
        )
    return family, name


def load_backbone(
    spec: str,
    weights: str | Path | None = None,
    *,
    random_init: bool = False,
    device: str | torch.device = "cpu",
) -> Backbone:
    """Build the model named by ``spec`` and wrap it in its adapter (eval mode, on ``device``)."""
    family, name = parse_spec(spec)
    if family == "timm":
        from .timm_loader import load_timm

        backbone = load_timm(name, spec, weights=weights, random_init=random_init)
    elif family == "hf":
        from .hf_loader import load_hf

        backbone = load_hf(name, spec, weights=weights, random_init=random_init)
    elif family == "dinov2":
        from .official_dinov2 import load_official_dinov2

        backbone = load_official_dinov2(name, spec, weights=weights, random_init=random_init)
    else:
        from .planted import load_planted

        backbone = load_planted(name, spec, weights=weights)
    backbone.model.eval().to(device)
    return backbone


__all__ = ["Backbone", "BlockView", "LinearSlice", "TokenContext", "load_backbone", "parse_spec"]
