"""Adapter over open_clip's ``VisionTransformer`` (the image tower of ``open_clip.CLIP``): OpenAI
CLIP and LAION OpenCLIP ViTs.

Read from open_clip 3.x: ``conv1`` (patch embedding, no bias), ``class_embedding``,
``positional_embedding`` (N + 1, D), ``ln_pre``, ``transformer.resblocks[i]``
(``ResidualAttentionBlock``: ``ln_1``, ``attn`` = ``nn.MultiheadAttention`` with a fused
``in_proj_weight`` (3D, D) and ``out_proj``, ``ls_1``/``ls_2`` (``LayerScale`` or identity),
``ln_2``, ``mlp`` = ``c_fc``/``gelu``/``c_proj``, QuickGELU for OpenAI weights), ``ln_post`` and
``proj``.

``nn.MultiheadAttention`` reads its fused in-projection as a parameter, not through a Linear, so
the adapter keeps one stand-in ``nn.Linear`` per block that *shares* ``in_proj_weight`` and
``in_proj_bias`` (:meth:`proxies`): the view's q/k/v are its rows, and whatever is written into it
(repair folds ε back there) is the model's own parameter. :meth:`run_block` calls the block
itself (so hooks on it, such as the fixes', fire) unless repair has swapped the stand-in for a
σ-parametrised one; then it computes the attention through the stand-in, so that one trains.
The model's modules and state-dict keys never change. Other grids than the native one resample
the positional embedding (open_clip itself only takes its native size).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelSpecError
from .base import Backbone, TokenContext
from .view import BlockView, LinearSlice

OPENAI_MEAN, OPENAI_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def visual_tower(model: nn.Module) -> nn.Module:
    """The image tower: ``model.visual`` of an ``open_clip.CLIP``, or the tower itself."""
    return getattr(model, "visual", model)


def is_open_clip(model: nn.Module) -> bool:
    return type(visual_tower(model)).__module__.startswith("open_clip.")


def _activation(mlp: nn.Module, where: str) -> str:
    act = mlp.gelu
    name = type(act).__name__
    if name == "QuickGELU":
        return "quick_gelu"
    if isinstance(act, nn.GELU):
        return "gelu_tanh" if act.approximate == "tanh" else "gelu"
    raise ModelSpecError(f"{where}: unsupported MLP activation {name}; sinder handles GELU, tanh-GELU and QuickGELU")


class OpenCLIPBackbone(Backbone):
    """open_clip ``VisionTransformer`` towers (module doc)."""

    family = "open_clip"
    open_clip_config: dict | None = None  # open_clip.CLIP(**config), where sinder built the model from one (export records it)

    def __init__(self, model: nn.Module, spec: str, family: str = "open_clip") -> None:
        from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

        visual = visual_tower(model)
        if not isinstance(visual, VisionTransformer):
            raise ModelSpecError(
                f"{spec}: {type(visual).__name__} is not an open_clip VisionTransformer (timm and ModifiedResNet towers are not served)"
            )
        if visual.attn_pool is not None or visual.class_embedding is None:
            raise ModelSpecError(f"{spec}: open_clip towers with an attention pool or no class token are not served yet")
        self.model, self.visual, self.spec, self.family = model, visual, spec, family
        self.layers = visual.transformer.resblocks
        self.depth = len(self.layers)
        self.embed_dim = visual.transformer.width
        self.patch_size = int(visual.patch_size[0])
        self.image_size = int(visual.image_size[0])
        self.native_grid = tuple(int(g) for g in visual.grid_size)
        self.num_prefix_tokens, self.has_cls_token = 1, True
        self.mean = tuple(getattr(visual, "image_mean", None) or OPENAI_MEAN)
        self.std = tuple(getattr(visual, "image_std", None) or OPENAI_STD)
        prefix = next(n for n, m in model.named_modules() if m is self.layers)
        self._prefix = prefix
        stand_ins = {}
        for i, blk in enumerate(self.layers):
            attn = getattr(blk, "attn", None)
            if not isinstance(blk, ResidualAttentionBlock) or not isinstance(attn, nn.MultiheadAttention) or hasattr(blk, "ln_1_kv"):
                raise ModelSpecError(f"{spec}: block {i} is not a plain open_clip ResidualAttentionBlock with nn.MultiheadAttention")
            if not attn._qkv_same_embed_dim or not attn.batch_first:
                raise ModelSpecError(f"{spec}: block {i}: attention with separate q/k/v weights or sequence-first layout is not served")
            lin = nn.Linear(attn.embed_dim, 3 * attn.embed_dim, bias=attn.in_proj_bias is not None)
            lin.weight = attn.in_proj_weight  # shared: the model's own parameters
            if attn.in_proj_bias is not None:
                lin.bias = attn.in_proj_bias
            stand_ins[str(i)] = lin
            _activation(blk.mlp, f"{spec} block {i}")
        self._stand_ins = nn.ModuleDict(stand_ins)

    def proxies(self) -> nn.Module:
        return self._stand_ins

    def blocks(self) -> list[nn.Module]:
        return list(self.layers)

    def block_view(self, index: int) -> BlockView:
        blk = self.layers[index]
        p, d = f"{self._prefix}.{index}", self.embed_dim
        qkv = self._stand_ins[str(index)]
        name = f"{p}.attn.in_proj"
        return BlockView(
            norm1=blk.ln_1,
            q=LinearSlice(qkv, name, 0, d),
            k=LinearSlice(qkv, name, d, 2 * d),
            v=LinearSlice(qkv, name, 2 * d, 3 * d),
            proj=LinearSlice(blk.attn.out_proj, f"{p}.attn.out_proj"),
            ls1=getattr(blk.ls_1, "gamma", None),
            norm2=blk.ln_2,
            mlp_in=(LinearSlice(blk.mlp.c_fc, f"{p}.mlp.c_fc"),),
            activation=_activation(blk.mlp, self.spec),
            mlp_out=LinearSlice(blk.mlp.c_proj, f"{p}.mlp.c_proj"),
            ls2=getattr(blk.ls_2, "gamma", None),
            num_heads=blk.attn.num_heads,
        )

    def embed(self, pixels: torch.Tensor) -> tuple[torch.Tensor, TokenContext]:
        v = self.visual
        x = v.conv1(pixels.to(v.conv1.weight.dtype))
        grid = (int(x.shape[-2]), int(x.shape[-1]))
        x = x.flatten(2).transpose(1, 2)
        cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        pos = v.positional_embedding.to(x.dtype)
        if grid != self.native_grid:
            from timm.layers import resample_abs_pos_embed

            pos = resample_abs_pos_embed(pos[None], new_size=list(grid), old_size=list(self.native_grid), num_prefix_tokens=1)[0]
        x = torch.cat([cls, x], dim=1) + pos
        return v.ln_pre(x), TokenContext(grid=grid)

    def run_block(self, index: int, x: torch.Tensor, ctx: TokenContext) -> torch.Tensor:
        blk = self.layers[index]
        stand_in = self._stand_ins[str(index)]
        if type(stand_in) is nn.Linear:  # the model's own in-projection: its own block runs, and the hooks on it fire (fixes)
            return blk(x)
        # repair swapped the stand-in for a σ-parametrised one, which nn.MultiheadAttention cannot read
        b, n, d = x.shape
        heads = blk.attn.num_heads
        qkv = stand_in(blk.ln_1(x)).reshape(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2]).transpose(1, 2).reshape(b, n, d)
        x = x + blk.ls_1(blk.attn.out_proj(out))
        return x + blk.ls_2(blk.mlp(blk.ln_2(x)))

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.visual.ln_post(x)

    def pooled(self, final: torch.Tensor, ctx: TokenContext) -> torch.Tensor:
        """The image embedding open_clip returns: the pooled token (CLS by default) through ``proj``."""
        pooled, _ = self.visual._global_pool(final)
        return pooled @ self.visual.proj if self.visual.proj is not None else pooled

    def model_forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """open_clip's own forward to the final-normed tokens (native size only, as open_clip)."""
        v = self.visual
        return v.ln_post(v.transformer(v._embeds(pixels)))
