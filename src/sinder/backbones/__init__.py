"""Backbones: load any supported ViT by spec and expose the canonical block view.

Specs are ``FAMILY:NAME``; the families live in :mod:`sinder.families` (see
:mod:`sinder.backbones.registry`):

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
from .registry import Family, families, get_family, register_family
from .view import BlockView, LinearSlice
from .weights import check_finite


def parse_spec(spec: str) -> tuple[str, str]:
    """``"timm:vit_small_patch14_dinov2"`` -> ``("timm", "vit_small_patch14_dinov2")``; unknown families are refused."""
    family, sep, name = spec.partition(":")
    known = families()
    if not sep or not name or family not in {f.name for f in known}:
        helps = [f.spec_help for f in known]
        listing = f"{', '.join(helps[:-1])} or {helps[-1]}" if len(helps) > 1 else "".join(helps)
        raise ModelSpecError(f"unknown model spec {spec!r}; use {listing}")
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
    backbone = get_family(family).load(name, spec, weights=weights, random_init=random_init)
    check_finite(backbone.model.state_dict().items(), str(weights or spec))
    backbone.model.eval().to(device)
    return backbone


__all__ = [
    "Backbone", "BlockView", "Family", "LinearSlice", "TokenContext",
    "families", "get_family", "load_backbone", "parse_spec", "register_family",
]  # fmt: skip
