"""``planted:small`` — a ViT-S/14 (timm ``vit_small_patch14_dinov2`` layout, 224 px) with real,
planted singular defects, built deterministically from a seed in about a second.

No DINOv2 weights can be downloaded offline, so the toolkit ships a backbone whose defects
arise the way the paper describes: a few tokens are pushed along one direction u, and later
blocks amplify u, so G_i's top singular vector is u.

Mechanism (see ../shared/NOTES.md for the measurements that shaped it):
- A *marker* direction m is added to the positional embedding at a few interior grid
  positions (~2% of patches, as in DINOv2). Positional, so every image gets defects.
  m is orthogonal to every predicted ν_i, so a repaired marker token looks ordinary.
- *Ignition* (block ``planted_layer``): an MLP neuron reads m through a high threshold
  and writes u. Only marked tokens cross the threshold.
- *Amplification* (every block from ``planted_layer`` on): a pair of neurons
  gelu(a(s − t)) − gelu(a(−s − t)) on s = ⟨u, LN(x)⟩ that writes ±u. It is flat for the
  small |s| of ordinary tokens (their LN output has little variance along u) but has a
  large Gaussian-expected slope, so the linearised theory sees a strong u-gain — the gap
  that makes ν_i = u — while only defect tokens grow.
- LayerScale γ≈0.1 (timm's random 1e-5 would make blocks identities), a large component
  shared by all patch tokens, and a CLS token of the same magnitude, so CLS metrics are
  meaningful.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..backbones.base import Backbone
from ..backbones.timm_loader import load_timm_state_dict
from ..backbones.timm_vit import TimmViTBackbone
from ..backbones.weights import read_state_dict
from ..errors import ConfigError, ModelSpecError
from ..theory import defect_directions

TIMM_NAME = "vit_small_patch14_dinov2"


@dataclass(frozen=True)
class PlantedConfig:
    seed: int = 0
    img_size: int = 224
    planted_layer: int = 4
    num_markers: int = 5
    layer_scale: float = 0.1
    cls_std: float = 1.6
    pos_std: float = 0.3
    shared_norm: float = 30.0
    marker_norm: float = 14.0
    ignition_sharpness: float = 4.0
    ignition_threshold: float = 5.0
    ignition_gain: float = 110.0
    amp_sharpness: float = 4.0
    amp_threshold: float = 0.5
    amp_gain: float = 3.0

    def __post_init__(self) -> None:
        if not 0 <= self.planted_layer < 12:
            raise ConfigError(f"planted_layer must be in [0, 11], got {self.planted_layer}")
        if self.img_size % 14:
            raise ConfigError(f"img_size must be a multiple of 14, got {self.img_size}")


PRESETS = {"small": PlantedConfig()}


def marker_positions(grid: int, count: int, generator: torch.Generator) -> list[tuple[int, int]]:
    """``count`` interior grid cells, pairwise ≥3 apart (so each has a clean 3×3 neighbourhood)."""
    chosen: list[tuple[int, int]] = []
    while len(chosen) < count:
        r, c = (int(v) for v in torch.randint(2, grid - 2, (2,), generator=generator))
        if all(max(abs(r - r0), abs(c - c0)) >= 3 for r0, c0 in chosen):
            chosen.append((r, c))
    return chosen


def orthogonal_unit(dim: int, avoid: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random unit vector orthogonal to the all-ones vector and to the rows of ``avoid``.

    Orthogonal to ones so that LayerNorm's centring keeps it.
    """
    basis, _ = torch.linalg.qr(torch.cat([torch.ones(1, dim), avoid.reshape(-1, dim).float()]).double().T)
    v = torch.randn(dim, generator=generator, dtype=torch.float64)
    v -= basis @ (basis.T @ v)
    return (v / v.norm()).float()


def project_out_(tensor: torch.Tensor, direction: torch.Tensor, dim: int) -> None:
    """Remove the unit ``direction`` from ``tensor`` along axis ``dim``, in place."""
    moved = tensor.movedim(dim, -1)
    moved -= (moved @ direction)[..., None] * direction


@torch.no_grad()
def build_planted(cfg: PlantedConfig) -> tuple[nn.Module, dict]:
    """Return (timm model, info dict) for a planted-defect ViT-S/14.

    The seeded build runs in a forked RNG, so the caller's global torch RNG state is untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return _build(cfg)


def _build(cfg: PlantedConfig) -> tuple[nn.Module, dict]:
    import timm

    model = timm.create_model(TIMM_NAME, pretrained=False, num_classes=0, img_size=cfg.img_size, dynamic_img_size=True)
    model.eval()
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    dim = model.embed_dim
    grid = cfg.img_size // 14

    for blk in model.blocks:
        blk.ls1.gamma.fill_(cfg.layer_scale)
        blk.ls2.gamma.fill_(cfg.layer_scale)
    model.cls_token.normal_(0.0, cfg.cls_std, generator=gen)
    model.pos_embed.normal_(0.0, cfg.pos_std, generator=gen)

    # The defect direction u is kept quiet: nothing but the planted circuit writes to it, so
    # ordinary tokens have no component there (like the strongly anisotropic LN outputs of
    # real ViTs, whose variance along most directions is tiny).
    u = orthogonal_unit(dim, torch.zeros(0, dim), gen)
    _keep_quiet(model, u)
    # A large component shared by all patch tokens, as real ViTs have: it keeps token norms
    # (and so LayerNorm's scaling) nearly content-independent, so every marked token ignites alike.
    shared = orthogonal_unit(dim, u[None], gen)
    model.patch_embed.proj.bias += cfg.shared_norm * shared

    _plant_amplifiers(model, cfg, u)
    m = _plant_ignition(model, cfg, u, shared, gen)
    positions = marker_positions(grid, cfg.num_markers, gen)
    for r, c in positions:
        model.pos_embed[0, 1 + r * grid + c] += cfg.marker_norm * m
    info = {"u": u, "m": m, "positions": positions, "grid": grid, "planted_layer": cfg.planted_layer}
    return model, info


def _keep_quiet(model: nn.Module, u: torch.Tensor) -> None:
    """Remove ``u`` from everything that writes to the residual stream."""
    project_out_(model.patch_embed.proj.weight, u, 0)
    project_out_(model.patch_embed.proj.bias, u, 0)
    project_out_(model.pos_embed, u, 2)
    project_out_(model.cls_token, u, 2)
    for blk in model.blocks:
        for lin in (blk.attn.proj, blk.mlp.fc2):
            project_out_(lin.weight, u, 0)
            project_out_(lin.bias, u, 0)


def _plant_amplifiers(model: nn.Module, cfg: PlantedConfig, u: torch.Tensor) -> None:
    hidden = model.blocks[0].mlp.fc1.out_features
    a, t, g = cfg.amp_sharpness, cfg.amp_threshold, cfg.amp_gain
    for i in range(cfg.planted_layer, len(model.blocks)):
        fc1, fc2 = model.blocks[i].mlp.fc1, model.blocks[i].mlp.fc2
        # gelu(a(s-t)) - gelu(a(-s-t)): ~0 for |s| < t, ~a(|s|-t)·sign(s) beyond.
        for j, sign in ((hidden - 1, 1.0), (hidden - 2, -1.0)):
            fc1.weight[j] = sign * a * u
            fc1.bias[j] = -a * t
            fc2.weight[:, j] = sign * g * u


def _plant_ignition(
    model: nn.Module, cfg: PlantedConfig, u: torch.Tensor, shared: torch.Tensor, gen: torch.Generator
) -> torch.Tensor:
    """Plant the ignition neuron; returns the marker direction m it reads."""
    # Ignition: one neuron gelu(a(s − t)) on s = ⟨m, LN(x)⟩ that writes u. Only marked tokens
    # cross the threshold. The marker m must be invisible to detection once the defect is
    # repaired, so it is chosen orthogonal to every predicted ν_i; the threshold is so far
    # out (>10σ of ordinary tokens) that the neuron's Gaussian-expected slope (~1e-6) does not
    # change those directions.
    block = model.blocks[cfg.planted_layer].mlp
    j = block.fc1.out_features - 3
    block.fc1.weight[j] = 0.0
    block.fc1.bias[j] = -cfg.ignition_sharpness * cfg.ignition_threshold
    block.fc2.weight[:, j] = cfg.ignition_gain * u
    directions = defect_directions(TimmViTBackbone(model, "planted:build"))
    m = orthogonal_unit(model.embed_dim, torch.cat([u[None], shared[None], directions]), gen)
    block.fc1.weight[j] = cfg.ignition_sharpness * m
    return m


def load_planted(name: str, spec: str, weights: str | Path | None = None) -> Backbone:
    """The ``planted:NAME`` backbone; ``ground_truth`` holds the build's info dict (u, m, positions, ...)."""
    if name not in PRESETS:
        raise ModelSpecError(f"{spec}: unknown planted model {name!r}; available: {', '.join('planted:' + k for k in PRESETS)}")
    model, info = build_planted(PRESETS[name])
    if weights is not None:
        load_timm_state_dict(model, read_state_dict(weights), spec)
    backbone = TimmViTBackbone(model, spec, family="planted")
    backbone.timm_name = TIMM_NAME
    backbone.ground_truth = info
    return backbone
