"""``sinder report RUN_DIR_OR_ANALYSIS_DIR... --out report.html``"""

from __future__ import annotations

import argparse

from ..options import Overwrite, add_option
from ..report.config import ReportConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="RUN_DIR_OR_ANALYSIS_DIR",
        help="a repair run folder (sinder repair/demo) and/or one or two analysis folders (sinder analyze); two analyses are shown side by side",
    )
    p.add_argument("--out", required=True, help="the HTML file to write (self-contained: images embedded, no network)")
    add_option(p, Overwrite, "overwrite")
    p.add_argument("--title", default=None, help="page title (default: 'SINDER report: MODEL', naming every model shown)")
    add_option(p, ReportConfig, "max_images")
    add_option(p, ReportConfig, "dpi")


def run(args: argparse.Namespace) -> int:
    from ..report import write_report  # matplotlib: imported only when a report is drawn

    config = ReportConfig(title=args.title, max_images=args.max_images, dpi=args.dpi)
    out = write_report(args.inputs, args.out, config, overwrite=args.overwrite)
    print(f"report written to {out}")
    return 0
