"""``compare()``: prepare every requested fix of one model, judge them on the same evaluation
images (and downstream data), write ``compare.json`` and ``compare.html``.

Output folder: ``compare.json``, ``compare.html``, ``registers.json`` (the register neurons
found, to apply with :func:`sinder.fixes.apply_registers`) and, when SINDER was trained here
rather than taken from a finished run, its run folder ``sinder_run/``. Every fix is prepared and
applied through the one :class:`~sinder.fixes.base.Fix` interface.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ..backbones import as_backbone
from ..backbones.base import Backbone
from ..errors import ConfigError, require
from ..evaluate import TASKS, EvaluateConfig, evaluate_with_info, load_layout
from ..evaluate.checks import require_grid
from ..evaluate.run import MIN_GRID, check_layout
from ..fixes import FIXES, Fix, FixContext, FixHandle
from ..fixes.registers import NoOutliersError
from ..images import ImageItem, ImageSet
from ..io import check_output_dir, json_safe, write_json, write_text
from ..measure import resolve_low_norm
from ..options import Overwrite, RunOptions, integer, option, place, validate
from ..theory import defect_directions
from .measure import measure
from .methods import DESCRIPTIONS, original_method, retrained_method

log = logging.getLogger(__name__)

COMPARE_FILE, PAGE_FILE = "compare.json", "compare.html"


def default_fixes() -> tuple[Fix, ...]:
    """One of every fix in :data:`~sinder.fixes.FIXES`, with its default options."""
    return tuple(fix() for fix in FIXES.values())


@dataclass(frozen=True)
class CompareConfig(RunOptions, Overwrite):
    """Options of ``sinder compare`` (validated on construction): the shared run options
    (:mod:`sinder.options`; ``rule`` is what the measurements and interpolation count as a defect)
    and its own.

    fixes: the fixes to run, each with its own options (:class:`~sinder.fixes.base.Fix`; default:
    one of each, e.g. ``(SinderFix(repair=RepairConfig(max_steps=300)), ClampFix(gamma=1.3))``).
    retrained: a spec of the same architecture retrained with registers, added as a row.
    tasks: (task, data folder) pairs for downstream evaluation. task_options: their options
    (knn_ks, lost_gram_bias, …); its resolution, batch_size, rule and progress are replaced by
    compare's own.
    """

    fixes: tuple[Fix, ...] = field(default_factory=default_fixes)
    max_maps: int = option(4, check=integer(0), help="evaluation images shown as side-by-side maps")
    retrained: str | None = None
    retrained_weights: str | None = None
    tasks: tuple[tuple[str, str], ...] = ()
    task_options: EvaluateConfig = field(default_factory=EvaluateConfig)

    def __post_init__(self) -> None:
        validate(self)
        require(len(self.fixes) > 0 or self.retrained is not None, f"give at least one method: --methods {','.join(FIXES)}")
        odd = [type(f).__name__ for f in self.fixes if not isinstance(f, Fix)]
        require(not odd, f"fixes must be Fix instances (e.g. ClampFix(gamma=1.3)), got {', '.join(odd)}")
        require(len(set(self.methods)) == len(self.methods), f"--methods names a method twice: {','.join(self.methods)}")
        for task, _ in self.tasks:
            require(task in TASKS, f"--task {task}=DIR: unknown task; choose from {', '.join(TASKS)}")
        require(len({t for t, _ in self.tasks}) == len(self.tasks), "--task names a task twice; give one folder per task")
        require(
            isinstance(self.task_options, EvaluateConfig), f"task_options must be an EvaluateConfig, got {type(self.task_options).__name__}"
        )

    @property
    def methods(self) -> tuple[str, ...]:
        """The fixes' names, in the order they run."""
        return tuple(f.name for f in self.fixes)

    @property
    def needs_training_images(self) -> bool:
        return any(f.needs_training_images for f in self.fixes)

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
    place(backbone, cfg.device)
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
    cfg = replace(cfg, rule=resolve_low_norm(backbone, evaluation, directions, cfg.rule, batch_size=cfg.batch_size))
    for fix in cfg.fixes:  # options that depend on the model fail before any fix is prepared
        fix.check(backbone)

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
    report["notes"] = skipped + _notes(methods, cfg.fixes)
    descriptions = {**DESCRIPTIONS, **{f.name: f.description for f in cfg.fixes}}
    for m in methods:
        report["methods"][m.name] = _method_entry(m, descriptions[m.name], results[m.name], tasks.get(m.name, {}))
    report = json_safe(report)
    if out is not None:
        _write(out, report, maps)
    return report


def _write(out: Path, report: dict, maps: dict) -> None:
    """``compare.json`` and its page."""
    write_json(out / COMPARE_FILE, report)
    from .page import build_page  # matplotlib loads only when a page is drawn, not with every command

    write_text(out / PAGE_FILE, build_page(report, maps))
    log.info("wrote %s and %s", out / COMPARE_FILE, out / PAGE_FILE)


def _prepare_all(
    backbone: Backbone, train: ImageSet | None, train_items, directions: torch.Tensor, cfg: CompareConfig, out: Path | None
) -> tuple[list[FixHandle], list[str]]:
    """The original, every configured fix made ready, and the retrained model if given; a fix that
    has nothing to act on (no high-norm outlier for registers) is left out with a note."""
    context = FixContext(directions, cfg.rule, cfg.batch_size, train, train_items, out, cfg.overwrite)
    methods: list[FixHandle] = [original_method(backbone)]
    skipped: list[str] = []
    for fix in cfg.fixes:
        log.info("preparing %s", fix.name)
        try:
            methods.append(fix.prepare(backbone, context))
        except NoOutliersError as err:  # a model without high-norm outliers: the other rows still say something
            skipped.append(f"{fix.name}: not run: {err}")
            log.warning("%s", skipped[-1])
    if cfg.retrained is not None:
        methods.append(retrained_method(cfg.retrained, cfg.retrained_weights, backbone.device, backbone))
    return methods, skipped


def _method_entry(m: FixHandle, description: str, results: dict, tasks: dict) -> dict:
    """One method's entry of ``compare.json``."""
    return {
        "description": description,
        "needs": m.cost.needs(),
        "prepare_seconds": m.cost.seconds,
        "details": m.all_details(),
        **results,
        "tasks": tasks,
    }


def _notes(methods: list[FixHandle], fixes: tuple[Fix, ...]) -> list[str]:
    """Warnings the page shows above everything else, from each fix about its prepared handle."""
    by_name = {f.name: f for f in fixes}
    return [note for m in methods if m.name in by_name for note in by_name[m.name].notes(m)]


def _downstream(methods: list[FixHandle], cfg: CompareConfig, resolution: int, layouts: dict) -> dict[str, dict]:
    econf = cfg.evaluate_config(resolution)
    out: dict[str, dict] = {}
    for m in methods:
        for task, folder in cfg.tasks:
            start = time.perf_counter()
            with m.active() as bb:
                metrics, _ = evaluate_with_info(bb, task, folder, econf, layout=layouts[task], name=f"{m.name} ({bb.spec})")
            out.setdefault(m.name, {})[task] = {**metrics, "seconds": time.perf_counter() - start}
    return out
