"""The command line's CPU thread policy (sinder.threads): passive OpenMP waits set before torch
loads, --threads auto from the usable cores, restored afterwards for in-process callers."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from helpers.cli import run_sinder

from sinder.threads import auto_threads, cli_threads, parse_threads, usable_cores

PROBE = """
import os, sys
import sinder.cli
assert "torch" not in sys.modules, "importing the CLI loaded torch before the thread policy could apply"
sinder.cli.before_torch_import()
import torch
print(os.environ["OMP_WAIT_POLICY"], torch.get_num_threads())
"""


@pytest.mark.parametrize("given, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_passive_waits_are_set_before_torch_loads_and_a_user_value_is_kept(given, expected):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given:
        env["OMP_WAIT_POLICY"] = given
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-1000:]
    assert out.stdout.split()[0] == expected


def test_threads_are_set_for_the_command_and_restored_after():
    before = torch.get_num_threads()
    with cli_threads(1) as n:
        assert n == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with cli_threads("auto") as n:  # whatever the load: a run and its --resume agree
        assert n == auto_threads() and torch.get_num_threads() == n
    assert torch.get_num_threads() == before


def test_auto_is_every_usable_core_unless_the_user_set_omp_num_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert auto_threads() == usable_cores()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert auto_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "junk")
    assert auto_threads() == usable_cores()


@pytest.mark.parametrize("bad", ["0", "-2", "two", "1.5"])
def test_bad_thread_counts_are_one_line_errors(bad):
    out = run_sinder("--threads", bad, "demo")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == f"sinder: error: argument --threads: must be auto or a whole number >= 1 (got '{bad}')"
    assert parse_threads("auto") == "auto" and parse_threads("3") == 3
