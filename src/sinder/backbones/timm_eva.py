"""Adapter over timm's ``Eva``: DINOv3 (S/S+/B/L/H+/7B, ±qkv bias) and other pre-norm Eva ViTs.

DINOv3 in timm is an ``Eva`` with RoPE on the patch tokens only (cls + storage/register
tokens are prefix tokens and are not rotated), LayerScale as ``gamma_1``/``gamma_2``, a fused
``qkv`` without bias (``*_qkvb``: separate ``q_bias``/``v_bias`` parameters, the k bias is a
zero buffer) and either a GELU ``Mlp`` or a SwiGLU (``fc1_g``/``fc1_x``, or packed ``GluMlp``).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ModelSpecError
from .base import TokenContext
from .timm_vit import TimmBackbone, fused_qkv
from .view import BlockView, LinearSlice


def _eval_mode_call(module: nn.Module | None, fn):
    """Run ``fn`` with ``module`` in eval mode: RoPE coordinate jitter is a train-time augmentation,
    and SINDER needs the same positions at every step (repair may put the model in train mode)."""
    if module is None or not module.training:
        return fn()
    module.eval()
    try:
        return fn()
    finally:
        module.train()


class TimmEvaBackbone(TimmBackbone):
    def __init__(self, model: nn.Module, spec: str, family: str = "timm") -> None:
        from timm.models.eva import Eva, EvaAttention, EvaBlock

        if not isinstance(model, Eva):
            raise ModelSpecError(f"{spec}: expected a timm Eva, got {type(model).__name__}")
        if getattr(model, "rope_mixed", False):
            raise ModelSpecError(f"{spec}: per-layer ('mixed') RoPE is not supported; DINOv3-style shared RoPE is")
        for i, blk in enumerate(model.blocks):
            if type(blk) is not EvaBlock:
                raise ModelSpecError(f"{spec}: block {i} is {type(blk).__name__}; only pre-norm Eva blocks are supported")
            attn = blk.attn
            if type(attn) is not EvaAttention:
                raise ModelSpecError(f"{spec}: block {i} uses {type(attn).__name__}; only EvaAttention is supported")
            if not isinstance(attn.norm, nn.Identity) or getattr(attn, "gate", None) is not None:
                raise ModelSpecError(f"{spec}: attention with an inner norm or a gate is not supported by the linear theory")
        if model.pos_embed is None and model.rope is None:
            raise ModelSpecError(f"{spec}: model has neither absolute nor rotary position embeddings")
        super().__init__(model, spec, family)

    def block_view(self, index: int) -> BlockView:
        blk = self.model.blocks[index]
        attn, prefix = blk.attn, f"blocks.{index}.attn"
        if attn.qkv is not None:
            # *_qkvb: biases live outside the Linear; k's is a zero buffer (None here means zero)
            qkv = fused_qkv(attn.qkv, f"{prefix}.qkv", q_bias=attn.q_bias, v_bias=attn.v_bias)
        else:
            qkv = tuple(LinearSlice(getattr(attn, f"{n}_proj"), f"{prefix}.{n}_proj") for n in "qkv")
        return self.timm_block_view(index, qkv, blk.gamma_1, blk.gamma_2)

    def embed(self, pixels: torch.Tensor) -> tuple[torch.Tensor, TokenContext]:
        m = self.model
        with self.any_size():
            x = m.patch_embed(pixels)
            if x.ndim == 4:  # dynamic_img_size keeps NHWC until _pos_embed
                grid = (x.shape[1], x.shape[2])
            else:
                grid = tuple(m.patch_embed.grid_size)
            x, rope = _eval_mode_call(m.rope, lambda: m._pos_embed(x))
        x = m.norm_pre(x)
        half = bool(getattr(m.blocks[0].attn, "rotate_half", False))
        return x, TokenContext(grid=(int(grid[0]), int(grid[1])), extras={"rope": rope, "rope_half": half})

    def run_block(self, index: int, x: torch.Tensor, ctx: TokenContext) -> torch.Tensor:
        return self.model.blocks[index](x, rope=ctx.extras.get("rope"))

    def extra_prefix_kwargs(self, kwargs: dict) -> dict:
        """timm's Eva rotates every token after its fixed prefix count, so the extra prefix token
        gets an identity rotation row (sin 0, cos 1) in front of the patches' RoPE table."""
        rope = kwargs.get("rope")
        if rope is None:
            return kwargs
        sin, cos = rope.chunk(2, -1)
        identity = torch.cat([torch.zeros_like(sin[..., :1, :]), torch.ones_like(cos[..., :1, :])], dim=-1)
        return {**kwargs, "rope": torch.cat([identity, rope], dim=-2)}

    def rotary(self, q: torch.Tensor, k: torch.Tensor, ctx: TokenContext) -> tuple[torch.Tensor, torch.Tensor]:
        """timm's own ``apply_rot_embed_cat`` on the patch tokens; prefix tokens pass unrotated."""
        from timm.layers import apply_rot_embed_cat

        rope = ctx.extras.get("rope")
        if rope is None:
            return q, k
        npt, half = self.num_prefix_tokens, ctx.extras.get("rope_half", False)
        q = torch.cat([q[:, :, :npt], apply_rot_embed_cat(q[:, :, npt:], rope, half=half)], dim=2)
        k = torch.cat([k[:, :, :npt], apply_rot_embed_cat(k[:, :, npt:], rope, half=half)], dim=2)
        return q, k
