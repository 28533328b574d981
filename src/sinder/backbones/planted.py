"""``planted:small`` — a ViT-S/14 (timm ``vit_small_patch14_dinov2`` layout, 224 px) with real,
planted singular defects, built deterministically from a seed in about a second.

No DINOv2 weights can be downloaded offline, so the toolkit ships a backbone whose defects
arise the way the paper describes: a few tokens are pushed along one direction u, and later
blocks amplify u, so G_i's top singular vector is u.

Mechanism (see ../shared/NOTES.md for the measurements that shaped it):
- A *marker* direction m is added to the positional embedding at a few interior grid
  positions (~2% of patches, as in DINOv2). Positional, so every image gets defects.
- *Ignition* (block ``planted_layer``): MLP neurons read m through a high threshold and
  write u. Only marked tokens cross the threshold.
- *Amplification* (every block from ``planted_layer`` on): a pair of neurons
  gelu(a(s − t)) − gelu(a(−s − t)) on s = ⟨u, LN(x)⟩ that writes ±u. It is flat for the
  small |s| of ordinary tokens (their LN output has little variance along u) but has a
  large Gaussian-expected slope, so the linearised theory sees a strong u-gain — the gap
  that makes ν_i = u — while only defect tokens grow.
- LayerScale γ≈0.1 (timm's random 1e-5 would make blocks identities) and a CLS token of
  realistic magnitude, so CLS metrics are meaningful.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ConfigError, ModelSpecError
from .base import Backbone

TIMM_NAME = "vit_small_patch14_dinov2"


@dataclass(frozen=True)
class PlantedConfig:
    seed: int = 0
    img_size: int = 224
    planted_layer: int = 4
    num_markers: int = 5
    layer_scale: float = 0.1
    cls_std: float = 0.5
    pos_std: float = 0.3
    marker_norm: float = 12.0
    ignition_gain: float = 10.0
    ignition_threshold: float = 2.0
    amp_sharpness: float = 4.0
    amp_threshold: float = 0.5
    amp_gain: float = 2.0

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


def quiet_directions(dim: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two orthonormal, zero-mean directions (zero mean so LayerNorm's centring keeps them)."""
    basis = torch.randn(dim, 2, generator=generator, dtype=torch.float64)
    basis -= basis.mean(dim=0, keepdim=True)
    q, _ = torch.linalg.qr(basis)
    return q[:, 0].float(), q[:, 1].float()


def project_out_(tensor: torch.Tensor, basis: torch.Tensor, dim: int) -> None:
    """Remove the span of ``basis`` (k, D, orthonormal) from ``tensor`` along axis ``dim``, in place."""
    moved = tensor.movedim(dim, -1)
    moved -= (moved @ basis.T) @ basis


@torch.no_grad()
def build_planted(cfg: PlantedConfig):
    """Return (timm model, info dict) for a planted-defect ViT-S/14."""
    import timm

    torch.manual_seed(cfg.seed)
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

    # The defect subspace span(u, m) is kept quiet: nothing but the planted circuit writes to it,
    # so ordinary tokens have no component there (their LayerNorm output has ~0 variance along u,
    # like the strongly anisotropic LN outputs of real ViTs).
    u, m = quiet_directions(dim, gen)
    quiet = torch.stack([u, m])
    project_out_(model.patch_embed.proj.weight, quiet, 0)
    project_out_(model.patch_embed.proj.bias, quiet, 0)
    project_out_(model.pos_embed, quiet, 2)
    project_out_(model.cls_token, quiet, 2)
    for blk in model.blocks:
        for lin in (blk.attn.proj, blk.mlp.fc2):
            project_out_(lin.weight, quiet, 0)
            project_out_(lin.bias, quiet, 0)

    positions = marker_positions(grid, cfg.num_markers, gen)
    for r, c in positions:
        model.pos_embed[0, 1 + r * grid + c] += cfg.marker_norm * m

    hidden = model.blocks[0].mlp.fc1.out_features
    a, t, g = cfg.amp_sharpness, cfg.amp_threshold, cfg.amp_gain
    for i in range(cfg.planted_layer, len(model.blocks)):
        fc1, fc2 = model.blocks[i].mlp.fc1, model.blocks[i].mlp.fc2
        # gelu(a(s-t)) - gelu(a(-s-t)): ~0 for |s| < t, ~a(|s|-t)·sign(s) beyond.
        for j, sign in ((hidden - 1, 1.0), (hidden - 2, -1.0)):
            fc1.weight[j] = sign * a * u
            fc1.bias[j] = -a * t
            fc2.weight[:, j] = sign * g * u
        if i == cfg.planted_layer:
            j = hidden - 3  # ignition: fires only on marked tokens
            fc1.weight[j] = a * m
            fc1.bias[j] = -a * cfg.ignition_threshold
            fc2.weight[:, j] = cfg.ignition_gain * u
    info = {"u": u, "m": m, "positions": positions, "grid": grid, "planted_layer": cfg.planted_layer}
    return model, info


def load_planted(name: str, spec: str, weights: str | Path | None = None) -> Backbone:
    from .timm_loader import load_timm_state_dict
    from .timm_vit import TimmViTBackbone
    from .weights import read_state_dict

    if name not in PRESETS:
        raise ModelSpecError(f"{spec}: unknown planted model {name!r}; available: {', '.join('planted:' + k for k in PRESETS)}")
    cfg = PRESETS[name]
    model, info = build_planted(cfg)
    if weights is not None:
        load_timm_state_dict(model, read_state_dict(weights), spec)
    backbone = TimmViTBackbone(model, spec, family="planted")
    backbone.timm_name = TIMM_NAME
    backbone.planted = info
    return backbone
