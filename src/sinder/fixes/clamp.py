"""σ clamp (SINDER, appendix B): rebuild every Linear of every block from its SVD with the
singular values clamped to at most γ. The paper shows γ = 2.0, 1.5, 1.3: the lower γ, the
smaller the defects, and the more the features degrade. No data and no training; a weight edit
that exports like a repair.

Fused layers are clamped as the module they are (timm's qkv as one matrix, as the paper's
"every linear layer" reads); LayerScale, norms and embeddings are left alone.
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..backbones.base import Backbone
from ..errors import require
from ..options import add_option, number, option, validate
from ..repair.singular import svd_tall
from .base import Cost, Fix, FixContext, FixHandle


@dataclass
class ClampResult:
    gamma: float
    layers: int  # Linear modules rebuilt
    clamped_values: int  # singular values that were above γ
    largest_sigma: float  # the largest singular value before clamping
    per_module: dict[str, int] = field(default_factory=dict)  # module name -> values clamped


def block_linears(backbone: Backbone) -> dict[str, nn.Linear]:
    """Every distinct ``nn.Linear`` the block views name, by module name (a fused qkv or w12 once)."""
    found: dict[str, nn.Linear] = {}
    for i in range(backbone.depth):
        for part in backbone.block_view(i).slices():
            found.setdefault(part.name, part.module)
    return found


@torch.no_grad()
def clamp_singular_values(backbone: Backbone, gamma: float) -> ClampResult:
    """Clamp, in place, the singular values of every block Linear of ``backbone`` to ≤ ``gamma``
    (``math.inf``: nothing changes). Biases are kept. Returns what was clamped."""
    require(gamma > 0, f"gamma must be > 0, got {gamma}")
    result = ClampResult(gamma=gamma, layers=0, clamped_values=0, largest_sigma=0.0)
    for name, module in block_linears(backbone).items():
        w = module.weight
        wd = w.double()
        # half the time of a full SVD, and most matrices stop here; Wᵀ has the same σ, on LAPACK's fast side
        s = torch.linalg.svdvals(wd if wd.shape[0] >= wd.shape[1] else wd.T)
        over = int((s > gamma).sum())
        result.largest_sigma = max(result.largest_sigma, float(s[0]))
        result.layers += 1
        if over == 0 or math.isinf(gamma):
            continue
        u, s, vh = svd_tall(wd)
        w.copy_(((u * s.clamp(max=gamma)) @ vh).to(w.dtype))
        result.clamped_values += over
        result.per_module[name] = over
    return result


@dataclass(frozen=True)
class ClampFix(Fix):
    """The σ clamp as a :class:`~sinder.fixes.base.Fix`: a clamped copy of the model."""

    gamma: float = option(
        1.5, check=number(above=0), help="σ clamp: cap on every block Linear's singular values (the paper: 2.0, 1.5, 1.3)"
    )

    name = "clamp"
    description = "σ clamp (SINDER appendix B): every block Linear's singular values capped at γ, no data"

    def __post_init__(self) -> None:
        validate(self)

    def prepare(self, backbone: Backbone, context: FixContext) -> FixHandle:
        start = time.perf_counter()
        clamped = copy.deepcopy(backbone)
        result = clamp_singular_values(clamped, self.gamma)
        details = {
            "gamma": self.gamma,
            "clamped_values": result.clamped_values,
            "layers": result.layers,
            "largest_sigma": result.largest_sigma,
        }
        return FixHandle(self.name, clamped, Cost(edits_weights=True, seconds=time.perf_counter() - start), details)

    @classmethod
    def add_arguments(cls, group: argparse._ArgumentGroup) -> None:
        add_option(group, cls, "gamma")

    @classmethod
    def from_args(cls, args: argparse.Namespace, shared: dict[str, Any]) -> ClampFix:
        return cls(gamma=args.gamma)
