"""``dinov2:vits14|vitb14|vitl14|vitg14[_reg]``: official DINOv2 torch.hub state dicts, run as timm models.

The official ``.pth`` (``--weights FILE.pth``, read with ``weights_only=True``) is converted by
timm's own ``checkpoint_filter_fn`` (``w12→fc1``, ``w3→fc2``, registers moved, ``mask_token``
dropped) into the matching timm ``vit_*_patch14[_reg4]_dinov2`` and loaded strictly; the image
size is inferred from the positional-embedding grid (1+37·37 → 518 px, 1+16·16 → 224 px).

Caveat: at resolutions other than the native one, the official non-register models interpolate
the positional embedding with a legacy ``interpolate_offset=0.1`` (scale factor (g+0.1)/g), while
timm/HF resize to the exact grid; their tokens then differ from the official code by ~0.02–0.05.
At the native resolution, and for register models at any resolution, they match exactly.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import ModelSpecError, WeightsError
from .base import Backbone
from .weights import grid_from_pos_embed, hub_reachable, read_state_dict

ARCHS = {"vits14": "small", "vitb14": "base", "vitl14": "large", "vitg14": "giant"}
HUB_HOST = "dl.fbaipublicfiles.com"


def timm_name(name: str) -> str:
    """``vits14_reg`` -> ``vit_small_patch14_reg4_dinov2``."""
    arch, reg = (name[: -len("_reg")], True) if name.endswith("_reg") else (name, False)
    if arch not in ARCHS:
        raise ModelSpecError(f"dinov2:{name}: unknown official model; use dinov2:vits14|vitb14|vitl14|vitg14, optionally with _reg")
    return f"vit_{ARCHS[arch]}_patch14{'_reg4' if reg else ''}_dinov2"


def hub_url(name: str) -> str:
    arch, reg = (name[: -len("_reg")], "_reg4") if name.endswith("_reg") else (name, "")
    return f"https://{HUB_HOST}/dinov2/dinov2_{arch}/dinov2_{arch}{reg}_pretrain.pth"


def official_img_size(state_dict: dict, patch_size: int = 14, spec: str = "dinov2") -> int:
    """Native resolution of an official checkpoint: its ``pos_embed`` always has one cls entry."""
    pos = state_dict.get("pos_embed")
    if pos is None:
        raise WeightsError(
            f"{spec}: the checkpoint has no pos_embed; pass an official DINOv2 state dict such as dinov2_vits14_pretrain.pth"
        )
    return grid_from_pos_embed(pos.shape[1], 1) * patch_size


def official_to_timm(state_dict: dict, arch: str, spec: str) -> nn.Module:
    """Build the timm model at the checkpoint's native size and load the converted weights strictly."""
    import timm
    from timm.models.vision_transformer import checkpoint_filter_fn

    size = official_img_size(state_dict, spec=spec)
    # built on the meta device and filled by assign: no random init (tens of seconds for ViT-g on CPU)
    with torch.device("meta"):
        model = timm.create_model(arch, pretrained=False, num_classes=0, dynamic_img_size=True, img_size=size)
    state_dict = dict(state_dict)  # timm's converter pops from its input
    if "cls_token" in state_dict:  # timm detects the official layout by its mask_token; some exports drop it
        state_dict.setdefault("mask_token", state_dict["cls_token"].new_zeros(1, state_dict["cls_token"].shape[-1]))
    converted = checkpoint_filter_fn(state_dict, model)
    # assign keeps the file's dtype; the adapters and the theory run in float32
    converted = {k: v.float() if v.is_floating_point() else v for k, v in converted.items()}
    try:
        model.load_state_dict(converted, strict=True, assign=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0]
        raise WeightsError(f"{spec}: weights do not fit {arch} ({detail[:160]}); check the model name (e.g. _reg)") from None
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        raise WeightsError(f"{spec}: some tensors of {arch} were not filled from the checkpoint")
    return model


def load_official_dinov2(name: str, spec: str, weights: str | Path | None = None, random_init: bool = False) -> Backbone:
    import timm

    from .timm_loader import wrap_timm

    arch = timm_name(name)
    if weights is not None:
        model = official_to_timm(read_state_dict(weights), arch, spec)
    elif random_init:
        model = timm.create_model(arch, pretrained=False, num_classes=0, dynamic_img_size=True)
    else:
        if not hub_reachable(host=HUB_HOST):
            raise ModelSpecError(f"{spec}: {HUB_HOST} is unreachable; download {hub_url(name)} elsewhere and pass --weights FILE.pth")
        state_dict = torch.hub.load_state_dict_from_url(hub_url(name), map_location="cpu", weights_only=True)
        model = official_to_timm(state_dict, arch, spec)
    backbone = wrap_timm(model, spec, family="dinov2")
    backbone.timm_name = arch
    return backbone
