"""The uniform backbone interface that theory, detection, repair and export are written against."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch
from torch import nn

from .view import BlockView

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class TokenContext:
    """What blocks need besides the tokens: the patch grid and family-specific extras (e.g. RoPE)."""

    grid: tuple[int, int]
    extras: dict = field(default_factory=dict)


class Backbone(ABC):
    """An adapter over a timm / HF / official ViT exposing the canonical block view.

    Attributes set by every adapter:
        model: the user's own ``nn.Module`` (edited in place by repair).
        spec: the model spec string it was loaded from.
        family: the registered family it was loaded by (``timm``, ``hf``, ``dinov2``, ``planted``,
            see :mod:`sinder.backbones.registry`); decides the export format.
        patch_size, num_prefix_tokens (cls + registers/storage), embed_dim, depth.
        image_size: native square resolution, from the positional-embedding grid.
        mean, std: the input normalisation the model was trained with.

    Source fields, set by some loaders:
        timm_name: the timm model name that re-creates the architecture on export (None: the
            ``timm:`` spec's own name).
        timm_kwargs: extra ``timm.create_model`` arguments that architecture needs (None: none).
        ground_truth: planted models only, what was planted (the builder's info dict: ``u``, ``m``,
            ``positions``, ...); None for real models.
    """

    model: nn.Module
    spec: str
    family: str
    patch_size: int
    num_prefix_tokens: int
    embed_dim: int
    depth: int
    image_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    has_cls_token: bool = True
    timm_name: str | None = None
    timm_kwargs: dict | None = None
    ground_truth: object | None = None

    # -- family-specific -------------------------------------------------------------------
    @abstractmethod
    def block_view(self, index: int) -> BlockView:
        """The canonical view of block ``index`` (references to the live modules)."""

    @abstractmethod
    def blocks(self) -> list[nn.Module]:
        """The transformer blocks, in order (used to pick trainable windows)."""

    @abstractmethod
    def embed(self, pixels: torch.Tensor) -> tuple[torch.Tensor, TokenContext]:
        """Normalised pixels (B, 3, H, W) -> tokens entering block 0 (B, prefix + H'W', D)."""

    @abstractmethod
    def run_block(self, index: int, x: torch.Tensor, ctx: TokenContext) -> torch.Tensor:
        """Apply block ``index`` exactly as the model's own forward does."""

    @abstractmethod
    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        """The model's last norm (applied after the final block)."""

    @abstractmethod
    def model_forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """The model's own forward to final-normed tokens (B, N, D): the oracle for the view."""

    def rotary(self, q: torch.Tensor, k: torch.Tensor, ctx: TokenContext) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply the family's rotary embedding to per-head q, k (B, heads, N, hd); identity by default."""
        return q, k

    def proxies(self) -> nn.Module | None:
        """Modules outside ``model`` that the view's linears live in: stand-in ``nn.Linear``s that
        share the model's own parameters where the model has no Linear (open_clip's fused
        attention in-projection). Repair σ-parametrises them like the model's; None by default."""
        return None

    def extra_prefix_kwargs(self, kwargs: dict) -> dict:
        """A block's keyword arguments for a sequence with one more prefix token (test-time
        registers insert it after the model's own); unchanged by default, as plain ViT blocks
        and transformers' DINOv3 (which counts prefix tokens from the shapes) need nothing."""
        return kwargs

    # -- shared ----------------------------------------------------------------------------
    def views(self) -> list[BlockView]:
        return [self.block_view(i) for i in range(self.depth)]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def forward_layers(self, pixels: torch.Tensor, upto: int | None = None) -> tuple[list[torch.Tensor], TokenContext]:
        """Outputs of blocks 0..upto (default: all), before the final norm."""
        last = self.depth - 1 if upto is None else upto
        x, ctx = self.embed(pixels)
        outputs = []
        for i in range(last + 1):
            x = self.run_block(i, x, ctx)
            outputs.append(x)
        return outputs, ctx

    def pooled(self, final: torch.Tensor, ctx: TokenContext) -> torch.Tensor:
        """The image-level output (B, D) from final-normed tokens: the CLS token, or the mean patch
        token of a model without one (adapters with a pooling head use their head)."""
        if self.has_cls_token:
            return final[:, 0]
        return self.patch_grid(final, ctx).mean(dim=(1, 2))

    def patch_grid(self, x: torch.Tensor, ctx: TokenContext) -> torch.Tensor:
        """(B, N, D) tokens -> (B, H, W, D) patch tokens."""
        h, w = ctx.grid
        return x[:, self.num_prefix_tokens :].reshape(x.shape[0], h, w, x.shape[-1])

    def cls_attention(self, index: int, x: torch.Tensor, ctx: TokenContext) -> torch.Tensor:
        """Attention of the CLS token to the patch tokens in block ``index``: (B, heads, H'W').

        ``x`` is the input of block ``index``. Uses the view's q/k (plus the family's RoPE),
        so it is the same attention the model computes.
        """
        view = self.block_view(index)
        h = view.norm1(x)
        q = nn.functional.linear(h, view.q.weight, view.q.bias)
        k = nn.functional.linear(h, view.k.weight, view.k.bias)
        b, n, _ = q.shape
        heads = view.num_heads
        q = q.reshape(b, n, heads, -1).transpose(1, 2)
        k = k.reshape(b, n, heads, -1).transpose(1, 2)
        q_norm, k_norm = view.extras.get("q_norm"), view.extras.get("k_norm")
        if q_norm is not None:
            q, k = q_norm(q), k_norm(k)
        q, k = self.rotary(q, k, ctx)
        scores = (q[:, :, :1] @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
        attn = scores.softmax(dim=-1)[:, :, 0]
        return attn[:, :, self.num_prefix_tokens :]

    def describe(self) -> dict:
        return {
            "model": self.spec,
            "family": self.family,
            "num_layers": self.depth,
            "patch_size": self.patch_size,
            "num_prefix_tokens": self.num_prefix_tokens,
            "embed_dim": self.embed_dim,
            "image_size": self.image_size,
        }
