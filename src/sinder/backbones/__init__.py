"""Backbones: load any supported ViT by spec and expose the canonical block view.

Specs are ``FAMILY:NAME``; the families live in :mod:`sinder.families` (see
:mod:`sinder.backbones.registry`):

    ``timm:NAME[.TAG]``            a timm VisionTransformer or Eva (DINOv2, DINOv3, DeiT-III, CLIP)
    ``hf:ID_OR_DIR``               transformers DINOv2 / DINOv3 / CLIP / SigLIP / SigLIP2 models
    ``open_clip:ARCH``             an open_clip CLIP (``--weights`` its checkpoint; optional extra)
    ``dinov2:vits14|vitb14|vitl14|vitg14[_reg]``  official torch.hub state dicts (``--weights FILE.pth``)
    ``planted:small``              the built-in model with planted singular defects

or, for a model already in memory (built, fine-tuned or loaded by the user), the module itself:
``load_backbone(model)`` wraps a timm ``VisionTransformer``/``Eva``, a transformers DINOv2 /
DINOv3 / CLIP / SigLIP model or an ``open_clip.CLIP`` in place (every API function also takes the module directly).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

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
    spec: str | nn.Module,
    weights: str | Path | None = None,
    *,
    random_init: bool = False,
    device: str | torch.device | None = None,
) -> Backbone:
    """Build the model named by ``spec`` and wrap it in its adapter (eval mode, on ``device``,
    default CPU); or wrap the user's own module ``spec`` (:func:`from_module`: left on its device
    unless ``device`` is given)."""
    if isinstance(spec, nn.Module):
        if weights is not None or random_init:
            raise ModelSpecError("a model passed as a module already has its weights; load them into it, or pass a spec with --weights")
        backbone = from_module(spec)
        if device is not None:
            backbone.model.to(device)
        return backbone
    family, name = parse_spec(spec)
    backbone = get_family(family).load(name, spec, weights=weights, random_init=random_init)
    check_finite(backbone.model.state_dict().items(), str(weights or spec))
    backbone.model.eval().to(device or "cpu")
    return backbone


def from_module(model: nn.Module, spec: str | None = None) -> Backbone:
    """The backbone over ``model`` itself (a timm or transformers ViT, any ``img_size`` and with or
    without ``dynamic_img_size``), put in eval mode. Repair edits this module in place, so it keeps
    its class and state-dict keys; export writes its family's format (``spec`` names it in logs,
    default ``timm:ARCH`` or ``hf:CLASS``)."""
    from transformers import PreTrainedModel

    from .hf_loader import hf_backbone
    from .timm_loader import wrap_timm

    if isinstance(model, PreTrainedModel):
        backbone = hf_backbone(model, spec or f"hf:{type(model).__name__}")
    elif type(model).__module__.startswith("open_clip."):
        from .openclip_vit import OpenCLIPBackbone

        backbone = OpenCLIPBackbone(model, spec or f"open_clip:{type(model).__name__}")
    elif type(model).__module__.startswith("timm."):
        arch = (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
        backbone = wrap_timm(model, spec or f"timm:{arch or type(model).__name__}")
        backbone.timm_name = arch
    else:
        raise ModelSpecError(
            f"{type(model).__name__} ({type(model).__module__}) is not a model sinder can adapt; pass a timm VisionTransformer/Eva, "
            "a transformers DINOv2, DINOv3, CLIP or SigLIP model or an open_clip CLIP (or a spec such as timm:NAME)"
        )
    check_finite(model.state_dict().items(), backbone.spec)
    model.eval()
    return backbone


def as_backbone(model: Backbone | nn.Module) -> Backbone:
    """What every API function calls on its model argument: a backbone as is, a module wrapped."""
    if isinstance(model, Backbone):
        return model
    if isinstance(model, nn.Module):
        return from_module(model)
    raise ModelSpecError(f"expected a Backbone or an nn.Module, got {type(model).__name__}; use load_backbone(SPEC) for a spec string")


__all__ = [
    "Backbone",
    "BlockView",
    "Family",
    "LinearSlice",
    "TokenContext",
    "as_backbone",
    "families",
    "from_module",
    "get_family",
    "load_backbone",
    "parse_spec",
    "register_family",
]

# Every family registers itself when its module loads; importing them here, last (every name above
# is defined by then), makes them known wherever sinder.backbones is used, as timm's models/__init__.py does.
from .. import families as _families  # noqa: E402, F401
