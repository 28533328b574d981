"""``sinder`` command line. Each sub-command lives in ``sinder/commands/<name>.py`` with
``add_arguments(parser)`` and ``run(args) -> int``. User errors print one line, never a traceback."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .errors import Interrupted, SinderError
from .interrupt import TerminateAsInterrupt, Terminated
from .threads import THREADS_HELP, before_torch_import, cli_threads, parse_threads

COMMANDS = {
    "analyze": "Predict defect directions and detect defects on images.",
    "repair": "Repair a backbone with SINDER and export it in its own format.",
    "evaluate": "Downstream evaluation on frozen features (knn, linear-seg, unsup-seg, lost, intrinsic).",
    "report": "Write a self-contained before/after HTML report.",
    "compare": "Run SINDER, test-time registers, σ clamp and neighbour interpolation side by side on one model.",
    "demo": "Analyse, repair and re-analyse the built-in planted-defect model.",
}

# Libraries that log per chunk, font or request at DEBUG/INFO: -v is for sinder's own debug lines.
NOISY_LOGGERS = ("PIL", "matplotlib", "urllib3", "filelock", "fsspec", "h5py", "httpx", "httpcore", "huggingface_hub", "asyncio")


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sinder")
    except PackageNotFoundError:  # run from a source tree that was never installed
        from . import __version__

        return __version__


def add_verbosity(p: argparse.ArgumentParser, default=False) -> None:
    p.add_argument("-v", "--verbose", action="store_true", default=default, help="also log sinder's debug messages")
    p.add_argument("-q", "--quiet", action="store_true", default=default, help="log only warnings and errors; no progress bars")
    p.add_argument("--threads", type=parse_threads, default="auto" if default is False else default, metavar="N|auto", help=THREADS_HELP)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sinder", description="Find and repair singular defects of Vision Transformers.")
    parser.add_argument("--version", action="version", version=f"sinder {package_version()}", help="print the version and exit")
    add_verbosity(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        module = importlib.import_module(f"sinder.commands.{name}")
        p = sub.add_parser(name, help=help_text, description=help_text)
        # also accepted after the command name; SUPPRESS keeps the top-level value when absent
        add_verbosity(p, default=argparse.SUPPRESS)
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


class _Formatter(logging.Formatter):
    """Plain messages; warnings and errors say so (a skipped file must not read like progress)."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return f"{record.levelname.lower()}: {text}" if record.levelno >= logging.WARNING else text


def configure_logging(verbose: bool, quiet: bool) -> None:
    """Levels are set on every call (not only the first, as basicConfig would): main() may run twice in one process."""
    handler = logging.StreamHandler()
    handler.setFormatter(_Formatter("%(message)s"))
    logging.basicConfig(handlers=[handler])
    logging.getLogger().setLevel(logging.WARNING if quiet else logging.INFO)
    logging.getLogger("sinder").setLevel(logging.DEBUG if verbose else logging.NOTSET)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def _rerun_hint(args: argparse.Namespace) -> str:
    from .runfolder import RunFolder

    started = args.command == "repair" and (RunFolder(args.out) / "config.json").is_file()
    return "rerun the same command with --resume to continue" if started else "rerun the same command"


def main(argv: list[str] | None = None) -> int:
    before_torch_import()  # the commands' modules import torch
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verbose and args.quiet:
        parser.error("-v/--verbose and -q/--quiet contradict each other; pass one")
    configure_logging(args.verbose, args.quiet)
    if args.quiet and hasattr(args, "progress"):
        args.progress = False  # each command hands this to its own bars: no global switch
    try:
        from .commands.common import check_common_options

        check_common_options(args)
        with cli_threads(args.threads) as threads, TerminateAsInterrupt():
            logging.getLogger(__name__).debug("torch uses %d CPU threads", threads)
            return int(args._module.run(args) or 0)
    except Interrupted as err:
        print(f"sinder {args.command}: interrupted: {err}", file=sys.stderr)
        return err.exit_code
    except SinderError as err:
        print(f"sinder {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # outside training (start-up, analysis, export): nothing half-written is kept
        name, code = ("SIGTERM", 143) if isinstance(err, Terminated) else ("SIGINT", 130)
        print(f"sinder {args.command}: interrupted: {name} before the work was finished; {_rerun_hint(args)}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
