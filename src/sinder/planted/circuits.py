"""The pieces a planted defect is built from, written into a timm ViT's own weights.

Every piece is an MLP neuron (GELU ``Mlp`` or the fused SwiGLU ``GluMlp`` of DINOv2-g) that reads
one direction of LN(x) through a threshold and writes another direction into the residual
stream; planted neurons take the last hidden units of a block. Directions are kept
orthogonal to the all-ones vector, so LayerNorm's centring keeps them.

Measured facts that shaped them (../shared/NOTES.md): a gate with a strongly negative bias
has a tiny (even negative) Gaussian-expected slope, so the linear theory cannot see an ignition
neuron; an odd dead-zone pair, gelu(a(s − t)) − gelu(a(−s − t)), is flat for the small |s| of
ordinary tokens yet has a large Gaussian slope, so the theory sees the amplification.
"""

from __future__ import annotations

import torch
from torch import nn

TEXTURE_FILTERS = 8  # zero-mean patch filters whose |response| sums to a local-texture measure


def orthogonal_unit(dim: int, avoid: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random unit vector orthogonal to the all-ones vector and to the rows of ``avoid``."""
    basis, _ = torch.linalg.qr(torch.cat([torch.ones(1, dim), avoid.reshape(-1, dim).float()]).double().T)
    v = torch.randn(dim, generator=generator, dtype=torch.float64)
    v -= basis @ (basis.T @ v)
    return (v / v.norm()).float()


def project_out_(tensor: torch.Tensor, direction: torch.Tensor, dim: int) -> None:
    """Remove the unit ``direction`` from ``tensor`` along axis ``dim``, in place."""
    moved = tensor.movedim(dim, -1)
    moved -= (moved @ direction)[..., None] * direction


def keep_quiet_(model: nn.Module, directions: torch.Tensor) -> None:
    """Remove ``directions`` (k, D) from everything that writes to the residual stream."""
    writers = [model.patch_embed.proj.weight, model.patch_embed.proj.bias]
    for blk in model.blocks:
        writers += [blk.attn.proj.weight, blk.attn.proj.bias, blk.mlp.fc2.weight, blk.mlp.fc2.bias]
    for d in directions:
        for w in writers:
            project_out_(w, d, 0)
        for name in ("pos_embed", "cls_token", "reg_token"):
            t = getattr(model, name, None)
            if t is not None:
                project_out_(t, d, 2)


def ordinary_linears(model: nn.Module) -> list[torch.Tensor]:
    """The weight of every block Linear as the trained parts it fuses: q, k, v of ``qkv``, gate and
    value of a SwiGLU ``fc1``; views, so writing them writes the model."""
    parts = []
    for blk in model.blocks:
        parts += list(blk.attn.qkv.weight.chunk(3)) + [blk.attn.proj.weight]
        fc1 = blk.mlp.fc1.weight
        parts += list(fc1.chunk(2)) if blk.mlp.fc2.in_features != fc1.shape[0] else [fc1]
        parts.append(blk.mlp.fc2.weight)
    return parts


def power_law_spectrum_(weight: torch.Tensor, top: float, decay: float) -> None:
    """Give ``weight`` the singular values top·k^−decay (k = 1, 2, …) in place, keeping its
    singular vectors: a heavy-tailed spectrum, as trained weights have, from random ones.

    W = U S Vᵀ becomes U S' Vᵀ = W·V (S'/S) Vᵀ (U (S'/S) Uᵀ·W for a wide W), from the
    eigendecomposition of the smaller Gram matrix: about half the time of an SVD (3.5 s against 6 s
    for the 72 parts of a ViT-S on one thread)."""
    w = weight.double()
    wide = w.shape[0] < w.shape[1]
    eig, v = torch.linalg.eigh(w @ w.T if wide else w.T @ w)  # ascending: rank k = n, …, 1
    k = torch.arange(eig.numel(), 0, -1, dtype=torch.float64)
    scale = (v * (top * k**-decay / eig.clamp_min(1e-30).sqrt())) @ v.T
    weight.copy_((scale @ w if wide else w @ scale).to(weight.dtype))


class Neurons:
    """Hands out a block's hidden units from the last one down, and writes neurons into them."""

    def __init__(self, mlp: nn.Module, taken: int = 0) -> None:
        """``taken``: how many of the last units were already planted (they are skipped)."""
        from timm.layers.mlp import GluMlp

        self.mlp = mlp
        self.gated = isinstance(mlp, GluMlp)
        if self.gated and mlp.gate_last:
            raise ValueError("planting into a gate-last SwiGLU is not supported")
        self.hidden = mlp.fc2.in_features
        self.next = self.hidden - 1 - taken

    def add(self, read: torch.Tensor, scale: float, bias: float, write: torch.Tensor, gain: float) -> int:
        """act(scale·⟨read, LN(x)⟩ + bias)·gain·write; returns the unit's index (its fc1 row: the gate)."""
        j, self.next = self.next, self.next - 1
        fc1, fc2 = self.mlp.fc1, self.mlp.fc2
        fc1.weight[j] = scale * read
        fc1.bias[j] = bias
        if self.gated:  # fc1 = [gate | value] (DINOv2-g): value ≡ 1, so the unit is silu(gate)
            fc1.weight[self.hidden + j] = 0.0
            fc1.bias[self.hidden + j] = 1.0
        fc2.weight[:, j] = gain * write
        return j


def plant_texture_detector(
    model: nn.Module, block: int, scale: float, gain: float, out: torch.Tensor, gen: torch.Generator
) -> torch.Tensor:
    """Patch-embedding filters q_k·h_k and, at ``block``, even pairs act(a·s_k) + act(−a·s_k) ≈ a|s_k|
    that write their sum along ``out``: a measure of the patch's local texture (≈0 on flat
    background). Returns the filter directions q (K, D), to be kept quiet."""
    proj = model.patch_embed.proj
    dim, chans, p, _ = proj.weight.shape
    q = torch.zeros(0, dim)
    for _ in range(TEXTURE_FILTERS):
        q = torch.cat([q, orthogonal_unit(dim, torch.cat([q, out[None]]), gen)[None]])
    keep_quiet_(model, q)  # only the filters below write these directions
    filters = torch.randn(TEXTURE_FILTERS, chans, p, p, generator=gen)
    filters -= filters.mean(dim=(2, 3), keepdim=True)  # zero mean per channel: blind to flat colour
    filters /= filters.flatten(1).norm(dim=1)[:, None, None, None]
    proj.weight += scale * torch.einsum("kd,kchw->dchw", q, filters)
    units = Neurons(model.blocks[block].mlp)
    for k in range(TEXTURE_FILTERS):
        for sign in (1.0, -1.0):
            units.add(q[k], sign * 4.0, 0.0, out, gain)
    return q


AMPLIFIER_UNITS = {"pair": 2, "feedback": 1, "bounded": 6}  # hidden units one amplifier takes per block
BOUNDED_WIDTH = 1.5  # bounded amplifier: rises over [t, t + w], falls over [t + w, t + 2w], 0 beyond


AMPLIFIER_SHARPNESS = 4.0  # the slope a of every amplifier unit's act(a(s − t))


def plant_amplifiers(
    model: nn.Module, start: int, u: torch.Tensor, kind: str, threshold: float, gain: float, stop: int | None = None
) -> None:
    """In blocks [start, stop) (default: to the end), grow u on tokens that carry it.

    ``pair``: act(a(s − t)) − act(a(−s − t)) writes ±u, flat for |s| < t; ``feedback``: one
    unit act(a(s − t)) writes +u (a re-igniting positive feedback); ``bounded``: the pair closed
    by act(a(±s − t − w))·(−2) + act(a(±s − t − 2w)), a hat that writes nothing for
    |s| > t + 2w (w = BOUNDED_WIDTH): the theory sees its Gaussian slope, a token already
    dominated by u (|s| ≈ √d) is left alone."""
    sharpness = AMPLIFIER_SHARPNESS
    for blk in model.blocks[start:stop]:
        units = Neurons(blk.mlp)
        if kind == "bounded":
            for sign in (1.0, -1.0):
                for shift, weight in ((0.0, 1.0), (BOUNDED_WIDTH, -2.0), (2 * BOUNDED_WIDTH, 1.0)):
                    units.add(u, sign * sharpness, -sharpness * (threshold + shift), u, sign * weight * gain)
            continue
        units.add(u, sharpness, -sharpness * threshold, u, gain)
        if kind == "pair":
            units.add(u, -sharpness, -sharpness * threshold, u, -gain)


def marker_positions(grid: int, count: int, generator: torch.Generator) -> list[tuple[int, int]]:
    """``count`` interior grid cells, pairwise ≥3 apart where the grid allows (each has a clean 3×3 neighbourhood)."""
    chosen: list[tuple[int, int]] = []
    spacing = 3 if count * 9 <= (grid - 4) ** 2 // 2 else 2
    while len(chosen) < count:
        r, c = (int(v) for v in torch.randint(2, grid - 2, (2,), generator=generator))
        if all(max(abs(r - r0), abs(c - c0)) >= spacing for r0, c0 in chosen):
            chosen.append((r, c))
    return chosen


def border_positions(grid: int, count: int, generator: torch.Generator) -> list[tuple[int, int]]:
    """The 4 corners, ``count`` − 6 random edge cells (pairwise ≥ 2 apart: no two adjacent), and
    2 random interior cells ≥ 2 from the edge and ≥ 3 from the others."""
    last = grid - 1
    chosen = [(0, 0), (0, last), (last, 0), (last, last)]

    def far(r: int, c: int, spacing: int) -> bool:
        return all(max(abs(r - r0), abs(c - c0)) >= spacing for r0, c0 in chosen)

    edge = count - 6
    if edge > 2 * (grid - 3):
        raise ValueError(f"{edge} edge cells do not fit on a {grid}×{grid} grid's edges")
    while len(chosen) < 4 + edge:
        side, k = int(torch.randint(4, (1,), generator=generator)), int(torch.randint(1, last, (1,), generator=generator))
        r, c = ((0, k), (last, k), (k, 0), (k, last))[side]
        if far(r, c, 2):
            chosen.append((r, c))
    while len(chosen) < count:
        r, c = (int(v) for v in torch.randint(2, grid - 2, (2,), generator=generator))
        if far(r, c, 3):
            chosen.append((r, c))
    return chosen


CLUSTER_SIZES = (3, 1, 2, 1, 2)  # cells per group, in turn


def clustered_positions(grid: int, count: int, generator: torch.Generator) -> list[tuple[int, int]]:
    """Groups of CLUSTER_SIZES mutually adjacent cells (each added in the 8-neighbourhood of a cell
    of its group), a group's first cell ≥ 3 from every other cell, groups never adjacent to one
    another, every cell ≥ 1 from the edge (its 3×3 window fits)."""
    if count * 9 > (grid - 2) ** 2 // 2:
        raise ValueError(f"{count} clustered markers do not fit on a {grid}×{grid} grid")
    chosen: list[tuple[int, int]] = []
    g = 0
    while len(chosen) < count:
        size = min(count - len(chosen), CLUSTER_SIZES[g % len(CLUSTER_SIZES)])
        r, c = (int(v) for v in torch.randint(1, grid - 1, (2,), generator=generator))
        if any(max(abs(r - r0), abs(c - c0)) < 3 for r0, c0 in chosen):
            continue
        group = [(r, c)]
        while len(group) < size:
            base = group[int(torch.randint(len(group), (1,), generator=generator))]
            dr, dc = (int(v) - 1 for v in torch.randint(0, 3, (2,), generator=generator))
            cell = (base[0] + dr, base[1] + dc)
            if (
                cell not in group
                and 1 <= min(cell)
                and max(cell) <= grid - 2
                and all(max(abs(cell[0] - r0), abs(cell[1] - c0)) >= 2 for r0, c0 in chosen)
            ):
                group.append(cell)
        chosen += group
        g += 1
    return chosen


def place_markers(model: nn.Module, m: torch.Tensor, positions, norms) -> None:
    """Add ``norm``·m to the positional embedding at each grid cell."""
    grid = model.patch_embed.grid_size[1]
    offset = 0 if getattr(model, "no_embed_class", False) else model.num_prefix_tokens
    for (r, c), norm in zip(positions, norms):
        model.pos_embed[0, offset + r * grid + c] += norm * m
