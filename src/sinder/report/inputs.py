"""What a report is made from: a repair run folder and/or analysis folders, read through
:mod:`sinder.runfolder`. Every piece is optional; what is missing or unreadable becomes a note
shown at the top of the page instead of an error."""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import SinderError
from ..runfolder import (
    ANALYSIS_AFTER,
    ANALYSIS_JSON,
    CONFIG,
    LOG,
    REPAIRED,
    RUN_ANALYSES,
    RUN_FILES,
    SIGMA,
    SUMMARY,
    WEIGHTS,
    AnalysisFolder,
    AnalysisResult,
    RunFolder,
    is_after_repair,
    read_json_dict,
)

_LAYER_RE = re.compile(r"(?:^|\.)(\d+)\.")
_WRITTEN_BY = "pass a folder written by sinder repair, demo or analyze"
NO_ANALYSIS = "run made with --no-analysis"
NO_ANALYSIS_NOTE = f"{NO_ANALYSIS}: no before/after analyses (image maps, per-layer statistics)"


@dataclass
class AnalysisInput:
    label: str
    path: Path
    result: AnalysisResult
    repaired: bool = False  # a run's analysis_after: the model it shows is the repaired one

    @property
    def model(self) -> str | None:
        """The analysed model as the page names it: the spec, marked when it is the repaired model
        (analysis.json records the spec the run started from)."""
        spec = self.result.summary.get("model")
        return f"{spec}{REPAIRED}" if spec is not None and self.repaired else spec


@dataclass(frozen=True)
class SigmaEntry:
    """One factorised linear part: original singular values (descending) and learned − original."""

    part: str
    layer: int | None
    linear: str
    sigma: np.ndarray
    delta: np.ndarray


@dataclass
class RunInput:
    path: Path
    config: dict | None = None
    summary: dict | None = None
    log: list[dict] = field(default_factory=list)
    sigma: list[SigmaEntry] = field(default_factory=list)
    checkpoint: int | str = "none"  # the step of checkpoint.safetensors, "none" or "unreadable"
    sigma_notes: list[str] = field(default_factory=list)  # why there are no σ deltas: said once, in their section

    @property
    def without_analysis(self) -> bool:
        """Made with ``--no-analysis`` (config.json says so): no analysis folders by design."""
        return bool(self.config) and self.config.get("analysis") is False

    @property
    def model(self) -> str | None:
        """The spec the run repaired (config.json; repair writes ``backbone.describe()`` there)."""
        model = (self.config or {}).get("model") or (self.summary or {}).get("model")
        return model.get("model") if isinstance(model, dict) else model

    @property
    def stop_reason(self) -> str | None:
        return (self.summary or {}).get("stop_reason")

    @property
    def min_defects(self) -> int | None:
        """The rule's ``skip_less_than``: defects a layer needs before it is trained."""
        rule = (self.config or {}).get("rule")
        value = rule.get("skip_less_than") if isinstance(rule, dict) else None
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def weak_defects(self) -> bool:
        """Whether weakened defects also qualify a layer (config.json ``weak_defects`` > 0)."""
        value = (self.config or {}).get("weak_defects")
        return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0

    @property
    def finished(self) -> bool:
        """``summary.json`` is written last: without a readable one the run stopped before its end."""
        return self.summary is not None

    def is_sinder_run(self, analyses: Sequence[AnalysisInput]) -> bool:
        """Anything sinder wrote? (A Hugging Face model folder has a config.json, but no ``max_steps`` in it.)"""
        sinder_config = bool(self.config) and "max_steps" in self.config
        return bool(
            analyses
            or self.log
            or self.sigma
            or self.summary
            or sinder_config
            or self.checkpoint != "none"
            or (self.path / WEIGHTS).is_dir()
        )


@dataclass
class ReportInputs:
    run: RunInput | None
    analyses: list[AnalysisInput]
    notes: list[str] = field(default_factory=list)  # shown at the top of the page

    @property
    def unfinished(self) -> str | None:
        """The banner of a run folder without a readable summary (None for a finished run or analyses only)."""
        return unfinished_message(self.run) if self.run is not None and not self.run.finished else None


# ----------------------------------------------------------------------------- σ deltas


def split_part(part: str) -> tuple[int | None, str]:
    """``blocks.7.attn.qkv[768:1152]`` -> (7, ``attn.qkv[768:1152]``); no block index -> (None, part)."""
    m = _LAYER_RE.search(part)
    if m is None:
        return None, part
    return int(m.group(1)), part[m.end() :]


def read_sigma(folder: str | os.PathLike, notes: list[str]) -> list[SigmaEntry]:
    """The σ / Δσ pairs of the run ``folder``'s sigma file, ordered by layer then linear."""
    run = RunFolder(folder)
    before = len(notes)
    parts = run.read_sigma(notes)
    noted = len(notes) > before  # a missing or unreadable file, already explained
    where = run / SIGMA
    entries = []
    for part, pair in parts.items():
        if set(pair) != {"sigma", "delta"} or pair["sigma"].shape != pair["delta"].shape:
            notes.append(f"{where}: {part} lacks a matching sigma/delta pair; skipped")
            continue
        layer, linear = split_part(part)
        entries.append(SigmaEntry(part, layer, linear, pair["sigma"], pair["delta"]))
    if not entries and (parts or not noted):
        notes.append(f"{where} holds no <part>/sigma + <part>/delta pairs; the σ deltas are skipped")
    entries.sort(key=lambda e: (e.layer is None, e.layer or 0, e.linear))
    return entries


# ----------------------------------------------------------------------------- folders


def read_analysis(path: Path, label: str, notes: list[str], repaired: bool = False) -> AnalysisInput | None:
    """An analysis folder; its maps/distributions are optional (noted when unreadable). ``repaired``:
    it analyses a run's repaired model (its analysis.json names the spec the run started from)."""
    from safetensors import SafetensorError

    folder = AnalysisFolder(path)
    summary = read_json_dict(folder.path / ANALYSIS_JSON, notes)
    if summary is None:
        return None
    if not isinstance(summary.get("layers"), list) or not summary["layers"]:
        notes.append(f"{folder.path / ANALYSIS_JSON} has no per-layer results: not written by sinder analyze; skipped")
        return None
    try:
        return AnalysisInput(label, path, folder.read(), repaired)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, SafetensorError) as err:
        notes.append(f"{path}: maps/distributions unreadable ({type(err).__name__}: {err}); image maps and violins skipped")
        return AnalysisInput(label, path, AnalysisResult(summary=summary, directions=torch.zeros(0)), repaired)


def read_checkpoint_step(folder: RunFolder) -> int | str:
    """The step of the run's resumable checkpoint: an int, ``"none"`` or ``"unreadable"``."""
    if not folder.checkpoint.is_file():
        return "none"
    from ..repair.checkpoint import read_checkpoint_step as read_step

    try:
        return read_step(folder.checkpoint)
    except SinderError:
        return "unreadable"


def read_run(path: Path, notes: list[str]) -> tuple[RunInput, list[AnalysisInput]]:
    """A run folder and the before/after analyses inside it. An unfinished run (no readable summary)
    gets no 'after repair' column: only the summary, written last, vouches for its analysis_after."""
    folder = RunFolder(path)
    # a missing summary is what the unfinished-run banner says; an unreadable one is noted too
    summary = folder.read_summary(notes) if (folder / SUMMARY).exists() else None
    sigma_notes: list[str] = []  # shown in the σ section only: a second notice at the top said the same
    run = RunInput(path, folder.read_config(notes), summary, folder.read_log(notes), read_sigma(path, sigma_notes), sigma_notes=sigma_notes)
    if not run.finished:
        run.checkpoint = read_checkpoint_step(folder)
    analyses = []
    missing = []
    for sub, label in RUN_ANALYSES:
        if sub == ANALYSIS_AFTER and not run.finished:
            if AnalysisFolder.holds_analysis(folder / sub):
                notes.append(f"{folder / sub} is left out: it counts only once {SUMMARY} marks the run finished")
        elif AnalysisFolder.holds_analysis(folder / sub):
            found = read_analysis(folder / sub, label, notes, repaired=sub == ANALYSIS_AFTER)
            if found is not None:
                analyses.append(found)
        else:
            missing.append((sub, label))
    if run.without_analysis and not analyses:
        notes.append(NO_ANALYSIS_NOTE)
    else:
        notes.extend(f"{folder / sub} holds no {ANALYSIS_JSON}; the '{label}' column is missing" for sub, label in missing)
    return run, analyses


def unfinished_message(run: RunInput) -> str:
    """What the page's banner and the CLI's warning say about a run that has no readable summary."""
    missing = f"{SUMMARY} unreadable" if (run.path / SUMMARY).exists() else f"no {SUMMARY}"
    stopped = f"training stopped at step {run.log[-1]['step']}" if run.log else "no training step was logged"
    checkpoint = f"step {run.checkpoint}" if isinstance(run.checkpoint, int) else run.checkpoint
    # --resume needs config.json (RunFolder.check); without it only a fresh start is possible
    if (run.path / CONFIG).is_file():
        advice = "Resume with the same `sinder repair` command plus --resume."
    else:
        advice = f"There is no {CONFIG} to resume from: start again with the same `sinder repair` command plus --overwrite."
    return f"Unfinished run: {missing} — {stopped} (last checkpoint: {checkpoint}). {advice}"


def unique_labels(paths: Sequence[Path]) -> list[str]:
    """Column labels for analyses given by path: the folder name, made unique when needed."""
    labels = [p.name or str(p) for p in paths]
    if len(set(labels)) < len(labels):
        labels = [f"{p.parent.name}/{p.name}" for p in paths]
    if len(set(labels)) < len(labels):
        labels = [f"{chr(ord('A') + k)}: {lab}" for k, lab in enumerate(labels)]
    return labels


def _classify(raw: str | Path) -> tuple[Path, bool]:
    """(path, is an analysis folder); raise on a path that is neither an analysis nor a run folder."""
    path = Path(raw)
    if not path.is_dir():
        raise SinderError(
            f"{raw} is not a folder; pass a repair run folder (from sinder repair/demo) or an analysis folder (from sinder analyze)"
        )
    if AnalysisFolder.holds_analysis(path):
        return path, True
    if RunFolder.holds_run(path):
        return path, False
    raise SinderError(
        f"{raw} is neither a repair run folder ({', '.join(RUN_FILES)}) nor an analysis folder ({ANALYSIS_JSON}); {_WRITTEN_BY}"
    )


def read_inputs(paths: Sequence[str | Path]) -> ReportInputs:
    """Classify each path as a run or an analysis folder and read it; raise ``SinderError`` on
    a path that is neither, on more than one run, or on more than two analyses in all."""
    if not paths:
        raise SinderError("no input given; pass a repair run folder or one or two analysis folders")
    notes: list[str] = []
    run: RunInput | None = None
    analyses: list[AnalysisInput] = []
    explicit: list[Path] = []
    for raw in paths:
        path, is_analysis = _classify(raw)
        if is_analysis:
            explicit.append(path)
            continue
        if run is not None:
            raise SinderError(f"{raw}: only one repair run per report; write one report per run")
        run, found = read_run(path, notes)
        if not run.is_sinder_run(found):
            raise SinderError(f"{raw} holds no readable sinder run (no {SUMMARY}, {LOG}, {SIGMA} or analyses); {_WRITTEN_BY}")
        analyses.extend(found)
    if len(analyses) + len(explicit) > 2:
        raise SinderError(f"{len(analyses) + len(explicit)} analyses given; a report shows at most two side by side")
    for path, label in zip(explicit, unique_labels(explicit)):
        # a run's analysis_after given on its own still shows the repaired model
        found = read_analysis(path, label, notes, repaired=is_after_repair(path))
        if found is not None:
            analyses.append(found)
    if run is None and not analyses:  # an empty page would look like a report of nothing
        raise SinderError(f"nothing to report: {notes[0].removesuffix('; skipped')}; {_WRITTEN_BY}")
    return ReportInputs(run, analyses, notes)


# ----------------------------------------------------------------------------- values, old and new


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def find_stop_ratio(config: dict | None) -> float | None:
    """The run's ``stop_skip_ratio`` (config.json), when it holds a usable one."""
    value = _number((config or {}).get("stop_skip_ratio"))
    return value if value is not None and 0 < value <= 1 else None


def mask_threshold(summary: dict) -> object:
    """The k of the |cos| > mean + k·std rule: ``rule.mask_thr`` (older folders: ``config.mask_thr``)."""
    for key in ("rule", "config"):
        section = summary.get(key)
        if isinstance(section, dict) and "mask_thr" in section:
            return section["mask_thr"]
    return None
