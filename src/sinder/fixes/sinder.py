"""SINDER's repair as a :class:`~sinder.fixes.base.Fix`: a copy of the model repaired now on the
context's training images (the run folder is kept under the context's output folder), or the
exported weights of a finished ``sinder repair`` run (``run``)."""

from __future__ import annotations

import argparse
import copy
import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..backbones.base import Backbone
from ..errors import ConfigError, WeightsError
from ..repair.config import RepairConfig
from .base import Cost, Fix, FixContext, FixHandle

log = logging.getLogger(__name__)

RUN_FOLDER = "sinder_run"  # under the context's output folder, when SINDER trains there


@dataclass(frozen=True)
class SinderFix(Fix):
    """Train a copy with ``repair`` (its own rule and step budget), or reuse the finished run folder ``run``."""

    repair: RepairConfig = field(default_factory=RepairConfig)
    run: str | None = None

    name = "sinder"
    description = "SINDER: singular values of the last blocks fine-tuned on unlabelled images, folded back into the weights"

    @property
    def needs_training_images(self) -> bool:
        return self.run is None

    def prepare(self, backbone: Backbone, context: FixContext) -> FixHandle:
        if self.run is not None:
            return from_run(backbone, self.run)
        if not context.train_items:
            raise ConfigError("sinder: no training images; give --data, or --repair-run DIR to reuse a finished repair")
        if context.out is None:
            raise ConfigError("sinder: training needs an output folder for its run; pass out_dir (or --repair-run DIR)")
        from ..repair import repair  # the training stack loads only when SINDER trains here

        config = replace(self.repair, overwrite=context.overwrite or self.repair.overwrite)
        repaired, out = copy.deepcopy(backbone), context.out / RUN_FOLDER
        start = time.perf_counter()
        s = repair(repaired, context.train_items, config, None, out_dir=out).summary
        cost = Cost(s.get("num_train_images"), s.get("images_seen"), s.get("steps"), True, time.perf_counter() - start)
        details = {"run": str(out), "weights": s.get("weights"), "stop_reason": s.get("stop_reason"), "reused": False}
        return FixHandle(self.name, repaired, cost, details)

    @classmethod
    def add_arguments(cls, group: argparse._ArgumentGroup) -> None:
        group.add_argument(
            "--repair-run",
            metavar="DIR",
            help="take SINDER's row from this finished `sinder repair` --out folder instead of training (default: train now)",
        )
        steps = RepairConfig().max_steps
        group.add_argument(
            "--max-steps", type=int, default=steps, help=f"SINDER training iterations at most, when it trains here (default {steps})"
        )

    @classmethod
    def from_args(cls, args: argparse.Namespace, shared: dict[str, Any]) -> SinderFix:
        repair = RepairConfig(max_steps=args.max_steps, rule=shared["rule"], progress=shared["progress"], analysis=False)
        return cls(repair=repair, run=args.repair_run)


def from_run(backbone: Backbone, run_dir: str | Path) -> FixHandle:
    """SINDER's handle from a finished ``sinder repair`` run folder (its exported weights)."""
    from ..export import reload_exported

    run = Path(run_dir)
    try:
        summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"--repair-run {run}: no summary.json; give the --out folder of a finished `sinder repair` (resume an unfinished one first)"
        ) from None
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"--repair-run {run}: summary.json is unreadable ({type(err).__name__}); rerun the repair") from None
    spec = (summary.get("model") or {}).get("model")
    if spec != backbone.spec:
        raise ConfigError(f"--repair-run {run} repaired {spec!r}, not {backbone.spec!r}; compare the model that run repaired")
    weights = summary.get("weights")
    if not weights or not Path(weights).exists():
        raise WeightsError(f"--repair-run {run}: its exported weights ({weights}) are missing; rerun the repair with export on")
    start = time.perf_counter()
    repaired = reload_exported(backbone, weights)
    log.info("loaded the repaired weights of %s in %.1f s", run, time.perf_counter() - start)
    cost = Cost(
        summary.get("num_train_images"), summary.get("images_seen"), summary.get("steps"), True, float(summary.get("seconds") or 0.0)
    )
    details = {"run": str(run), "weights": weights, "stop_reason": summary.get("stop_reason"), "reused": True}
    return FixHandle(SinderFix.name, repaired, cost, details)
