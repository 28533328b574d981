"""The σ-clamp trade-off (SINDER appendix B) on the zoo: every block Linear's singular values
clamped to ≤ γ, judged on the bundled evaluation photos with each member's planted direction.

Per member and γ: energy along u at the last layer (and its drop), max/median token norm,
high-norm rate, cosine of ordinary final-normed patch tokens and of the CLS token to the
original. The paper shows γ = 2.0, 1.5, 1.3: defects shrink as γ falls, and features degrade.
Only ``spectral`` has ordinary weights with σ above 1.3 (a heavy-tailed spectrum, as trained
weights); on the other members the clamp touches little but the planted circuit.

    python benchmarks/clamp_tradeoff.py
    python benchmarks/clamp_tradeoff.py --members spectral
    python benchmarks/clamp_tradeoff.py --members small swiglu --gammas 3 2 1.5 1.3 1.1 --figure clamp.png
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import torch
from zoo_common import markdown, measure, save_rows  # the same ground-truth numbers as the repair benchmark

from sinder.backbones import load_backbone
from sinder.fixes import clamp_singular_values
from sinder.images import BUNDLED_EVAL, ImageSet, bundled_photos
from sinder.planted import PRESETS


def run(member: str, gammas: list[float]) -> list[dict]:
    original = load_backbone(f"planted:{member}")
    held_out = ImageSet.from_inputs(bundled_photos(BUNDLED_EVAL), original, original.image_size)
    rows = []
    for gamma in gammas:
        bb = load_backbone(f"planted:{member}")
        t0 = time.perf_counter()
        res = clamp_singular_values(bb, gamma)
        row = {
            "member": member,
            "gamma": gamma,
            "clamped_values": res.clamped_values,
            "largest_sigma": res.largest_sigma,
            "seconds": time.perf_counter() - t0,
            **measure(original, bb, held_out),
        }
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def table(rows: list[dict]) -> str:
    head = "| member | γ | σ clamped | energy along u (drop) | max/median | high-norm rate | non-defect cos | CLS/pooled cos |"
    return markdown(
        head,
        [
            f"| {r['member']} | {r['gamma']:g} | {r['clamped_values']} | {100 * r['energy_after']:.2f}% ({100 * r['energy_drop']:.1f}%) "
            f"| {r['max_over_median']:.2f} | {100 * r['high_norm_rate']:.2f}% | {r['non_defect_cosine']:.4f} | {r['summary_cosine']:.4f} |"
            for r in rows
        ],
    )


def figure(rows: list[dict], path: str) -> None:
    """Defect left (energy along u) against features kept (non-defect cosine), one curve per member."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    gammas = list(dict.fromkeys(r["gamma"] for r in rows))
    markers = "osD^v<>p*"
    for member in dict.fromkeys(r["member"] for r in rows):
        mine = [r for r in rows if r["member"] == member]
        x = [max(1 - r["non_defect_cosine"], 1e-7) for r in mine]  # the original sits at the floor
        (line,) = ax.plot(x, [100 * r["energy_after"] for r in mine], lw=1, label=member)
        for xi, r in zip(x, mine):
            ax.plot(xi, 100 * r["energy_after"], markers[gammas.index(r["gamma"]) % len(markers)], color=line.get_color(), ms=5)
    for k, g in enumerate(gammas):  # a legend entry per γ, by marker shape
        ax.plot([], [], markers[k % len(markers)], color="0.3", label=f"γ = {g:g}")
    ax.set_xscale("log")
    ax.set_xlabel("1 − cosine of ordinary tokens to the original (feature change)")
    ax.set_ylabel("energy along the planted direction, %")
    ax.set_title("σ clamp on the zoo: defect left against feature change")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--members", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    p.add_argument("--gammas", nargs="+", type=float, default=[math.inf, 3.0, 2.0, 1.5, 1.3, 1.0], help="clamp levels (inf: the original)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--figure", help="also draw the trade-off curves into this PNG")
    p.add_argument("--json", help="also write the rows to this file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [row for member in args.members for row in run(member, args.gammas)]
    print(table(rows))
    if args.figure:
        figure(rows, args.figure)
    save_rows(rows, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
