"""The command line's CPU thread policy (library callers keep their own torch settings).

Two things make a CPU run slow on a shared machine: OpenMP workers that spin while they wait for
each other (libgomp's default), which burns the cores another process needs; and more workers
than free cores, so every parallel region waits for a descheduled thread. The policy:

- ``OMP_WAIT_POLICY=PASSIVE`` before torch is imported (libgomp reads it once, at load): waiting
  workers sleep. A value the user set is kept.
- ``--threads auto`` (the default) uses every core the process may run on, or ``OMP_NUM_THREADS``
  when the user set it; ``--threads N`` uses N.
  Not fewer when the machine looks busy: with passive waits, two threads beside another job were
  as fast as one (benchmarks/thread_load.py), and a count that followed the load would make two
  runs of the same command (a run and its --resume) differ in the last bits.

This module imports no torch at module level: :func:`before_torch_import` must run first.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator

THREADS_HELP = "CPU threads for torch: auto (OMP_NUM_THREADS if set, else every core this process may use) or a number (default: auto)"


def before_torch_import() -> None:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def auto_threads() -> int:
    """OMP_NUM_THREADS when it is a positive whole number, else every usable core."""
    given = os.environ.get("OMP_NUM_THREADS", "")
    return int(given) if given.isdigit() and int(given) > 0 else usable_cores()


def parse_threads(value: str) -> str | int:
    """argparse type for --threads: ``auto`` or a positive whole number, with a one-line error."""
    if value == "auto":
        return value
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be auto or a whole number >= 1 (got {value!r})")
    return n


@contextlib.contextmanager
def cli_threads(value: str | int) -> Iterator[int]:
    """torch's intra-op threads from --threads for the enclosed command, restored afterwards (main()
    may run in a process that has its own setting); yields the number used."""
    import torch

    before = torch.get_num_threads()
    n = auto_threads() if value == "auto" else int(value)
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)
