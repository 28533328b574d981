"""`sinder demo` end to end: the issue's done criteria, on held-out photos never used in training."""

import json

import pytest

from sinder.cli import main
from sinder.images import BUNDLED_EVAL, BUNDLED_TRAIN

pytestmark = pytest.mark.slow  # CLI runs and repairs end to end: `make test` runs them, `make test-fast` does not


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    assert main(["demo", "--out", str(out), "--device", "cpu"]) == 0
    return out


def test_train_and_held_out_photos_are_disjoint():
    assert not set(BUNDLED_TRAIN) & set(BUNDLED_EVAL)


def test_repair_removes_defects_and_keeps_features(demo):
    summary = json.loads((demo / "summary.json").read_text())
    m = summary["metrics"]
    before, after = m["before"], m["after"]
    assert before["high_norm_rate"] > 0.01
    assert after["high_norm_rate"] <= 0.2 * before["high_norm_rate"]  # falls by >= 80%
    assert before["max_over_median"] > 5
    assert after["max_over_median"] < 2.5
    assert m["features"]["non_defect_cosine"] >= 0.95
    assert m["features"]["cls_cosine"] >= 0.95
    assert summary["export_max_token_diff"] is not None and summary["export_max_token_diff"] <= 1e-4


def test_demo_leaves_analyses_weights_and_report(demo):
    before = json.loads((demo / "analysis_before" / "analysis.json").read_text())
    after = json.loads((demo / "analysis_after" / "analysis.json").read_text())
    assert {img["path"] for img in before["images"]} == {f"skimage:{n}" for n in BUNDLED_EVAL}
    assert before["layers"][-1]["high_norm_rate"] > 0.01
    assert after["layers"][-1]["high_norm_rate"] == 0.0
    # the verdict the demo prints under each table: defects from the planted block, then none
    assert before["verdict"]["has_defects"] and before["verdict"]["onset_layer"] == 4
    assert not after["verdict"]["has_defects"] and after["verdict"]["reason"].startswith("no singular defects")
    assert (demo / "weights" / "model.safetensors").is_file()
    html = (demo / "report.html").read_text()
    for section in ("side-by-side", "per-layer", "sigma-deltas", "metrics", "config"):
        assert f'id="{section}"' in html


def test_demo_refuses_existing_output_without_overwrite(demo):
    assert main(["demo", "--out", str(demo), "--device", "cpu"]) == 2
