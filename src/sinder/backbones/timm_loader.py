"""``timm:NAME[.TAG]``: create the timm model, load weights, infer the native image size."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import ModelSpecError, WeightsError
from .base import Backbone
from .weights import grid_from_pos_embed, read_state_dict, require_hub


def create_timm(name: str, spec: str, **kwargs) -> nn.Module:
    import timm

    arch = name.split(".")[0]
    if not timm.is_model(arch):
        raise ModelSpecError(f"{spec}: timm has no model {arch!r}; list them with timm.list_models('*dinov2*')")
    return timm.create_model(name, num_classes=0, dynamic_img_size=True, **kwargs)


def wrap_timm(model: nn.Module, spec: str, family: str = "timm") -> Backbone:
    """Pick the adapter for a timm model instance."""
    from timm.models.eva import Eva
    from timm.models.vision_transformer import VisionTransformer

    if isinstance(model, VisionTransformer):
        from .timm_vit import TimmViTBackbone

        return TimmViTBackbone(model, spec, family=family)
    if isinstance(model, Eva):
        from .timm_eva import TimmEvaBackbone

        return TimmEvaBackbone(model, spec, family=family)
    raise ModelSpecError(f"{spec}: {type(model).__name__} is not a supported ViT (VisionTransformer or Eva)")


def native_img_size(model: nn.Module, state_dict: dict) -> int | None:
    """Image size implied by the checkpoint's positional-embedding grid (None when it has none)."""
    pos = state_dict.get("pos_embed")
    if pos is None:
        return None
    in_pos = 0 if getattr(model, "no_embed_class", False) else model.num_prefix_tokens
    side = grid_from_pos_embed(pos.shape[1], in_pos)
    return side * model.patch_embed.patch_size[0]


def load_timm_state_dict(model: nn.Module, state_dict: dict, spec: str) -> None:
    own = model.state_dict()
    mismatched = [k for k, v in state_dict.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if mismatched:  # load_state_dict would raise a many-line RuntimeError
        k = mismatched[0]
        raise WeightsError(
            f"{spec}: weights do not fit ({len(mismatched)} shape mismatch(es), e.g. {k} is {tuple(state_dict[k].shape)} "
            f"in the file but {tuple(own[k].shape)} in the model); check the model name"
        )
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    missing = [k for k in missing if not k.startswith("head")]
    unexpected = [k for k in unexpected if not k.startswith("head")]
    if missing or unexpected:
        raise WeightsError(
            f"{spec}: weights do not fit (missing {missing[:3]}{'…' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'…' if len(unexpected) > 3 else ''}); check the model name"
        )


def load_timm(name: str, spec: str, weights: str | Path | None = None, random_init: bool = False) -> Backbone:
    import timm

    if not timm.is_model(name.split(".")[0]):  # before the hub check: an unknown name is not a network problem
        raise ModelSpecError(f"{spec}: timm has no model {name.split('.')[0]!r}; list them with timm.list_models('*dinov2*')")
    if weights is None and not random_init:
        require_hub(spec)
        return wrap_timm(create_timm(name, spec, pretrained=True), spec)
    if weights is None:
        return wrap_timm(create_timm(name, spec, pretrained=False), spec)
    state_dict = read_state_dict(weights)
    with torch.device("meta"):  # the architecture only, to read the native size: no second random init
        probe = create_timm(name, spec, pretrained=False)
    size = native_img_size(probe, state_dict)
    extra = {"img_size": size} if size is not None and size != probe.patch_embed.img_size[0] else {}
    model = create_timm(name, spec, pretrained=False, **extra)
    load_timm_state_dict(model, state_dict, spec)
    return wrap_timm(model, spec)
