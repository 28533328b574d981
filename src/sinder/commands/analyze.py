"""``sinder analyze MODEL IMAGE_OR_DIR... --out DIR``"""

from __future__ import annotations

import argparse
import logging

from ..analyze import AnalyzeConfig, analyze, compute_directions, format_table, verdict_line
from ..backbones import parse_spec
from ..errors import SinderError
from ..images import check_decodable, check_grid, list_images
from ..options import add_option
from ..runfolder import AnalysisFolder
from ..units import plural
from .common import add_model_arguments, add_rule_arguments, config_from_args, load_model_from_args, rule_from_args

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR", help="image files and/or folders (searched recursively)")
    p.add_argument("--out", required=True, help="output folder (analysis.json, directions.safetensors, figures/)")
    for name in ("resolution", "crop"):
        add_option(p, AnalyzeConfig, name)
    p.add_argument(
        "--square-crop", action="store_const", const="square", dest="crop", help=argparse.SUPPRESS
    )  # the default now; kept for old scripts
    add_option(p, AnalyzeConfig, "directions")
    add_rule_arguments(p)
    for name in ("batch_size", "figures", "progress", "overwrite"):
        add_option(p, AnalyzeConfig, name)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(AnalyzeConfig(), args, rule=rule_from_args(args))
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
    check_grid(resolution, backbone.patch_size)
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
    )
    print(format_table(result.summary))
    n_ok, n_skip = len(result.summary["images"]), len(result.summary["skipped"])
    print(f"{plural(n_ok, 'image')} analysed, {n_skip} skipped; outputs in {args.out}")
    for s in result.summary["skipped"]:
        print(f"  skipped {s['path']}: {s['reason']}")
    print(verdict_line(result.summary))  # the last line: the answer to "does this model have singular defects?"
    return 0
