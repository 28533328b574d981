"""The command line's CPU thread policy (library callers keep their own torch settings).

Two things make a CPU run slow on a shared machine: OpenMP workers that spin while they wait for
each other (libgomp's default), which burns the cores another process needs; and more workers
than free cores, so every parallel region waits for a descheduled thread. The policy:

- ``OMP_WAIT_POLICY=PASSIVE`` before torch is imported (libgomp reads it once, at load): waiting
  workers sleep. A value the user set is kept.
- ``--threads auto`` (the default) uses the cores that are idle when the command starts (sampled
  from /proc/stat for 0.1 s), at least one; ``--threads N`` uses N.

This module imports no torch at module level: :func:`before_torch_import` must run first.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import time
from typing import Iterator

SAMPLE_SECONDS = 0.1
THREADS_HELP = "CPU threads for torch: auto (the cores idle at start, at least 1) or a number (default: auto)"


def before_torch_import() -> None:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _cpu_times() -> tuple[float, float] | None:
    """(busy, total) jiffies of the whole machine, or None where /proc/stat is not readable."""
    try:
        with open("/proc/stat") as f:
            fields = [float(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def idle_cores(sample_seconds: float = SAMPLE_SECONDS) -> int:
    """Cores that nothing else keeps busy right now (rounded, at least 1, at most the usable ones)."""
    cores = usable_cores()
    first = _cpu_times()
    if first is None:
        return cores
    time.sleep(sample_seconds)
    second = _cpu_times()
    total = second[1] - first[1] if second else 0.0
    if total <= 0:
        return cores
    busy = (second[0] - first[0]) / total * (os.cpu_count() or cores)
    return max(1, min(cores, round(cores - busy)))


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
    n = idle_cores() if value == "auto" else int(value)
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)
