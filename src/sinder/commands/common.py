"""Arguments shared by several sub-commands."""

from __future__ import annotations

import argparse
import dataclasses
import logging

from ..backbones import Backbone, load_backbone
from ..errors import ConfigError
from ..options import RunOptions, add_option, options_from_args
from ..runtime import resolve_device

log = logging.getLogger(__name__)


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    from ..backbones import families

    p.add_argument("model", help="model spec: " + ", ".join(f.spec_help for f in families()))
    p.add_argument("--weights", help="checkpoint file (.safetensors, or a .pth state dict read with weights_only=True)")
    p.add_argument("--random-init", action="store_true", help="use untrained weights (for testing only)")
    add_option(p, RunOptions, "device")


def load_model_from_args(args: argparse.Namespace) -> Backbone:
    log.info("loading %s%s", args.model, f" with {args.weights}" if args.weights else "")
    return load_backbone(args.model, args.weights, random_init=args.random_init, device=resolve_device(args.device))


def check_common_options(args: argparse.Namespace) -> None:
    """Options every command checks the same way, before any model is loaded (the values of the
    declared options are checked when each command builds its config)."""
    if getattr(args, "weights", None) and getattr(args, "random_init", False):
        raise ConfigError("--weights and --random-init contradict each other (trained weights from a file, or untrained ones); pass one")
    device = getattr(args, "device", None)
    if device is not None:
        resolve_device(device)  # --device cuda without CUDA: refused before the model is loaded


TRAINING_COMMANDS = ("repair", "compare")  # the commands whose --skip-less-than decides what repair trains on


def add_rule_arguments(p: argparse.ArgumentParser, defaults=None, faithful=None) -> None:
    """The defect rule's options, the same for every command (``defaults``: a DefectRule; with
    ``faithful`` the help also names the values ``--faithful`` uses). Unset options stay None and
    take the base rule's value (:func:`rule_from_args`). ``--skip-less-than`` acts in repair only;
    the other commands' help says so (the command is read from ``p.prog``)."""
    from ..detect import LOW_NORM, THRESHOLDS, DefectRule

    d = defaults or DefectRule()

    def default(name: str) -> str:
        fmt = lambda v: v if isinstance(v, str) else f"{v:g}"  # noqa: E731
        alt = f"; --faithful: {fmt(getattr(faithful, name))}" if faithful is not None else ""
        return f"default {fmt(getattr(d, name))}{alt}"

    p.add_argument("--mask-thr", type=float, help=f"defect if |cos(t, ν)| > mean + THR·std of the image ({default('mask_thr')})")
    p.add_argument(
        "--threshold",
        choices=THRESHOLDS,
        help="how mean and std are taken: robust (over the image's tokens that are not defects, a fixed point from median + THR·MAD, "
        f"so strong defects do not hide weaker ones) or meanstd (one pass over all tokens, as the reference) ({default('threshold')})",
    )
    p.add_argument(
        "--norm-gate", type=float, help=f"a defect must also have norm > G × the image's median patch norm (0: off; {default('norm_gate')})"
    )
    p.add_argument(
        "--aligned-gate",
        type=float,
        help="or its component along ν must exceed A × the image's median patch norm: a defect long along ν before it is long "
        f"(0: the norm gate alone; {default('aligned_gate')})",
    )
    p.add_argument(
        "--low-norm",
        choices=LOW_NORM,
        help="|cos| outliers that fail the gate: drop them (the noise tail), count them as defects, or auto: count them from the "
        f"first block that has them when the model's last block has low-norm singular defects (docs/command-line.md, 'Verdict'), else drop ({default('low_norm')})",
    )
    p.add_argument("--high-norm-factor", type=float, help=f"high-norm if norm > F × the image's median ({default('high_norm_factor')})")
    if p.prog.split()[-1] in TRAINING_COMMANDS:
        skip_help = f"defects a layer needs before repair trains on it ({default('skip_less_than')})"
    else:  # analyze and evaluate count every defect; the value only travels with the rule (analysis.json)
        skip_help = f"used by sinder repair only (defects a layer needs before repair trains on it); here it is recorded with the rule and changes nothing ({default('skip_less_than')})"
    p.add_argument("--skip-less-than", type=int, help=skip_help)


RULE_OPTIONS = ("mask_thr", "threshold", "norm_gate", "aligned_gate", "low_norm", "high_norm_factor", "skip_less_than")


def rule_from_args(args: argparse.Namespace, base=None, **fixed):
    """``base`` (default: DefectRule()) with the rule options the user gave, and ``fixed``."""
    from ..detect import DefectRule

    given = {k: getattr(args, k) for k in RULE_OPTIONS if getattr(args, k, None) is not None}
    return dataclasses.replace(base or DefectRule(), **given, **fixed)


def config_from_args(base, args: argparse.Namespace, **explicit):
    """``base`` (a config instance) with the declared options the user gave, plus ``explicit`` for
    the others (the rule, renamed ones); validated on construction."""
    return dataclasses.replace(base, **(options_from_args(type(base), args) | explicit))
