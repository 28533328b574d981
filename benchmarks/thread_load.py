"""`sinder demo` alone and beside one other CPU-bound torch process, under the CLI's thread policy.

The other process is a plain torch loop with torch's defaults (as many OpenMP threads as cores,
libgomp's spinning waits): what a user's training job looks like. Each policy row runs the demo
idle, then loaded, and prints both wall times and their ratio (goal: loaded ≤ 2.5× idle).

Policies:
- ``shipped``: `sinder demo` as installed (OMP_WAIT_POLICY=PASSIVE, --threads auto);
- ``threads=N``: the same with --threads N;
- ``before``: the policy off (torch imported before the CLI sets anything, one thread per core),
  i.e. the behaviour before the policy existed.

    python benchmarks/thread_load.py                      # shipped and before
    python benchmarks/thread_load.py --policies shipped threads=1 threads=2 before

Run it alone: any other job on the machine is load the idle rows would wrongly include.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

LOAD = """
import torch
a = torch.randn(768, 768)
while True:
    b = torch.nn.functional.gelu(a @ a) * 1e-3
    a = torch.nn.functional.layer_norm(b + a, (768,))
"""

BEFORE = """
import os, sys, torch
from sinder.cli import main
sys.exit(main(["--threads", str(len(os.sched_getaffinity(0))), *sys.argv[1:]]))
"""


def demo_command(policy: str, out: str) -> tuple[list[str], dict]:
    args = ["demo", "--out", out, "--overwrite", "-q"]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    if policy == "before":
        return [sys.executable, "-c", BEFORE, *args], env
    if policy.startswith("threads="):
        args = ["--threads", policy.split("=", 1)[1], *args]
    elif policy != "shipped":
        raise SystemExit(f"unknown policy {policy!r}: shipped, before or threads=N")
    return [sys.executable, "-m", "sinder", *args], env


def timed(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} failed: {done.stderr.strip()[-500:]}")
    return time.perf_counter() - t0


def run_policy(policy: str, out: str) -> dict:
    cmd, env = demo_command(policy, out)
    idle = timed(cmd, env)
    load = subprocess.Popen([sys.executable, "-c", LOAD], env={k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"})
    try:
        time.sleep(2.0)  # the load is running and has its threads up
        loaded = timed(cmd, env)
    finally:
        load.kill()
        load.wait()
    return {"policy": policy, "idle_s": idle, "loaded_s": loaded, "ratio": loaded / idle}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policies", nargs="+", default=["shipped", "before"])
    args = parser.parse_args(argv)
    print(f"{os.cpu_count()} cores; load: one plain torch process with default threads")
    print(f"{'policy':<12} {'idle s':>8} {'loaded s':>9} {'loaded/idle':>12}")
    with tempfile.TemporaryDirectory() as tmp:
        for policy in args.policies:
            row = run_policy(policy, os.path.join(tmp, "demo"))
            print(f"{row['policy']:<12} {row['idle_s']:>8.1f} {row['loaded_s']:>9.1f} {row['ratio']:>11.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
