"""``sinder`` command line. Each sub-command lives in ``sinder/commands/<name>.py`` with
``add_arguments(parser)`` and ``run(args) -> int``. User errors print one line, never a traceback."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .errors import SinderError

COMMANDS = {
    "analyze": "Predict defect directions and detect defects on images.",
    "repair": "Repair a backbone with SINDER and export it in its own format.",
    "evaluate": "Downstream evaluation on frozen features (knn, linear-seg, unsup-seg, lost, intrinsic).",
    "report": "Write a self-contained before/after HTML report.",
    "demo": "Analyse, repair and re-analyse the built-in planted-defect model.",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sinder", description="Find and repair singular defects of Vision Transformers.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        module = importlib.import_module(f"sinder.commands.{name}")
        p = sub.add_parser(name, help=help_text, description=help_text)
        # also accepted after the command name; SUPPRESS keeps the top-level value when absent
        p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log debug messages")
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


class _Formatter(logging.Formatter):
    """Plain messages; warnings and errors say so (a skipped file must not read like progress)."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return f"{record.levelname.lower()}: {text}" if record.levelno >= logging.WARNING else text


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(_Formatter("%(message)s"))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, handlers=[handler])
    try:
        return int(args._module.run(args) or 0)
    except SinderError as err:
        print(f"sinder {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sinder {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
