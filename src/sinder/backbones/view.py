"""The canonical block view: one description of a pre-norm ViT block, shared by every backbone.

SINDER's theory and repair only need to know, per block, where the norms, the q/k/v/output
projections, the MLP projections, the activation and the layer scales are. Adapters map
their family's modules onto this view; the view holds references (never copies), so reading
it sees the live weights and a repair that edits them edits the user's own model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

Activation = Literal["gelu", "gelu_tanh", "quick_gelu", "swiglu"]
ACTIVATIONS: tuple[str, ...] = ("gelu", "gelu_tanh", "quick_gelu", "swiglu")


@dataclass(frozen=True)
class LinearSlice:
    """Output rows ``[start, stop)`` of an ``nn.Linear`` (a whole layer, or one part of a fused one)."""

    module: nn.Linear
    name: str
    start: int = 0
    stop: int | None = None
    bias_param: nn.Parameter | None = None  # a bias stored outside the Linear (timm Eva q_bias/v_bias)

    @property
    def rows(self) -> slice:
        return slice(self.start, self.module.out_features if self.stop is None else self.stop)

    @property
    def weight(self) -> torch.Tensor:
        return self.module.weight[self.rows]

    @property
    def bias(self) -> torch.Tensor | None:
        if self.bias_param is not None:
            return self.bias_param
        if self.module.bias is None:
            return None
        return self.module.bias[self.rows]

    @property
    def out_features(self) -> int:
        r = self.rows
        return r.stop - r.start


@dataclass(frozen=True)
class BlockView:
    """Canonical view of one pre-norm transformer block.

    ``x = x + ls1 * proj(attn(q, k, v)(norm1(x)))`` then ``x = x + ls2 * mlp_out(act(mlp_in(norm2(x))))``.
    For ``swiglu`` the MLP input is ``(gate, value)`` and the hidden is ``silu(gate) * value``.
    """

    norm1: nn.Module
    q: LinearSlice
    k: LinearSlice
    v: LinearSlice
    proj: LinearSlice
    ls1: torch.Tensor | None
    norm2: nn.Module
    mlp_in: tuple[LinearSlice, ...]
    activation: Activation
    mlp_out: LinearSlice
    ls2: torch.Tensor | None
    num_heads: int = 1
    extras: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; expected one of {ACTIVATIONS}")
        expected = 2 if self.activation == "swiglu" else 1
        if len(self.mlp_in) != expected:
            raise ValueError(f"{self.activation} needs {expected} MLP input projection(s), got {len(self.mlp_in)}")

    @property
    def dim(self) -> int:
        return self.proj.module.out_features

    def layer_scale(self, which: int) -> torch.Tensor:
        """γ₁ or γ₂ as a vector (ones when the block has no layer scale)."""
        gamma = self.ls1 if which == 1 else self.ls2
        if gamma is None:
            return torch.ones(self.dim, dtype=self.proj.weight.dtype, device=self.proj.weight.device)
        return gamma

    def slices(self) -> list[LinearSlice]:
        """Every linear map of the block, q/k/v split (fused layers appear once per part)."""
        return [self.q, self.k, self.v, self.proj, *self.mlp_in, self.mlp_out]

    def named_tensors(self) -> list[tuple[str, torch.Tensor]]:
        """Every weight the linearisation reads, by its module name (for the finite-weights check)."""
        out = []
        for part in self.slices():
            out.append((f"{part.name}.weight", part.weight))
            if part.bias is not None:
                out.append((f"{part.name}.bias", part.bias))
        for name, t in (
            ("norm1.weight", getattr(self.norm1, "weight", None)),
            ("norm2.weight", getattr(self.norm2, "weight", None)),
            ("ls1", self.ls1),
            ("ls2", self.ls2),
        ):
            if t is not None:
                out.append((name, t))
        return out


def norm_weight(norm: nn.Module, dim: int) -> torch.Tensor:
    """The elementwise scale of a LayerNorm/RMSNorm (ones when it has none)."""
    w = getattr(norm, "weight", None)
    if w is None:
        return torch.ones(dim)
    return w
