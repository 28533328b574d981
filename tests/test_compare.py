"""``sinder compare`` (issue #9): every fix run side by side on planted:small, judged on held-out
photos. The numbers in ``compare.json`` are measured (defects gone, features kept), a finished
run and a registers.json are reused with the same result, bad input is one line, and the page
renders in a real browser."""
from __future__ import annotations

import json
import re
import subprocess

import pytest
import torch

from sinder.compare import COMPARE_FILE, PAGE_FILE, CompareConfig, compare
from sinder.compare.page import SECTION_IDS
from sinder.errors import ConfigError
from sinder.images import BUNDLED_EVAL, BUNDLED_TRAIN, bundled_photos
from sinder.repair.config import RepairConfig

from test_report import browser_check, chromium

EVAL = BUNDLED_EVAL[:4]


@pytest.fixture(scope="module")
def eval_dir(tmp_path_factory):
    """The held-out photos as files, for the command line."""
    root = tmp_path_factory.mktemp("compare_eval")
    for photo in bundled_photos(EVAL):
        photo.image.save(root / f"{photo.name.split(':')[1]}.png")
    return root


@pytest.fixture(scope="module")
def compared(planted, tmp_path_factory):
    """All four fixes and a retrained-with-registers row, through the Python API."""
    out = tmp_path_factory.mktemp("compare") / "out"
    before = {k: v.clone() for k, v in planted.model.state_dict().items()}
    config = CompareConfig(max_maps=1, repair=RepairConfig(max_steps=120, progress=False, analysis=False), retrained="planted:reg4")
    report = compare(planted, bundled_photos(BUNDLED_TRAIN), bundled_photos(EVAL), config, out)
    return report, out, before


def test_every_fix_removes_the_planted_defect_and_keeps_the_features(compared):
    report, out, _ = compared
    assert report["order"] == ["original", "sinder", "registers", "clamp", "interp", "retrained"]
    assert json.loads((out / COMPARE_FILE).read_text()) == report
    methods = report["methods"]
    base = methods["original"]["last_layer"]
    assert base["energy_along_u"] > 0.3 and base["max_over_median"] > 4 and base["high_norm_rate"] > 0
    for name in ("sinder", "registers", "clamp", "interp"):
        last, feats = methods[name]["last_layer"], methods[name]["features"]
        assert last["energy_along_u"] < 0.01 * base["energy_along_u"], (name, last)
        assert last["energy_along_direction"] < 0.05 * base["energy_along_direction"], (name, last)
        assert last["max_over_median"] < 2.5 and last["high_norm_rate"] == 0, (name, last)
        assert feats["non_defect_cosine"] > 0.99 and feats["cls_cosine"] > 0.9, (name, feats)
        assert len(methods[name]["per_layer"]) == 12 and methods[name]["inference_ms_per_image"] > 0
    # a retrained model is judged along its own directions; its features are another model's
    assert methods["retrained"]["directions"] == "own" and methods["retrained"]["features"] is None


def test_what_each_fix_needed_is_recorded(compared):
    report, out, _ = compared
    m = report["methods"]
    assert m["sinder"]["needs"]["training_steps"] > 0 and m["sinder"]["needs"]["edits_weights"]
    assert (out / "sinder_run" / "summary.json").exists() and m["sinder"]["details"]["reused"] is False
    assert m["registers"]["needs"] == {"images": len(BUNDLED_TRAIN), "training_steps": 0, "edits_weights": False}
    assert m["registers"]["details"]["neurons"] == [[4, 1535]]  # the ignition unit, found on the training photos
    assert m["clamp"]["needs"]["images"] == 0 and m["clamp"]["details"]["gamma"] == 1.5
    assert m["clamp"]["details"]["clamped_values"] > 0  # the planted circuit sits above γ
    assert m["interp"]["details"]["layer"] == 11 and m["interp"]["details"]["replaced_tokens"] > 0


def test_the_original_is_left_as_it_was(planted, compared):
    _, _, before = compared
    after = planted.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(not blk._forward_pre_hooks and not blk._forward_hooks for blk in planted.blocks())


def test_the_page_has_every_section_and_a_map_row_per_method(compared):
    report, out, _ = compared
    html = (out / PAGE_FILE).read_text(encoding="utf-8")
    for sid in SECTION_IDS:
        assert f'id="{sid}"' in html
    assert "http://" not in html and "https://" not in html  # self-contained
    assert html.count('alt="maps of ') == 1  # --max-maps 1
    summary = html.split('id="summary"')[1].split("</section>")[0]
    assert all(f"<b>{name}</b>" in summary for name in report["order"])


def test_headless_browser_renders_the_comparison(compared, tmp_path):
    binary = chromium()
    if binary is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run installs it)")
    _, out, _ = compared
    result = browser_check(binary, (out / PAGE_FILE).read_text(encoding="utf-8"), tmp_path)
    assert result["sections"] == list(SECTION_IDS)
    assert result["images"] == 2 and result["decoded"] == 2  # the per-layer figure and one map grid
    assert min(result["widths"]) > 300


def sinder_cli(capsys, *argv: str) -> subprocess.CompletedProcess:
    """The command line in this process (the model builds in a second instead of a new interpreter)."""
    from sinder.cli import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(argv, code, out, err)


def test_command_reuses_a_finished_run_and_registers_file_with_the_same_numbers(compared, eval_dir, tmp_path, capsys):
    report, out, _ = compared
    res = sinder_cli(capsys, "compare", "-q", "planted:small", "--methods", "sinder,registers", "--repair-run", str(out / "sinder_run"),
                     "--registers", str(out / "registers.json"), "--eval", str(eval_dir), "--out", str(tmp_path / "c"), "--max-maps", "0")  # fmt: skip
    assert res.returncode == 0, res.stderr
    again = json.loads((tmp_path / "c" / COMPARE_FILE).read_text())
    assert again["methods"]["sinder"]["details"]["reused"] is True
    assert again["methods"]["sinder"]["needs"]["training_steps"] == report["methods"]["sinder"]["needs"]["training_steps"]
    for name in ("original", "sinder", "registers"):
        a, b = again["methods"][name]["last_layer"], report["methods"][name]["last_layer"]
        assert a["energy_along_u"] == pytest.approx(b["energy_along_u"], rel=1e-3, abs=1e-6), name
        assert a["max_over_median"] == pytest.approx(b["max_over_median"], rel=1e-3), name
    assert re.search(r"^registers\s", res.stdout, re.M)  # the plain-text table, one row per method
    # nothing the user had is replaced without --overwrite
    res = sinder_cli(capsys, "compare", "-q", "planted:small", "--methods", "clamp", "--eval", str(eval_dir), "--out", str(tmp_path / "c"))
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "--overwrite" in res.stderr


def test_command_passes_the_published_style_search_settings(eval_dir, tmp_path, capsys):
    res = sinder_cli(capsys, "compare", "-q", "planted:small", "--methods", "registers", "--data", str(eval_dir), "--eval", str(eval_dir),
                     "--out", str(tmp_path / "c"), "--max-maps", "0", "--registers-top-k", "2", "--registers-layer-limit", "4")  # fmt: skip
    assert res.returncode == 0, res.stderr
    saved = json.loads((tmp_path / "c" / "registers.json").read_text())
    assert len(saved["neurons"]) == 2 and saved["neurons"][0] == [4, 1535]
    assert saved["settings"]["top_k"] == 2 and not saved["settings"]["top_k_auto"] and saved["settings"]["layer_limit"] == 4


BAD = {
    "unknown_method": (["--methods", "sinder,magic"], "unknown method(s) magic"),
    "no_data_for_search": (["--methods", "registers"], "--data is needed"),
    "bad_task": (["--methods", "clamp", "--task", "knn"], "write TASK=DIR"),
    "unknown_task": (["--methods", "clamp", "--task", "depth=/nowhere"], "unknown task"),
    "task_wrong_layout": (["--methods", "clamp", "--task", "linear-seg={eval}"], "or a Pascal VOC (VOCdevkit/VOC20XX)"),
    "gamma": (["--methods", "clamp", "--gamma", "0"], "--gamma must be > 0"),
    "interp_layer": (["--methods", "interp", "--interp-layer", "12"], "--interp-layer must be in 0..11"),
    "missing_run": (["--methods", "sinder", "--repair-run", "{eval}"], "no summary.json"),
    "registers_top_k": (["--methods", "registers", "--registers", "r.json", "--registers-top-k", "0"], "--registers-top-k must be >= 1"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_compare_input_is_one_line_and_writes_nothing(case, eval_dir, tmp_path, capsys):
    extra, needle = BAD[case]
    out = tmp_path / "c"
    res = sinder_cli(capsys, "compare", "-q", "planted:small", "--eval", str(eval_dir), "--out", str(out), *(a.format(eval=eval_dir) for a in extra))
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and needle in lines[0], lines
    assert not (out / COMPARE_FILE).exists()


def test_config_is_validated_at_the_boundary():
    with pytest.raises(ConfigError, match="twice"):
        CompareConfig(methods=("clamp", "clamp"))
    with pytest.raises(ConfigError, match="--max-maps"):
        CompareConfig(max_maps=-1)
