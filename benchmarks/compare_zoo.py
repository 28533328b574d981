"""``sinder compare`` over the zoo: SINDER, test-time registers, σ clamp and neighbour interpolation
on every planted member, trained/searched on the 8 bundled training photos and judged on the 8
bundled evaluation photos. One row per member and method: energy along the planted u at the last
layer (and its drop), max/median norm, high-norm rate, cosine of ordinary tokens and of CLS to the
original, what the fix needed and its preparation time. Each member's compare.json and
compare.html are kept under --out.

    python benchmarks/compare_zoo.py                          # the whole zoo (about 30 min on 2 CPU cores)
    python benchmarks/compare_zoo.py --members spread attention --out /tmp/cz
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from zoo_common import markdown, save_rows

from sinder.backbones import load_backbone
from sinder.compare import CompareConfig, compare
from sinder.fixes import ClampFix, InterpolationFix, RegistersFix, SinderFix
from sinder.images import BUNDLED_EVAL, BUNDLED_TRAIN, bundled_photos
from sinder.measure import summary_cosine
from sinder.planted import PRESETS
from sinder.repair import RepairConfig


def run(member: str, out: Path, max_steps: int, gamma: float) -> list[dict]:
    bb = load_backbone(f"planted:{member}")
    truth = bb.ground_truth
    sinder = SinderFix(repair=RepairConfig(max_steps=max_steps, progress=False, analysis=False, overwrite=True))
    config = CompareConfig(fixes=(sinder, RegistersFix(), ClampFix(gamma=gamma), InterpolationFix()), max_maps=2, overwrite=True)
    report = compare(bb, bundled_photos(BUNDLED_TRAIN), bundled_photos(BUNDLED_EVAL), config, out / member)
    base = report["methods"]["original"]["last_layer"]["energy_along_u"]
    rows = []
    for name in report["order"]:
        m = report["methods"][name]
        last, feats, needs, details = m["last_layer"], m["features"] or {}, m["needs"], m["details"]
        if name == "registers":
            neurons = [tuple(n) for n in details["neurons"]]
            hit = (
                "no ignition neuron (attention)"
                if truth.ignition_unit < 0
                else ("ignition unit found" if (truth.ignition_layer, truth.ignition_unit) in neurons else "ignition unit MISSED")
            )
            note = f"{len(neurons)} neuron(s), {hit}"
        elif name == "sinder":
            note = f"{needs['training_steps']} steps ({details['stop_reason']})"
        elif name == "clamp":
            note = f"γ {details['gamma']:g}: {details['clamped_values']} σ clamped"
        elif name == "interp":
            note = f"layer {details['layer']}: {details['replaced_tokens']} tokens replaced"
        else:
            note = ""
        row = {
            "member": member,
            "method": name,
            "energy_u": last["energy_along_u"],
            "energy_drop": 1 - last["energy_along_u"] / base if base else None,
            "max_over_median": last["max_over_median"],
            "high_norm_rate": last["high_norm_rate"],
            "non_defect_cosine": feats.get("non_defect_cosine"),
            "summary_cosine": summary_cosine(feats),
            "prepare_seconds": m["prepare_seconds"],
            "inference_vs_original": m["inference_vs_original"],
            "note": note,
        }
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def table(rows: list[dict]) -> str:
    num = lambda v, f: "–" if v is None else format(v, f)  # noqa: E731
    drop = lambda r: "" if r["energy_drop"] is None or r["method"] == "original" else f" ({100 * r['energy_drop']:.1f}%)"  # noqa: E731
    head = "| member | method | energy along u (drop) | max/median | high-norm rate | non-defect cos | CLS/pooled cos | prepare | what it took |"
    return markdown(
        head,
        [
            f"| {r['member']} | {r['method']} | {100 * r['energy_u']:.2f}%{drop(r)} | {r['max_over_median']:.2f} | {100 * r['high_norm_rate']:.2f}% "
            f"| {num(r['non_defect_cosine'], '.4f')} | {num(r['summary_cosine'], '.4f')} | {r['prepare_seconds']:.1f} s | {r['note']} |"
            for r in rows
        ],
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--members", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    p.add_argument("--out", default="compare_zoo_out", help="one compare folder per member (default compare_zoo_out/)")
    p.add_argument("--max-steps", type=int, default=1500, help="SINDER's step budget per member (default 1500)")
    p.add_argument("--gamma", type=float, default=ClampFix.gamma, help="σ clamp level (default: sinder compare's)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="also write the rows to this file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [row for member in args.members for row in run(member, Path(args.out), args.max_steps, args.gamma)]
    print(table(rows))
    save_rows(rows, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
