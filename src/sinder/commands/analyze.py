"""``sinder analyze MODEL IMAGE_OR_DIR... --out DIR``"""
from __future__ import annotations

import argparse
import logging

from ..analyze import AnalyzeConfig, analyze, format_table
from ..backbones import parse_spec
from ..errors import SinderError
from ..images import list_images
from ..io import check_output_dir
from .common import add_model_arguments, load_model_from_args

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR", help="image files and/or folders (searched recursively)")
    p.add_argument("--out", required=True, help="output folder (analysis.json, directions.safetensors, figures/)")
    p.add_argument("--resolution", type=int, default=None, help="short side in px (default: the model's native size, 518 for DINOv2)")
    p.add_argument("--square-crop", action="store_true", help="centre-crop to a square instead of keeping the aspect ratio")
    p.add_argument("--directions", choices=("exact", "montecarlo"), default="exact", help="how Â is computed (default: exact)")
    p.add_argument("--mask-thr", type=float, default=4.0, help="defect if |cos| > mean + THR·std (default 4)")
    p.add_argument("--high-norm-factor", type=float, default=3.0, help="high-norm if norm > F × median (default 3)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--no-figures", action="store_true", help="skip the matplotlib figures")
    p.add_argument("--overwrite", action="store_true", help="replace an existing analysis in --out")


def run(args: argparse.Namespace) -> int:
    config = AnalyzeConfig(
        resolution=args.resolution,
        square=args.square_crop,
        directions=args.directions,
        mask_thr=args.mask_thr,
        high_norm_factor=args.high_norm_factor,
        batch_size=args.batch_size,
        device=args.device,
        figures=not args.no_figures,
    )
    parse_spec(args.model)  # an unknown spec fails before any work
    paths, missing = list_images(args.images)
    if missing:
        raise SinderError(f"input not found: {missing[0]['path']}; check the path")
    if not paths:
        raise SinderError(f"no images found in {' '.join(args.images)}; pass image files or folders that contain them")
    check_output_dir(args.out, "analysis.json", args.overwrite)  # before the (slow) model load
    backbone = load_model_from_args(args)
    result = analyze(backbone, paths, config, out_dir=args.out, overwrite=args.overwrite)
    print(format_table(result.summary))
    n_ok, n_skip = len(result.summary["images"]), len(result.summary["skipped"])
    print(f"{n_ok} image(s) analysed, {n_skip} skipped; outputs in {args.out}")
    for s in result.summary["skipped"]:
        print(f"  skipped {s['path']}: {s['reason']}")
    return 0
