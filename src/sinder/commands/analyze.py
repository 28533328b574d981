"""``sinder analyze MODEL IMAGE_OR_DIR... --out DIR``"""

from __future__ import annotations

import argparse
import logging

from ..analyze import AnalyzeConfig, analyze, compute_directions, format_table, verdict_line
from ..backbones import parse_spec
from ..errors import SinderError
from ..images import check_decodable, list_images
from ..runfolder import AnalysisFolder
from ..units import plural
from .common import add_model_arguments, add_rule_arguments, check_resolution_fits, config_from_args, load_model_from_args, rule_from_args

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR", help="image files and/or folders (searched recursively)")
    p.add_argument("--out", required=True, help="output folder (analysis.json, directions.safetensors, figures/)")
    p.add_argument(
        "--resolution",
        type=int,
        default=None,
        help="crop side in px (the short side with --crop aspect), 16 to 4096 (default: the model's native size, 518 for DINOv2)",
    )
    p.add_argument(
        "--crop",
        choices=("square", "aspect"),
        default="square",
        help="square centre crop (default: the crop repair, compare and evaluate measure, so the numbers agree) or keep the aspect ratio (the whole photo)",
    )
    p.add_argument(
        "--square-crop", action="store_const", const="square", dest="crop", help=argparse.SUPPRESS
    )  # the default now; kept for old scripts
    p.add_argument("--directions", choices=("exact", "montecarlo"), default="exact", help="how Â is computed (default: exact)")
    add_rule_arguments(p)
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    p.add_argument("--no-figures", action="store_true", help="skip the matplotlib figures")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar (it is only drawn on a terminal anyway)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing analysis in --out")


def run(args: argparse.Namespace) -> int:
    config = config_from_args(AnalyzeConfig(), args, crop=args.crop, rule=rule_from_args(args), figures=not args.no_figures)
    parse_spec(args.model)  # an unknown spec fails before any work
    paths, missing = list_images(args.images)
    if missing:
        raise SinderError(f"input not found: {missing[0]['path']}; check the path")
    if not paths:
        raise SinderError(f"no images found in {' '.join(args.images)}; pass image files or folders that contain them")
    check_decodable(paths, "input image(s)")  # stops at the first that decodes; all unusable fails before the model load
    AnalysisFolder(args.out).check(args.overwrite)
    backbone = load_model_from_args(args)
    resolution = config.resolution or backbone.image_size
    check_resolution_fits(resolution, backbone)
    # computed here rather than inside analyze() so that the slow phases are announced
    log.info("predicting the defect directions of %d layers (%s)", backbone.depth, config.directions)
    directions, singular_values = compute_directions(backbone, config.directions)
    log.info("analysing %s at %d px", plural(len(paths), "image"), resolution)
    result = analyze(
        backbone,
        paths,
        config,
        directions=directions,
        singular_values=singular_values,
        out_dir=args.out,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    print(format_table(result.summary))
    n_ok, n_skip = len(result.summary["images"]), len(result.summary["skipped"])
    print(f"{plural(n_ok, 'image')} analysed, {n_skip} skipped; outputs in {args.out}")
    for s in result.summary["skipped"]:
        print(f"  skipped {s['path']}: {s['reason']}")
    print(verdict_line(result.summary))  # the last line: the answer to "does this model have singular defects?"
    return 0
