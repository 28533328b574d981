"""Evaluation entry points: the typed config, one model (``evaluate``), several models with a
comparison table and ``metrics.json`` (``evaluate_models``, ``format_table``, ``write_metrics``)."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from pathlib import Path

import torch
from torch import nn

from ..backbones import Backbone, as_backbone, load_backbone, parse_spec
from ..errors import ConfigError, SinderError, WeightsError
from ..options import place
from ..runtime import resolve_device
from .checks import check_box_files, check_knn_labels, check_seg_files, require_grid
from .config import EvaluateConfig
from .datasets import LAYOUTS, intrinsic_layout, knn_layout, lost_layout, seg_layout
from .features import default_resolution
from .layouts import standard_layout

logger = logging.getLogger(__name__)

TASKS = ("knn", "linear-seg", "unsup-seg", "lost", "intrinsic")
# patches per side below which a task's output says nothing: one patch gives a constant map and
# a whole-image box; the intrinsic defect rule's per-image statistics need a few tokens
MIN_GRID = {"linear-seg": 2, "unsup-seg": 2, "lost": 2, "intrinsic": 3}
METRICS_FILE = "metrics.json"


def check_task(task: str) -> None:
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")


def load_layout(task: str, data_dir: str | os.PathLike):
    """Check the data layout of ``task`` (raises a one-line ``SinderError`` naming the expected one):
    Pascal VOC or ADE20K as they unpack (:mod:`.layouts`, detected from the disk), else sinder's own."""
    check_task(task)
    root = Path(data_dir)
    if not root.exists():
        raise SinderError(f"--data {root} not found; check the path")
    if not root.is_dir():
        raise SinderError(f"--data {root} is a file; pass the dataset folder ({task} expects {LAYOUTS[task]})")
    if task == "knn":
        return knn_layout(root)
    standard = standard_layout(task, root)
    if standard is not None:
        return standard
    if task == "linear-seg":
        return seg_layout(root, task, ("train", "val"))
    if task == "unsup-seg":
        return seg_layout(root, task, ("val",))
    if task == "lost":
        return lost_layout(root)
    return intrinsic_layout(root)


def _clean(value):
    """JSON-safe: NaN/inf -> None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def check_layout(task: str, layout, config: EvaluateConfig) -> None:
    """Refuse, before any model runs, data on which the metric is meaningless (what the layout alone shows)."""
    if task == "knn":
        check_knn_labels(layout.root, layout.classes, layout.train.labels, layout.val.labels, config.knn_ks)
    elif task in ("linear-seg", "unsup-seg"):
        check_seg_files(task, layout)
    elif task == "lost":
        check_box_files(layout)


def run_task(backbone: Backbone, task: str, layout, res: int, config: EvaluateConfig, direction: torch.Tensor | None):
    """Dispatch to the task's module (each reads its own options from ``config``); returns (metrics, info)."""
    run = config.extraction(res)
    if task == "intrinsic":
        from .intrinsic import intrinsic

        return intrinsic(backbone, layout, run, config.rule, direction=direction)
    return _task_function(task)(backbone, layout, run, config)


def _task_function(task: str):
    """The function of ``task`` (all but intrinsic): (backbone, layout, Extraction, EvaluateConfig).
    Imported when used: the tasks pull in scipy and friends."""
    if task == "knn":
        from .knn import knn_task

        return knn_task
    if task == "linear-seg":
        from .linear_seg import linear_seg

        return linear_seg
    if task == "unsup-seg":
        from .unsup_seg import unsup_seg

        return unsup_seg
    from .lost import lost

    return lost


def evaluate_with_info(
    backbone_or_spec: Backbone | nn.Module | str,
    task: str,
    data_dir: str | os.PathLike,
    config: EvaluateConfig | None = None,
    *,
    layout=None,
    direction: torch.Tensor | None = None,
    name: str | None = None,
) -> tuple[dict, dict]:
    """Like :func:`evaluate`, also returning details (image counts, skipped files, resolution).

    ``layout`` (from :func:`load_layout`, already checked) saves re-reading the data folder;
    ``direction`` (intrinsic only) replaces the theory's last-layer defect direction ν_L; ``name``
    is what the progress line calls the model (default: its spec).
    Data on which the metric would be meaningless raises a one-line ``ConfigError``."""
    config = config or EvaluateConfig()
    if layout is None:
        layout = load_layout(task, data_dir)
        check_layout(task, layout, config)
    if isinstance(backbone_or_spec, (Backbone, nn.Module)):
        backbone = as_backbone(backbone_or_spec)
        place(backbone, config.device)
    else:
        backbone = load_backbone(backbone_or_spec, config.weights, random_init=config.random_init, device=resolve_device(config.device))
    res = default_resolution(backbone, config.resolution)
    if task in MIN_GRID:
        require_grid(task, res, backbone.patch_size, MIN_GRID[task])
    weights = f" [{Path(config.weights).name}]" if config.weights else ""
    logger.info("evaluating %s%s on %s at %d px", name or backbone.spec, weights, task, res)
    metrics, info = run_task(backbone, task, layout, res, config, direction)
    info = {"resolution": res, **info}
    return {k: _clean(v) for k, v in metrics.items()}, info


def evaluate(
    backbone_or_spec: Backbone | nn.Module | str,
    task: str,
    data_dir: str | os.PathLike,
    config: EvaluateConfig | None = None,
) -> dict:
    """Run ``task`` on frozen features of one model; returns ``{metric: value}`` (None = undefined)."""
    return evaluate_with_info(backbone_or_spec, task, data_dir, config)[0]


def model_keys(models: list[tuple[str, str | None]]) -> list[str]:
    """Unique report keys: the spec, plus the weights file name when two entries share a spec."""
    specs = [s for s, _ in models]
    keys: list[str] = []
    for spec, weights in models:
        key = spec if specs.count(spec) == 1 or weights is None else f"{spec} [{Path(weights).name}]"
        base, n = key, 2
        while key in keys:
            key, n = f"{base} #{n}", n + 1
        keys.append(key)
    return keys


def evaluate_models(
    models: list[tuple[str | Backbone, str | None]],
    task: str,
    data_dir: str | os.PathLike,
    config: EvaluateConfig | None = None,
) -> dict:
    """Evaluate several models (spec or backbone, weights) on one task; returns the metrics.json dict."""
    config = config or EvaluateConfig()
    layout = load_layout(task, data_dir)  # fail on a bad layout before loading any model
    check_layout(task, layout, config)
    if any(isinstance(m, str) for m, _ in models):
        resolve_device(config.device)  # no CUDA: one line now, not after the first model
    for model, weights in models:  # and on a bad spec or a missing file before evaluating the first one
        if isinstance(model, str):
            parse_spec(model)
        if weights is not None and not Path(weights).is_file():
            raise WeightsError(f"weights file not found: {weights}; check --weights / --compare-weights")
    named = [(m.spec if isinstance(m, Backbone) else m, w) for m, w in models]
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("weights", "random_init", "progress")}
    report = {"task": task, "data": str(data_dir), "models": {}, "details": {}, "config": settings}
    for key, (model, weights) in zip(model_keys(named), models):
        cfg = dataclasses.replace(config, weights=weights)
        metrics, info = evaluate_with_info(model, task, data_dir, cfg, layout=layout)
        report["models"][key] = metrics
        report["details"][key] = info
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return report


def format_table(report: dict) -> str:
    """One row per model, one column per metric (rates in %, as every command shows them)."""
    from ..units import is_rate, percent

    metrics: list[str] = []
    for m in report["models"].values():
        metrics += [k for k in m if k not in metrics]
    header = ["model", *metrics]
    rows = [header]
    for key, m in report["models"].items():
        rows.append([key, *("-" if m.get(k) is None else percent(m[k]) if is_rate(k) else f"{m[k]:.4f}" for k in metrics)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_metrics(out_dir: str | os.PathLike, report: dict, overwrite: bool = False) -> Path:
    """Write ``out_dir/metrics.json`` atomically; an existing one is refused without ``overwrite``."""
    from ..io import prepare_output_dir, write_json

    out = prepare_output_dir(out_dir, METRICS_FILE, overwrite)
    return write_json(out / METRICS_FILE, report)
