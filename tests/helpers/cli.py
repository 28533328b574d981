"""The one way tests run sinder's command line: in a new interpreter (exit codes, stderr, signals,
start-up as a user sees them) or in this process (fast: the model builds in a second)."""

from __future__ import annotations

import subprocess
import sys


def sinder_argv(*args) -> list[str]:
    """The command that runs ``sinder ARGS`` in a new interpreter (for Popen)."""
    return [sys.executable, "-m", "sinder", *map(str, args)]


def run_sinder(*args, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    """``sinder ARGS`` in a new interpreter; output decoded by hand, since text mode would turn a
    progress bar's \\r into \\n. ``kwargs`` go to :func:`subprocess.run` (env, cwd)."""
    proc = subprocess.run(sinder_argv(*args), capture_output=True, timeout=timeout, check=False, **kwargs)
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode())


def sinder_in_process(capsys, *args) -> subprocess.CompletedProcess:
    """``sinder ARGS`` through :func:`sinder.cli.main` in this process, its output read by ``capsys``."""
    from sinder.cli import main

    code = main(list(map(str, args)))
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, out, err)
