"""``compare()``: prepare every requested fix of one model, judge them on the same evaluation
images (and downstream data), write ``compare.json`` and ``compare.html``.

Output folder: ``compare.json``, ``compare.html``, ``registers.json`` (the register neurons
found, to apply with :func:`sinder.fixes.apply_registers`) and, when SINDER was trained here
rather than taken from ``repair_run``, its run folder ``sinder_run/``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ..backbones import as_backbone
from ..backbones.base import Backbone
from ..detect import DefectRule
from ..errors import ConfigError, require
from ..evaluate import TASKS, EvaluateConfig, evaluate_with_info, load_layout
from ..evaluate.checks import require_grid
from ..evaluate.run import MIN_GRID, check_layout
from ..fixes import RegisterSearchConfig
from ..fixes.registers import NoOutliersError
from ..images import ImageItem, ImageSet
from ..io import check_output_dir, json_safe, write_json, write_text
from ..repair.config import RepairConfig
from ..theory import defect_directions
from .measure import measure
from .methods import (
    DESCRIPTIONS,
    METHODS,
    Method,
    clamp_method,
    interp_method,
    original_method,
    registers_method,
    retrained_method,
    sinder_by_training,
    sinder_from_run,
)

log = logging.getLogger(__name__)

COMPARE_FILE, PAGE_FILE = "compare.json", "compare.html"


@dataclass(frozen=True)
class CompareConfig:
    """Options of ``sinder compare`` (validated on construction).

    gamma: the σ clamp's cap (the paper shows 2.0, 1.5, 1.3). interp_layer: the block whose
    output is interpolated (None: the last, where it measured best on the zoo). registers_file:
    apply these register neurons instead of searching. registers_search: how they are searched
    (threshold, layer limit, top-k; DINOv2-L/14 as published: threshold=150, layer_limit=17,
    top_k=50) and applied (mode; its batch_size is replaced by ``batch_size``). repair_run: take
    SINDER's row from this finished run instead of training. retrained: a spec of the same architecture retrained with
    registers, added as a row. tasks: (task, data folder) pairs for downstream evaluation.
    task_options: their options (knn_ks, lost_gram_bias, …); its resolution, batch_size, rule and
    progress are replaced by compare's own.
    """

    methods: tuple[str, ...] = METHODS
    resolution: int | None = None
    batch_size: int = 8
    max_maps: int = 4
    gamma: float = 1.5
    interp_layer: int | None = None
    registers_file: str | None = None
    registers_search: RegisterSearchConfig = field(default_factory=RegisterSearchConfig)
    repair_run: str | None = None
    repair: RepairConfig = field(default_factory=RepairConfig)
    retrained: str | None = None
    retrained_weights: str | None = None
    tasks: tuple[tuple[str, str], ...] = ()
    task_options: EvaluateConfig = field(default_factory=EvaluateConfig)
    rule: DefectRule = field(default_factory=DefectRule)
    progress: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        require(len(self.methods) > 0 or self.retrained is not None, "give at least one method: --methods sinder,registers,clamp,interp")
        unknown = [m for m in self.methods if m not in METHODS]
        require(not unknown, f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
        require(len(set(self.methods)) == len(self.methods), f"--methods names a method twice: {','.join(self.methods)}")
        require(self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}")
        require(self.max_maps >= 0, f"--max-maps must be >= 0, got {self.max_maps}")
        require(math.isfinite(self.gamma) and self.gamma > 0, f"--gamma must be > 0, got {self.gamma}")
        for task, _ in self.tasks:
            require(task in TASKS, f"--task {task}=DIR: unknown task; choose from {', '.join(TASKS)}")
        require(len({t for t, _ in self.tasks}) == len(self.tasks), "--task names a task twice; give one folder per task")
        require(
            isinstance(self.task_options, EvaluateConfig), f"task_options must be an EvaluateConfig, got {type(self.task_options).__name__}"
        )

    def evaluate_config(self, resolution: int | None = None) -> EvaluateConfig:
        """The downstream tasks' settings: ``task_options`` at compare's resolution, batch size, rule and progress."""
        return replace(self.task_options, resolution=resolution, batch_size=self.batch_size, rule=self.rule, progress=self.progress)


def check_compare_output(out: str | Path, overwrite: bool) -> Path:
    """Refuse an existing comparison before any model loads."""
    return check_output_dir(out, COMPARE_FILE, overwrite)


def check_tasks(config: CompareConfig) -> dict[str, object]:
    """Every downstream check that needs no model (layout, labels, k against the train set), before
    any model loads or method is prepared; returns the layouts read, by task."""
    econf = config.evaluate_config()
    layouts = {}
    for task, folder in config.tasks:
        layouts[task] = load_layout(task, folder)
        check_layout(task, layouts[task], econf)
    return layouts


def compare(
    backbone: Backbone | torch.nn.Module,
    train_images: Sequence[ImageItem] | None,
    eval_images: Sequence[ImageItem],
    config: CompareConfig | None = None,
    out_dir: str | Path | None = None,
    *,
    layouts: dict | None = None,
) -> dict:
    """Run every configured fix of ``backbone`` side by side; returns the ``compare.json`` dict.

    ``backbone`` is left as it was: weight edits happen on copies, hooks are removed. ``layouts``:
    what :func:`check_tasks` returned for ``config`` (else it runs here, before any work)."""
    backbone = as_backbone(backbone)
    cfg = config or CompareConfig()
    if layouts is None:
        layouts = check_tasks(cfg)
    resolution = cfg.resolution or backbone.image_size
    for task, _ in cfg.tasks:  # the one downstream check that needs the model's patch size
        if task in MIN_GRID:
            require_grid(task, resolution, backbone.patch_size, MIN_GRID[task])
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        check_compare_output(out, cfg.overwrite)
        out.mkdir(parents=True, exist_ok=True)
    evaluation = ImageSet.from_inputs(eval_images, backbone, resolution)
    if not evaluation.any_usable():
        raise ConfigError("no usable evaluation image; give --eval a folder of photos")
    train = ImageSet.from_inputs(train_images, backbone, resolution) if train_images else None
    log.info("predicting the defect directions of %s", backbone.spec)
    directions = defect_directions(backbone)
    require(0 <= interp_layer(backbone, cfg) < backbone.depth, f"--interp-layer must be in 0..{backbone.depth - 1}, got {cfg.interp_layer}")

    methods, skipped = _prepare_all(backbone, train, train_images, directions, cfg, out)
    directions_by = {m.name: (defect_directions(m.backbone) if m.own_directions else directions) for m in methods}

    log.info("measuring %d method(s) on %d evaluation image(s)", len(methods), len(evaluation))
    results, maps = measure(methods, evaluation, directions_by, cfg.rule, cfg.batch_size, cfg.max_maps, cfg.progress)
    tasks = _downstream(methods, cfg, resolution, layouts) if cfg.tasks else {}
    report = {
        "model": backbone.describe(),
        "out": str(out) if out is not None else "",
        "order": [m.name for m in methods],
        "resolution": resolution,
        "rule": cfg.rule.to_dict(),
        "images": {"train": len(train) if train is not None else 0, "eval": len(evaluation), "eval_names": evaluation.names},
        "tasks": {t: d for t, d in cfg.tasks},
        "methods": {},
    }
    report["notes"] = skipped + _notes(methods)
    for m in methods:
        report["methods"][m.name] = _method_entry(m, results[m.name], tasks.get(m.name, {}))
    report = json_safe(report)
    if out is not None:
        write_json(out / COMPARE_FILE, report)
        from .page import build_page  # matplotlib loads only when a page is drawn, not with every command

        write_text(out / PAGE_FILE, build_page(report, maps))
        log.info("wrote %s and %s", out / COMPARE_FILE, out / PAGE_FILE)
    return report


def _prepare_all(
    backbone: Backbone, train: ImageSet | None, train_items, directions: torch.Tensor, cfg: CompareConfig, out: Path | None
) -> tuple[list[Method], list[str]]:
    """The original, every configured fix made ready, and the retrained model if given; a fix that
    has nothing to act on (no high-norm outlier for registers) is left out with a note."""
    methods: list[Method] = [original_method(backbone)]
    skipped: list[str] = []
    for name in cfg.methods:
        log.info("preparing %s", name)
        try:
            methods.append(_prepare(name, backbone, train, train_items, directions, cfg, out))
        except NoOutliersError as err:  # a model without high-norm outliers: the other rows still say something
            skipped.append(f"{name}: not run: {err}")
            log.warning("%s", skipped[-1])
    if cfg.retrained is not None:
        methods.append(retrained_method(cfg.retrained, cfg.retrained_weights, backbone.device, backbone))
    return methods, skipped


def _method_entry(m: Method, results: dict, tasks: dict) -> dict:
    """One method's entry of ``compare.json``."""
    if m.name == "interp":
        m.details["replaced_tokens"] = m.details.pop("fix").replaced  # counted while measuring
    return {
        "description": DESCRIPTIONS[m.name],
        "needs": m.needs,
        "prepare_seconds": m.seconds,
        "details": m.details,
        **results,
        "tasks": tasks,
    }


def interp_layer(backbone: Backbone, cfg: CompareConfig) -> int:
    """The block interpolation hooks: ``cfg.interp_layer``, or the last."""
    return backbone.depth - 1 if cfg.interp_layer is None else cfg.interp_layer


def _prepare(
    name: str, backbone: Backbone, train: ImageSet | None, train_items, directions: torch.Tensor, cfg: CompareConfig, out: Path | None
) -> Method:
    """The fix ``name`` made ready on ``backbone``: ``train`` (decoded) for the register search,
    ``train_items`` for SINDER's training run."""
    if name == "clamp":
        return clamp_method(backbone, cfg.gamma)
    if name == "interp":
        layer = interp_layer(backbone, cfg)
        return interp_method(backbone, layer, directions[layer], cfg.rule)
    if name == "registers":
        search = replace(cfg.registers_search, batch_size=cfg.batch_size)
        return registers_method(backbone, train, search, cfg.registers_file, out)
    if cfg.repair_run is not None:
        return sinder_from_run(backbone, cfg.repair_run)
    if not train_items:
        raise ConfigError("sinder: no training images; give --data, or --repair-run DIR to reuse a finished repair")
    if out is None:
        raise ConfigError("sinder: training needs an output folder for its run; pass out_dir (or --repair-run DIR)")
    run_dir = out / "sinder_run"
    repair_cfg = replace(cfg.repair, overwrite=cfg.overwrite or cfg.repair.overwrite)
    return sinder_by_training(backbone, train_items, None, repair_cfg, run_dir)


def _notes(methods: list[Method]) -> list[str]:
    """Warnings the page shows above everything else."""
    notes = []
    for m in methods:
        measured = m.details.get("measured_on_search_images") if m.name == "registers" else None
        if measured and measured["outliers_after"] > m.details["settings"].get("residual", 0.05) * measured["outliers_before"]:
            notes.append(
                f"registers: the {len(m.details['neurons'])} register neuron(s) left {measured['outliers_after']} of "
                f"{measured['outliers_before']} outliers on the search images; this model's outliers may not be written by "
                "MLP neurons (e.g. by attention), which test-time registers assume"
            )
    return notes


def _downstream(methods: list[Method], cfg: CompareConfig, resolution: int, layouts: dict) -> dict[str, dict]:
    econf = cfg.evaluate_config(resolution)
    out: dict[str, dict] = {}
    for m in methods:
        for task, folder in cfg.tasks:
            start = time.perf_counter()
            with m.active() as bb:
                metrics, _ = evaluate_with_info(bb, task, folder, econf, layout=layouts[task], name=f"{m.name} ({bb.spec})")
            out.setdefault(m.name, {})[task] = {**metrics, "seconds": time.perf_counter() - start}
    return out
