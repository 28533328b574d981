"""``sinder compare`` (issue #9): every fix run side by side on planted:small, judged on held-out
photos. The numbers in ``compare.json`` are measured (defects gone, features kept), a finished
run and a registers.json are reused with the same result, bad input is one line, and the page
renders in a real browser."""

from __future__ import annotations

import json
import logging
import re

import pytest
import torch
from helpers.browser import browser_check, chromium
from helpers.cli import sinder_in_process as sinder_cli
from helpers.datasets import make_knn
from helpers.photos import write_photos

from sinder.compare import COMPARE_FILE, PAGE_FILE, CompareConfig, compare, format_table
from sinder.compare.page import SECTION_IDS, neurons, per_layer_figure
from sinder.errors import ConfigError
from sinder.evaluate import EvaluateConfig
from sinder.fixes import ClampFix, InterpolationFix, RegistersFix, SinderFix
from sinder.images import BUNDLED_EVAL, BUNDLED_TRAIN, bundled_photos
from sinder.repair.config import RepairConfig

pytestmark = pytest.mark.slow  # CLI runs and repairs end to end: `make test` runs them, `make test-fast` does not

EVAL = BUNDLED_EVAL[:4]
KNN_KEYS = {f"{p}top1@{k}" for p in ("", "patch_") for k in (1, 3)}


@pytest.fixture(scope="module")
def knn_dir(tmp_path_factory):
    """A tiny kNN set: 3 colour classes, 2 train and 1 val image each (fewer train images than the default k)."""
    return make_knn(tmp_path_factory.mktemp("compare_knn"), n_train=2, n_val=1)


@pytest.fixture(scope="module")
def eval_dir(tmp_path_factory):
    """The held-out photos as files, for the command line."""
    return write_photos(tmp_path_factory.mktemp("compare_eval"), EVAL, ".png")


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def compared(planted, tmp_path_factory, knn_dir):
    """All four fixes and a retrained-with-registers row, through the Python API, with a kNN task
    (its k passed on) and the progress lines kept."""
    out = tmp_path_factory.mktemp("compare") / "out"
    before = {k: v.clone() for k, v in planted.model.state_dict().items()}
    config = CompareConfig(
        max_maps=1,
        fixes=(
            SinderFix(repair=RepairConfig(max_steps=120, progress=False, analysis=False)),
            RegistersFix(),
            ClampFix(),
            InterpolationFix(),
        ),
        retrained="planted:reg4",
        tasks=(("knn", str(knn_dir)),),
        task_options=EvaluateConfig(knn_ks=(1, 3)),
    )
    logger, lines = logging.getLogger("sinder.evaluate.run"), _Lines()
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(lines)
    try:
        report = compare(planted, bundled_photos(BUNDLED_TRAIN), bundled_photos(EVAL), config, out)
    finally:
        logger.removeHandler(lines)
        logger.setLevel(level)
    report["progress_lines"] = lines.lines  # not in compare.json
    return report, out, before


def test_every_fix_removes_the_planted_defect_and_keeps_the_features(compared):
    report, out, _ = compared
    assert report["order"] == ["original", "sinder", "registers", "clamp", "interp", "retrained"]
    assert json.loads((out / COMPARE_FILE).read_text()) == {k: v for k, v in report.items() if k != "progress_lines"}
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
    summary = json.loads((out / "sinder_run" / "summary.json").read_text())
    # two counts, never mixed: the distinct training images, and the images training processed with repeats
    assert m["sinder"]["needs"]["images"] == summary["num_train_images"] <= len(BUNDLED_TRAIN)
    assert m["sinder"]["needs"]["training_images_seen"] == summary["images_seen"] > len(BUNDLED_TRAIN)
    assert m["registers"]["needs"] == {"images": len(BUNDLED_TRAIN), "training_images_seen": 0, "training_steps": 0, "edits_weights": False}
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
    assert "<th>images needed (distinct)</th>" in summary and "<th>training images seen (with repeats)</th>" in summary
    assert "<th>images</th>" not in summary
    settings = html.split('id="settings"')[1].split("</section>")[0]
    assert "neurons=[(4, 1535)]" in settings and "items]" not in settings
    downstream = html.split('id="downstream"')[1].split("</section>")[0]
    assert "top1@3" in downstream and len(re.findall(r">\d+\.\d\d%<", downstream)) == 4 * len(report["order"])  # rates in %


def test_neurons_are_shown_and_long_lists_abbreviated():
    assert neurons([[4, 1535]]) == "[(4, 1535)]"
    assert (
        neurons([[1, u] for u in range(50)]) == "[(1, 0), (1, 1), (1, 2), (1, 3), (1, 4), (1, 5), (1, 6), (1, 7), … +42 more (50 in all)]"
    )


def test_per_layer_chart_shows_rates_in_percent(compared):
    report, _, _ = compared
    fig = per_layer_figure(report)
    energy, ratio, high = fig.axes[:3]
    assert "%" in energy.get_title() and "%" in high.get_title() and "%" not in ratio.get_title()
    rows = report["methods"]["original"]["per_layer"]
    assert list(high.lines[0].get_ydata()) == pytest.approx([100 * r["high_norm_rate"] for r in rows])
    assert list(energy.lines[0].get_ydata()) == pytest.approx([100 * r["energy_along_direction"] for r in rows])
    assert list(ratio.lines[0].get_ydata()) == pytest.approx([r["max_over_median"] for r in rows])


def test_downstream_runs_every_method_with_the_task_options_and_names_it(compared, knn_dir):
    report, _, _ = compared
    assert report["tasks"] == {"knn": str(knn_dir)}
    for name in report["order"]:
        assert set(report["methods"][name]["tasks"]["knn"]) == KNN_KEYS | {"seconds"}, name  # k = 1, 3 as passed
        assert sum(line.startswith(f"evaluating {name} (") and " on knn " in line for line in report["progress_lines"]) == 1, name
    table = format_table(report)  # the terminal table: downstream too, rates in %
    block = table.split(f"downstream knn on {knn_dir}:")[1].splitlines()
    assert "top1@3" in block[1] and all(re.match(rf"{n}\s.*\d\.\d\d%", row) for n, row in zip(report["order"], block[2:]))
    head = table.splitlines()[0]
    assert "distinct imgs" in head and "imgs seen" in head
    sinder_row = next(line for line in table.splitlines() if line.startswith("sinder "))
    needs = report["methods"]["sinder"]["needs"]
    assert f" {needs['images']} " in sinder_row and f" {needs['training_images_seen']} " in sinder_row


def test_headless_browser_renders_the_comparison(compared, tmp_path):
    binary = chromium()
    if binary is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run installs it)")
    _, out, _ = compared
    result = browser_check(binary, (out / PAGE_FILE).read_text(encoding="utf-8"), tmp_path)
    assert result["sections"] == list(SECTION_IDS)
    assert result["images"] == 2 and result["decoded"] == 2  # the per-layer figure and one map grid
    assert min(result["widths"]) > 300


def test_command_reuses_a_finished_run_and_registers_file_with_the_same_numbers(compared, eval_dir, knn_dir, tmp_path, capsys):
    report, out, _ = compared
    res = sinder_cli(
        capsys,
        "compare",
        "-q",
        "planted:small",
        "--methods",
        "sinder,registers",
        "--repair-run",
        str(out / "sinder_run"),
        "--registers",
        str(out / "registers.json"),
        "--eval",
        str(eval_dir),
        "--out",
        str(tmp_path / "c"),
        "--max-maps",
        "0",
        "--task",
        f"knn={knn_dir}",
        "--knn-k",
        "1",
        "3",
    )
    assert res.returncode == 0, res.stderr
    again = json.loads((tmp_path / "c" / COMPARE_FILE).read_text())
    for name in ("original", "sinder", "registers"):  # --knn-k passed on; the same numbers as through the API
        assert again["methods"][name]["tasks"]["knn"]["top1@3"] == pytest.approx(report["methods"][name]["tasks"]["knn"]["top1@3"]), name
    assert f"downstream knn on {knn_dir}:" in res.stdout and re.search(
        r"^registers\s.*\d\.\d\d%", res.stdout.split("downstream knn")[1], re.M
    )
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
    res = sinder_cli(
        capsys,
        "compare",
        "-q",
        "planted:small",
        "--methods",
        "registers",
        "--data",
        str(eval_dir),
        "--eval",
        str(eval_dir),
        "--out",
        str(tmp_path / "c"),
        "--max-maps",
        "0",
        "--registers-top-k",
        "2",
        "--registers-layer-limit",
        "4",
    )
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
    res = sinder_cli(
        capsys, "compare", "-q", "planted:small", "--eval", str(eval_dir), "--out", str(out), *(a.format(eval=eval_dir) for a in extra)
    )
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and needle in lines[0], lines
    assert not (out / COMPARE_FILE).exists()


def test_task_data_is_checked_before_the_model_loads(planted, eval_dir, knn_dir, tmp_path, capsys, monkeypatch):
    """A k above the train images is refused in one line naming --knn-k before the model loads or
    SINDER trains; the grid check, which needs the patch size, before any method is prepared."""
    import sinder.commands.compare as command

    def never(*args, **kwargs):
        raise AssertionError("the model loaded or a method was prepared before the task checks")

    monkeypatch.setattr(command, "load_model_from_args", never)
    res = sinder_cli(
        capsys,
        "compare",
        "-q",
        "planted:small",
        "--methods",
        "sinder",
        "--data",
        str(eval_dir),
        "--eval",
        str(eval_dir),
        "--out",
        str(tmp_path / "c"),
        "--task",
        f"knn={knn_dir}",
    )
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and "fewer than k=10, 20, 100, 200; pass --knn-k" in lines[0], lines
    assert not (tmp_path / "c").exists()
    monkeypatch.setattr(SinderFix, "prepare", never)
    small = CompareConfig(
        fixes=(SinderFix(),),
        resolution=28,
        tasks=(("knn", str(knn_dir)), ("intrinsic", str(eval_dir))),
        task_options=EvaluateConfig(knn_ks=(1, 3)),
    )
    with pytest.raises(ConfigError, match="intrinsic: resolution 28 gives 2 patch"):
        compare(planted, None, bundled_photos(EVAL), small)


def test_config_is_validated_at_the_boundary():
    with pytest.raises(ConfigError, match="twice"):
        CompareConfig(fixes=(ClampFix(), ClampFix(gamma=2.0)))
    with pytest.raises(ConfigError, match="--max-maps"):
        CompareConfig(max_maps=-1)


def test_a_model_without_high_norm_outliers_skips_registers_and_compares_the_rest(tmp_path):
    """On low-norm artifacts the register search has no outlier to attribute: that row is skipped
    with a note on the page and in compare.json, and the other fixes are still measured; the rule
    counts the artifacts, so interpolation at the last block removes them."""
    from sinder.backbones import load_backbone

    config = CompareConfig(fixes=(RegistersFix(), ClampFix(), InterpolationFix()), max_maps=1)
    report = compare(load_backbone("planted:lownorm"), bundled_photos(BUNDLED_TRAIN[:3]), bundled_photos(EVAL), config, tmp_path / "c")
    assert report["order"] == ["original", "clamp", "interp"]
    assert any(n.startswith("registers: not run: no patch token at block") for n in report["notes"])
    saved = json.loads((tmp_path / "c" / COMPARE_FILE).read_text())
    assert saved["notes"] == report["notes"] and "registers: not run" in (tmp_path / "c" / PAGE_FILE).read_text()
    # --low-norm auto counts them on this model, so interpolation sees them and removes what lies along u
    assert (report["rule"]["low_norm"], report["rule"]["low_norm_from"]) == ("count", 4)
    interp, original = report["methods"]["interp"], report["methods"]["original"]
    assert interp["details"]["replaced_tokens"] > 0
    assert interp["last_layer"]["energy_along_u"] <= 0.01 * original["last_layer"]["energy_along_u"]
