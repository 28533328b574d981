"""``repair()``: the whole run, producing a complete run folder.

data (with a held-out split) → config.json (first, so --resume continues from every later
point) → directions → analysis before → σ-parametrisation → training
loop (``loop.py``) → held-out metrics, fold, export and its check (``finish.py``) → analysis
after → ``summary.json`` (written last: it marks a finished run). The folder's files are
owned by :mod:`sinder.runfolder`; the command line only parses arguments.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ..backbones import as_backbone
from ..backbones.base import Backbone
from ..errors import ConfigError, DiskFullError, ImageError, OutputExistsError, SinderError
from ..images import ImageItem, ImageSet, check_decodable, check_grid, expand_inputs, item_name, split_holdout, subsample
from ..interrupt import interrupts_held
from ..io import json_safe
from ..measure import resolve_low_norm
from ..options import place
from ..runfolder import LOG, RunFolder, RunLog
from ..units import percent, plural
from .checkpoint import TrainState, check_compatible, check_same_settings, load_checkpoint, save_checkpoint
from .config import RepairConfig
from .data import resolve_resolution
from .distributed import DistContext, current
from .engine import Trainer
from .finish import EVAL_BATCH, export_checked, fold_checked, probe_pixels, training_summary
from .loop import Checkpoints, LogRows, ProgressBar, ResidualPlateau, TrainingLoop
from .metrics import compare, last_layer_residual, onset_layer
from .singular import SingularModel, attach

log = logging.getLogger(__name__)

PLATEAU_IMAGES = 16  # held-out images the plateau stop looks at
AFTER_TRAINING = " (training had finished and is checkpointed: --resume does not train again)"


@dataclass
class RepairResult:
    backbone: Backbone  # the same object that was passed in, now repaired (folded, plain modules)
    config: RepairConfig  # with the resolution resolved
    summary: dict  # what summary.json holds: steps, images_seen, seconds, stop_reason, metrics, …
    epsilon: dict[str, torch.Tensor]  # the learned singular-value corrections, by "blocks.i.role"
    log: list[dict] = field(default_factory=list)
    out_dir: Path | None = None
    weights_path: Path | None = None
    written: list[Path] = field(default_factory=list)  # files this process wrote
    analysis_before: object | None = None  # AnalysisResult of the held-out images, when analysed
    analysis_after: object | None = None


@dataclass
class RepairData:
    train: ImageSet
    held_out: ImageSet | None


def held_out_count(n: int, num_eval_max: int) -> int:
    """How many of ``n`` training images a run without ``eval_images`` keeps apart: ~10%, at least 1."""
    return min(num_eval_max, max(1, n // 10)) if n >= 2 else 0


def _expand(inputs: Sequence[ImageItem], flag: str) -> list[ImageItem]:
    items, missing = expand_inputs(inputs)
    if missing:
        raise ImageError(f"input not found: {missing[0]['path']}; check {flag}")
    if not items:
        raise ImageError(f"no images found in {' '.join(map(str, inputs))}; check {flag}")
    return items


def split_inputs(train_images, eval_images, config: RepairConfig) -> tuple[list[ImageItem], list[ImageItem]]:
    """(training items, held-out items), checked (one-line errors) without needing the model.

    Without ``eval_images`` a strided ~10% of the training images is held out."""
    items = _expand(train_images, "--data")
    if eval_images is not None and config.num_eval_max > 0:
        eval_items = _expand(eval_images, "--eval-data")
        check_decodable(eval_items, "--eval-data image(s)")
    elif config.num_eval_max > 0:
        items, eval_items = split_holdout(items, held_out_count(len(items), config.num_eval_max))
        if not eval_items:
            log.warning("only one image: no held-out metrics; pass --eval-data")
        elif not _decodable(eval_items):
            eval_items = []
    else:
        eval_items = []
    check_decodable(items, "training image(s)")
    return items, eval_items


def prepare_data(backbone: Backbone, train_images, eval_images, config: RepairConfig) -> RepairData:
    """The training and held-out image sets (see :func:`split_inputs`)."""
    items, eval_items = split_inputs(train_images, eval_images, config)
    train = ImageSet.from_inputs(items, backbone, config.resolution, limit=config.num_train_max)
    if not any(train.load(i) is not None for i in range(len(train))):  # stops at the first usable image
        name, reason = next(iter(train.skipped.items()))
        raise ImageError(f"none of the {len(train)} training image(s) can be used ({name}: {reason}); pass images PIL can decode")
    held_out = ImageSet.from_inputs(eval_items, backbone, config.resolution, limit=config.num_eval_max) if eval_items else None
    return RepairData(train, held_out)


def _decodable(items: list) -> bool:
    try:
        check_decodable(items, "held-out image(s)")
        return True
    except ImageError as err:
        log.warning("no held-out metrics: %s", err)
        return False


def names_digest(names: Sequence[str]) -> str:
    """Identifies a training image list without decoding it (checked by --resume before start-up)."""
    h = hashlib.sha1()
    for n in names:
        h.update(n.encode() + b"\0")
    return h.hexdigest()[:16]


def _names(items: Sequence[ImageItem], limit: int) -> list[str]:
    """The names an :class:`ImageSet` made of ``items`` with ``limit`` gives its images."""
    return [item_name(x, i) for i, x in enumerate(subsample(list(items), limit))]


def check_resume_early(
    folder: RunFolder, config: RepairConfig, items: Sequence[ImageItem], eval_items: Sequence[ImageItem] | None = None
) -> None:
    """Before any slow start-up: a --resume run must use the settings, the training images and the
    held-out images (``items``, ``eval_items``: what :func:`split_inputs` returns) of the run it
    continues. ``eval_items`` None: not checked."""
    saved = folder.read_config([]) if config.resume else None
    if not saved:
        return
    # resolution None is resolved from the model later; the checkpoint check covers it
    check_same_settings(saved, config.training_signature(), f"the run in {folder.path}", undecided=("resolution",))
    held_out = None if eval_items is None else _names(eval_items, config.num_eval_max)
    check_same_images(saved, _names(items, config.num_train_max), held_out, folder)


def check_same_images(saved: dict, train_names: Sequence[str], eval_names: Sequence[str] | None, folder: RunFolder) -> None:
    """The training and held-out image lists recorded in config.json (``data_names``,
    ``eval_names``; absent in runs of older versions) must be those of this run."""
    if saved.get("data_names") not in (None, names_digest(train_names)):
        raise ConfigError(
            f"--resume: the training images differ from those of the run in {folder.path}; pass the same --data (and --eval-data) or use --overwrite"
        )
    # the held-out images decide the plateau stop and every before/after metric
    if eval_names is not None and saved.get("eval_names") not in (None, names_digest(eval_names)):
        raise ConfigError(
            f"--resume: the held-out images differ from those of the run in {folder.path}; pass the same --eval-data (and --num-eval) or use --overwrite"
        )


def run_settings(backbone: Backbone, config: RepairConfig, data: RepairData, world_size: int) -> dict:
    """What config.json holds: the settings, the model and the two image lists' digests."""
    held_out = data.held_out.names if data.held_out is not None else []
    return config.to_dict() | {
        "model": backbone.describe(),
        "num_train_images": len(data.train),
        "world_size": world_size,
        "data_names": names_digest(data.train.names),
        "eval_names": names_digest(held_out),
    }


def interrupted_stage(err: BaseException) -> str | None:
    """What :func:`repair` was doing when ``err`` (a KeyboardInterrupt) stopped it, once the run
    folder holds config.json (so ``--resume`` continues it); None when the folder was not touched."""
    return getattr(err, "sinder_repair_stage", None)


def check_run_folder(out: RunFolder, config: RepairConfig, dist: DistContext) -> None:
    """Every rank refuses, or none does."""
    err = None
    try:
        out.check(resume=config.resume, overwrite=config.overwrite)
    except SinderError as e:
        err = e
    if not dist.agree(err is None):
        raise err or OutputExistsError(f"{out.path} is refused on another rank; put --out on a filesystem shared by all ranks")


def _directions(backbone: Backbone, config: RepairConfig, directions: torch.Tensor | None, dist: DistContext):
    """ν_i (L, D) on the CPU, the same on every rank, and the top singular values when computed here."""
    singular_values = None
    if directions is None:
        from ..theory import linearise

        lin = linearise(backbone, method=config.directions, keep_matrices=False)
        directions, singular_values = lin.directions, lin.singular_values
    directions = torch.as_tensor(directions).detach().float().cpu()
    if directions.shape != (backbone.depth, backbone.embed_dim):
        raise ConfigError(f"directions must have shape ({backbone.depth}, {backbone.embed_dim}), got {tuple(directions.shape)}")
    if not bool(torch.isfinite(directions).all()):
        raise ConfigError("defect directions contain NaN/inf; check the model weights")
    return dist.broadcast(directions), singular_values


def repair(
    backbone: Backbone | torch.nn.Module,
    train_images: Sequence[ImageItem],
    config: RepairConfig | None = None,
    eval_images: Sequence[ImageItem] | None = None,
    out_dir: str | os.PathLike | None = None,
    *,
    directions: torch.Tensor | None = None,
    on_step: Callable[[dict], None] | None = None,
) -> RepairResult:
    """Repair ``backbone`` in place with SINDER; returns what was learned and measured.

    ``train_images``/``eval_images``: folders, image files, PIL images, ``SourceImage``s or
    preprocessed (3, H, W) tensors. Without ``eval_images``, ~10% of the training images (at a
    fixed stride) are held out for the before/after metrics (``num_eval_max=0``: none).
    ``directions`` (L, D) overrides the predicted ν_i. With ``out_dir``: the complete run folder
    (see :mod:`sinder.runfolder`), the repaired weights re-loaded and checked before returning.
    """
    backbone = as_backbone(backbone)  # the user's own module: repaired in place, same class and keys
    config = config or RepairConfig()
    config.validate()
    place(backbone, config.device)
    dist = current()  # under torchrun, the process group the command line initialised
    config = replace(config, resolution=resolve_resolution(config.resolution, backbone))
    check_grid(config.resolution, backbone.patch_size)
    folder = RunFolder(out_dir) if out_dir is not None else None
    if folder is not None:
        check_run_folder(folder, config, dist)
    data = prepare_data(backbone, train_images, eval_images, config)  # checked before anything is written
    run = _Run(backbone, config, data, folder, dist, on_step)
    try:
        if folder is not None:
            run.start_folder()
        if directions is None:
            log.info("predicting the defect directions of %d layers (%s)", backbone.depth, config.directions)
        run.clock.switch("directions")
        run.dirs, singular_values = _directions(backbone, config, directions, dist)
        run.analyse("before", singular_values)  # decides --low-norm auto on the held-out images when it runs
        run.config = replace(run.config, rule=run.decided_rule())
        return run.execute()
    except KeyboardInterrupt as err:
        if folder is not None and run.stage is not None:  # the folder holds config.json: --resume continues
            err.sinder_repair_stage = run.stage
        raise


class PhaseClock:
    """Wall seconds per phase of one repair attempt (``summary.json``'s ``phase_seconds``): where the
    time to a defect-free model goes, beside ``seconds`` (the training loop's own, over resumes)."""

    PHASES = ("directions", "analysis_before", "start_up", "training", "held_out_metrics", "fold_and_export", "analysis_after")

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(self.PHASES, 0.0)
        self.current: str | None = None
        self.since = 0.0

    def switch(self, phase: str | None) -> None:
        now = time.perf_counter()
        if self.current is not None:
            self.seconds[self.current] += now - self.since
        self.current, self.since = phase, now

    def summary(self) -> dict:
        self.switch(self.current)  # count the running phase up to now
        return {**self.seconds, "total": sum(self.seconds.values())}


class _Run:
    """One repair run from attached σ to the finished folder (``repair()`` prepares its inputs)."""

    def __init__(self, backbone, config, data: RepairData, folder: RunFolder | None, dist: DistContext, on_step) -> None:
        self.backbone, self.config, self.data, self.dirs = backbone, config, data, None
        self.folder, self.dist, self.on_step = folder, dist, on_step
        self.main = dist.is_main
        self.writes = self.main and folder is not None
        self.written: list[Path] = []
        self.analyses: dict[str, object] = {}
        self.stage: str | None = None  # what an interrupt stops, once config.json is written (see interrupted_stage)
        self.kept_analysis = False  # --resume: analysis_before/ of the same held-out images may be kept
        self.clock = PhaseClock()

    def start_folder(self) -> None:
        """Before any work: check a resumed run's image lists against config.json, clear what must
        be redone, write config.json (so --resume continues from every later point; interrupts
        are held meanwhile, so the folder never holds a half-cleared run without its settings)."""
        c, f = self.config, self.folder
        settings = run_settings(self.backbone, c, self.data, self.dist.world_size)
        saved = f.read_config([]) if c.resume else None
        if saved:
            check_same_settings(saved, c.training_signature(), f"the run in {f.path}")
            held_out = self.data.held_out.names if self.data.held_out is not None else []
            check_same_images(saved, self.data.train.names, held_out, f)
            self.kept_analysis = saved.get("eval_names") == settings["eval_names"]
        if self.main:
            with interrupts_held():
                if c.overwrite:
                    f.clear()
                elif c.resume:
                    f.clear_results()
                    f.clear_temporaries()
                f.path.mkdir(parents=True, exist_ok=True)
                self.written.append(f.write_config(settings))
                self.stage = "predicting the defect directions"  # set inside: a held interrupt lands at the block's end
        self.dist.barrier()
        self.stage = "predicting the defect directions"

    def analyse(self, which: str, singular_values=None) -> None:
        """The held-out images' analysis folder (single process: other ranks would wait in collectives)."""
        c = self.config
        if not (self.writes and c.analysis and self.dist.world_size == 1 and self.data.held_out is not None):
            return
        from ..analyze import AnalyzeConfig, analyze

        self.stage = f"the analysis {which} repair" + (AFTER_TRAINING if which == "after" else "")
        self.clock.switch(f"analysis_{which}")
        out = self.folder.analysis(which)
        if which == "before" and self.kept_analysis and self._keep(out):
            return
        log.info("analysing %d held-out image(s) %s repair", len(self.data.held_out), which)
        acfg = AnalyzeConfig(resolution=c.resolution, rule=c.rule, overwrite=True, progress=False)
        self.analyses[which] = analyze(
            self.backbone, self.data.held_out.items, acfg, directions=self.dirs, singular_values=singular_values, out_dir=out.path
        )
        self.written.append(out.path)

    def decided_rule(self):
        """The rule with ``low_norm="auto"`` decided: as the analysis before decided it (its pass
        over the held-out images is the probe), else by a probe of the training images."""
        rule, before = self.config.rule, self.analyses.get("before")
        if rule.low_norm == "auto" and before is not None:
            saved = before.summary.get("rule") or {}
            rule = replace(rule, low_norm=saved.get("low_norm", "auto"), low_norm_from=saved.get("low_norm_from", 0))
        if rule.low_norm == "auto":
            self.clock.switch("start_up")
            rule = resolve_low_norm(self.backbone, self.data.train, self.dirs, rule, batch_size=EVAL_BATCH)
        return rule

    def _keep(self, out) -> bool:
        """--resume: the complete analysis an earlier attempt left of the same held-out images."""
        from safetensors import SafetensorError

        if not out.holds_analysis(out.path):
            return False
        try:
            self.analyses["before"] = out.read()
        except (OSError, ValueError, KeyError, SafetensorError) as err:
            log.info("%s cannot be read back (%s); analysing again", out.path, err)
            return False
        log.info("kept %s from the run being resumed", out.path)
        return True

    def execute(self) -> RepairResult:
        self.start_layer = 0
        self.stage = "the start-up (onset layer)"
        self.clock.switch("start_up")
        if self.config.from_onset:
            log.info("finding the first layer with defects on the training images")
            self.start_layer = onset_layer(self.backbone, self.data.train, self.dirs, self.config.rule)
        # σ-parametrised lazily: a matrix gets its SVD when a gradient first reaches it (in training)
        handle = attach(self.backbone, factor_frozen=self.config.impl == "reference")
        try:
            return self._train_and_finish(handle)
        except BaseException:
            if not handle.folded:
                _restore_unrepaired(handle)
            raise

    def _train_and_finish(self, handle: SingularModel) -> RepairResult:
        trainer = Trainer(self.backbone, handle, self.dirs, self.config, self.dist)
        trainer.start_layer = self.start_layer
        state, resumed, run_log = self._start(handle, trainer)
        callbacks = self._plateau(trainer) + [LogRows(run_log, self.on_step)]
        if self.main and self.config.progress:
            callbacks.append(ProgressBar(self.config, state.step))
        if self.writes:
            f = self.folder
            callbacks.append(
                Checkpoints(
                    lambda p: self._save(p, handle, trainer, state),
                    f.checkpoint,
                    self.config.checkpoint_every,
                    f.skip_checkpoint,
                    self.config.save_at_skip,
                )
            )
        self.stage = "training"  # the loop finishes the step and checkpoints itself (a second Ctrl-C lands here)
        self.clock.switch("training")
        TrainingLoop(trainer, self.data.train, state, self.config, self.dist, callbacks).run()
        self.stage = "the held-out metrics" + AFTER_TRAINING
        self.clock.switch("held_out_metrics")
        log.info("stopped after %s (%s), skip ratio %s", plural(state.step, "step"), state.stop_reason, percent(state.skip_ratio()))
        try:
            return self._finish(handle, trainer, state, resumed, run_log)
        except DiskFullError as err:
            if not self.writes:
                raise
            self.folder.clear_temporaries()  # safetensors' own staging file, left on ENOSPC
            raise DiskFullError(
                f"{err}; training finished and is checkpointed in {self.folder.checkpoint}: --resume exports without training again"
            ) from None

    def _plateau(self, trainer: Trainer) -> list:
        """The held-out residual stop (before the log, so its checks are logged), when there are held-out images."""
        c, held_out = self.config, self.data.held_out
        if not c.plateau_patience or held_out is None:
            return []
        if len(held_out) > PLATEAU_IMAGES:  # a fixed subset keeps the checks cheap next to training
            held_out = replace(held_out, items=held_out.items[:PLATEAU_IMAGES], names=[], skipped={}, sizes={}, _cache={})

        def measure() -> dict:
            batch = max(c.batch_size, EVAL_BATCH)
            return last_layer_residual(self.backbone, held_out, self.dirs, c.rule, batch_size=batch, autocast=trainer.autocast)

        return [ResidualPlateau(measure, c.plateau_every, c.plateau_patience, c.plateau_min_delta, self.dist)]

    def _meta(self) -> dict:
        return {"signature": self.config.training_signature(), "data_digest": self.data.train.digest(), "model": self.backbone.spec}

    def _start(self, handle: SingularModel, trainer: Trainer) -> tuple[TrainState, bool, RunLog]:
        """A fresh state, or the checkpointed one with --resume; the log opened."""
        c, f = self.config, self.folder
        state, resumed = TrainState(window=c.window), False  # never capped: the reference's 1000-long history
        ckpt = f.checkpoint if f is not None else None
        if _resume_from(ckpt, c, self.dist):
            eps, momentum, state, info = load_checkpoint(ckpt)
            check_compatible(info, self._meta()["signature"], self._meta()["data_digest"])
            handle.load_eps_state(eps)
            trainer.load_momentum_state(momentum)
            # re-decided with this run's max_steps; a plateau is final (its counters are in the state,
            # but the loop looks at them only every plateau_every steps)
            plateaued = state.stop_reason == "residual_plateau" and 0 < c.plateau_patience <= state.residual_stale
            state.stop_reason = "residual_plateau" if plateaued else None
            resumed = True
            log.info("resumed from %s at step %d (skip ratio %s)", ckpt, state.step, percent(state.skip_ratio()))
        elif c.resume:
            log.info("--resume: no checkpoint in %s, starting from scratch", f.path)
        if self.writes:
            self.written.append(f.path / LOG)
            return state, resumed, f.open_log(state.step if resumed else None)
        return state, resumed, RunLog(None)

    def _save(self, path: Path, handle: SingularModel, trainer: Trainer, state: TrainState) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(path, handle.eps_state(), trainer.momentum_state(), state, self._meta())
        if path not in self.written:
            self.written.append(path)

    def _finish(self, handle: SingularModel, trainer: Trainer, state: TrainState, resumed: bool, run_log: RunLog) -> RepairResult:
        c, data = self.config, self.data
        metrics = None
        if data.held_out is not None and len(data.held_out) and self.main:
            batch = max(c.batch_size, EVAL_BATCH)
            log.info("measuring the held-out images before and after repair")
            metrics = compare(self.backbone, handle, data.held_out, self.dirs, c.rule, batch_size=batch, autocast=trainer.autocast)
        epsilon = {k: v.cpu() for k, v in handle.eps_state().items()}
        if self.writes:
            self.written.append(self.folder.write_sigma(handle.sigma_state()))
        probe = probe_pixels(data.held_out, data.train)
        self.clock.switch("fold_and_export")
        fold_diff = fold_checked(self.backbone, handle, probe)
        weights_path, export_diff = None, None
        self.stage = "the export of the repaired weights" + AFTER_TRAINING
        if self.writes and c.export:
            log.info("exporting the repaired weights and checking them re-loaded")
            weights_path, export_diff = export_checked(self.backbone, self.folder.weights, probe, c.export_tol)
            self.written.append(weights_path)
        self.analyse("after")
        summary = json_safe(
            {
                "model": self.backbone.describe(),
                "config": c.to_dict(),
                **training_summary(state, data.train, data.held_out, resumed, self.dist.world_size),
                "trainable_parameters": handle.num_trainable(),
                "metrics": metrics,
                "fold_max_token_diff": fold_diff,
                "weights": str(weights_path) if weights_path is not None else None,
                "export_max_token_diff": export_diff,
                "phase_seconds": self.clock.summary(),  # this attempt only (a resumed run's earlier attempts are not in it)
            }
        )
        if self.writes:
            self.written.append(self.folder.write_summary(summary))
        self.dist.barrier()
        return RepairResult(
            self.backbone,
            c,
            summary,
            epsilon,
            run_log.rows,
            self.folder.path if self.folder else None,
            weights_path,
            self.written,
            self.analyses.get("before"),
            self.analyses.get("after"),
        )


@torch.no_grad()
def _restore_unrepaired(handle: SingularModel) -> None:
    """On failure leave the user's model as it was: zero ε, then fold (W₀ rows written back)."""
    for p in handle.parameters():
        p.zero_()
    handle.fold()


def _resume_from(ckpt: Path | None, config: RepairConfig, dist: DistContext) -> bool:
    """Whether to load ``ckpt``; every rank must decide alike (only rank 0 writes checkpoints)."""
    found = bool(config.resume and ckpt is not None and ckpt.exists())
    everywhere, nowhere = dist.agree(found), dist.agree(not found)
    if not (everywhere or nowhere):
        raise ConfigError(f"--resume: {ckpt} is visible on some ranks only; put --out on a filesystem shared by all ranks")
    return found
