"""``sinder evaluate``: downstream evaluation of one or more models on frozen features."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError, OutputExistsError
from ..evaluate import TASKS, EvaluateConfig, evaluate_models, format_table, write_metrics
from ..evaluate.run import METRICS_FILE
from .common import add_rule_arguments, rule_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="model spec, e.g. timm:vit_small_patch14_dinov2 or planted:small")
    parser.add_argument("--weights", metavar="FILE", help="checkpoint for MODEL (.safetensors or .pth state dict)")
    parser.add_argument("--random-init", action="store_true", help="use untrained weights when no checkpoint is given")
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
    parser.add_argument("--resolution", type=int, help="input side in pixels (default: the model's native size)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where to run (default auto)")
    add_task_arguments(parser)
    parser.add_argument(
        "--no-progress", action="store_true", help="hide the progress bars (they are only drawn on a terminal anyway; -q hides them too)"
    )
    parser.add_argument("--overwrite", action="store_true", help=f"replace an existing {METRICS_FILE}")
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
    parser.add_argument(
        "--lost-gram-bias",
        type=float,
        default=0.0,
        metavar="B",
        help="lost: constant added to the key Gram matrix before LOST's sign tests, as the registers paper did "
        "for DINOv2 (no published value; default 0 = LOST as published)",
    )


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
    config = EvaluateConfig(
        **task_options(args),
        resolution=args.resolution,
        batch_size=args.batch_size,
        device=args.device,
        random_init=args.random_init,
        rule=rule_from_args(args),
        progress=not args.no_progress,
    )
    out = Path(args.out)
    write_metrics_check(out, args.overwrite)
    models = [(args.model, args.weights), *zip(args.compare, compare_weights)]
    report = evaluate_models(models, args.task, args.data, config)
    print(format_table(report))
    path = write_metrics(out, report, overwrite=args.overwrite)
    print(f"wrote {path}")
    return 0


def write_metrics_check(out: Path, overwrite: bool) -> None:
    """Refuse an existing metrics.json before any model runs, not after (nothing is created yet)."""
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out} exists and is not a directory; choose another --out")
    if (out / METRICS_FILE).exists() and not overwrite:
        raise OutputExistsError(f"{out} already holds {METRICS_FILE}; pass --overwrite to replace it or choose another --out")
