"""``sinder repair MODEL --data DIR_OR_FILES... --out DIR`` (also under ``torchrun --nproc_per_node N -m sinder repair``)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..options import add_option
from ..repair.config import RepairConfig
from ..runfolder import RunFolder
from ..units import is_rate, percent
from .common import add_model_arguments, add_rule_arguments, config_from_args, rule_from_args

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = RepairConfig()
    add_model_arguments(p)
    _data_arguments(p.add_argument_group("images and output"))
    _training_arguments(p, p.add_argument_group("training"), d)
    _stop_arguments(p.add_argument_group("where it trains and when it stops"))
    _run_arguments(p.add_argument_group("how many images, Gram anchoring, directions, checkpoints, speed and the run folder"))


def _data_arguments(g) -> None:
    g.add_argument("--data", nargs="+", required=True, metavar="DIR_OR_FILE", help="training images: folders (recursive) and/or files")
    g.add_argument(
        "--eval-data",
        nargs="+",
        metavar="DIR_OR_FILE",
        help="held-out images for the before/after metrics (default: a strided ~10%% of --data, not trained on)",
    )
    g.add_argument("--out", required=True, help="output folder: config.json, log.jsonl, summary.json, checkpoints, weights/")


def _options(g, names: str, **kwargs) -> None:
    for name in names.split():
        add_option(g, RepairConfig, name, **kwargs)


def _training_arguments(p: argparse.ArgumentParser, g, d: RepairConfig) -> None:
    _options(g, "impl max_steps batch_size resolution lr momentum")
    add_rule_arguments(p, d.rule, faithful=RepairConfig.faithful().rule)
    _options(g, "kernel limit_layers")
    _options(g, "along_weight", default=None)  # unset: the base config's (decided from the rule; 0 with --faithful)


def _stop_arguments(g) -> None:
    _options(g, "window stop_skip_ratio plateau_every")
    # unset, these take the base config's value: the reference's with --faithful, sinder's otherwise
    _options(g, "order plateau_patience weak_defects from_onset", default=None)
    g.add_argument(
        "--faithful",
        action="store_true",
        help="exactly the reference SINDER: the mu+4sd rule alone with >= 3 defects, images in order, only the skip-ratio stop",
    )


def _run_arguments(g) -> None:
    g.add_argument(
        "--save-at-skip",
        type=float,
        nargs="*",
        default=[],
        help="also checkpoint when the skip ratio first reaches each value (0-1, or percent as in the reference; default: none)",
    )
    _options(g, "checkpoint_every gram_weight num_train_max num_eval_max directions seed compile amp")
    g.add_argument("--no-amp", dest="amp", action="store_const", const="off", help=argparse.SUPPRESS)  # before --amp off
    _options(g, "progress analysis resume overwrite")


def repair_config(args: argparse.Namespace) -> RepairConfig:
    base = RepairConfig.faithful() if args.faithful else RepairConfig()
    save_at = tuple(v / 100 if v > 1 else v for v in args.save_at_skip)  # percent, as the reference takes it
    return config_from_args(base, args, rule=rule_from_args(args, base.rule), save_at_skip=save_at)


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


SUMMARY_ROWS = ("energy_along_direction", "max_over_median", "high_norm_rate", "defect_rate")


def format_summary(summary: dict) -> str:
    lines = [
        f"steps {summary['steps']}  images {summary['images_seen']}  {summary['seconds']:.1f} s  "
        f"stop: {summary['stop_reason']}  final skip ratio {percent(summary['final_skip_ratio'])}"
    ]
    phases = summary.get("phase_seconds")
    if phases:
        spent = ", ".join(f"{k.replace('_', ' ')} {v:.1f} s" for k, v in phases.items() if k != "total" and v >= 0.05)
        lines.append(f"time by phase: {spent} (total {phases['total']:.1f} s)")
    m = summary.get("metrics")
    if m:
        n = m["num_images"]
        label = f"held-out ({n} image{'' if n == 1 else 's'})"
        lines.append(f"{label:<28}{'before':>12}{'after':>12}")
        for key in SUMMARY_ROWS:
            show = percent if is_rate(key) else _fmt  # rates in %, as every command shows them
            lines.append(f"{key:<28}{show(m['before'][key]):>12}{show(m['after'][key]):>12}")
        for key, value in m["features"].items():
            lines.append(f"{key:<28}{'':>12}{_fmt(value):>12}")
    if summary.get("weights"):
        lines.append(f"weights: {summary['weights']} (re-loaded, max token diff {_fmt(summary['export_max_token_diff'])})")
    return "\n".join(lines)


RESUME = "rerun the same command with --resume"


def interrupted_message(err: KeyboardInterrupt, out: Path, config: RepairConfig) -> str:
    """Where a SIGINT/SIGTERM outside the training loop stopped the run, and the command that continues it."""
    from ..interrupt import Terminated
    from ..repair.api import interrupted_stage
    from ..runfolder import CONFIG

    name, stage = "SIGTERM" if isinstance(err, Terminated) else "SIGINT", interrupted_stage(err)
    if stage is None:  # the run folder was not touched yet
        return f"{name} before the run started, {out} is as it was; rerun the same command"
    instead = " instead of --overwrite" if config.overwrite else ""
    return f"{name} during {stage}; the run's settings are in {out / CONFIG}: {RESUME}{instead} to continue"


def run(args: argparse.Namespace) -> int:
    from ..errors import Interrupted

    config = repair_config(args)
    out = Path(args.out)
    try:
        return _run(args, config, out)
    except Interrupted as err:  # stopped in training, checkpointed: the loop's message says --resume
        if config.overwrite and RESUME in str(err):
            raise Interrupted(str(err).replace(RESUME, f"{RESUME} instead of --overwrite"), err.exit_code) from None
        raise
    except KeyboardInterrupt as err:  # SIGTERM comes as Terminated (cli.main)
        from ..interrupt import Terminated

        raise Interrupted(interrupted_message(err, out, config), 143 if isinstance(err, Terminated) else 130) from None


def _run(args: argparse.Namespace, config: RepairConfig, out: Path) -> int:
    from ..backbones import load_backbone
    from ..repair import repair
    from ..repair.api import check_resume_early, split_inputs
    from ..repair.distributed import init_from_env, rank_device, shutdown
    from ..runtime import resolve_device

    RunFolder(out).check(resume=config.resume, overwrite=config.overwrite)  # fail before loading anything
    train_items, eval_items = split_inputs(args.data, args.eval_data, config)
    check_resume_early(RunFolder(out), config, train_items, eval_items)
    dist = init_from_env(args.device)
    if not dist.is_main:  # one rank reports
        logging.getLogger("sinder").setLevel(logging.WARNING)
    try:
        log.info("loading %s", args.model)
        backbone = load_backbone(
            args.model, args.weights, random_init=args.random_init, device=resolve_device(rank_device(dist, args.device))
        )
        result = repair(backbone, args.data, config, args.eval_data, out_dir=out)
        if dist.is_main:
            print(format_summary(result.summary))
            print(f"outputs in {out}")
    finally:
        shutdown(dist)
    return 0
