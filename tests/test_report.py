"""``sinder report``: page content, embedded images, tolerance to partial runs, CLI behaviour,
and a real headless browser that renders the page and decodes every image."""

from __future__ import annotations

import base64
import copy
import html
import io
import json
import os
import re
import shutil

import numpy as np
import pytest
import torch
from helpers.browser import browser_check, chromium, run_browser
from helpers.cli import run_sinder
from PIL import Image

from sinder import cli
from sinder.analyze import AnalyzeConfig, analyze
from sinder.images import bundled_photos
from sinder.plots import ANGLE_LIMITS, angle_violins, comparison_panel, layer_curves
from sinder.report import SECTION_IDS, ReportConfig, build_report, read_sigma, split_part
from sinder.runfolder import AnalysisFolder

PHOTOS = ("chelsea", "coffee")
LINEARS = ("attn.qkv[768:1152]", "attn.proj", "mlp.fc1", "mlp.fc2")
DATA_URI = re.compile(r'<img src="([^"]*)"')


def planted_delta(layer: int, k: int) -> float:
    """The fake learned change of σ_k in each linear of ``layer``: zero in the frozen blocks 0-1."""
    return 0.0 if layer < 2 else -0.01 * layer * (k + 1)


def write_fake_run_files(run, steps: int = 40, truncated_line: bool = True) -> None:
    """config.json, summary.json, log.jsonl (one line cut short) and sigma.safetensors of a fake run."""
    from safetensors.torch import save_file

    run.mkdir(parents=True, exist_ok=True)
    config = {"lr": 0.005, "momentum": 0.9, "stop_skip_ratio": 0.75, "max_steps": 300}
    (run / "config.json").write_text(json.dumps(config | {"model": {"model": "planted:small", "num_layers": 12}}))
    summary = {  # the shape sinder.repair writes: held-out metrics nested under "metrics"
        "model": {"model": "planted:small"},
        "config": config,
        "steps": steps,
        "images_seen": steps,
        "seconds": 75.5,
        "stop_reason": "skip_ratio",
        "metrics": {
            "num_images": 2,
            "before": {"defect_rate": 0.0352, "max_over_median": 15.25},
            "after": {"defect_rate": 0.0, "max_over_median": 1.5},
            "features": {"cos_non_defect_mean": 0.9975},
            "residual": [
                {"image": "skimage:chelsea", "high_norm_tokens": 0, "max_over_median": 1.4, "strongest": []},
                {
                    "image": "skimage:moon",
                    "high_norm_tokens": 2,
                    "max_over_median": 3.6,
                    "strongest": [{"row": 5, "col": 7, "norm_over_median": 3.6}, {"row": 9, "col": 2, "norm_over_median": 3.1}],
                },
            ],
        },
    }
    (run / "summary.json").write_text(json.dumps(summary))
    lines = [json.dumps({"step": s, "skip_ratio": s / steps, "loss": 1.0 / (s + 1), "layer": 4 + s % 3}) for s in range(steps)]
    if truncated_line:
        lines.append('{"step": 40, "skip_ra')
    (run / "log.jsonl").write_text("\n".join(lines) + "\n")
    tensors = {}
    for layer in range(12):
        for lin in LINEARS:
            sigma = torch.linspace(5.0, 0.1, 384) + layer
            delta = torch.zeros(384)
            delta[:3] = torch.tensor([planted_delta(layer, k) for k in range(3)])
            tensors[f"blocks.{layer}.{lin}/sigma"] = sigma
            tensors[f"blocks.{layer}.{lin}/delta"] = delta
    save_file(tensors, str(run / "sigma.safetensors"))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, planted):
    """A fake repair run around two real analyses of the planted model: 'before' as built, 'after'
    with the positional marker that ignites the defects removed (a stand-in for a repaired model)."""
    run = tmp_path_factory.mktemp("report") / "run"
    write_fake_run_files(run)
    cfg = AnalyzeConfig(figures=False, progress=False)
    directions = torch.stack([planted.ground_truth.u] * planted.depth)  # the planted defect direction
    analyze(planted, bundled_photos(PHOTOS), cfg, directions=directions, out_dir=run / "analysis_before")
    fixed = copy.deepcopy(planted)
    m = fixed.ground_truth.m
    with torch.no_grad():
        pos = fixed.model.pos_embed
        pos -= (pos @ m)[..., None] * m
    analyze(fixed, bundled_photos(PHOTOS), cfg, directions=directions, out_dir=run / "analysis_after")
    return run


@pytest.fixture(scope="module")
def run_page(run_dir):
    return build_report([run_dir], ReportConfig(dpi=60))


def decoded_images(page: str) -> list[Image.Image]:
    images = []
    for src in DATA_URI.findall(page):
        assert src.startswith("data:image/png;base64,"), src[:60]
        img = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1], validate=True)))
        img.load()
        images.append(img)
    return images


def section(page: str, sid: str) -> str:
    m = re.search(rf'<section id="{sid}">(.*?)</section>', page, re.S)
    assert m, f"section {sid} missing"
    return m.group(1)


def banner_text(page: str) -> str | None:
    """The unfinished-run banner as plain text (None when the page has none)."""
    m = re.search(r'<div class="banner" role="alert">(.*?)</div>', page, re.S)
    return html.unescape(re.sub(r"<[^>]+>", "", m.group(1))) if m else None


def labels(page: str) -> list[str]:
    """Every heading, table header, figure caption and image description: what labels a result."""
    found = re.findall(r"<(h[1-4]|th|figcaption)>(.*?)</\1>", page, re.S)
    return [html.unescape(re.sub(r"<[^>]+>", "", text)) for _, text in found] + re.findall(r' alt="([^"]*)"', page)


def assert_offline(page: str) -> None:
    assert "http://" not in page and "https://" not in page
    assert not re.search(r'(src|href)="(?!data:|#)', page), "a resource that is not embedded"
    assert "<script" not in page


def test_split_part_known_names():
    assert split_part("blocks.7.mlp.fc2") == (7, "mlp.fc2")
    assert split_part("blocks.11.attn.qkv[768:1152]") == (11, "attn.qkv[768:1152]")
    assert split_part("encoder.layer.3.attention.v_proj") == (3, "attention.v_proj")
    assert split_part("head") == (None, "head")


def test_read_sigma_round_trip(tmp_path):
    write_fake_run_files(tmp_path)
    notes: list[str] = []
    entries = read_sigma(tmp_path, notes)
    assert notes == []
    assert len(entries) == 12 * len(LINEARS)
    assert [e.layer for e in entries] == sorted(e.layer for e in entries)
    fc2_7 = next(e for e in entries if e.layer == 7 and e.linear == "mlp.fc2")
    np.testing.assert_allclose(fc2_7.delta[:3], [planted_delta(7, k) for k in range(3)], rtol=1e-6)
    np.testing.assert_allclose(fc2_7.sigma[0], 12.0, rtol=1e-6)


def test_run_report_content(run_dir, run_page):
    page = run_page
    assert [m.group(1) for m in re.finditer(r'<section id="([^"]+)">', page)] == list(SECTION_IDS)
    assert_offline(page)
    images = decoded_images(page)
    # 2 image panels + layer curves + norm violins + 2 angle violins + σ deltas + training curves
    assert len(images) == 8
    assert all(min(img.size) > 100 for img in images)

    side = section(page, "side-by-side")
    assert side.count("<img") == 2
    before = json.loads((run_dir / "analysis_before" / "analysis.json").read_text())
    after = json.loads((run_dir / "analysis_after" / "analysis.json").read_text())
    for meta_b, meta_a in zip(before["images"], after["images"]):
        assert f"before repair: {meta_b['defects_last_layer']} defects" in side
        assert f"after repair: {meta_a['defects_last_layer']} defects" in side
    # The planted model has defects, the marker-free one almost none: the page must show it.
    assert before["layers"][-1]["high_norm_rate"] > 0.01 and after["layers"][-1]["high_norm_rate"] < 0.005
    metrics = section(page, "metrics")
    assert f"{100 * before['layers'][-1]['high_norm_rate']:.2f}%" in metrics
    assert f"{100 * after['layers'][-1]['high_norm_rate']:.2f}%" in metrics
    # summary.json before/after table with the change column: 1.5 - 15.25; rates in % and percentage points
    assert "<td>15.25</td><td>1.5</td><td>-13.75</td>" in metrics
    assert "<td>3.52%</td><td>0.00%</td><td>-3.52 pp</td>" in metrics
    assert "Before vs after repair (<code>metrics</code>)" in metrics
    # one table: the feature cosines are rows of it, measured on the repaired model only
    assert "<code>features.cos_non_defect_mean</code></td><td>(original)</td><td>0.9975</td>" in metrics
    assert "Last layer on the held-out images" not in metrics  # no second before/after table
    assert metrics.index("Before vs after repair") < metrics.index("The same measurement per layer")  # the curves follow the table
    assert 'are under <a href="#metrics">Metrics</a>' in section(page, "per-layer")
    # this fake summary was not measured on the analyses' tokens: the page says so
    assert "measured other crops than its summary" in metrics
    assert "config.momentum" not in metrics and "<code>momentum</code></td><td>0.9</td>" in section(page, "config")
    assert "<title>SINDER report: planted:small</title>" in page
    assert f"from <code>{run_dir}</code>.</p>" in page  # the run's own analyses are not listed again
    assert 'class="banner"' not in page  # a finished run

    sigma = section(page, "sigma-deltas")
    rows = re.findall(r"<tr><td>(\d+)</td><td><code>([^<]+)</code></td>(.*?)</tr>", sigma)
    assert len(rows) == 10 * len(LINEARS)  # layers 0-1 unchanged, listed in a note instead
    cells = {(int(layer), html.unescape(lin)): re.findall(r"<td>([^<]*)</td>", rest) for layer, lin, rest in rows}
    assert cells[(7, "mlp.fc2")][4:7] == [f"{planted_delta(7, k):.4g}" for k in range(3)]
    assert "8 linear part(s) unchanged (Δσ = 0), in layer(s) 0, 1" in sigma

    config = section(page, "config")
    assert "75.5 s (1 min 16 s)" in config
    assert "40 logged steps; final skip ratio 97.50%. Stopped by the skip ratio" in config
    assert "1 line(s) are not JSON objects" in page  # the truncated log line is reported, not fatal


def test_residual_after_repair_is_shown_per_image(run_page):
    metrics = section(run_page, "metrics")
    assert "1 of 2 held-out images keep high-norm tokens" in metrics
    assert "skimage:moon" in metrics and "(5, 7) 3.6×" in metrics and "(9, 2) 3.1×" in metrics


def test_page_words_name_every_model_and_say_what_the_analyses_are(run_dir, run_page, tmp_path, monkeypatch):
    """Plain headings (not "Held-out analysis (A vs B)"), the after-repair analysis labelled as the
    repaired model (its analysis.json names the spec the run started from), and a title naming
    every model on the page."""
    from sinder.report import default_title, read_inputs
    from sinder.report.sections import section_metrics

    assert "A vs B" not in run_page and "Held-out analysis" not in run_page
    assert "analysis_after/ of the same held-out photos" in section(run_page, "metrics")  # what the curves beside the table are
    row = re.search(r"<tr><td><code>model</code></td>(.*?)</tr>", section(run_page, "config")).group(1)
    assert re.findall(r"<td>([^<]*)</td>", row) == ["planted:small", "planted:small, repaired by SINDER"]
    other = shutil.copytree(run_dir / "analysis_before", tmp_path / "other")
    summary = json.loads((other / "analysis.json").read_text())
    (other / "analysis.json").write_text(json.dumps({**summary, "model": "timm:vit_small_patch14_dinov2"}))
    inputs = read_inputs([run_dir / "analysis_after", other])
    assert default_title(inputs) == "SINDER report: planted:small, repaired by SINDER vs timm:vit_small_patch14_dinov2"
    assert "<h3>Last layer: analysis_after and other side by side</h3>" in section_metrics(inputs, ReportConfig())
    # the figures/ of a run's analysis_after label their rows as the repaired model too
    from sinder import plots

    rows = []
    for name in ("save_png", "norm_violins", "angle_violins"):
        monkeypatch.setattr(plots, name, lambda *args, **kwargs: None)
    monkeypatch.setattr(plots, "comparison_panel", lambda panel_rows, title: rows.extend(label for label, _ in panel_rows))
    plots.write_analysis_figures(AnalysisFolder(run_dir / "analysis_after").read(), tmp_path / "figures")
    assert rows and set(rows) == {"planted:small"}  # not inside a run folder: the spec as analysed
    rows.clear()
    plots.write_analysis_figures(AnalysisFolder(run_dir / "analysis_after").read(), run_dir / "analysis_after" / "figures")
    assert rows and set(rows) == {"planted:small, repaired by SINDER"}


def test_verdict_of_each_analysis_is_at_the_top_of_the_page(run_dir, run_page, tmp_path):
    """The answer first: under the title, before provenance and sections, each analysis's verdict
    as `sinder analyze` printed it; an analysis.json written before verdicts gets one computed."""
    header = run_page.split("<section", 1)[0]
    box = re.search(r'<h1>[^<]*</h1><div class="verdict" id="verdict">(.*?)</div>', header, re.S)
    assert box, "the verdict is not right under the title"
    lines = [html.unescape(re.sub(r"<[^>]+>", "", p)) for p in re.findall(r"<p>(.*?)</p>", box.group(1))]
    before = json.loads((run_dir / "analysis_before" / "analysis.json").read_text())["verdict"]
    after = json.loads((run_dir / "analysis_after" / "analysis.json").read_text())["verdict"]
    assert before["has_defects"] and before["onset_layer"] == 4 and not after["has_defects"]
    assert lines == [f"before repair: {before['reason']}", f"after repair: {after['reason']}"]
    assert lines[0].startswith("before repair: singular defects from block 4: ") and lines[1].startswith(
        "after repair: no singular defects"
    )
    old = shutil.copytree(run_dir / "analysis_before", tmp_path / "old")
    summary = json.loads((old / "analysis.json").read_text())
    summary.pop("verdict")
    (old / "analysis.json").write_text(json.dumps(summary))
    page = build_report([old], ReportConfig(dpi=30))
    assert f'<div class="verdict" id="verdict"><p><b>verdict</b>: {html.escape(before["reason"])}</p></div>' in page


def test_training_plot_names_the_rule_and_the_stop_reason():
    """The layer panel uses the run's own rule; a run stopped by a clean pass says so on the skip-ratio
    chart, whose flat line under the stop line would otherwise read as 'never converged'."""
    from sinder.plots import training_curves

    rows = [{"step": s, "skip_ratio": 0.004, "loss": 1.0 / s, "layer": 4} for s in range(1, 30)]
    skip, _, layer = training_curves(rows, 0.75, stop_reason="clean_pass", min_defects=1).axes
    assert layer.get_title() == "First layer with ≥ 1 defect"
    assert skip.get_title() == "Skip ratio (images without defects): stopped by a clean pass"
    assert [t.get_text().replace("\n", " ") for t in skip.texts] == [
        "Stopped by a clean pass: a whole pass over the training images found no defect left to train on"
    ]
    assert [t.get_text() for t in skip.get_legend().get_texts()] == ["skip-ratio stop at 75% (not needed)"]
    assert skip.lines[0].get_ydata()[0] == pytest.approx(0.4)  # in %, like the stop line
    skip, _, layer = training_curves(rows, 0.75, stop_reason="skip_ratio", min_defects=3, weak_defects=True).axes
    assert layer.get_title() == "First layer with ≥ 3 defects (or weak defects)"
    assert [t.get_text() for t in skip.get_legend().get_texts()] == ["skip-ratio stop at 75%"]


@pytest.mark.parametrize("finished", [True, False])
def test_no_analysis_run_and_missing_sigma_are_each_said_once(tmp_path, finished):
    """A --no-analysis run says so (not "analysis_before holds no analysis.json"); a missing σ file is
    explained in its section only, not again in the notes at the top."""
    run = tmp_path / "run"
    write_fake_run_files(run, steps=5, truncated_line=False)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "analysis": False}))
    (run / "sigma.safetensors").unlink()
    if not finished:
        (run / "summary.json").unlink()
    page = html.unescape(build_report([run], ReportConfig(dpi=30)))
    assert "run made with --no-analysis" in page and "holds no analysis.json" not in page
    notices = re.findall(r'class="note">([^<]*)', page)
    assert sum("σ" in n for n in notices) == 1, notices
    assert "No image maps: run made with --no-analysis." in section(page, "side-by-side")


def test_norm_colour_scale_shared(run_dir):
    a = AnalysisFolder(run_dir / "analysis_before").read().maps[0]
    b = AnalysisFolder(run_dir / "analysis_after").read().maps[0]
    fig = comparison_panel([("A", a), ("B", b)], "t")
    axes = fig.axes
    clims = [ax.images[0].get_clim() for ax in (axes[2], axes[8])]  # row-major: column 2 of rows 0 and 1
    lo, hi = min(a.norms.min(), b.norms.min()), max(a.norms.max(), b.norms.max())
    assert clims[0] == clims[1]
    np.testing.assert_allclose(clims[0], (lo, hi), rtol=1e-6)
    assert a.norms.max() > 5 * b.norms.max()  # so sharing the scale matters here


def test_single_analysis_via_cli_and_refusal(run_dir, run_page, tmp_path, capsys):
    out = tmp_path / "single.html"
    assert cli.main(["report", str(run_dir / "analysis_before"), "--out", str(out), "--title", "Only <A>", "--dpi", "50"]) == 0
    page = out.read_text()
    assert "<title>Only &lt;A&gt;</title>" in page
    assert [m.group(1) for m in re.finditer(r'<section id="([^"]+)">', page)] == list(SECTION_IDS)
    assert_offline(page)
    assert len(decoded_images(page)) == 2 + 1 + 1 + 1  # panels, layer curves, norm violins, one angle violin
    # an analysis folder has no σ deltas by design: said plainly, not as a warning
    assert "analysis folders have none" in section(page, "sigma-deltas")
    assert 'class="note"' not in section(page, "sigma-deltas")
    # One row per image panel: half the height of the two-row panels of the run report.
    single_h = decoded_images(section(page, "side-by-side"))[0].height / 50  # inches at --dpi 50
    double_h = decoded_images(section(run_page, "side-by-side"))[0].height / 60
    assert single_h < 0.7 * double_h

    capsys.readouterr()
    before = out.read_bytes()
    assert cli.main(["report", str(run_dir / "analysis_before"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--overwrite" in err
    assert out.read_bytes() == before
    assert cli.main(["report", str(run_dir / "analysis_before"), "--out", str(out), "--overwrite", "--dpi", "40"]) == 0
    assert out.read_bytes() != before


@pytest.mark.parametrize("case", ["missing", "file", "empty_dir", "three_analyses", "two_runs", "bad_dpi"])
def test_bad_arguments_exit_2_with_one_line(case, run_dir, tmp_path, capsys):
    out = tmp_path / "r.html"
    (tmp_path / "empty").mkdir()
    (tmp_path / "note.txt").write_text("x")
    args = {
        "missing": [str(tmp_path / "nope")],
        "file": [str(tmp_path / "note.txt")],
        "empty_dir": [str(tmp_path / "empty")],
        "three_analyses": [str(run_dir), str(run_dir / "analysis_before")],
        "two_runs": [str(run_dir), str(run_dir)],
        "bad_dpi": [str(run_dir), "--dpi", "5"],
    }[case]
    capsys.readouterr()
    assert cli.main(["report", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sinder report: error: ") and err.count("\n") == 1, err
    assert not out.exists()


def test_partial_run_folder_is_noted_not_fatal(tmp_path):
    run = tmp_path / "run"
    write_fake_run_files(run, steps=12, truncated_line=False)
    (run / "config.json").unlink()
    (run / "sigma.safetensors").write_bytes(b"not a safetensors file")
    (run / "summary.json").write_text("{broken")
    page = build_report([run], ReportConfig(dpi=40))
    assert [m.group(1) for m in re.finditer(r'<section id="([^"]+)">', page)] == list(SECTION_IDS)
    for expected in (
        "config.json not found",
        "cannot be read as safetensors",
        "summary.json is not valid JSON",
        "analysis_before holds no analysis.json",
        "no image maps available",
        "no σ deltas",
    ):
        assert expected in html.unescape(page), expected
    assert banner_text(page) == (
        "Unfinished run: summary.json unreadable — training stopped at step 11 (last checkpoint: none). "
        "There is no config.json to resume from: start again with the same sinder repair command plus --overwrite."
    )
    assert len(decoded_images(page)) == 1  # only the training curves


def test_unreadable_maps_keep_the_layer_statistics(run_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(run_dir / "analysis_before", broken)
    (broken / "maps.npz").write_bytes(b"PK\x03\x04 truncated zip")
    page = build_report([broken], ReportConfig(dpi=40))
    assert "maps/distributions unreadable" in page
    assert "no image maps available" in section(page, "side-by-side")
    assert len(decoded_images(section(page, "per-layer"))) == 1  # the layer curves only: no distributions
    summary = json.loads((broken / "analysis.json").read_text())
    assert f"{100 * summary['layers'][-1]['defect_rate']:.2f}%" in section(page, "metrics")


# ----------------------------------------------------------------------------- unfinished runs


def save_fake_checkpoint(run, step: int) -> None:
    from sinder.repair.checkpoint import TrainState, save_checkpoint

    eps = {"blocks.2.mlp_in": torch.zeros(4)}
    momentum = {k: v.clone() for k, v in eps.items()}
    save_checkpoint(run / "checkpoint.safetensors", eps, momentum, TrainState(step=step), {"signature": {}, "data_digest": "x"})


def partial_folder(case: str, root, run_dir):
    """The folder a run leaves when it stops at ``case`` (written in the order sinder repair writes:
    analysis_before, config + log, checkpoints, sigma, weights, analysis_after, summary last)."""
    run = root / "run"
    if case == "analyze_only":
        return shutil.copytree(run_dir / "analysis_before", root / "analysis")
    run.mkdir()
    if case == "empty":
        return run
    if case != "analysis_before_only":
        write_fake_run_files(run, steps=12, truncated_line=False)
        keep = {"config_only": 1, "config_log": 2, "config_log_checkpoint": 2, "weights_no_summary": 3, "summary_no_after": 4}[case]
        for name in ("config.json", "log.jsonl", "sigma.safetensors", "summary.json")[keep:]:
            (run / name).unlink()
    if case in ("config_log_checkpoint", "weights_no_summary"):
        save_fake_checkpoint(run, step=10)
    if case == "weights_no_summary":
        (run / "weights").mkdir()
        (run / "weights" / "model.safetensors").write_bytes(b"weights")
        shutil.copytree(run_dir / "analysis_after", run / "analysis_after")  # finished, but the summary was not
    if case in ("weights_no_summary", "analysis_before_only", "summary_no_after"):
        shutil.copytree(run_dir / "analysis_before", run / "analysis_before")
    return run


RESUME = "Resume with the same sinder repair command plus --resume."
PARTIAL_STATES = {  # case: the banner (None: a finished run or an analysis, no banner)
    "config_only": f"Unfinished run: no summary.json — no training step was logged (last checkpoint: none). {RESUME}",
    "config_log": f"Unfinished run: no summary.json — training stopped at step 11 (last checkpoint: none). {RESUME}",
    "config_log_checkpoint": f"Unfinished run: no summary.json — training stopped at step 11 (last checkpoint: step 10). {RESUME}",
    "weights_no_summary": f"Unfinished run: no summary.json — training stopped at step 11 (last checkpoint: step 10). {RESUME}",
    "analysis_before_only": "Unfinished run: no summary.json — no training step was logged (last checkpoint: none). "
    "There is no config.json to resume from: start again with the same sinder repair command plus --overwrite.",
    "summary_no_after": None,
    "analyze_only": None,
}


@pytest.mark.parametrize("case", ["empty", *PARTIAL_STATES])
def test_every_partial_run_folder_reports_what_it_holds(case, run_dir, tmp_path, monkeypatch, capsys, caplog):
    """Interrupted anywhere, a folder gets a page (or one line why not) that says whether the run finished
    and labels nothing 'after repair' unless it did."""
    folder = partial_folder(case, tmp_path, run_dir)
    monkeypatch.chdir(tmp_path)  # relative paths: the header once showed "from A: A."
    out = tmp_path / "r.html"
    rc = cli.main(["report", folder.name, "--out", str(out), "--dpi", "30", "--max-images", "1"])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    if case == "empty":
        assert rc == 2 and not out.exists()
        assert captured.err.startswith("sinder report: error: run is neither a repair run folder") and captured.err.count("\n") == 1
        return
    assert rc == 0 and "error" not in captured.err
    page = out.read_text()
    assert [m.group(1) for m in re.finditer(r'<section id="([^"]+)">', page)] == list(SECTION_IDS)
    expected = PARTIAL_STATES[case]
    assert banner_text(page) == expected
    assert [r.getMessage() for r in caplog.records if r.levelno >= 30] == (
        [expected.replace("sinder repair", "`sinder repair`")] if expected else []
    )
    assert f"by <code>sinder report</code> from <code>{folder.name}</code>.</p>" in page
    if expected:
        assert re.search(r'<body><header><div class="banner"', page), "the banner comes first"
        assert "after repair" not in page and not [t for t in labels(page) if "after" in t.lower()]
    if case == "weights_no_summary":  # analysis_after exists, but the run never said it finished
        assert "analysis_after is left out" in page and section(page, "side-by-side").count("<img") == 1
        assert re.findall(r"(before|after) repair: \d+ defects", page) == ["before"]
    if case == "summary_no_after":
        assert "analysis_after holds no analysis.json; the &#x27;after repair&#x27; column is missing" in page
        assert "Before vs after repair" in section(page, "metrics")
    if case == "analyze_only":
        notes = re.findall(r'class="note">([^<]*)', page)  # nothing is missing from an analysis: no warnings
        assert notes == ["1 more image(s) not shown (--max-images 1)"]


def test_cli_warns_once_about_an_unfinished_run_and_prints_the_page_once(tmp_path):
    """The real command line: one 'warning:' line, the page written, exit 0, 'report written to' once."""
    run = tmp_path / "run"
    write_fake_run_files(run, steps=12, truncated_line=False)
    (run / "summary.json").unlink()
    save_fake_checkpoint(run, step=10)
    out = tmp_path / "r.html"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    res = run_sinder("report", run, "--out", out, "--dpi", 30, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    assert res.stdout == f"report written to {out}\n" and "report written to" not in res.stderr  # said once
    warnings = [line for line in res.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: Unfinished run: no summary.json — training stopped at step 11 (last checkpoint: step 10). "
        "Resume with the same `sinder repair` command plus --resume."
    ]
    assert banner_text(out.read_text()).startswith("Unfinished run: no summary.json")


# ----------------------------------------------------------------------------- figure layout


def rendered(fig):
    """``fig`` laid out and drawn by Agg, and its renderer (for window extents)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


def test_colour_bars_keep_clear_of_the_next_panel(run_dir):
    a = AnalysisFolder(run_dir / "analysis_before").read().maps[0]
    b = AnalysisFolder(run_dir / "analysis_after").read().maps[0]
    fig = comparison_panel([("A", a), ("B", b)], "t")
    renderer = rendered(fig)
    panels = [ax for ax in fig.axes if ax.get_subplotspec() is not None]  # the grid; colour bars sit beside it
    bars = [ax for ax in fig.axes if ax.get_subplotspec() is None]
    assert len(panels) == 12 and len(bars) == 6
    for bar in bars:
        box = bar.get_tightbbox(renderer)  # ticks, tick labels and the label
        label = bar.yaxis.label.get_window_extent(renderer)
        assert bar.get_ylabel() and box.contains(label.x1 - 1, label.y0 + 1)
        right = [p.get_tightbbox(renderer) for p in panels if p.get_window_extent(renderer).x0 > box.x0]
        assert not any(r.overlaps(label) or r.overlaps(box) for r in right)
        row = [r for r in right if r.y0 < box.y1 and r.y1 > box.y0]
        if row:  # at least a quarter inch of white between a bar's label and the next panel (title included)
            assert min(r.x0 for r in row) - box.x1 >= 0.25 * fig.dpi, bar.get_ylabel()
    norm_ticks = [t.get_text() for t in bars[0].get_yticklabels() if t.get_text()]
    assert len(norm_ticks) >= 3 and all(re.fullmatch(r"[\d.]+", t) for t in norm_ticks), norm_ticks


def fake_layer_summary(ratios: list[float]) -> dict:
    return {
        "layers": [
            {"index": i, "theory_alignment": 0.9, "defect_rate": 0.02 * i, "high_norm_rate": 0.015 * i, "max_over_median": r}
            for i, r in enumerate(ratios)
        ]
    }


def visible_labels(axis, renderer, lo: float, hi: float) -> list[str]:
    ticks = axis.get_major_ticks() + axis.get_minor_ticks()
    return [t.label1.get_text() for t in ticks if t.label1.get_visible() and t.label1.get_text() and lo <= t.get_loc() <= hi]


def two_series_layer_curves():
    # early layers at ~1.1, the last at 20: matplotlib alone labelled only 10⁰ and 10¹ there
    return layer_curves(
        [
            ("before repair", fake_layer_summary([1.1, 1.3, 2, 4, 12, 20])),
            ("after repair", fake_layer_summary([1.1, 1.2, 1.3, 1.4, 1.3, 1.5])),
        ]
    )


def test_layer_curve_legends_hide_no_curve():
    fig = two_series_layer_curves()
    renderer = rendered(fig)
    for ax in fig.axes:
        legend = ax.get_legend().get_window_extent(renderer)
        assert not legend.overlaps(ax.get_window_extent(renderer)), ax.get_title()  # outside the plotted area
        assert not legend.overlaps(ax.xaxis.label.get_window_extent(renderer))
        assert all(not legend.overlaps(t.get_window_extent(renderer)) for t in ax.get_xticklabels() if t.get_text())


def test_max_over_median_log_axis_labels_round_values():
    fig = two_series_layer_curves()
    renderer = rendered(fig)
    ratio = fig.axes[2]
    shown = visible_labels(ratio.yaxis, renderer, *ratio.get_ylim())
    assert len(shown) >= 4 and all(re.fullmatch(r"[\d.]+", t) for t in shown), shown  # 1, 2, 5, 10, 20


def test_angle_violins_stay_inside_the_frame():
    rng = np.random.default_rng(0)
    dist = {}
    for i in range(3):  # after repair: every token at ~90° to ν; the control spread out; one layer at ~0°
        dist[f"angles_{i}"] = (90 - 0.3 * rng.random(200)) if i else 0.3 * rng.random(200)
        dist[f"angles_random_{i}"] = 60 + 30 * rng.random(200)
    fig = angle_violins(dist, 3)
    rendered(fig)
    ax = fig.axes[0]
    lo, hi = ax.get_ylim()
    bodies = [c for c in ax.collections if c.get_paths() and len(c.get_paths()[0].vertices) > 10]
    assert len(bodies) == 6
    for body in bodies:
        y = body.get_paths()[0].vertices[:, 1]
        assert y.min() >= lo + 3 and y.max() <= hi - 3  # a margin of at least 3° to the frame
    assert (lo, hi) == ANGLE_LIMITS
    medians = [line for line in ax.lines if line.get_marker() == "o"]
    assert len(medians) == 2 and np.all(np.abs(medians[0].get_ydata()[1:] - 90) < 0.5)
    assert ax.get_legend().get_window_extent().y1 < ax.get_window_extent().y0  # under the plot, hiding nothing


# ----------------------------------------------------------------------------- real browser


def test_headless_browser_shows_the_unfinished_banner_first(run_dir, tmp_path):
    binary = chromium()
    if binary is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run installs it)")
    run = partial_folder("config_log_checkpoint", tmp_path, run_dir)
    result = browser_check(binary, build_report([run], ReportConfig(dpi=30)), tmp_path)
    banner = result["banner"]
    assert banner is not None and banner["bottom"] <= result["title"]["top"], "the banner sits above the title"
    assert banner["top"] < 40 and banner["bottom"] - banner["top"] > 20, banner  # on screen without scrolling, not a sliver
    assert banner["width"] > 0.8 * result["viewport"] - 60
    red, green, blue = map(int, re.findall(r"\d+", banner["background"])[:3])
    assert red > green + 10 and red > blue + 10, banner["background"]  # a red box, unlike the yellow notes


def test_headless_browser_renders_report(run_page, tmp_path):
    binary = chromium()
    if binary is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run installs it)")
    page_path = tmp_path / "report.html"
    page_path.write_text(run_page, encoding="utf-8")

    shot = tmp_path / "shot.png"
    res = run_browser(binary, [f"--screenshot={shot}", "--window-size=1400,3000", page_path.as_uri()], tmp_path / "p1")
    assert shot.is_file(), res.stderr[-2000:]
    img = Image.open(shot).convert("RGB")
    assert img.size == (1400, 3000)
    arr = np.asarray(img).astype(np.int32)
    non_white = (arr.min(axis=2) < 235).mean()
    colours = len(np.unique((arr[..., 0] << 16) | (arr[..., 1] << 8) | arr[..., 2]))
    assert non_white > 0.05, f"screenshot nearly blank ({non_white:.1%} non-white)"
    assert colours > 500, f"only {colours} colours: plots did not render"

    # The same page plus a checker script; the CSP keeps img-src data: only, so every image must be embedded.
    result = browser_check(binary, run_page, tmp_path)
    assert result["banner"] is None  # a finished run
    expected_widths = [im.width for im in decoded_images(run_page)]
    assert result["images"] == len(expected_widths) == 8
    assert result["decoded"] == result["images"], "all images decoded"
    assert result["widths"] == expected_widths
    assert result["sections"] == list(SECTION_IDS)
