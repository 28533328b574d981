"""``dinov3:vits16|vits16plus|vitb16|vitl16|vith16plus|vit7b16``: Meta's DINOv3 ``.pth`` checkpoints
(``dinov3_vitl16_pretrain_lvd1689m-….pth``), run as timm's DINOv3 ``Eva`` models.

The checkpoint is read with ``weights_only=True`` and converted by timm's own Eva
``checkpoint_filter_fn`` (``storage_tokens`` -> ``reg_token``, ``ls1.gamma`` -> ``gamma_1``, the
masked qkv bias split into ``q_bias``/``v_bias``), then loaded strictly. The timm variant follows
the file: ``_qkvb`` when its qkv biases are not all zero (the distilled ViT-B/L/H+ have zero ones),
so no bias is silently dropped. What timm does not load (the RoPE periods, the mask token, the
``bias_mask``s and masked k biases) is kept beside the model and written back on export, so the
exported ``.pth`` is the input's layout, key for key. Meta's weights need a licence form: there is
no download here, pass ``--weights``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ModelSpecError, WeightsError
from .base import Backbone
from .convert import timm_to_official_dinov3
from .weights import read_state_dict

ARCHS = {
    "vits16": "vit_small_patch16_dinov3",
    "vits16plus": "vit_small_plus_patch16_dinov3",
    "vitb16": "vit_base_patch16_dinov3",
    "vitl16": "vit_large_patch16_dinov3",
    "vith16plus": "vit_huge_plus_patch16_dinov3",
    "vit7b16": "vit_7b_patch16_dinov3",
}
FORM = "https://ai.meta.com/resources/models-and-libraries/dinov3-downloads/"


def _arch(name: str, spec: str) -> str:
    if name not in ARCHS:
        raise ModelSpecError(f"{spec}: unknown DINOv3 model; use dinov3:{'|'.join(ARCHS)}")
    return ARCHS[name]


def _qkvb(arch: str) -> str | None:
    """timm's variant of ``arch`` with q and v biases, where it has one (not for the 7B)."""
    import timm

    return f"{arch}_qkvb" if timm.list_models(f"{arch}_qkvb") else None


def timm_variant(name: str, state_dict: dict, spec: str) -> str:
    """The timm architecture for ``dinov3:NAME`` and this checkpoint: ``_qkvb`` when a q or v bias is
    non-zero (the k part is masked in use, whatever it holds)."""
    arch = _arch(name, spec)
    biased = any(k.endswith("attn.qkv.bias") and bool(_q_and_v(v).abs().max() > 0) for k, v in state_dict.items())
    if not biased:
        return arch
    if _qkvb(arch) is None:
        raise WeightsError(f"{spec}: the checkpoint has qkv biases, which timm's {arch} has no place for; check the model name")
    return _qkvb(arch)


def _q_and_v(qkv_bias: torch.Tensor) -> torch.Tensor:
    third = qkv_bias.shape[0] // 3
    return torch.cat([qkv_bias[:third], qkv_bias[2 * third :]])


def _untrained_variant(name: str, spec: str) -> str:
    """Meta's models have qkv biases (k masked), all but the 7B: an untrained one gets timm's ``_qkvb``."""
    arch = _arch(name, spec)
    return _qkvb(arch) or arch


def load_official_dinov3(name: str, spec: str, weights: str | Path | None = None, random_init: bool = False) -> Backbone:
    from .timm_loader import create_timm, load_timm_state_dict, wrap_timm

    if weights is None and not random_init:
        _arch(name, spec)
        raise WeightsError(f"{spec}: Meta's DINOv3 weights are not downloaded here; request them at {FORM} and pass --weights FILE.pth")
    state_dict = read_state_dict(weights) if weights is not None else {}
    if weights is not None and "storage_tokens" not in state_dict:
        raise WeightsError(
            f"{spec}: {weights} is not a DINOv3 checkpoint in Meta's layout (no storage_tokens); for timm's layout use timm:NAME"
        )
    arch = timm_variant(name, state_dict, spec) if weights is not None else _untrained_variant(name, spec)
    model = create_timm(arch, spec)
    extras: dict[str, torch.Tensor] = {}
    if weights is not None:
        load_timm_state_dict(model, state_dict, spec)  # through timm's own Eva converter
        extras = not_loaded(model, state_dict)
    backbone = wrap_timm(model, spec, family="dinov3")
    backbone.timm_name, backbone.official_extras = arch, extras
    return backbone


def not_loaded(model, state_dict: dict) -> dict:
    """The checkpoint's tensors that the model does not hold, kept to write back on export: the RoPE
    periods, the mask token, the bias masks, the 7B's local CLS norm, and each qkv bias (its masked
    k part is in no timm parameter)."""
    heads = model.blocks[0].attn.num_heads
    generated = {"rope_embed.periods", "mask_token"}
    held = {k for k in timm_to_official_dinov3(model.state_dict(), {}, heads) if k not in generated and not k.endswith("bias_mask")}
    return {k: v for k, v in state_dict.items() if k not in held or k.endswith("attn.qkv.bias")}
