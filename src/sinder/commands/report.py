"""``sinder report RUN_DIR_OR_ANALYSIS_DIR... --out report.html``"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="RUN_DIR_OR_ANALYSIS_DIR",
        help="a repair run folder (sinder repair/demo) and/or one or two analysis folders (sinder analyze); two analyses are shown side by side",
    )
    p.add_argument("--out", required=True, help="the HTML file to write (self-contained: images embedded, no network)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--title", default=None, help="page title (default: 'SINDER report: MODEL', naming every model shown)")
    p.add_argument("--max-images", type=int, default=12, help="at most this many images side by side (default 12)")
    p.add_argument("--dpi", type=int, default=80, help="resolution of the embedded figures (default 80)")


def run(args: argparse.Namespace) -> int:
    from ..report import ReportConfig, write_report  # matplotlib: imported only when a report is drawn

    config = ReportConfig(title=args.title, max_images=args.max_images, dpi=args.dpi)
    out = write_report(args.inputs, args.out, config, overwrite=args.overwrite)
    print(f"report written to {out}")
    return 0
