"""The training loop: batches in a seeded order, one :class:`~sinder.repair.engine.Trainer` step
each, the skip-ratio stop rule, and callbacks for everything else (log, progress bar,
checkpoints, the user's ``on_step``). A callback may ask the loop to stop.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields
from pathlib import Path
from typing import Protocol

import torch

from ..errors import Interrupted
from ..images import ImageSet
from ..interrupt import GracefulStop
from ..runfolder import RunLog
from ..units import percent
from .checkpoint import TrainState
from .config import RepairConfig
from .data import SeededOrder
from .distributed import DistContext
from .engine import StepResult, Trainer

log = logging.getLogger(__name__)


class Callback(Protocol):
    def on_step(self, loop: TrainingLoop, row: dict) -> None: ...

    def on_end(self, loop: TrainingLoop) -> None: ...


def interrupted_message(step: int, signame: str, saved: list[Path]) -> str:
    where = (
        f"checkpoint saved to {saved[0]}; rerun the same command with --resume to continue"
        if saved
        else "nothing was saved (no output folder)"
    )
    return f"{signame} at step {step}: the step was finished, {where}"


def _batch(data: ImageSet, order: Callable[[int], int], start: int, size: int) -> torch.Tensor | None:
    """Pixels of positions [start, start+size), unusable images dropped (None when none is usable)."""
    px = [data.load(order(p)) for p in range(start, start + size)]
    px = [p for p in px if p is not None]
    if not px:
        return None
    shape = px[0].shape
    return torch.stack([p for p in px if p.shape == shape])  # square crops at one resolution: always equal


class Batches:
    """Batches by global position; with ``threaded`` the next one is decoded while a step runs."""

    def __init__(self, data: ImageSet, order: Callable[[int], int], size: int, threaded: bool) -> None:
        self.data, self.order, self.size = data, order, size
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="sinder-data") if threaded else None
        self.pending: dict = {}

    def get(self, start: int, next_start: int) -> torch.Tensor | None:
        fut = self.pending.pop(start, None)
        out = fut.result() if fut is not None else _batch(self.data, self.order, start, self.size)
        if self.pool is not None:
            self.pending = {next_start: self.pool.submit(_batch, self.data, self.order, next_start, self.size)}
        return out

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def finite_or_none(v):
    return v if isinstance(v, (int, float)) and math.isfinite(v) else None


class TrainingLoop:
    """Runs steps until the skip ratio, ``max_steps`` or a callback says stop."""

    def __init__(
        self, trainer: Trainer, train: ImageSet, state: TrainState, config: RepairConfig, dist: DistContext, callbacks: list[Callback]
    ) -> None:
        self.trainer, self.train, self.state, self.config, self.dist = trainer, train, state, config, dist
        self.callbacks = callbacks
        n = len(train)
        self.order = SeededOrder(n, config.seed) if config.order == "shuffle" else (lambda position: position % n)
        self.per_step = dist.world_size * config.batch_size
        self._requested: str | None = None
        self.interrupt = GracefulStop()

    def request_stop(self, reason: str) -> None:
        """Stop after the current step (callbacks call this)."""
        self._requested = self._requested or reason

    def stop_reason(self) -> str | None:
        state, config = self.state, self.config
        if state.skip_ratio() >= config.stop_skip_ratio:
            return "skip_ratio"
        # a whole pass without a step leaves the model as it was: every further pass is the same
        if config.stop_when_clean and state.clean_streak >= len(self.train):
            return "clean_pass"
        if state.step >= config.max_steps:
            return "max_steps"
        return self._requested

    def run(self) -> TrainState:
        batches = Batches(self.train, self.order, self.config.batch_size, self.config.prefetch)
        try:
            with self.interrupt:
                while self.state.stop_reason is None:
                    self.state.stop_reason = self.stop_reason()
                    if self.state.stop_reason is None:
                        row = self.step(batches)
                        for cb in self.callbacks:
                            cb.on_step(self, row)
                        self._check_interrupt()
        finally:
            batches.close()
            for cb in self.callbacks:
                cb.on_end(self)
        return self.state

    def _check_interrupt(self) -> None:
        """After a finished step: when a signal came (on any rank), checkpoint and raise ``Interrupted``."""
        flag = torch.tensor([float(self.interrupt.signum or 0)])
        if self.dist.enabled:
            flag = self.dist.all_reduce_sum(flag)
        if float(flag[0]) == 0:
            return
        saved = [p for cb in self.callbacks if (p := getattr(cb, "on_interrupt", lambda loop: None)(self)) is not None]
        signame = self.interrupt.name or "a signal on another rank"
        raise Interrupted(interrupted_message(self.state.step, signame, saved), self.interrupt.exit_code)

    def step(self, batches: Batches) -> dict:
        state, config, dist = self.state, self.config, self.dist
        t0 = time.perf_counter()
        mine = state.position + dist.rank * config.batch_size
        res: StepResult = self.trainer.step(batches.get(mine, mine + self.per_step))
        # per image of the global batch, in position order: (skipped, layer); -1 = unusable file
        local = torch.full((config.batch_size, 2), -1.0)
        for k, (skipped, layer) in enumerate(zip(res.skipped, res.image_layers)):
            local[k] = torch.tensor([float(skipped), float(layer)])
        table = dist.all_gather(local)
        used = table[table[:, 0] >= 0]
        state.record([bool(f > 0.5) for f in used[:, 0].tolist()])
        layers = [int(v) for v in used[:, 1].tolist() if v >= 0]
        state.position += self.per_step
        state.step += 1
        state.optimizer_steps += int(res.stepped)
        state.nonfinite_steps += int(res.nonfinite)
        dt = time.perf_counter() - t0
        state.seconds += dt
        return {
            "step": state.step,
            "layer": min(layers) if layers else None,
            "layers": layers,
            "defects": res.total_defects,
            "loss": finite_or_none(res.loss),
            "skip_ratio": state.skip_ratio(),
            "images": len(used),
            "stepped": res.stepped,
            "nonfinite": res.nonfinite,
            "time": dt,
        }


# ----------------------------------------------------------------------------- callbacks


class LogRows:
    """Each step's row into ``log.jsonl`` (rank 0) and the user's ``on_step``."""

    def __init__(self, run_log: RunLog, on_step: Callable[[dict], None] | None = None) -> None:
        self.run_log, self.on_step_fn = run_log, on_step

    def on_step(self, loop: TrainingLoop, row: dict) -> None:
        self.run_log.write(row)
        if self.on_step_fn is not None:
            self.on_step_fn(row)

    def on_end(self, loop: TrainingLoop) -> None:
        self.run_log.close()


class ProgressBar:
    """Steps, time per step and the stop rule's progress (``skip=0.62/0.75``: the skip ratio and the
    ratio that stops the run). The default step budget is a safety cap, not a forecast (a ViT-L/518
    repair stops by its rule after a few hundred of its 30000 steps), so then the bar has no total
    and shows no end days away; a budget the user set is its total."""

    def __init__(self, config: RepairConfig, initial: int) -> None:
        from ..progress import progress_bar

        default = next(f.default for f in fields(RepairConfig) if f.name == "max_steps")
        total = None if config.max_steps == default else config.max_steps
        self.stop_at = config.stop_skip_ratio
        self.bar = progress_bar(total=total, initial=initial, desc="repair", unit="step", dynamic_ncols=True)

    def on_step(self, loop: TrainingLoop, row: dict) -> None:
        self.bar.update(1)
        loss = f"{row['loss']:.3f}" if row["loss"] is not None else "-"
        self.bar.set_postfix(skip=f"{row['skip_ratio']:.2f}/{self.stop_at:.2f}", layer=row["layer"], loss=loss)

    def on_end(self, loop: TrainingLoop) -> None:
        self.bar.close()


class Checkpoints:
    """The resumable checkpoint every ``every`` steps and at the end; one more at each ``save_at_skip`` ratio."""

    def __init__(
        self, save: Callable[[Path], None], latest: Path, every: int, skip_path: Callable[[float], Path], at_skip: tuple[float, ...]
    ) -> None:
        self.save, self.latest, self.every = save, latest, every
        self.skip_path, self.at_skip = skip_path, sorted(at_skip)

    def on_step(self, loop: TrainingLoop, row: dict) -> None:
        state = loop.state
        for v in self.at_skip:
            if v not in state.crossed and row["skip_ratio"] >= v:
                state.crossed.append(v)
                self.save(self.skip_path(v))
                log.info("skip ratio reached %s at step %d: checkpoint saved", percent(v), state.step)
        if state.step % self.every == 0:
            self.save(self.latest)

    def on_end(self, loop: TrainingLoop) -> None:
        if loop.state.stop_reason is not None:  # a normal end; after an error the last periodic one stands
            self.save(self.latest)

    def on_interrupt(self, loop: TrainingLoop) -> Path:
        self.save(self.latest)
        return self.latest


RESIDUAL_KEYS = ("energy_along_direction", "max_over_median", "high_norm_rate")


def improved(new: dict, best: dict, min_delta: float) -> bool:
    """Whether any residual metric fell by more than ``min_delta`` (relative) below its best."""
    if not best:
        return True
    for key in RESIDUAL_KEYS:
        b, n = best.get(key), new.get(key)
        if n is not None and b is not None and n < b * (1 - min_delta) - 1e-12:
            return True
    return False


class ResidualPlateau:
    """Stop when the held-out residual (energy along ν, max/median norm, high-norm rate at the last
    layer) has not improved for ``patience`` checks, one every ``every`` steps. Its counters live in
    the train state, so a resumed run stops where an uninterrupted one would."""

    def __init__(self, measure: Callable[[], dict], every: int, patience: int, min_delta: float, dist: DistContext) -> None:
        self.measure, self.every, self.patience, self.min_delta, self.dist = measure, every, patience, min_delta, dist

    def on_step(self, loop: TrainingLoop, row: dict) -> None:
        state = loop.state
        if state.step % self.every:
            return
        stop = torch.zeros(1)
        if self.dist.is_main:
            residual = {k: self.measure()[k] for k in RESIDUAL_KEYS}
            state.residual_checks.append([state.step, residual])
            if improved(residual, state.residual_best, self.min_delta):
                state.residual_best = {k: min(v, state.residual_best.get(k, v)) for k, v in residual.items() if v is not None}
                state.residual_stale = 0
            else:
                state.residual_stale += 1
            row["residual"] = residual
            stop[0] = float(state.residual_stale >= self.patience)
        if float(self.dist.broadcast(stop)[0]) > 0:  # every rank stops at the same step
            loop.request_stop("residual_plateau")

    def on_end(self, loop: TrainingLoop) -> None:
        pass
