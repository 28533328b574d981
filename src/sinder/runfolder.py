"""The folders sinder writes, owned here: their file names, writers, readers and clearing.

A *run folder* (``sinder repair`` / ``sinder demo``)::

    config.json            the run's settings (written first, before any work: --resume needs it)
    log.jsonl              one JSON object per step
    checkpoint.safetensors resumable state; checkpoints/ holds the save-at-skip ones
    sigma.safetensors      original σ and learned Δσ per factorised linear part
    summary.json           before/after metrics, timings (written when training ends)
    weights/               the repaired model in the input's format
    analysis_before/       analysis folders of the held-out images, before and after repair
    analysis_after/
    report.html            ``sinder report``'s page

An *analysis folder* (``sinder analyze``): ``analysis.json`` (written last: it marks a complete
analysis), ``directions.safetensors``, ``maps.npz``, ``distributions.npz`` and ``figures/``.

Every other module reads and writes these through this one, so ``--overwrite`` can remove
everything an earlier run left, and nothing stale is ever read as fresh.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import ConfigError, OutputExistsError
from .interrupt import interrupts_held
from .io import atomic_path, write_json, write_text

log = logging.getLogger(__name__)

# -- run folder names -------------------------------------------------------------------------
CONFIG = "config.json"
LOG = "log.jsonl"
SUMMARY = "summary.json"
SIGMA = "sigma.safetensors"
CHECKPOINT = "checkpoint.safetensors"
CHECKPOINTS = "checkpoints"
WEIGHTS = "weights"
ANALYSIS_BEFORE = "analysis_before"
ANALYSIS_AFTER = "analysis_after"
REPORT = "report.html"
RUN_FILES = (CONFIG, SUMMARY, LOG, SIGMA)  # any of these makes a folder a run folder
REPAIRED = ", repaired by SINDER"  # after the spec of a run's analysis_after (its analysis.json names the original)
RUN_ENTRIES = (CONFIG, LOG, SUMMARY, SIGMA, CHECKPOINT, CHECKPOINTS, WEIGHTS, ANALYSIS_BEFORE, ANALYSIS_AFTER, REPORT)
RUN_ANALYSES = ((ANALYSIS_BEFORE, "before repair"), (ANALYSIS_AFTER, "after repair"))

# -- analysis folder names --------------------------------------------------------------------
ANALYSIS_JSON = "analysis.json"
DIRECTIONS = "directions.safetensors"
MAPS = "maps.npz"
DISTRIBUTIONS = "distributions.npz"
FIGURES = "figures"
ANALYSIS_ENTRIES = (ANALYSIS_JSON, DIRECTIONS, MAPS, DISTRIBUTIONS, FIGURES)
MAP_KEYS = ("input_rgb", "pca_rgb", "norms", "abs_cos", "defects", "cls_attention")
# atomic_path's mkstemp(prefix=".NAME.", suffix=…), and safetensors' own ".tmpXXXXXX" staging file
TEMPORARY = re.compile(r"^(\..+\.[a-z0-9_]{8}(\.[A-Za-z0-9]+)?|\.tmp[A-Za-z0-9]{6})$")
HF_TEMPORARY = ".sinder-hf-"  # the HF family's save_pretrained staging folder


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _refuse_file(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out} exists and is not a directory; choose another --out")


# ============================================================================= analysis folder


@dataclass
class ImageMaps:
    """Last-layer maps of one image, for figures and the HTML report."""

    name: str
    input_rgb: np.ndarray  # (H, W, 3) uint8, the crop the model saw
    pca_rgb: np.ndarray  # (h, w, 3) uint8
    norms: np.ndarray  # (h, w)
    abs_cos: np.ndarray  # (h, w)
    defects: np.ndarray  # (h, w) bool
    cls_attention: np.ndarray | None  # (h, w), mean over heads


@dataclass
class AnalysisResult:
    summary: dict
    directions: torch.Tensor
    maps: list[ImageMaps] = field(default_factory=list)
    distributions: dict[str, np.ndarray] = field(default_factory=dict)


class AnalysisFolder:
    """An ``sinder analyze`` output folder."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    @staticmethod
    def holds_analysis(path: str | os.PathLike) -> bool:
        return (Path(path) / ANALYSIS_JSON).is_file()

    def check(self, overwrite: bool) -> None:
        """Refuse (creating nothing) a file, or a complete analysis without ``overwrite``."""
        _refuse_file(self.path)
        if self.holds_analysis(self.path) and not overwrite:
            raise OutputExistsError(f"{self.path} already holds {ANALYSIS_JSON}; pass --overwrite to replace it or choose another --out")

    def clear(self) -> None:
        """Remove what an earlier analysis wrote here (and nothing else)."""
        for name in ANALYSIS_ENTRIES:
            _remove(self.path / name)

    def write(self, result: AnalysisResult, overwrite: bool, figures: Callable[[AnalysisResult, Path], object] | None = None) -> Path:
        """Write ``result``; ``figures(result, folder)`` draws the PNGs. ``analysis.json`` comes last."""
        self.check(overwrite)
        self.clear()
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            self._write_entries(result, figures)
        except BaseException:
            self.clear()  # a half-written analysis (e.g. on a full disk) must not pass for a finished one
            raise
        return self.path

    def _write_entries(self, result: AnalysisResult, figures: Callable[[AnalysisResult, Path], object] | None) -> None:
        from safetensors.torch import save_file

        with atomic_path(self.path / DIRECTIONS) as tmp:
            save_file({"directions": result.directions.contiguous()}, str(tmp), metadata={"model": str(result.summary["model"])})
        arrays = {}
        for k, m in enumerate(result.maps):
            for key in MAP_KEYS:
                value = getattr(m, key)
                if value is not None:
                    arrays[f"{k}/{key}"] = value
        self._savez(MAPS, names=np.array([m.name for m in result.maps]), **arrays)
        self._savez(DISTRIBUTIONS, **result.distributions)
        if figures is not None:
            figures(result, self.path / FIGURES)
        write_json(self.path / ANALYSIS_JSON, result.summary)

    def _savez(self, name: str, **arrays) -> None:
        with atomic_path(self.path / name) as tmp:
            with open(tmp, "wb") as fh, interrupts_held():  # an interrupt inside savez became a ValueError
                np.savez_compressed(fh, **arrays)

    def read(self) -> AnalysisResult:
        """Read back what :meth:`write` wrote."""
        from safetensors.torch import load_file

        summary = json.loads((self.path / ANALYSIS_JSON).read_text())
        directions = load_file(str(self.path / DIRECTIONS))["directions"]
        maps = []
        with np.load(self.path / MAPS) as z:
            for k, name in enumerate(z["names"]):
                got = {key: z[f"{k}/{key}"] if f"{k}/{key}" in z.files else None for key in MAP_KEYS}
                maps.append(ImageMaps(str(name), **got))
        with np.load(self.path / DISTRIBUTIONS) as z:
            distributions = {k: z[k] for k in z.files}
        return AnalysisResult(summary=summary, directions=directions, maps=maps, distributions=distributions)


# ============================================================================= run folder


class RunLog:
    """``log.jsonl``: one JSON object per step, flushed as it goes; ``path=None`` keeps rows in memory only."""

    def __init__(self, path: Path | None, keep_until: int | None = None) -> None:
        self.path = path
        self.rows: list[dict] = []
        self._fh = None
        if path is None:
            return
        if keep_until is not None and path.exists():
            kept = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= keep_until]
            write_text(path, "".join(ln + "\n" for ln in kept))
        else:
            write_text(path, "")
        self._fh = open(path, "a", encoding="utf-8")

    def write(self, row: dict) -> None:
        self.rows.append(row)
        if self._fh is not None:
            self._fh.write(json.dumps(row) + "\n")
            self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class RunFolder:
    """A ``sinder repair`` output folder."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    # -- paths --------------------------------------------------------------------------------
    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT

    def skip_checkpoint(self, ratio: float) -> Path:
        return self.path / CHECKPOINTS / f"skip_{ratio:.2f}.safetensors"

    @property
    def weights(self) -> Path:
        return self.path / WEIGHTS

    @property
    def report(self) -> Path:
        return self.path / REPORT

    def analysis(self, which: str) -> AnalysisFolder:
        """``which``: ``before`` or ``after``."""
        return AnalysisFolder(self.path / {"before": ANALYSIS_BEFORE, "after": ANALYSIS_AFTER}[which])

    @staticmethod
    def holds_run(path: str | os.PathLike) -> bool:
        p = Path(path)
        return any((p / f).is_file() for f in (*RUN_FILES, CHECKPOINT)) or any(
            (p / d).is_dir() for d in (WEIGHTS, ANALYSIS_BEFORE, ANALYSIS_AFTER)
        )

    # -- starting ---------------------------------------------------------------------------
    def check(self, *, resume: bool, overwrite: bool, resumable: bool = True) -> None:
        """Refuse an unusable folder before any work (``resumable``: the caller offers --resume)."""
        out = self.path
        _refuse_file(out)
        # config.json is written before a run does any work: without it there is nothing to continue
        settings = (out / CONFIG).is_file()
        used = out.exists() and any(out.iterdir())
        if used and not (resume or overwrite):
            options = (
                "pass --resume to continue that run, --overwrite to replace it"
                if resumable and settings
                else "pass --overwrite to replace it"
            )
            raise OutputExistsError(f"{out} already exists; {options}, or choose another --out")
        if resume and not settings:
            fix = "pass --overwrite instead of --resume to start again there" if used else "drop --resume to start a new run there"
            raise ConfigError(f"--resume: {out} holds no repair run (no {CONFIG}); {fix}")

    def clear(self) -> None:
        """Remove everything an earlier run wrote (analyses, report and half-written files included)."""
        for name in RUN_ENTRIES:
            _remove(self.path / name)
        self.clear_temporaries()

    def clear_temporaries(self) -> list[Path]:
        """Remove the temporary files an interrupted write left (``atomic_path``'s ``.NAME.XXXXXXXX…``
        and ``save_pretrained``'s ``.sinder-hf-*``); returns what was removed."""
        removed = []
        if not self.path.is_dir():
            return removed
        for p in [self.path, *(self.path / d for d in (WEIGHTS, CHECKPOINTS, ANALYSIS_BEFORE, ANALYSIS_AFTER))]:
            if not p.is_dir():
                continue
            for child in p.iterdir():
                if TEMPORARY.match(child.name) or child.name.startswith(HF_TEMPORARY):
                    _remove(child)
                    removed.append(child)
        if removed:
            log.info("removed %d temporary file(s) an interrupted run left in %s", len(removed), self.path)
        return removed

    def clear_results(self) -> None:
        """Before a resumed run trains: what the earlier attempt concluded is not this run's result."""
        for name in (SUMMARY, WEIGHTS, ANALYSIS_AFTER, REPORT):
            _remove(self.path / name)

    # -- writers ------------------------------------------------------------------------------
    def write_config(self, config: dict) -> Path:
        return write_json(self.path / CONFIG, config)

    def write_summary(self, summary: dict) -> Path:
        return write_json(self.path / SUMMARY, summary)

    def open_log(self, keep_until: int | None = None) -> RunLog:
        return RunLog(self.path / LOG, keep_until)

    def write_sigma(self, tensors: dict[str, torch.Tensor]) -> Path:
        from safetensors.torch import save_file

        with atomic_path(self.path / SIGMA) as tmp:
            save_file(tensors, str(tmp), metadata={"format": "sinder-sigma/1"})
        return self.path / SIGMA

    # -- tolerant readers (``notes`` collects what was missing or unreadable) ------------------
    def read_config(self, notes: list[str]) -> dict | None:
        return read_json_dict(self.path / CONFIG, notes)

    def read_summary(self, notes: list[str]) -> dict | None:
        return read_json_dict(self.path / SUMMARY, notes)

    def read_log(self, notes: list[str]) -> list[dict]:
        return read_log(self.path / LOG, notes)

    def read_sigma(self, notes: list[str]) -> dict[str, dict[str, np.ndarray]]:
        """``{part: {"sigma": σ, "delta": Δσ}}`` from ``sigma.safetensors`` (empty with a note when unreadable)."""
        path = self.path / SIGMA
        if not path.is_file():
            notes.append(f"{SIGMA} not found in {self.path}; the σ deltas are skipped")
            return {}
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path))
        except (OSError, SafetensorError, ValueError) as err:
            notes.append(f"{path} cannot be read as safetensors ({err}); the σ deltas are skipped")
            return {}
        parts: dict[str, dict[str, np.ndarray]] = {}
        for key, tensor in tensors.items():
            part, _, kind = key.rpartition("/")
            if part and kind in ("sigma", "delta"):
                parts.setdefault(part, {})[kind] = tensor.detach().double().cpu().numpy().reshape(-1)
        return parts


def read_json_dict(path: Path, notes: list[str]) -> dict | None:
    """The JSON object in ``path``, or None with a note when it is missing or unreadable."""
    if not path.is_file():
        notes.append(f"{path.name} not found in {path.parent}; its part of the report is skipped")
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        notes.append(f"{path} is not valid JSON ({err}); skipped")
        return None
    if not isinstance(value, dict):
        notes.append(f"{path} does not hold a JSON object; skipped")
        return None
    return value


def read_log(path: Path, notes: list[str]) -> list[dict]:
    """Rows of ``log.jsonl`` that are JSON objects with an integer ``step``; bad lines are counted."""
    if not path.is_file():
        notes.append(f"{LOG} not found in {path.parent}; the training curves are skipped")
        return []
    rows, bad = [], 0
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), int):
                rows.append(row)
            else:
                bad += 1
    if bad:
        notes.append(f"{path}: {bad} line(s) are not JSON objects with an integer 'step' (e.g. a run cut short); ignored")
    return rows


def is_after_repair(path: Path) -> bool:
    """Whether the analysis folder ``path`` is a repair run's analysis_after (the repaired model)."""
    path = Path(path)
    return path.name == ANALYSIS_AFTER and any((path.parent / f).is_file() for f in RUN_FILES)


def max_over_median(layer: dict) -> float | None:
    """A layer's max / median token norm: ``max_over_median`` (mean over images of the per-image
    ratio); folders written before it existed give the pooled ``norm_max / norm_median``."""
    value = _num(layer.get("max_over_median"))
    if value is not None:
        return value
    mx, med = _num(layer.get("norm_max")), _num(layer.get("norm_median"))
    return mx / med if mx is not None and med is not None and med > 0 else None


def _num(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
