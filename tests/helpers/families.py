"""Tiny models of every backbone family (random weights made to matter), their adapters, and an
independent implementation of a block from its canonical view alone: the oracle the backbone,
repair and register tests compare against."""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F

from helpers.models import liven
from helpers.towers import tower_config
from sinder.backbones.hf_loader import hf_backbone
from sinder.backbones.timm_loader import wrap_timm


# -- tiny models ------------------------------------------------------------------------------
def _timm(name: str, **kw) -> torch.nn.Module:
    return liven(timm.create_model(name, pretrained=False, num_classes=0, dynamic_img_size=True, depth=2, **kw))


def _hf(cfg) -> torch.nn.Module:
    import transformers

    model = getattr(transformers, type(cfg).__name__.replace("Config", "Model"))(cfg)
    model.set_attn_implementation("eager")  # so the model returns its attention probabilities
    return liven(model)


def _hf_cfg(kind: str, **kw):
    from transformers import Dinov2Config, Dinov2WithRegistersConfig, DINOv3ViTConfig

    common = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2)
    common.update({k: kw.pop(k) for k in list(kw) if k in common})
    if kind == "dinov3":
        return DINOv3ViTConfig(intermediate_size=128, num_register_tokens=4, image_size=64, **common, **kw)
    cls = Dinov2WithRegistersConfig if kind == "dinov2_reg" else Dinov2Config
    return cls(image_size=56, patch_size=14, **common, **kw)


TIMM_CASES = {
    "dinov2_s": lambda: _timm("vit_small_patch14_dinov2", img_size=56),
    "dinov2_reg4": lambda: _timm("vit_small_patch14_reg4_dinov2", img_size=56),
    "dinov2_giant_swiglu": lambda: _timm("vit_giant_patch14_dinov2", img_size=56, embed_dim=96, num_heads=2),
    "deit3": lambda: _timm("deit3_small_patch16_224", img_size=64),
    "clip_quickgelu": lambda: _timm("vit_base_patch16_clip_quickgelu_224", img_size=64, embed_dim=96, num_heads=2),
    "dinov3": lambda: _timm("vit_small_patch16_dinov3", img_size=64, embed_dim=64, num_heads=2),
    "dinov3_qkvb": lambda: _timm("vit_small_patch16_dinov3_qkvb", img_size=64, embed_dim=64, num_heads=2),
    "dinov3_qkv_unfused": lambda: _timm("vit_small_patch16_dinov3_qkvb", img_size=64, embed_dim=64, num_heads=2, qkv_fused=False),
    "dinov3_plus_swiglu": lambda: _timm("vit_small_plus_patch16_dinov3", img_size=64, embed_dim=64, num_heads=2),
}
HF_CASES = {
    "hf_dinov2": lambda: _hf(_hf_cfg("dinov2")),
    "hf_dinov2_swiglu": lambda: _hf(_hf_cfg("dinov2", use_swiglu_ffn=True)),
    "hf_dinov2_reg": lambda: _hf(_hf_cfg("dinov2_reg")),
    "hf_dinov3": lambda: _hf(_hf_cfg("dinov3")),
    "hf_dinov3_gated": lambda: _hf(_hf_cfg("dinov3", use_gated_mlp=True, hidden_act="silu")),
    "hf_clip": lambda: _hf(tower_config("clip")),
    "hf_clip_model": lambda: _hf(tower_config("clip_model")),
    "hf_siglip": lambda: _hf(tower_config("siglip")),
    "hf_siglip2": lambda: _hf(tower_config("siglip2")),
}
EXPECTED_ACT = {
    "dinov2_giant_swiglu": "swiglu",
    "clip_quickgelu": "quick_gelu",
    "dinov3_plus_swiglu": "swiglu",
    "hf_dinov2_swiglu": "swiglu",
    "hf_dinov3_gated": "swiglu",
    "hf_clip": "quick_gelu",
    "hf_clip_model": "quick_gelu",
    "hf_siglip": "gelu_tanh",
    "hf_siglip2": "gelu_tanh",
}


def make(case: str):
    if case in TIMM_CASES:
        return wrap_timm(TIMM_CASES[case](), f"timm:{case}")
    return hf_backbone(HF_CASES[case](), f"hf:{case}")


def pixels(backbone, extra_rows: int = 1) -> torch.Tensor:
    # a non-square input exercises position-embedding resampling and RoPE grids
    g = torch.Generator().manual_seed(1)
    side = backbone.image_size
    return torch.randn(2, 3, side + extra_rows * backbone.patch_size, side, generator=g)


# -- an independent block implementation from the view alone --------------------------------
def _act(view, hidden):
    if view.activation == "swiglu":
        gate, value = hidden
        return F.silu(gate) * value
    (h,) = hidden
    return {"gelu": F.gelu, "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"), "quick_gelu": lambda t: t * torch.sigmoid(1.702 * t)}[
        view.activation
    ](h)


def view_block(backbone, index, x, ctx, edit_hidden=None):
    """Block ``index`` computed by hand from its view; ``edit_hidden(hidden)`` may change the MLP's
    hidden activation in place (the test-time registers reference)."""
    view = backbone.block_view(index)
    b, n, _ = x.shape
    h = view.norm1(x)
    q, k, v = (F.linear(h, s.weight, s.bias).reshape(b, n, view.num_heads, -1).transpose(1, 2) for s in (view.q, view.k, view.v))
    if view.extras.get("q_norm") is not None:
        q, k = view.extras["q_norm"](q), view.extras["k_norm"](k)
    q, k = backbone.rotary(q, k, ctx)
    attn = ((q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5).softmax(-1)
    out = (attn @ v).transpose(1, 2).reshape(b, n, -1)
    x = x + view.layer_scale(1) * F.linear(out, view.proj.weight, view.proj.bias)
    h = view.norm2(x)
    hidden = _act(view, [F.linear(h, s.weight, s.bias) for s in view.mlp_in])
    if edit_hidden is not None:
        edit_hidden(hidden)
    return x + view.layer_scale(2) * F.linear(hidden, view.mlp_out.weight, view.mlp_out.bias)


ALL_CASES = list(TIMM_CASES) + list(HF_CASES)
