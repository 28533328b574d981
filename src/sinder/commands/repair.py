"""``sinder repair MODEL --data DIR_OR_FILES... --out DIR`` (also under ``torchrun --nproc_per_node N -m sinder repair``)."""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from ..analyze import AnalyzeConfig, analyze_around
from ..errors import ImageError
from ..repair.config import RepairConfig
from .common import add_model_arguments

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = RepairConfig()
    add_model_arguments(p)
    p.add_argument("--data", nargs="+", required=True, metavar="DIR_OR_FILE", help="training images: folders (recursive) and/or files")
    p.add_argument("--eval-data", nargs="+", metavar="DIR_OR_FILE", help="held-out images for the before/after metrics (default: a strided subset of --data, not trained on)")
    p.add_argument("--out", required=True, help="output folder: config.json, log.jsonl, summary.json, checkpoints, weights/")
    p.add_argument("--impl", choices=("fast", "reference"), default=d.impl, help="fast (default) or the literal reference loop")
    p.add_argument("--max-steps", type=int, default=d.max_steps, help=f"iterations (one batch per rank each; default {d.max_steps})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="images per iteration and rank (fast only; default 1 as the reference)")
    p.add_argument("--resolution", type=int, default=None, help="square crop side in px (default: the model's native size)")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--momentum", type=float, default=d.momentum)
    p.add_argument("--mask-thr", type=float, default=d.mask_thr, help="defect if |cos| > mean + THR·std (default 4)")
    p.add_argument("--kernel", type=int, choices=(3, 5), default=d.kernel, help="neighbourhood window (default 3)")
    p.add_argument("--skip-less-than", type=int, default=d.skip_less_than, help="defects a layer needs to count (default 3)")
    p.add_argument("--limit-layers", type=int, default=d.limit_layers, help="blocks ending at the defect layer that learn (default 10)")
    p.add_argument("--window", type=int, default=d.window, help="recent images the skip ratio is taken over (default 1000)")
    p.add_argument("--stop-skip-ratio", type=float, default=d.stop_skip_ratio, help="stop when this fraction of recent images has no defect (default 0.75)")
    p.add_argument("--save-at-skip", type=float, nargs="*", default=[], help="also checkpoint when the skip ratio first reaches each value (0-1, or percent as in the reference)")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, help=f"steps between checkpoints (default {d.checkpoint_every})")
    p.add_argument("--gram-weight", type=float, default=d.gram_weight, help="Gram anchoring to the original model's non-defect tokens (default 0: off)")
    p.add_argument("--num-train-max", type=int, default=d.num_train_max, help="subsample the training images to at most N, fixed stride (default 30000)")
    p.add_argument("--num-eval", type=int, default=d.num_eval_max, help="at most N held-out images (default 64)")
    p.add_argument("--directions", choices=("exact", "montecarlo"), default=d.directions, help="how the defect directions are predicted")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--compile", action="store_true", help="torch.compile the block calls (fast path)")
    p.add_argument("--no-amp", action="store_true", help="no bf16 autocast on CUDA")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--no-analysis", action="store_true", help="skip analysis_before/ and analysis_after/ (maps for sinder report)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a previous run in --out")


def config_from_args(args: argparse.Namespace) -> RepairConfig:
    save_at = tuple(v / 100 if v > 1 else v for v in args.save_at_skip)
    return RepairConfig(
        impl=args.impl,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        resolution=args.resolution,
        lr=args.lr,
        momentum=args.momentum,
        mask_thr=args.mask_thr,
        kernel=args.kernel,
        skip_less_than=args.skip_less_than,
        limit_layers=args.limit_layers,
        window=args.window,
        stop_skip_ratio=args.stop_skip_ratio,
        save_at_skip=save_at,
        checkpoint_every=args.checkpoint_every,
        gram_weight=args.gram_weight,
        num_train_max=args.num_train_max,
        num_eval_max=args.num_eval,
        directions=args.directions,
        device=args.device,
        seed=args.seed,
        amp="off" if args.no_amp else "auto",
        compile=args.compile,
        progress=not args.no_progress,
        resume=args.resume,
        overwrite=args.overwrite,
    )


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def format_summary(summary: dict) -> str:
    lines = [
        f"steps {summary['steps']}  images {summary['images_seen']}  {summary['seconds']:.1f} s  "
        f"stop: {summary['stop_reason']}  final skip ratio {summary['final_skip_ratio']:.2f}"
    ]
    m = summary.get("metrics")
    if m:
        lines.append(f"{'held-out (' + str(m['num_images']) + ' images)':<28}{'before':>12}{'after':>12}")
        for key in ("high_norm_rate", "defect_rate", "max_median_norm_ratio"):
            lines.append(f"{key:<28}{_fmt(m['before'][key]):>12}{_fmt(m['after'][key]):>12}")
        for key, value in m["features"].items():
            lines.append(f"{key:<28}{'':>12}{_fmt(value):>12}")
    if summary.get("weights"):
        lines.append(f"weights: {summary['weights']} (re-loaded, max token diff {_fmt(summary['export_max_token_diff'])})")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from ..backbones import load_backbone
    from ..repair import repair
    from ..repair.api import check_out
    from ..repair.data import check_decodable, expand_inputs, split_holdout
    from ..repair.distributed import init_from_env, rank_device, shutdown
    from ..runtime import resolve_device

    config = config_from_args(args)
    out = Path(args.out)
    check_out(out, config)  # fail before loading anything
    dist = init_from_env(args.device)
    if not dist.is_main:  # one rank reports
        logging.getLogger("sinder").setLevel(logging.WARNING)
    try:
        items, missing = expand_inputs(args.data)
        if missing:
            raise ImageError(f"input not found: {missing[0]['path']}; check --data")
        if not items:
            raise ImageError(f"no images found in {' '.join(args.data)}; pass image files or folders that contain them")
        if args.eval_data:
            eval_items, missing = expand_inputs(args.eval_data)
            if missing:
                raise ImageError(f"input not found: {missing[0]['path']}; check --eval-data")
            if not eval_items:
                raise ImageError(f"no images found in {' '.join(args.eval_data)}; check --eval-data")
            check_decodable(eval_items, "--eval-data image(s)")
            train_items = items
        else:
            n_eval = min(config.num_eval_max, max(1, len(items) // 10)) if len(items) >= 2 else 0
            train_items, eval_items = split_holdout(items, n_eval)
            if not eval_items and len(items) < 2:
                log.warning("only one image: no held-out metrics; pass --eval-data")
        check_decodable(train_items, "training image(s)")  # before the model is loaded
        if not args.eval_data and eval_items:
            try:
                check_decodable(eval_items, "held-out image(s)")
            except ImageError as err:
                log.warning("no held-out metrics: %s", err)
                eval_items = []
        device = resolve_device(rank_device(dist, args.device))
        backbone = load_backbone(args.model, args.weights, random_init=args.random_init, device=device)
        analysable = [item for item in eval_items if isinstance(item, (str, os.PathLike))]
        if dist.world_size == 1 and analysable and not args.no_analysis:
            # Maps and per-layer curves before/after on the held-out images, for `sinder report`
            # (single process only: other ranks would wait in collectives meanwhile).
            def run_repair(directions):
                return repair(backbone, train_items, config, eval_items, out_dir=out, dist=dist, directions=directions)

            result = analyze_around(backbone, analysable, out, run_repair, AnalyzeConfig(device=str(device), resolution=config.resolution))[2]
        else:
            result = repair(backbone, train_items, config, eval_items or None, out_dir=out, dist=dist)
        if dist.is_main:
            print(format_summary(result.summary))
            print(f"outputs in {out}")
    finally:
        shutdown(dist)
    return 0
