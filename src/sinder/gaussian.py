"""One-dimensional Gaussian expectations E[g(h)], h ~ N(μ, σ²), to float64 precision.

Used by the closed-form linearisation (Stein's lemma), which needs E[f′(h)] per hidden unit
for activations f whose derivative is a smooth step (GELU, QuickGELU, SiLU, ...).

Two rules, picked per entry by σ:
- σ ≤ 0.75: 64-node Gauss–Hermite in z = (h − μ)/σ. Exact to ~1e-14 here, but it loses
  digits fast when σ grows (≈1e-5 at σ = 2, ≈5e-2 at σ = 10: the step of g is then
  narrower than the node spacing in z), and trained fc1 rows can have norms well above 1.
- σ > 0.75: composite Gauss–Legendre in h on [−40, 40] (panels of width 2, 16 nodes each),
  where every activation here is non-linear, plus closed-form tails outside it where g is
  affine to double precision (g ≈ c₀ + c₁·h). Accurate to ~1e-14 for any σ.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

HERMITE_NODES = 64
SWITCH_STD = 0.75
RANGE = 40.0  # |h| beyond which sigmoid/erf-type activations are affine to 1e-16
PANEL_WIDTH = 2.0
PANEL_NODES = 16

Affine = tuple[float, float]  # (c0, c1): g(h) ≈ c0 + c1·h


def hermite_rule(nodes: int = HERMITE_NODES) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes and weights with Σ w·g(z) ≈ E[g(z)], z ~ N(0, 1) (probabilists' Hermite)."""
    z, w = np.polynomial.hermite_e.hermegauss(nodes)
    return torch.from_numpy(z), torch.from_numpy(w / math.sqrt(2.0 * math.pi))


def panel_rule(half_range: float = RANGE, width: float = PANEL_WIDTH, nodes: int = PANEL_NODES) -> tuple[torch.Tensor, torch.Tensor]:
    """Composite Gauss–Legendre nodes and weights on [−half_range, half_range]."""
    x0, w0 = np.polynomial.legendre.leggauss(nodes)
    edges = np.arange(-half_range, half_range - 1e-12, width)
    x = (edges[:, None] + 0.5 * width * (x0[None, :] + 1.0)).ravel()
    w = np.tile(0.5 * width * w0, len(edges))
    return torch.from_numpy(x), torch.from_numpy(w)


def _normal_pdf(u: torch.Tensor) -> torch.Tensor:
    return torch.exp(-0.5 * u * u) / math.sqrt(2.0 * math.pi)


def _tail(mean: torch.Tensor, std: torch.Tensor, coef: Affine, cut: float, upper: bool) -> torch.Tensor:
    """E[(c0 + c1·h)·1{h > cut}] (upper) or E[(c0 + c1·h)·1{h < cut}] for h ~ N(mean, std²)."""
    c0, c1 = coef
    if c0 == 0.0 and c1 == 0.0:
        return torch.zeros_like(mean)
    u = (cut - mean) / std
    if upper:
        prob, first = torch.special.ndtr(-u), mean * torch.special.ndtr(-u) + std * _normal_pdf(u)
    else:
        prob, first = torch.special.ndtr(u), mean * torch.special.ndtr(u) - std * _normal_pdf(u)
    return c0 * prob + c1 * first


def gaussian_expectation(
    fn: Callable[[torch.Tensor], torch.Tensor],
    mean: torch.Tensor,
    std: torch.Tensor,
    left: Affine = (0.0, 0.0),
    right: Affine = (0.0, 0.0),
) -> torch.Tensor:
    """E[fn(h)] for h ~ N(mean, std²), elementwise over ``mean``/``std`` (float64).

    ``fn`` must be elementwise and affine to double precision outside [−40, 40], equal to
    ``left`` = (c0, c1) below and ``right`` above (c0 + c1·h). ``std`` = 0 gives fn(mean).
    """
    mean, std = torch.broadcast_tensors(mean.double(), std.double())
    if (std < 0).any() or not torch.isfinite(mean).all() or not torch.isfinite(std).all():
        raise ValueError("gaussian_expectation needs finite means and non-negative finite stds")
    shape = mean.shape
    mean, std = mean.reshape(-1), std.reshape(-1)
    out = torch.empty_like(mean)
    narrow = std <= SWITCH_STD
    if narrow.any():
        z, w = hermite_rule()
        m, s = mean[narrow, None], std[narrow, None]
        out[narrow] = fn(m + s * z) @ w
    wide = ~narrow
    if wide.any():
        x, w = panel_rule()
        m, s = mean[wide], std[wide]
        density = _normal_pdf((x[None, :] - m[:, None]) / s[:, None]) / s[:, None]
        middle = density @ (w * fn(x))  # fn at the fixed nodes once, shared by every row
        out[wide] = middle + _tail(m, s, left, -RANGE, upper=False) + _tail(m, s, right, RANGE, upper=True)
    return out.reshape(shape)
