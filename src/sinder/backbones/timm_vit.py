"""Adapter over timm's ``VisionTransformer``: DINOv2 (S/B/L/g, ±reg4), DeiT-III, CLIP ViTs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..errors import ModelSpecError
from .base import Backbone, TokenContext
from .view import BlockView, LinearSlice


def timm_activation(act: nn.Module, where: str) -> str:
    """Name a timm MLP activation module in the canonical vocabulary."""
    from timm.layers.activations import GELU, GELUTanh, QuickGELU

    if isinstance(act, QuickGELU):
        return "quick_gelu"
    if isinstance(act, GELUTanh):
        return "gelu_tanh"
    if isinstance(act, GELU):
        return "gelu"
    if isinstance(act, nn.GELU):
        return "gelu_tanh" if act.approximate == "tanh" else "gelu"
    raise ModelSpecError(f"{where}: unsupported MLP activation {type(act).__name__}; sinder handles GELU, QuickGELU and SwiGLU")


def timm_mlp_view(mlp: nn.Module, prefix: str) -> tuple[tuple[LinearSlice, ...], str, LinearSlice]:
    """(mlp_in, activation, mlp_out) for timm's Mlp, GluMlp/SwiGLUPacked and SwiGLU."""
    from timm.layers.mlp import GluMlp, Mlp, SwiGLU

    if not isinstance(getattr(mlp, "norm", nn.Identity()), nn.Identity):
        raise ModelSpecError(f"{prefix}: MLPs with an inner norm are not supported by the linear theory")
    out = LinearSlice(mlp.fc2, f"{prefix}.fc2")
    if isinstance(mlp, SwiGLU):
        if not isinstance(mlp.act, nn.SiLU):
            raise ModelSpecError(f"{prefix}: gated MLP with {type(mlp.act).__name__}; only SiLU gates (SwiGLU) are supported")
        return (LinearSlice(mlp.fc1_g, f"{prefix}.fc1_g"), LinearSlice(mlp.fc1_x, f"{prefix}.fc1_x")), "swiglu", out
    if isinstance(mlp, GluMlp):
        if not isinstance(mlp.act, nn.SiLU):
            raise ModelSpecError(f"{prefix}: gated MLP with {type(mlp.act).__name__}; only SiLU gates (SwiGLU) are supported")
        half = mlp.fc1.out_features // 2
        first = LinearSlice(mlp.fc1, f"{prefix}.fc1", 0, half)
        second = LinearSlice(mlp.fc1, f"{prefix}.fc1", half, 2 * half)
        gate, value = (second, first) if mlp.gate_last else (first, second)
        return (gate, value), "swiglu", out
    if isinstance(mlp, Mlp):
        return (LinearSlice(mlp.fc1, f"{prefix}.fc1"),), timm_activation(mlp.act, prefix), out
    raise ModelSpecError(f"{prefix}: unsupported MLP type {type(mlp).__name__}")


def layer_scale_gamma(ls: nn.Module | None) -> torch.Tensor | None:
    return getattr(ls, "gamma", None) if ls is not None else None


def fused_qkv(
    qkv: nn.Linear, name: str, q_bias: nn.Parameter | None = None, v_bias: nn.Parameter | None = None
) -> tuple[LinearSlice, LinearSlice, LinearSlice]:
    """q, k, v as row thirds of a fused ``qkv`` Linear; ``q_bias``/``v_bias`` when stored outside it."""
    d = qkv.out_features // 3
    return (
        LinearSlice(qkv, name, 0, d, bias_param=q_bias),
        LinearSlice(qkv, name, d, 2 * d),
        LinearSlice(qkv, name, 2 * d, 3 * d, bias_param=v_bias),
    )


class TimmBackbone(Backbone):
    """What timm's ViT-like models share: attribute names, block list, final norm and forward."""

    family = "timm"

    def __init__(self, model: nn.Module, spec: str, family: str = "timm") -> None:
        self.model = model
        self.spec = spec
        self.family = family
        self.patch_size = model.patch_embed.patch_size[0]
        self.num_prefix_tokens = model.num_prefix_tokens
        self.embed_dim = model.embed_dim
        self.depth = len(model.blocks)
        self.image_size = model.patch_embed.img_size[0]
        self.has_cls_token = model.cls_token is not None
        cfg = getattr(model, "pretrained_cfg", None) or {}
        self.mean = tuple(cfg.get("mean", self.mean))
        self.std = tuple(cfg.get("std", self.std))

    def blocks(self) -> list[nn.Module]:
        return list(self.model.blocks)

    @contextmanager
    def any_size(self) -> Iterator[None]:
        """The model as if built with ``dynamic_img_size=True``, for the length of one embedding: a
        module the user built for one size (timm's default) then takes any grid, and is left as it was."""
        m, pe = self.model, self.model.patch_embed
        if getattr(m, "dynamic_img_size", True):
            yield
            return
        from timm.layers import Format

        saved = (m.dynamic_img_size, pe.strict_img_size, pe.flatten, pe.output_fmt)
        m.dynamic_img_size, pe.strict_img_size, pe.flatten, pe.output_fmt = True, False, False, Format.NHWC
        try:
            yield
        finally:
            m.dynamic_img_size, pe.strict_img_size, pe.flatten, pe.output_fmt = saved

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.norm(x)

    def pooled(self, final: torch.Tensor, ctx: TokenContext) -> torch.Tensor:
        """A MAP head's output (timm SigLIP, ``global_pool="map"``) when the model has one."""
        pool = getattr(self.model, "attn_pool", None)
        if pool is not None and not self.has_cls_token:
            return pool(final)  # timm pools the whole sequence
        return super().pooled(final, ctx)

    def model_forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(pixels)

    def timm_block_view(
        self, index: int, qkv: tuple[LinearSlice, LinearSlice, LinearSlice], ls1: torch.Tensor | None, ls2: torch.Tensor | None
    ) -> BlockView:
        """The view of pre-norm block ``index`` given what differs between timm's ViT and Eva blocks:
        where q/k/v and the LayerScale gammas live."""
        blk = self.model.blocks[index]
        prefix = f"blocks.{index}"
        mlp_in, act, mlp_out = timm_mlp_view(blk.mlp, f"{prefix}.mlp")
        q, k, v = qkv
        return BlockView(
            norm1=blk.norm1,
            q=q,
            k=k,
            v=v,
            proj=LinearSlice(blk.attn.proj, f"{prefix}.attn.proj"),
            ls1=ls1,
            norm2=blk.norm2,
            mlp_in=mlp_in,
            activation=act,
            mlp_out=mlp_out,
            ls2=ls2,
            num_heads=blk.attn.num_heads,
            extras={"q_norm": blk.attn.q_norm, "k_norm": blk.attn.k_norm},
        )


class TimmViTBackbone(TimmBackbone):
    def __init__(self, model: nn.Module, spec: str, family: str = "timm") -> None:
        from timm.models.vision_transformer import Block, VisionTransformer

        if not isinstance(model, VisionTransformer):
            raise ModelSpecError(f"{spec}: expected a timm VisionTransformer, got {type(model).__name__}")
        for i, blk in enumerate(model.blocks):
            if type(blk) is not Block:
                raise ModelSpecError(f"{spec}: block {i} is {type(blk).__name__}; only pre-norm timm Blocks are supported")
            if not isinstance(blk.attn.norm, nn.Identity):
                raise ModelSpecError(f"{spec}: attention with an inner norm (scale_attn_norm) is not supported")
        super().__init__(model, spec, family)

    def block_view(self, index: int) -> BlockView:
        blk = self.model.blocks[index]
        qkv = fused_qkv(blk.attn.qkv, f"blocks.{index}.attn.qkv")
        return self.timm_block_view(index, qkv, layer_scale_gamma(blk.ls1), layer_scale_gamma(blk.ls2))

    def embed(self, pixels: torch.Tensor) -> tuple[torch.Tensor, TokenContext]:
        m = self.model
        with self.any_size():
            x = m.patch_embed(pixels)
            if x.ndim == 4:  # dynamic_img_size keeps NHWC
                grid = (x.shape[1], x.shape[2])
            else:
                grid = (
                    m.patch_embed.dynamic_feat_size(pixels.shape[-2:])
                    if hasattr(m.patch_embed, "dynamic_feat_size")
                    else m.patch_embed.grid_size
                )
                grid = tuple(grid)
            x = m._pos_embed(x)
        x = m.norm_pre(x)
        return x, TokenContext(grid=tuple(int(g) for g in grid))

    def run_block(self, index: int, x: torch.Tensor, ctx: TokenContext) -> torch.Tensor:
        return self.model.blocks[index](x)
