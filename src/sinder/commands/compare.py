"""``sinder compare MODEL --methods sinder,registers,clamp,interp --data TRAIN --eval EVAL --out DIR``"""

from __future__ import annotations

import argparse
import logging

from ..backbones import parse_spec
from ..compare import CompareConfig, check_compare_output, check_tasks, compare, format_table
from ..errors import ConfigError, SinderError
from ..evaluate import EvaluateConfig
from ..fixes import FIXES
from ..images import check_decodable, check_grid, list_images
from ..options import add_option, options_from_args
from .common import add_model_arguments, add_rule_arguments, load_model_from_args, rule_from_args
from .evaluate import add_task_arguments, task_options

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = CompareConfig()
    add_model_arguments(p)
    _run_arguments(p.add_argument_group("methods, images and output"), d)
    _fix_arguments(p.add_argument_group("the fixes' options, and a model retrained with registers"))
    _measure_arguments(p)


def _run_arguments(g, d: CompareConfig) -> None:
    g.add_argument(
        "--methods",
        default=",".join(d.methods),
        help=f"comma-separated fixes to run, from {','.join(FIXES)} (default {','.join(d.methods)})",
    )
    g.add_argument(
        "--data",
        nargs="+",
        metavar="DIR_OR_FILE",
        help="unlabelled training images: SINDER trains on them, the register search reads them (default: none)",
    )
    g.add_argument(
        "--eval",
        nargs="+",
        required=True,
        metavar="DIR_OR_FILE",
        help="evaluation images every method is judged on (keep them apart from --data)",
    )
    g.add_argument("--out", required=True, help="output folder: compare.json, compare.html, registers.json, sinder_run/")


def _fix_arguments(g) -> None:
    for fix in FIXES.values():  # each fix declares its own flags
        fix.add_arguments(g)
    g.add_argument(
        "--retrained",
        metavar="MODEL",
        help="the same architecture retrained with registers (e.g. dinov2:vitl14_reg), added as a row (default: none)",
    )
    g.add_argument("--retrained-weights", metavar="FILE", help="checkpoint for --retrained (default: its own weights)")


def _measure_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--task",
        action="append",
        default=[],
        metavar="TASK=DIR",
        help="downstream evaluation on a dataset folder, as `sinder evaluate --task TASK --data DIR` reads it, e.g. knn=imagenet/ "
        "or lost=VOCdevkit/ (repeatable; default: none); the task options below apply",
    )
    add_task_arguments(p)
    for name in ("resolution", "batch_size", "max_maps"):
        add_option(p, CompareConfig, name)
    add_rule_arguments(p)
    for name in ("progress", "overwrite"):
        add_option(p, CompareConfig, name)


def parse_tasks(items: list[str]) -> tuple[tuple[str, str], ...]:
    tasks = []
    for item in items:
        task, sep, folder = item.partition("=")
        if not sep or not task or not folder:
            raise ConfigError(f"--task {item!r}: write TASK=DIR, e.g. --task knn=imagenet/")
        tasks.append((task, folder))
    return tuple(tasks)


def compare_config(args: argparse.Namespace) -> CompareConfig:
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    unknown = [m for m in methods if m not in FIXES]
    if unknown:
        raise ConfigError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(FIXES)}")
    rule = rule_from_args(args)
    shared = {"rule": rule, "progress": args.progress, "overwrite": args.overwrite}
    return CompareConfig(
        **options_from_args(CompareConfig, args),
        fixes=tuple(FIXES[name].from_args(args, shared) for name in methods),
        retrained=args.retrained,
        retrained_weights=args.retrained_weights,
        tasks=parse_tasks(args.task),
        task_options=EvaluateConfig(**task_options(args)),
        rule=rule,
    )


def _images(inputs: list[str], flag: str) -> list:
    paths, missing = list_images(inputs)
    if missing:
        raise SinderError(f"{flag}: input not found: {missing[0]['path']}; check the path")
    if not paths:
        raise SinderError(f"{flag}: no images found in {' '.join(inputs)}; pass image files or folders that contain them")
    check_decodable(paths, f"{flag} image(s)")
    return paths


def run(args: argparse.Namespace) -> int:
    config = compare_config(args)
    parse_spec(args.model)  # an unknown spec fails before any work
    if args.retrained:
        parse_spec(args.retrained)
    check_compare_output(args.out, args.overwrite)
    if config.needs_training_images and not args.data:
        raise ConfigError(
            "--data is needed: SINDER trains on it and the register search reads it (or give --repair-run DIR and --registers FILE)"
        )
    train = _images(args.data, "--data") if args.data else None
    evaluation = _images(args.eval, "--eval")
    layouts = check_tasks(config)  # every dataset check that needs no model, before the model loads
    backbone = load_model_from_args(args)
    check_grid(config.resolution or backbone.image_size, backbone.patch_size)
    report = compare(backbone, train, evaluation, config, args.out, layouts=layouts)
    print(format_table(report))
    print(f"outputs in {args.out}")
    return 0
