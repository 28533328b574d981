"""Training-free fixes compared with SINDER (issue #9): σ clamp so far."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from sinder.errors import ConfigError
from sinder.fixes import clamp_singular_values
from sinder.fixes.clamp import block_linears
from sinder.images import BUNDLED_EVAL, ImageSet, bundled_photos


@pytest.fixture(scope="module")
def eval_pixels(planted):
    images = ImageSet.from_inputs(bundled_photos(BUNDLED_EVAL[:4]), planted, planted.image_size)
    return torch.stack([images.load(i) for i in range(len(images))])


@torch.no_grad()
def last_patches(bb, px):
    x, ctx = bb.embed(px)
    for i in range(bb.depth):
        x = bb.run_block(i, x, ctx)
    return bb.patch_grid(x, ctx).flatten(1, 2)


def test_block_linears_are_every_block_linear_once(planted):
    found = block_linears(planted)
    # ViT-S layout: qkv, proj, fc1, fc2 per block
    assert len(found) == 4 * planted.depth
    assert set(found) == {f"blocks.{i}.{n}" for i in range(planted.depth) for n in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")}


@pytest.mark.slow
def test_clamp_caps_every_singular_value_and_keeps_the_rest(planted):
    bb = copy.deepcopy(planted)
    before = {k: m.weight.clone() for k, m in block_linears(bb).items()}
    res = clamp_singular_values(bb, 1.5)
    assert res.layers == 4 * bb.depth and res.clamped_values > 0 and res.largest_sigma > 1.5
    for name, m in block_linears(bb).items():
        s_new = torch.linalg.svdvals(m.weight.detach().double())
        s_old = torch.linalg.svdvals(before[name].detach().double())
        assert float(s_new.max()) <= 1.5 + 1e-4, name
        # values below γ are unchanged (the subspaces are kept)
        keep = s_old < 1.5 - 1e-3
        assert torch.allclose(s_new[keep], s_old[keep], atol=1e-4), name
    assert torch.equal(bb.model.pos_embed, planted.model.pos_embed)  # only block Linears move


def test_infinite_or_loose_gamma_changes_nothing_and_bad_gamma_is_one_line(planted):
    bb = copy.deepcopy(planted)
    assert clamp_singular_values(bb, math.inf).clamped_values == 0
    big = clamp_singular_values(bb, 1e6)
    assert big.clamped_values == 0
    for (k, a), b in zip(planted.model.state_dict().items(), bb.model.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(ConfigError, match="gamma must be > 0"):
        clamp_singular_values(bb, 0.0)


@pytest.mark.slow
def test_clamping_removes_the_planted_defect_and_costs_features_as_gamma_falls(planted, eval_pixels):
    """Appendix B on the planted model: the planted circuit lives in a few large singular values,
    so any γ ≤ 2 removes it; the cosine of ordinary tokens to the original can only fall as γ
    falls (on this model by < 1e-4: its ordinary weights have small σ; see benchmarks/clamp_tradeoff.py)."""
    u = planted.ground_truth.u
    orig = last_patches(planted, eval_pixels)
    ordinary = ~planted.ground_truth.ignition(planted, eval_pixels).flatten(1)
    energy, cosine = [], []
    for gamma in (math.inf, 2.0, 1.3):  # γ = ∞ changes nothing (tested above): the original stands for it
        bb = copy.deepcopy(planted)
        if math.isfinite(gamma):
            clamp_singular_values(bb, gamma)
        t = last_patches(bb, eval_pixels)
        energy.append(float(((t @ u) ** 2).sum() / (t**2).sum()))
        cosine.append(float(torch.nn.functional.cosine_similarity(t[ordinary], orig[ordinary], dim=-1).mean()))
    assert energy[0] > 0.1  # the planted defect is there before
    assert max(energy[1:]) < 0.01 * energy[0], energy
    assert cosine[0] > 0.99999 and cosine[2] <= cosine[1] + 1e-7 and cosine[1] < cosine[0], cosine


# ----------------------------------------------------------------------------- neighbour interpolation


def test_interpolate_defects_takes_the_mean_of_the_unmasked_ring():
    from sinder.fixes.interpolate import interpolate_defects

    g = torch.randn(2, 5, 6, 4, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(2, 5, 6, dtype=torch.bool)
    mask[0, 2, 3] = mask[0, 1, 3] = True  # two neighbouring defects
    mask[1, 0, 0] = True  # a corner: 3 neighbours
    out = interpolate_defects(g, mask)
    ring = [(1, 2), (1, 4), (2, 2), (2, 4), (3, 2), (3, 3), (3, 4)]  # (1, 3) is masked: left out
    assert torch.allclose(out[0, 2, 3], torch.stack([g[0, r, c] for r, c in ring]).mean(0), atol=1e-6)
    assert torch.allclose(out[1, 0, 0], torch.stack([g[1, 0, 1], g[1, 1, 0], g[1, 1, 1]]).mean(0), atol=1e-6)
    assert torch.equal(out[~mask], g[~mask])  # everything else untouched
    lonely = torch.ones(1, 3, 3, dtype=torch.bool)
    assert torch.equal(interpolate_defects(g[:1, :3, :3], lonely), g[:1, :3, :3])  # no clean neighbour: kept


def test_neighbour_interpolation_hides_the_planted_defect_and_detaches_exactly(planted, planted_directions, eval_pixels):
    from sinder.fixes.interpolate import NeighbourInterpolation

    u = planted.ground_truth.u
    layer = planted.ground_truth.ignition_layer
    before = last_patches(planted, eval_pixels)
    with NeighbourInterpolation(planted, layer, planted_directions[layer]) as fix:
        during = last_patches(planted, eval_pixels)
        alone = last_patches(planted, eval_pixels[1:2])
    after = last_patches(planted, eval_pixels)
    energy = [float(((t @ u) ** 2).sum() / (t**2).sum()) for t in (before, during)]
    assert fix.replaced > 0 and energy[1] < 0.2 * energy[0], energy
    assert torch.allclose(alone[0], during[1], atol=1e-4)  # per image: the same alone and in a batch
    assert torch.equal(after, before)  # removed: the model is as it was


def test_neighbour_interpolation_replaces_border_and_corner_defects():
    """The default rule sees the whole grid: defects on the edge and in a corner are replaced by
    the mean of the neighbours that exist (the faithful rule's cleared border would keep them)."""
    from types import SimpleNamespace

    from sinder.fixes.interpolate import NeighbourInterpolation

    d, side = 16, 12
    g = torch.Generator().manual_seed(0)
    nu = torch.eye(d)[0]
    grid = torch.nn.functional.normalize(torch.randn(1, side, side, d, generator=g), dim=-1)
    grid[..., 0] *= 0.1  # ordinary tokens: small |cos| with ν
    cells = [(0, 0), (0, 6), (11, 3), (5, 5)]
    for y, x in cells:
        grid[0, y, x] = 30 * nu + 0.5 * grid[0, y, x]
    blocks = torch.nn.ModuleList([torch.nn.Identity()])
    bb = SimpleNamespace(depth=1, num_prefix_tokens=1, blocks=lambda: blocks)
    tokens = torch.cat([torch.randn(1, 1, d, generator=g), grid.flatten(1, 2)], dim=1)
    with NeighbourInterpolation(bb, 0, nu) as fix:
        out = blocks[0](tokens)[:, 1:].reshape(1, side, side, d)
    assert fix.replaced == len(cells)
    corner = torch.stack([grid[0, 0, 1], grid[0, 1, 0], grid[0, 1, 1]]).mean(0)
    assert torch.allclose(out[0, 0, 0], corner, atol=1e-6)
    for y, x in cells:
        assert float(out[0, y, x].norm()) < 2 and abs(float(out[0, y, x] @ nu)) < 0.2
