"""Time to a defect-free model on this machine: one default ``sinder repair`` of a planted ViT at
its native 518 px, from start to the re-loaded export, split by phase.

The run is the command line a user types (``sinder repair planted:native518@L --data … --eval-data
… --out …``, every setting at its default), in its own process: 8 bundled photos to train on, 8
held out. The table gives the wall time, the repair's own phase split (``summary.json``'s
``phase_seconds``: directions, the analysis before, start-up = onset search and factorising,
training, the held-out metrics, folding and export with its re-load check, the analysis after),
the steps it needed and why it stopped, the peak resident memory of the process, and whether the
zoo targets hold on the held-out photos (energy along the planted u down ≥ 95%, max/median ≤ 3,
non-defect and CLS cosine ≥ 0.999). ``benchmarks/gpu_check.py`` gives the same on a GPU.

    python benchmarks/time_to_defect_free.py                         # planted:native518@L
    python benchmarks/time_to_defect_free.py --members native518 native518@L --json ttd.json
    python benchmarks/time_to_defect_free.py --keep runs/   # keep each run's folder (log, summary.json)
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
from pathlib import Path

from gpu_check import print_tables, run_child, targets_hold, write_photos


def run(member: str, photos: tuple[Path, Path], work: Path, limit: float, extra: list[str]) -> dict:
    out = work / member.replace("@", "_")
    cmd = [sys.executable, "-m", "sinder", "-q", "repair", f"planted:{member}", "--data", str(photos[0])]
    cmd += ["--eval-data", str(photos[1]), "--out", str(out), "--device", "cpu", "--overwrite", *extra]
    row: dict = {"member": member}
    done = run_child(cmd, limit, row)
    row["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # the largest child so far
    if done is None:
        return row
    s = json.loads((out / "summary.json").read_text())
    metrics = s.get("metrics") or {}
    before, after, feats = metrics.get("before", {}), metrics.get("after", {}), metrics.get("features", {})
    row.update(steps=s["steps"], optimizer_steps=s["optimizer_steps"], stop=s["stop_reason"], phase_seconds=s.get("phase_seconds"))
    row.update(targets=targets_hold(metrics), max_over_median=after.get("max_over_median"))
    key = "energy_along_u" if "energy_along_u" in after else "energy_along_direction"
    row["energy"] = f"{before.get(key, float('nan')):.1%} → {after.get(key, float('nan')):.2%}"
    row["cosines"] = f"{feats.get('non_defect_cosine', float('nan')):.5f} / {feats.get('cls_cosine', float('nan')):.5f}"
    return row


def format_row(r: dict) -> str:
    return (
        f"{r['wall_s']:.0f} | {r['steps']} ({r['optimizer_steps']}) | {r['stop']} | {r['peak_rss_gb']:.1f} "
        f"| {r['energy']} | {r['max_over_median']:.2f} | {r['cosines']} | {'pass' if r['targets'] else 'FAIL'}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--members", nargs="+", default=["native518@L"], help="planted zoo members (NAME[@SIZE])")
    p.add_argument("--limit", type=float, default=5400.0, help="seconds per run")
    p.add_argument("--set", nargs=argparse.REMAINDER, default=[], help="further sinder repair options, e.g. --set --max-steps 200")
    p.add_argument("--json")
    p.add_argument("--keep", metavar="DIR", help="keep the photos and each run's --out folder (log, summary.json) here")
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep or tmp)
        photos = write_photos(work)
        for member in args.members:
            rows.append(run(member, photos, work, args.limit, args.set))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    head = "| member | wall s | steps (optimizer) | stop | peak RSS GB | energy along u | max/median | non-defect / CLS cos | targets |"
    print_tables(rows, "member", head, format_row, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
