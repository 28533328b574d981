"""The fixes compared with SINDER (σ clamp, neighbour interpolation) and the one interface every fix implements."""

from __future__ import annotations

import copy
import html
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


# ----------------------------------------------------------------------------- the Fix protocol


def test_every_fix_implements_the_protocol_and_builds_from_its_own_flags():
    """Each registered fix names itself, describes itself, declares its flags and is rebuilt from
    them: what `sinder compare` reads to make its command line and its page."""
    import argparse

    from sinder.detect import DefectRule
    from sinder.fixes import FIXES, Fix

    assert list(FIXES) == ["sinder", "registers", "clamp", "interp"]
    parser = argparse.ArgumentParser()
    group = parser.add_argument_group("fixes")
    for name, fix in FIXES.items():
        assert issubclass(fix, Fix) and fix.name == name and len(fix.description) > 20, name
        fix.add_arguments(group)
    args = parser.parse_args(["--gamma", "1.3", "--interp-layer", "5", "--registers-top-k", "4", "--max-steps", "7"])
    shared = {"rule": DefectRule(mask_thr=3.0), "progress": False, "overwrite": False}
    built = {name: fix.from_args(args, shared) for name, fix in FIXES.items()}
    assert built["clamp"].gamma == 1.3 and built["interp"].layer == 5 and built["registers"].search.top_k == 4
    assert built["sinder"].repair.max_steps == 7 and built["sinder"].repair.rule.mask_thr == 3.0
    assert built["sinder"].needs_training_images and built["registers"].needs_training_images
    assert not built["clamp"].needs_training_images and not built["interp"].needs_training_images
    with pytest.raises(ConfigError, match="--registers-top-k must be >= 1"):
        FIXES["registers"].from_args(parser.parse_args(["--registers-top-k", "0"]), shared)


def test_a_test_time_handle_applies_and_removes_exactly(planted, planted_directions, eval_pixels):
    """prepare → handle: applied, the model's own forward changes; removed, it is bit-for-bit the original."""
    from sinder.detect import DefectRule
    from sinder.fixes import FixContext, InterpolationFix

    before = last_patches(planted, eval_pixels)
    handle = InterpolationFix().prepare(planted, FixContext(planted_directions, DefectRule()))
    assert handle.cost.needs() == {"images": 0, "training_images_seen": 0, "training_steps": 0, "edits_weights": False}
    with handle.active() as bb:
        during = last_patches(bb, eval_pixels)
    assert handle.all_details()["replaced_tokens"] > 0 and handle.details["layer"] == planted.depth - 1
    assert not torch.equal(during, before)
    assert torch.equal(last_patches(planted, eval_pixels), before)


def test_a_new_fix_is_one_class_and_compare_runs_it(planted, tmp_path):
    """A fix written outside sinder (a norm cap at the last block, by a hook) runs through
    `compare` beside a built-in one, with its own name, description, details and measured row."""
    from dataclasses import dataclass

    from sinder.compare import CompareConfig, compare
    from sinder.fixes import ClampFix, Cost, Fix, FixHandle

    @dataclass(frozen=True)
    class NormCap(Fix):
        factor: float = 1.5
        name = "normcap"
        description = "every last-block patch token capped at 1.5× the image's median norm"

        def prepare(self, backbone, context):
            p = backbone.num_prefix_tokens

            def cap(module, inputs, out):
                patches = out[:, p:]
                norms = patches.norm(dim=-1, keepdim=True)
                limit = self.factor * norms.median(dim=1, keepdim=True).values
                return torch.cat([out[:, :p], patches * (limit / norms).clamp(max=1.0)], dim=1)

            class Hook:
                def __enter__(self):
                    self.handle = backbone.blocks()[-1].register_forward_hook(cap)

                def __exit__(self, *exc):
                    self.handle.remove()

            return FixHandle(self.name, backbone, Cost(), {"factor": self.factor}, hooks=Hook)

    config = CompareConfig(fixes=(NormCap(), ClampFix()), max_maps=1)
    report = compare(planted, None, bundled_photos(BUNDLED_EVAL[:2]), config, tmp_path / "c")
    assert report["order"] == ["original", "normcap", "clamp"]
    row = report["methods"]["normcap"]
    assert row["description"] == NormCap.description and row["details"] == {"factor": 1.5}
    assert report["methods"]["original"]["last_layer"]["max_over_median"] > 3
    assert row["last_layer"]["max_over_median"] <= 1.5 + 1e-3
    assert html.escape(NormCap.description) in (tmp_path / "c" / "compare.html").read_text()
