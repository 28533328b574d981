"""``sinder evaluate``: downstream evaluation of one or more models on frozen features."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError
from ..evaluate import TASKS, EvaluateConfig, evaluate_models, format_table, write_metrics
from ..evaluate.run import METRICS_FILE
from ..io import check_output_dir
from ..options import Overwrite, add_option, options_from_args
from .common import add_model_arguments, add_rule_arguments, rule_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--task", required=True, choices=TASKS, help="evaluation task")
    parser.add_argument(
        "--data",
        required=True,
        metavar="DIR",
        help="dataset folder in the task's layout: sinder's own, ImageNet-style class folders (knn), "
        "a Pascal VOC root, VOCdevkit or VOC20XX (linear-seg, unsup-seg, lost) or ADEChallengeData2016 (segmentation); "
        "intrinsic: a folder of photos (recursive), or any of those layouts, of which only the photos are read",
    )
    parser.add_argument("--compare", nargs="+", default=[], metavar="MODEL2", help="more model specs to evaluate")
    parser.add_argument(
        "--compare-weights",
        nargs="+",
        default=[],
        metavar="FILE",
        help="one checkpoint per --compare model, in order ('-' for none)",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help=f"output folder for {METRICS_FILE}")
    for name in ("resolution", "batch_size", "amp"):
        add_option(parser, EvaluateConfig, name)
    add_task_arguments(parser)
    add_option(parser, EvaluateConfig, "progress")
    add_option(parser, Overwrite, "overwrite")
    add_rule_arguments(parser)  # the intrinsic task's defect rule


def add_task_arguments(parser: argparse.ArgumentParser) -> None:
    """The per-task options, shared with ``sinder compare --task`` (read back by :func:`task_options`)."""
    parser.add_argument(
        "--knn-k",
        nargs="+",
        type=int,
        metavar="K",
        help=f"knn: neighbour counts, each at most the number of train images (default {' '.join(map(str, EvaluateConfig().knn_ks))})",
    )
    add_option(parser, EvaluateConfig, "lost_gram_bias", metavar="B")


def task_options(args: argparse.Namespace) -> dict:
    """:class:`EvaluateConfig` fields set by :func:`add_task_arguments`' options."""
    return {**({"knn_ks": tuple(args.knn_k)} if args.knn_k else {}), "lost_gram_bias": args.lost_gram_bias}


def run(args: argparse.Namespace) -> int:
    if args.compare_weights and len(args.compare_weights) != len(args.compare):
        raise ConfigError(
            f"--compare-weights has {len(args.compare_weights)} files for {len(args.compare)} --compare models; "
            "give one per model ('-' for none)"
        )
    compare_weights = [None if w == "-" else w for w in args.compare_weights] or [None] * len(args.compare)
    config = EvaluateConfig(**(options_from_args(EvaluateConfig, args) | task_options(args)), rule=rule_from_args(args))
    out = Path(args.out)
    check_output_dir(out, METRICS_FILE, args.overwrite)  # before any model runs, not after (nothing is created yet)
    models = [(args.model, args.weights), *zip(args.compare, compare_weights)]
    report = evaluate_models(models, args.task, args.data, config)
    print(format_table(report))
    path = write_metrics(out, report, overwrite=args.overwrite)
    print(f"wrote {path}")
    return 0
