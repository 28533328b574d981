"""Build a planted-defect ViT from its config, and expose what was planted (its ground truth).

No DINOv2 weights can be downloaded offline, so sinder ships backbones whose defects arise the
way the paper describes: a few tokens are pushed along one direction u, and later blocks
amplify u, so G_i's top singular vector is u. Each zoo member plants them differently (see
:class:`~sinder.planted.config.PlantedConfig`); all are timm DINOv2-layout models, built from a
seed in seconds with no files.
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
from ..runtime import one_thread
from ..theory import defect_directions
from .circuits import (
    AMPLIFIER_UNITS, TEXTURE_FILTERS, Neurons, keep_quiet_, marker_positions, ordinary_linears, orthogonal_unit, place_markers, plant_amplifiers,
    plant_texture_detector, power_law_spectrum_,
)  # fmt: skip
from .config import PlantedConfig, preset

IGNITION_SHARPNESS = 4.0
TEXTURE_SCALE = 1.6  # patch-embedding gain of the texture filters: ⟨q_k, LN(x)⟩ ≈ the filter response
TEXTURE_GAIN = 1.0


@dataclass
class PlantedTruth:
    """What was planted: the defect direction ``u``, where and how it ignites."""

    config: PlantedConfig
    u: torch.Tensor  # the planted defect direction (unit)
    m: torch.Tensor  # the marker direction in the positional embedding
    positions: list[tuple[int, int]]  # marker (candidate) cells
    grid: int
    ignition_layer: int
    ignition_unit: int  # its fc1 row (the gate for SwiGLU)

    @torch.no_grad()
    def ignition(self, backbone: Backbone, pixels: torch.Tensor) -> torch.Tensor:
        """(B, H, W) bool: the patch tokens whose ignition unit fires on ``pixels``."""
        fc1 = backbone.model.blocks[self.ignition_layer].mlp.fc1
        seen: list[torch.Tensor] = []
        hook = fc1.register_forward_hook(lambda mod, inp, out: seen.append(out[..., self.ignition_unit]))
        try:
            x, ctx = backbone.embed(pixels.to(backbone.device, backbone.dtype))
            for i in range(self.ignition_layer + 1):
                x = backbone.run_block(i, x, ctx)
        finally:
            hook.remove()
        pre = seen[-1][:, backbone.num_prefix_tokens :]
        return (pre > 0).reshape(pre.shape[0], *ctx.grid)


def build_planted(cfg: PlantedConfig) -> tuple[nn.Module, PlantedTruth]:
    """Return (timm model, ground truth). The seeded build runs in a forked RNG, so the caller's
    global torch RNG state is untouched. One thread: the build is hundreds of small ops, and the
    weights then do not depend on the machine's thread count."""
    with one_thread():
        return _build(cfg)


@torch.no_grad()
def _build(cfg: PlantedConfig) -> tuple[nn.Module, PlantedTruth]:
    import timm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = timm.create_model(cfg.timm_name, pretrained=False, num_classes=0, img_size=cfg.img_size, dynamic_img_size=True, **cfg.timm_kwargs)
    model.eval()
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    dim = model.embed_dim
    for blk in model.blocks:
        blk.ls1.gamma.fill_(cfg.layer_scale)
        blk.ls2.gamma.fill_(cfg.layer_scale)
    if cfg.spectrum_top:  # no random draws: the other members' weights stay bit-identical
        for weight in ordinary_linears(model):
            power_law_spectrum_(weight, cfg.spectrum_top, cfg.spectrum_decay)
    model.cls_token.normal_(0.0, cfg.cls_std, generator=gen)
    model.pos_embed.normal_(0.0, cfg.pos_std, generator=gen)
    if getattr(model, "reg_token", None) is not None:
        model.reg_token.normal_(0.0, cfg.cls_std, generator=gen)
    u = orthogonal_unit(dim, torch.zeros(0, dim), gen)
    # A large component shared by all patch tokens, as real ViTs have: it keeps token norms (and
    # so LayerNorm's scaling) nearly content-independent.
    shared = orthogonal_unit(dim, u[None], gen)
    texture = orthogonal_unit(dim, torch.stack([u, shared]), gen)
    layer = cfg.ignition_layer
    keep_quiet_(model, torch.stack([u, texture]))
    stretched = _stretch(model, cfg.anisotropy, torch.stack([u, shared, texture]), gen)
    if cfg.early_feature and layer > 0:
        plant_amplifiers(model, 0, stretched[0], "pair", cfg.early_threshold, cfg.early_feature, stop=layer)
    model.patch_embed.proj.bias += cfg.shared_norm * shared
    if cfg.u_noise:  # a small, position- and content-dependent u component on every token
        model.pos_embed += cfg.u_noise * cfg.shared_norm * torch.randn(model.pos_embed.shape[:2], generator=gen)[..., None] * u
        model.patch_embed.proj.weight += torch.einsum("d,chw->dchw", u, 0.3 * cfg.u_noise * torch.randn(model.patch_embed.proj.weight.shape[1:], generator=gen))
    used = [u, shared, texture]
    if cfg.ignition == "content":
        q = plant_texture_detector(model, max(0, layer - 1), TEXTURE_SCALE, TEXTURE_GAIN, texture, gen)
        used += list(q)
    plant_amplifiers(model, layer + 1 if cfg.amplifier == "feedback" else layer, u, cfg.amplifier, cfg.amp_threshold, cfg.amp_gain)
    unit, m = _plant_ignition(model, cfg, u, texture, torch.stack(used), gen)
    grid = cfg.img_size // 14
    positions = marker_positions(grid, cfg.markers, gen)
    spread = 1.0 + cfg.strength_spread * (2 * torch.rand(len(positions), generator=gen) - 1)
    place_markers(model, m, positions, (cfg.marker_norm * spread).tolist())
    return model, PlantedTruth(cfg, u, m, positions, grid, layer, unit)


def _plant_ignition(model, cfg: PlantedConfig, u, texture, used: torch.Tensor, gen: torch.Generator) -> tuple[int, torch.Tensor]:
    """One unit in each of the ``ignition_blocks`` blocks from the ignition block on:
    act(a(⟨m, LN⟩ − w·texture − t)) writes u. The first is the ground truth's ignition unit.

    Its threshold is so far above ordinary tokens that its Gaussian-expected slope (~1e-6 at the
    default margin) leaves the predicted directions alone; the marker m is chosen orthogonal to
    every predicted ν_i, so a repaired marker token does not look like a defect."""
    marker_level = cfg.marker_norm / _token_std(cfg)
    threshold = marker_level - cfg.ignition_margin
    blocks = range(cfg.ignition_layer, min(cfg.depth, cfg.ignition_layer + cfg.ignition_blocks))
    # later blocks already hold their amplifier, so their unit comes after it; the first takes the
    # block's last unit as it always has (over a pair amplifier's + half: kept, for bit-identity)
    planted = [Neurons(model.blocks[b].mlp, taken=AMPLIFIER_UNITS[cfg.amplifier] if b > cfg.ignition_layer else 0) for b in blocks]
    units = [n.add(torch.zeros_like(u), IGNITION_SHARPNESS, -IGNITION_SHARPNESS * threshold, u, cfg.ignition_gain) for n in planted]
    directions = defect_directions(TimmViTBackbone(model, "planted:build"))
    m = orthogonal_unit(model.embed_dim, torch.cat([used, directions]), gen)
    read = m.clone()
    if cfg.ignition == "content":
        # a texture of ``texture_threshold`` cancels the margin: flatter patches ignite, harder the flatter
        read -= cfg.ignition_margin / _texture_level(cfg) * texture
    for b, unit in zip(blocks, units):
        model.blocks[b].mlp.fc1.weight[unit] = IGNITION_SHARPNESS * read
    return units[0], m


STRETCHED = 16  # directions of the patch embedding that anisotropy stretches


def _stretch(model: nn.Module, factor: float, avoid: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Scale the patch embedding's output along a few random directions (orthogonal to ``avoid``); returns them."""
    w = model.patch_embed.proj.weight
    dirs = []
    for _ in range(STRETCHED if factor != 1 else 0):
        d = orthogonal_unit(w.shape[0], torch.cat([avoid, *[x[None] for x in dirs]]) if dirs else avoid, gen)
        dirs.append(d)
        comp = torch.einsum("d,dchw->chw", d, w)
        w += (factor - 1) * torch.einsum("d,chw->dchw", d, comp)
    return torch.stack(dirs) if dirs else torch.zeros(0, w.shape[0])


def _token_std(cfg: PlantedConfig) -> float:
    """LayerNorm's divisor for a patch token: the shared component dominates it."""
    dim = {"S": 384, "B": 768, "L": 1024, "g": 1536}[cfg.size]
    return (cfg.shared_norm**2 / dim + cfg.pos_std**2 + 0.35) ** 0.5


def _texture_level(cfg: PlantedConfig) -> float:
    """⟨texture, LN(x)⟩ expected on a patch whose filter responses have std ``texture_threshold``."""
    z = torch.randn(200_000, generator=torch.Generator().manual_seed(0)) * 4.0 * cfg.texture_threshold
    pair = z * torch.erf(z / 2**0.5)  # gelu(z) + gelu(−z)
    return float(pair.mean()) * TEXTURE_FILTERS * cfg.layer_scale * TEXTURE_GAIN / _token_std(cfg)


def load_planted(name: str, spec: str, weights: str | Path | None = None) -> Backbone:
    """The ``planted:NAME[@SIZE]`` backbone; ``ground_truth`` is its :class:`PlantedTruth`."""
    cfg = preset(name, spec)
    model, truth = build_planted(cfg)
    if weights is not None:
        load_timm_state_dict(model, read_state_dict(weights), spec)
    backbone = TimmViTBackbone(model, spec, family="planted")
    backbone.timm_name, backbone.timm_kwargs = cfg.timm_name, cfg.timm_kwargs or None
    backbone.ground_truth = truth
    return backbone
