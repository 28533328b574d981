"""Conventions every sinder command keeps (issue #8): --version, -q/-v, help texts with their
defaults, progress bars only on a terminal, quiet third-party loggers, every input file accounted
for (broken symlinks, the same file reached twice) and fast start-up on large photos."""

from __future__ import annotations

import argparse
import io
import logging
import os
import re
import subprocess
import sys
from importlib.metadata import version

import numpy as np
import pytest
import torch
from helpers.cli import run_sinder as sinder
from helpers.cli import sinder_argv
from PIL import Image


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("conventions")
    rng = np.random.default_rng(0)
    (root / "photos").mkdir()
    Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(root / "photos" / "p0.png")
    (root / "afile").write_text("an --out that is a file: analyze stops right after listing and checking the images")
    return root


# ----------------------------------------------------------------------------- --version, -q, -v


def test_version_prints_the_installed_version():
    proc = sinder("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"sinder {version('sinder')}\n"


@pytest.fixture(scope="module")
def repeated(photos):
    """The same photo twice: an info line (the repeat is dropped), then an error (--out is a file)."""
    p0 = photos / "photos" / "p0.png"
    args = ["analyze", "planted:small", p0, p0, "--out", photos / "afile"]
    loud = sinder(*args)
    assert "the same file as" in loud.stderr, loud.stderr
    return args, loud


@pytest.mark.parametrize("where", ["global", "after the command"])
def test_quiet_leaves_only_warnings_and_errors(repeated, where):
    """-q hides info lines; like -v it is accepted before and after the command."""
    args, loud = repeated
    quiet = sinder("-q", *args) if where == "global" else sinder(*args[:1], "-q", *args[1:])
    assert quiet.returncode == 2
    assert quiet.stderr.splitlines() == [line for line in loud.stderr.splitlines() if line.startswith("sinder analyze: error:")]


def test_verbose_and_quiet_together_are_refused():
    proc = sinder("-v", "report", "x", "--out", "y.html", "-q")
    assert proc.returncode == 2 and "contradict" in proc.stderr


def test_logging_levels():
    from sinder.cli import NOISY_LOGGERS, configure_logging

    configure_logging(verbose=True, quiet=False)
    assert logging.getLogger("sinder.images").isEnabledFor(logging.DEBUG)
    for name in NOISY_LOGGERS:
        assert not logging.getLogger(name).isEnabledFor(logging.INFO), name
    configure_logging(verbose=False, quiet=True)  # levels are reset on every call, not only the first
    assert not logging.getLogger("sinder.images").isEnabledFor(logging.INFO)
    assert logging.getLogger("sinder.images").isEnabledFor(logging.WARNING)
    configure_logging(verbose=False, quiet=False)


# ----------------------------------------------------------------------------- help and defaults


def _options():
    from sinder.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in [("sinder", parser), *sub.choices.items()]:
        for action in p._actions:
            if not isinstance(action, (argparse._SubParsersAction, argparse._HelpAction, argparse._VersionAction)):
                yield name, action


def _shown(default) -> str:
    return f"{default:g}" if isinstance(default, float) else str(default)


def test_every_option_has_help_and_shows_its_default():
    bad = []
    for command, action in _options():
        label = f"sinder {command} {'/'.join(action.option_strings) or action.dest}"
        help_text = action.help or ""
        if not help_text.strip():
            bad.append(f"{label}: no help")
        d = action.default
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            continue  # a flag: --x turns on what is off, --no-x turns off what is on
        if d is None or d is False or d is argparse.SUPPRESS or (isinstance(d, (list, tuple)) and not d):
            continue  # nothing to show: the option is off or unset unless given
        if "default" not in help_text or _shown(d) not in help_text:
            bad.append(f"{label}: default {d!r} not shown in {help_text!r}")
    assert not bad, "\n".join(bad)


def test_skip_less_than_help_says_which_commands_it_acts_in():
    """It decides what repair trains on; analyze and evaluate only record it with the rule."""
    helps = {command: action.help for command, action in _options() if "--skip-less-than" in action.option_strings}
    for command in ("repair", "compare"):
        assert helps[command].startswith("defects a layer needs before repair trains on it"), helps[command]
    for command in ("analyze", "evaluate"):
        assert helps[command].startswith("used by sinder repair only") and "changes nothing" in helps[command], helps[command]


# ----------------------------------------------------------------------------- numbers for people


def _layer(rate: float, align=None) -> dict:
    return {
        "index": 0,
        "theory_alignment": align,
        "defect_rate": rate,
        "high_norm_rate": rate,
        "norm_median": 32.0,
        "max_over_median": 9.5,
        "gate_rejected_rate": 0.0,
    }


def test_rates_are_percentages_and_counts_agree_with_their_noun_in_every_command():
    """One unit for a rate in the terminal (repair printed 0.6118 -> 1.135e-07 where the demo printed
    57.36%), and no "1 images". JSON keeps the fractions: only the printed text changes."""
    from sinder.analyze import format_table
    from sinder.commands.demo import comparison_table, residual_lines
    from sinder.commands.repair import format_summary
    from sinder.evaluate import format_table as evaluate_table

    last = {"energy_along_direction": 0.6118, "max_over_median": 9.48, "high_norm_rate": 0.0193, "defect_rate": 0.0193}
    fixed = {"energy_along_direction": 1.135e-07, "max_over_median": 1.15, "high_norm_rate": 0.0, "defect_rate": 0.0}
    summary = {
        "steps": 1,
        "images_seen": 1,
        "seconds": 1.0,
        "stop_reason": "clean_pass",
        "final_skip_ratio": 0.008,
        "metrics": {"num_images": 1, "before": last, "after": fixed, "features": {"cls_cosine": 0.9999}},
    }
    repair_text = format_summary(summary)
    assert "energy_along_direction" in repair_text and "61.18%" in repair_text and "0.00%" in repair_text, repair_text
    assert "0.6118" not in repair_text and "e-07" not in repair_text
    assert "final skip ratio 0.80%" in repair_text and "held-out (1 image)" in repair_text
    demo_text = comparison_table({"layers": [last]}, {"layers": [fixed]}, None)
    assert "61.18%" in demo_text and "1.93%" in demo_text and "0.6118" not in demo_text, demo_text
    residual = [{"image": "a", "high_norm_tokens": 1, "strongest": []}, {"image": "b", "high_norm_tokens": 2, "strongest": []}]
    assert residual_lines(residual)[1:] == ["  a: 1 token", "  b: 2 tokens"]
    table = format_table(
        {"layers": [_layer(0.0193, 0.99)], "direction_consistency_deg": 3.0, "direction_consistency_images": 1, "rule": {"norm_gate": 2.0}}
    )
    assert "1.93%" in table and "(1 image with high-norm defects)" in table, table
    report = {"models": {"m": {"high_norm_rate": 0.0193, "max_over_median": 9.48, "top1@20": 0.5}}}
    assert evaluate_table(report).splitlines()[2].split()[1:] == ["1.93%", "9.4800", "50.00%"]


# ----------------------------------------------------------------------------- progress bars


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_draws_only_on_a_terminal_and_when_enabled(monkeypatch):
    from sinder.progress import progress_bar

    monkeypatch.setattr(sys, "stderr", _Terminal())
    assert not progress_bar(total=3).disable
    assert progress_bar(False, total=3).disable  # --no-progress, -q
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a log file or a pipe
    assert progress_bar(total=3).disable
    assert list(progress_bar(iterable=range(3))) == [0, 1, 2]  # a disabled bar still iterates


def test_the_repair_bar_promises_no_end_from_the_default_budget_and_shows_the_stop_rule(monkeypatch):
    """The default 30000-step budget is a cap, not a forecast (a ViT-L repair stops by its rule after
    a few hundred): no total, so no ETA days away; a budget the user set is the total. The postfix
    shows the skip ratio against the ratio that stops the run."""
    from sinder.repair import RepairConfig
    from sinder.repair.loop import ProgressBar

    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    bar = ProgressBar(RepairConfig(), initial=0)
    assert bar.bar.total is None
    bar.on_step(None, {"skip_ratio": 0.4, "layer": 9, "loss": 0.25})
    bar.bar.refresh()
    line = term.getvalue().split("\r")[-1]
    assert "skip=0.40/0.75" in line and "layer=9" in line and "/30000" not in line, line
    bar.on_end(None)
    capped = ProgressBar(RepairConfig(max_steps=60, stop_skip_ratio=0.9), initial=5)
    assert (capped.bar.total, capped.bar.n) == (60, 5)  # a resumed run starts where it stopped
    capped.on_step(None, {"skip_ratio": 0.5, "layer": 3, "loss": None})
    capped.bar.refresh()
    assert "6/60" in term.getvalue().split("\r")[-1] and "skip=0.50/0.90" in term.getvalue().split("\r")[-1]
    capped.on_end(None)


@pytest.mark.slow
def test_analyze_log_has_no_carriage_returns_nor_pil_chunks(photos, tmp_path):
    """`sinder -v analyze ... 2> log`: stderr is a pipe, so no bar and no \r; -v adds sinder's
    debug lines, not PIL's per-chunk ones; the slow start-up phases are announced."""
    out = tmp_path / "o"
    proc = sinder("-v", "analyze", "planted:small", photos / "photos", "--out", out, "--resolution", "42", "--no-figures")
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr
    assert "STREAM" not in proc.stderr and "IHDR" not in proc.stderr, proc.stderr  # PIL's PNG chunk log
    assert "image path(s) listed" in proc.stderr  # one of sinder's own debug lines
    for note in ("loading planted:small", "predicting the defect directions", "analysing 1 image at 42 px"):
        assert note in proc.stderr, proc.stderr
    assert "1 image analysed" in proc.stdout, proc.stdout  # one photo: singular, never "1 images"
    assert not re.search(r"\b1 images\b", proc.stdout + proc.stderr)


def on_terminal(*argv) -> bytes:
    """The CLI's stderr when it is a 100-column terminal (a pty), as a person sees it."""
    pty = pytest.importorskip("pty")
    import fcntl
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a new pty is 0 columns wide
    proc = subprocess.Popen(sinder_argv(*argv), stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the child closed its end
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    assert proc.wait(timeout=120) == 0, b"".join(chunks).decode(errors="replace")
    return b"".join(chunks)


@pytest.mark.slow
@pytest.mark.parametrize("flag, drawn", [(None, True), ("--no-progress", False), ("-q", False)])
def test_analyze_bar_on_a_terminal_unless_hidden(photos, tmp_path, flag, drawn):
    argv = ["analyze", "planted:small", photos / "photos", "--out", tmp_path / "o", "--resolution", "42", "--no-figures"]
    err = on_terminal(*argv, *([flag] if flag else []))
    assert (b"analyze:" in err and b"img/s" in err) == drawn, err
    assert (b"loading planted:small" in err) == (flag != "-q"), err


@pytest.mark.slow
@pytest.mark.parametrize("flag, drawn", [(None, True), ("-q", False)])
def test_evaluate_bar_on_a_terminal_unless_hidden(photos, tmp_path, flag, drawn):
    argv = ["evaluate", "planted:small", "--task", "intrinsic", "--data", photos / "photos", "--out", tmp_path / "o", "--resolution", "42"]
    err = on_terminal(*argv, *([flag] if flag else []))
    assert (b"intrinsic:" in err and b"img/s" in err) == drawn, err


def test_no_progress_is_an_option_of_every_command_with_a_bar():
    from sinder.cli import build_parser

    parser = build_parser()
    commands = (
        ["analyze", "m", "x", "--out", "o"],
        ["repair", "m", "--data", "x", "--out", "o"],
        ["demo"],
        ["evaluate", "m", "--task", "knn", "--data", "x", "--out", "o"],
        ["compare", "m", "--eval", "x", "--out", "o"],
    )
    for argv in commands:
        assert parser.parse_args([*argv, "--no-progress"]).progress is False
        assert parser.parse_args(["-q", *argv]).quiet and parser.parse_args([*argv, "-q"]).quiet


# ----------------------------------------------------------------------------- input files


def _png(path, size=(40, 30), seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def test_broken_symlinks_in_a_folder_are_skipped_with_a_reason(tmp_path):
    from sinder.images import ImageSet, list_images

    _png(tmp_path / "a.png")
    os.symlink(tmp_path / "gone.png", tmp_path / "dangling.png")
    os.symlink("loop.jpg", tmp_path / "loop.jpg")
    paths, missing = list_images([tmp_path])
    assert not missing
    images = ImageSet(paths, 28, 14, (0.5,) * 3, (0.5,) * 3, crop="aspect")
    assert images.usable() == [0]
    reasons = {name.split("/")[-1]: reason for name, reason in images.skipped.items()}
    assert reasons.keys() == {"dangling.png", "loop.jpg"}
    assert reasons["dangling.png"].startswith("dangling symlink") and reasons["loop.jpg"] == "symlink loop"


def test_one_file_reached_twice_is_used_once(tmp_path, caplog):
    from sinder.images import expand_inputs, list_images

    (tmp_path / "d").mkdir()
    _png(tmp_path / "d" / "a.png")
    _png(tmp_path / "d" / "b.png", seed=1)
    os.symlink(tmp_path / "d" / "a.png", tmp_path / "d" / "c_link.png")  # a second path in the folder
    with caplog.at_level(logging.INFO, logger="sinder"):
        paths, _ = list_images([tmp_path / "d", tmp_path / "d" / "b.png", tmp_path / "d" / ".." / "d" / "a.png"])
    assert [p.name for p in paths] == ["a.png", "b.png"]  # the first occurrence of each file
    repeats = [r for r in caplog.records if "the same file as" in r.getMessage()]
    assert len(repeats) == 1 and repeats[0].getMessage().startswith("3 image path(s)")
    items, _ = expand_inputs([tmp_path / "d" / "b.png", tmp_path / "d"])  # across inputs too
    assert [p.name for p in items] == ["b.png", "a.png"]


def test_large_photo_is_shrunk_early_and_matches_the_exact_resize(tmp_path, monkeypatch):
    """A 4096 px JPEG is decoded at a reduced scale (draft) and box-reduced before the exact
    bicubic resize: within 3 grey levels of resizing the full decode, with the full size kept."""
    from sinder import images as images_module
    from sinder.images import ImageSet, decode_image, load_image, preprocess

    y, x = np.mgrid[0:3072, 0:4096].astype(np.float32)
    arr = np.stack([(x / 9) % 256, (y / 7) % 256, ((x + y) / 23) % 256], -1).astype(np.uint8)
    Image.fromarray(arr).save(tmp_path / "big.jpg", quality=92)
    small, size = decode_image(tmp_path / "big.jpg", short_side=224)
    assert size == (4096, 3072) and small.size == (1024, 768)  # decoded at 1/4 scale: >= 3x the 224 px target
    mean, std = (0.5,) * 3, (0.25,) * 3
    full = load_image(tmp_path / "big.jpg")
    for crop in ("aspect", "square"):
        images = ImageSet([tmp_path / "big.jpg"], 224, 14, mean, std, crop=crop)
        fast = images.load(0)
        assert images.sizes[0] == (4096, 3072)
        with monkeypatch.context() as m:
            m.setattr(images_module, "REDUCING_GAP", None)  # PIL's exact resize of the full decode
            exact = preprocess(full, 224, 14, mean, std, square=crop == "square")
        assert fast.shape == exact.shape
        levels = ((fast - exact) * 0.25 * 255).abs()
        assert levels.max() <= 3 and levels.mean() < 0.5, (float(levels.max()), float(levels.mean()))


def test_small_downscales_stay_bit_exact():
    """Below a 6x downscale nothing is reduced first: the reference's torchvision pipeline, bit for bit."""
    from torchvision.transforms import functional as TF

    from sinder.images import preprocess

    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (1000, 1300, 3), dtype=np.uint8))
    ours = preprocess(img, 224, 14, (0.0,) * 3, (1.0,) * 3, square=True)
    ref = TF.to_tensor(TF.center_crop(TF.resize(img, 224, interpolation=TF.InterpolationMode.BICUBIC, antialias=True), 224))
    assert torch.equal(ours, ref)


# ----------------------------------------------------------------------------- planted build


def test_planted_build_runs_on_one_thread_and_restores_the_count(monkeypatch):
    """Hundreds of small ops: on a loaded 2-core machine 2 threads made planted:small 5x slower."""
    from sinder.planted import PlantedConfig, build_planted
    from sinder.planted import model as planted_model

    seen = []
    real = planted_model.defect_directions
    monkeypatch.setattr(planted_model, "defect_directions", lambda b: seen.append(torch.get_num_threads()) or real(b))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        build_planted(PlantedConfig())
        assert seen == [1]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
