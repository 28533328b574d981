"""Evaluation entry points: the typed config, one model (``evaluate``), several models with a
comparison table and ``metrics.json`` (``evaluate_models``, ``format_table``, ``write_metrics``)."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..backbones import Backbone, as_backbone, load_backbone, parse_spec
from ..detect import DefectRule
from ..errors import ConfigError, SinderError, WeightsError
from ..runtime import resolve_device
from .checks import check_box_files, check_knn_labels, check_seg_files, require_grid
from .datasets import LAYOUTS, intrinsic_layout, knn_layout, lost_layout, seg_layout
from .features import default_resolution
from .layouts import standard_layout

logger = logging.getLogger(__name__)

TASKS = ("knn", "linear-seg", "unsup-seg", "lost", "intrinsic")
# patches per side below which a task's output says nothing: one patch gives a constant map and
# a whole-image box; the intrinsic defect rule's per-image statistics need a few tokens
MIN_GRID = {"linear-seg": 2, "unsup-seg": 2, "lost": 2, "intrinsic": 3}
METRICS_FILE = "metrics.json"


@dataclass(frozen=True)
class EvaluateConfig:
    """Options of ``sinder evaluate``; checked on construction (``ConfigError`` says what to fix).

    ``weights``/``random_init`` apply when a model is given by spec. ``resolution`` defaults to
    the model's native size. ``device`` is used when loading a spec; an in-memory backbone runs
    where it already is.
    """

    resolution: int | None = None
    batch_size: int = 32
    device: str = "auto"
    weights: str | None = None
    random_init: bool = False
    amp: bool = True  # bf16 autocast on CUDA for feature extraction (never for the intrinsic norms)
    seed: int = 0
    knn_ks: tuple[int, ...] = (10, 20, 100, 200)
    knn_temperature: float = 0.07
    probe_steps: int = 300
    probe_lr: float = 1e-2
    probe_batch_size: int = 16
    kmeans_iters: int = 100
    kmeans_restarts: int = 3
    lost_k_patches: int = 100
    lost_gram_bias: float = 0.0  # added to LOST's key Gram matrix (registers paper §3.3); 0 = LOST as published
    corloc_iou: float = 0.5
    rule: DefectRule = field(default_factory=DefectRule)  # intrinsic: what a defect / a high-norm token is
    progress: bool = True  # progress bars (drawn on a terminal only)

    def __post_init__(self) -> None:
        def positive(name: str, value, kind=int) -> None:
            if not isinstance(value, kind) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} must be a positive {kind.__name__}, got {value!r}")

        if self.resolution is not None:
            positive("resolution", self.resolution)
        for name in ("batch_size", "probe_steps", "probe_batch_size", "kmeans_iters", "kmeans_restarts", "lost_k_patches"):
            positive(name, getattr(self, name))
        if not isinstance(self.rule, DefectRule):
            raise ConfigError(f"rule must be a DefectRule, got {type(self.rule).__name__}")
        for name in ("knn_temperature", "probe_lr"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0 or not math.isfinite(value):
                raise ConfigError(f"{name} must be a positive number, got {value!r}")
        if self.device not in ("auto", "cpu", "cuda") and not str(self.device).startswith("cuda:"):
            raise ConfigError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if not self.knn_ks or any(not isinstance(k, int) or isinstance(k, bool) or k <= 0 for k in self.knn_ks):
            raise ConfigError(f"knn_ks must be positive integers, got {self.knn_ks!r}")
        bias = self.lost_gram_bias
        if not isinstance(bias, (int, float)) or isinstance(bias, bool) or not math.isfinite(bias):
            raise ConfigError(f"lost_gram_bias must be a finite number, got {bias!r}")
        if not 0.0 < self.corloc_iou <= 1.0:
            raise ConfigError(f"corloc_iou must be in (0, 1], got {self.corloc_iou!r}")


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
    """Dispatch to the task's module; returns (metrics, info)."""
    bs, amp, bars = config.batch_size, config.amp, config.progress
    if task == "knn":
        from .knn import knn_task

        return knn_task(backbone, layout, res, bs, config.knn_ks, config.knn_temperature, amp, progress=bars)
    if task == "linear-seg":
        from .linear_seg import linear_seg

        return linear_seg(
            backbone, layout, res, bs, config.probe_steps, config.probe_lr, config.probe_batch_size, config.seed, amp, progress=bars
        )
    if task == "unsup-seg":
        from .unsup_seg import unsup_seg

        return unsup_seg(backbone, layout, res, bs, config.seed, amp, config.kmeans_iters, config.kmeans_restarts, progress=bars)
    if task == "lost":
        from .lost import lost

        return lost(backbone, layout, res, config.lost_k_patches, config.corloc_iou, amp, config.lost_gram_bias, progress=bars)
    from .intrinsic import intrinsic

    return intrinsic(backbone, layout, res, bs, config.rule, direction=direction, progress=bars)


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
