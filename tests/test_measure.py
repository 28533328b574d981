"""One measurement (sinder.measure): `analyze`, repair's summary and its analysis folders give the
same numbers for the same photos; feature cosines; ground-truth recall and precision."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import pytest
import torch

from sinder.analyze import AnalyzeConfig, analyze
from sinder.backbones import load_backbone
from sinder.images import BUNDLED_EVAL, BUNDLED_TRAIN, bundled_photos
from sinder.measure import FeatureCosines, Tokens
from sinder.repair import RepairConfig, repair

COMPARED = ("max_over_median", "defect_rate", "high_norm_rate", "energy_along_direction", "norm_median", "truth_recall", "truth_precision")


@pytest.mark.slow
def test_analyze_and_repair_give_the_same_numbers_for_the_same_photos(tmp_path):
    """The issue's case: `sinder analyze` said max/median 9.26 where repair's summary said 9.545 for
    the same held-out photos (aspect-keeping vs square crops)."""
    eval_photos = bundled_photos(BUNDLED_EVAL[:3])
    bb = load_backbone("planted:small")
    config = RepairConfig(max_steps=4, progress=False, export=False)
    start = time.perf_counter()
    result = repair(bb, bundled_photos(BUNDLED_TRAIN[:4]), config, eval_images=eval_photos, out_dir=tmp_path / "run")
    wall = time.perf_counter() - start
    phases = result.summary["phase_seconds"]  # where the time to a defect-free model goes
    assert all(phases[k] > 0 for k in ("directions", "analysis_before", "start_up", "training", "held_out_metrics", "analysis_after"))
    assert 0.7 * wall <= phases["total"] <= wall
    before, after = result.summary["metrics"]["before"], result.summary["metrics"]["after"]
    standalone = analyze(load_backbone("planted:small"), eval_photos, AnalyzeConfig(figures=False, progress=False)).summary["layers"][-1]
    run_before = json.loads((tmp_path / "run" / "analysis_before" / "analysis.json").read_text())["layers"][-1]
    run_after = json.loads((tmp_path / "run" / "analysis_after" / "analysis.json").read_text())["layers"][-1]
    for key in COMPARED:
        assert before[key] is not None, key  # a planted model: the ground truth is scored too
        assert standalone[key] == pytest.approx(before[key], rel=1e-5), key
        assert run_before[key] == pytest.approx(before[key], rel=1e-5), key
        assert run_after[key] == pytest.approx(after[key], rel=1e-5), key
    assert before["max_over_median"] > 5 and before["truth_recall"] >= 0.95  # the numbers are about real defects


def test_ground_truth_scores_only_from_the_ignition_block_and_only_for_planted_models(planted):
    layers = analyze(planted, bundled_photos(BUNDLED_EVAL[:2]), AnalyzeConfig(figures=False, progress=False)).summary["layers"]
    start = planted.ground_truth.ignition_layer
    assert all(layer["truth_recall"] is None for layer in layers[:start])
    assert all(layer["truth_recall"] is not None for layer in layers[start:])
    assert layers[-1]["truth_recall"] >= 0.95 and layers[-1]["truth_precision"] >= 0.95
    plain = load_backbone("timm:vit_small_patch16_224", random_init=True)
    last = analyze(plain, bundled_photos(BUNDLED_EVAL[:1]), AnalyzeConfig(figures=False, progress=False)).summary["layers"][-1]
    assert last["truth_recall"] is None and last["truth_precision"] is None


def _stub(has_cls: bool):
    from sinder.backbones.base import Backbone

    prefix = int(has_cls)
    stub = SimpleNamespace(has_cls_token=has_cls, patch_grid=lambda x, ctx: x[:, prefix:].reshape(x.shape[0], 2, 2, x.shape[-1]))
    stub.pooled = lambda final, ctx: Backbone.pooled(stub, final, ctx)  # the base class's rule
    return stub


@pytest.mark.parametrize("has_cls", [True, False])
def test_feature_cosines_score_ordinary_tokens_and_the_summary_token(has_cls):
    """CLS cosine with a CLS token, the pooled output's (mean patch token) without one."""
    g = torch.Generator().manual_seed(0)
    final = torch.randn(3, 4 + has_cls, 8, generator=g)
    other = final.clone()
    other[:, -1] = -other[:, -1]  # one patch token flipped: cosine -1 there
    keep = torch.ones(3, 2, 2, dtype=torch.bool)
    bb = _stub(has_cls)
    key = "cls_cosine" if has_cls else "pooled_cosine"
    cos = FeatureCosines(key)
    cos.add(bb, Tokens([], [], final, None), bb, Tokens([], [], other, None), keep)
    s = cos.summary()
    assert s["non_defect_cosine"] == pytest.approx((3 * 1 - 1) / 4)  # 3 kept tokens at 1, one at -1
    if has_cls:
        assert s["cls_cosine"] == pytest.approx(1.0) and s["cls_cosine_min"] == pytest.approx(1.0)
    else:
        assert s["pooled_cosine"] < 0.999  # the flipped token moves the mean patch token
    keep[:, 1, 1] = False  # the flipped token left out (a defect): the rest is unchanged
    cos = FeatureCosines(key)
    cos.add(bb, Tokens([], [], final, None), bb, Tokens([], [], other, None), keep)
    assert cos.summary()["non_defect_cosine"] == pytest.approx(1.0)
