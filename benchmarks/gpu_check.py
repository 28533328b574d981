"""The CUDA paths, end to end, on a GPU machine: one table.

Each row is one `sinder repair` of a planted zoo member on the bundled photos (8 to train on, 8
held out), run in its own process on one GPU:

- ``L bf16`` / ``g bf16``: the default repair of ``planted:native518@L`` / ``@g`` (518 px, bf16
  autocast, default step budget): time from start to a re-loaded export, the steps it needed,
  why it stopped, and whether the zoo targets hold on the held-out photos (energy drop along
  ν ≥ 95%, max/median ≤ 3, non-defect and CLS cosine ≥ 0.999);
- ``L fp32``, ``L compile``, ``L torchrun``: the same model with ``--amp off``, with ``--compile``,
  and under a 1-GPU ``torchrun`` (NCCL), each for a few steps without analyses: per-step time.

Peak GPU memory is ``torch.cuda.max_memory_allocated`` of the process (not shown for torchrun).
A row whose process fails or runs past its time limit says so and the next one runs.

    bash benchmarks/gpu_check.sh              # installs sinder (pip install -e .), then this
    python benchmarks/gpu_check.py --rows "L bf16" "L fp32" --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROWS = {  # name: (member, extra repair options, torchrun, full run)
    "L bf16": ("native518@L", [], False, True),
    "L fp32": ("native518@L", ["--amp", "off", "--max-steps", "24", "--no-analysis", "--num-eval", "0"], False, False),
    "L compile": ("native518@L", ["--compile", "--max-steps", "24", "--no-analysis", "--num-eval", "0"], False, False),
    "L torchrun": ("native518@L", ["--max-steps", "24", "--no-analysis", "--num-eval", "0"], True, False),
    "g bf16": ("native518@g", [], False, True),
}
CHILD = (
    "import json, sys, torch\n"
    "from sinder.cli import main\n"
    "rc = main(sys.argv[1:])\n"
    "print('PEAK ' + json.dumps(torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None))\n"
    "sys.exit(rc)\n"
)


def write_photos(folder: Path) -> tuple[Path, Path]:
    from sinder.images import BUNDLED_EVAL, BUNDLED_TRAIN, bundled_photos

    dirs = folder / "train", folder / "eval"
    for names, d in zip((BUNDLED_TRAIN, BUNDLED_EVAL), dirs):
        d.mkdir(parents=True, exist_ok=True)
        for photo in bundled_photos(names):
            photo.image.save(d / (photo.name.split(":")[1] + ".png"))
    return dirs


def targets_hold(metrics: dict) -> bool | None:
    before, after, feats = metrics.get("before", {}), metrics.get("after", {}), metrics.get("features", {})
    if not before or not after:
        return None
    key = "energy_along_u" if "energy_along_u" in after else "energy_along_direction"  # a planted model's truth
    drop = 1 - after[key] / max(before[key], 1e-12)
    return bool(
        drop >= 0.95
        and after["max_over_median"] <= 3
        and feats.get("non_defect_cosine", 0) >= 0.999
        and feats.get("cls_cosine", 1) >= 0.999
    )


def run_child(cmd: list[str], limit: float, row: dict) -> subprocess.CompletedProcess | None:
    """Run ``cmd`` for at most ``limit`` s; ``row`` gets ``wall_s``, or ``error`` (then None comes back)."""
    t0 = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        row["error"] = f"over {limit:.0f} s"
        return None
    row["wall_s"] = time.perf_counter() - t0
    if done.returncode != 0:
        row["error"] = (done.stderr.strip().splitlines() or [f"rc {done.returncode}"])[-1][:300]
        return None
    return done


def phase_table(rows: list[dict], name_key: str) -> list[str]:
    """Markdown lines: the phase split (``summary.json``'s ``phase_seconds``) of the rows that have one."""
    timed = [r for r in rows if r.get("phase_seconds")]
    if not timed:
        return []
    phases = [k for k in timed[0]["phase_seconds"] if k != "total"]
    lines = [f"| {name_key} | " + " | ".join(k.replace("_", " ") for k in phases) + " | total s |", "|---" * (len(phases) + 2) + "|"]
    for r in timed:
        ps = r["phase_seconds"]
        lines.append(f"| {r[name_key]} | " + " | ".join(f"{ps[k]:.1f}" for k in phases) + f" | {ps['total']:.1f} |")
    return lines


def print_tables(rows: list[dict], name_key: str, head: str, format_row, json_path: str | None) -> None:
    """The rows as a markdown table (``format_row(row)`` gives the cells after the name; a row with an
    ``error`` shows it), then their phase split; the rows also go to ``json_path`` when given."""
    print(head)
    print("|---" * (head.count("|") - 1) + "|")
    for r in rows:
        print(f"| {r[name_key]} | {r['error']} |" if "error" in r else f"| {r[name_key]} | {format_row(r)} |")
    lines = phase_table(rows, name_key)
    if lines:
        print("\n" + "\n".join(lines))
    if json_path:
        Path(json_path).write_text(json.dumps(rows, indent=1))


def format_row(r: dict) -> str:
    return (
        f"{cell(r, 'wall_s', '{:.1f}')} | {cell(r, 'train_s', '{:.1f}')} | {cell(r, 'steps')} | {cell(r, 'stop')} "
        f"| {cell(r, 'median_step_s', '{:.3f}')} | {cell(r, 'peak_gpu_gb', '{:.1f}')} | {cell(r, 'energy')} "
        f"| {cell(r, 'max_over_median', '{:.2f}')} | {cell(r, 'cosines')} | {cell(r, 'targets')}"
    )


def run_row(name: str, photos: tuple[Path, Path], work: Path, limit: float, device: str, member: str | None) -> dict:
    default_member, extra, torchrun, full = ROWS[name]
    member = member or default_member
    out = work / name.replace(" ", "_")
    args = ["-q", "repair", f"planted:{member}", "--data", str(photos[0]), "--out", str(out), "--device", device, "--overwrite", *extra]
    if full:
        args += ["--eval-data", str(photos[1])]
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "-m", "sinder", *args]
    else:
        cmd = [sys.executable, "-c", CHILD, *args]
    row = {"row": name, "member": member}
    done = run_child(cmd, limit, row)
    if done is None:
        return row
    peak = [line for line in done.stdout.splitlines() if line.startswith("PEAK ")]
    row["peak_gpu_gb"] = json.loads(peak[-1][5:]) if peak else None
    summary = json.loads((out / "summary.json").read_text())
    steps = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if line.strip()]
    trained = [s["time"] for s in steps[1:] if s.get("stepped")]  # the first step compiles/warms up
    row.update(
        steps=summary["steps"],
        stop=summary["stop_reason"],
        train_s=summary["seconds"],
        median_step_s=statistics.median(trained) if trained else None,
        targets=targets_hold(summary.get("metrics") or {}),
        phase_seconds=summary.get("phase_seconds"),  # time to a defect-free model, by phase
    )
    after = (summary.get("metrics") or {}).get("after")
    if after:
        row["energy"] = f"{summary['metrics']['before']['energy_along_direction']:.1%} → {after['energy_along_direction']:.2%}"
        row["max_over_median"] = after["max_over_median"]
        feats = summary["metrics"].get("features", {})
        row["cosines"] = f"{feats.get('non_defect_cosine', float('nan')):.4f} / {feats.get('cls_cosine', float('nan')):.4f}"
    return row


def cell(row: dict, key: str, fmt: str = "{}") -> str:
    value = row.get(key)
    return "–" if value is None else fmt.format(value)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--budget", type=float, default=480.0, help="seconds for all rows; a row starts only with 60 s left")
    p.add_argument("--json")
    p.add_argument("--device", default="cuda", help="cuda; cpu only to try the script itself (with --member small)")
    p.add_argument("--member", help="zoo member for every row instead of the rows' own (a dry run)")
    args = p.parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to check", file=sys.stderr)
        return 2
    where = torch.cuda.get_device_name() if args.device == "cuda" else "CPU (dry run)"
    print(f"{where}, torch {torch.__version__}", flush=True)
    start, rows = time.perf_counter(), []
    with tempfile.TemporaryDirectory() as tmp:
        photos = write_photos(Path(tmp))
        for name in args.rows:
            left = args.budget - (time.perf_counter() - start)
            if left < 60:
                rows.append({"row": name, "error": "not run: budget spent"})
                continue
            rows.append(run_row(name, photos, Path(tmp), left, args.device, args.member))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    head = "| row | wall s | train s | steps | stop | median step s | peak GPU GiB | energy along ν | max/median | non-defect / CLS cos | targets |"
    print_tables(rows, "row", head, format_row, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
