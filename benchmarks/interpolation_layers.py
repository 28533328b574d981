"""Neighbour interpolation (SC-CLIP style) on the zoo: for each member and each hooked layer, the
same ground-truth numbers as benchmarks/repair_zoo.py on the bundled evaluation photos, and how
many tokens the hook replaced.

    python benchmarks/interpolation_layers.py --members small
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
from zoo_common import markdown, measure, save_rows

from sinder.backbones import load_backbone
from sinder.detect import DefectRule
from sinder.fixes import NeighbourInterpolation
from sinder.images import BUNDLED_EVAL, ImageSet, bundled_photos
from sinder.measure import resolve_low_norm
from sinder.planted import PRESETS
from sinder.theory import defect_directions


def run(member: str, layers: list[int] | None) -> list[dict]:
    original, hooked = load_backbone(f"planted:{member}"), load_backbone(f"planted:{member}")
    directions = defect_directions(hooked)
    held_out = ImageSet.from_inputs(bundled_photos(BUNDLED_EVAL), original, original.image_size)
    rule = resolve_low_norm(original, held_out, directions, DefectRule())  # as sinder compare decides it
    rows = []
    for layer in layers if layers is not None else range(hooked.depth):
        with NeighbourInterpolation(hooked, layer, directions[layer], rule) as fix, torch.no_grad():
            for _, px in held_out.batches(8):  # one pass, to count the replaced tokens once
                hooked.model_forward(px)
            replaced = fix.replaced
            row = {
                "member": member,
                "layer": layer,
                "ignition_layer": original.ground_truth.ignition_layer,
                **measure(original, hooked, held_out),
            }
        row["replaced"] = replaced
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def table(rows: list[dict]) -> str:
    head = "| member | hooked layer (ignition) | tokens replaced | energy along u, before → after | max/median | non-defect cos | CLS/pooled cos |"
    return markdown(
        head,
        [
            f"| {r['member']} | {r['layer']} ({r['ignition_layer']}) | {r['replaced']} | {100 * r['energy_before']:.1f}% → {100 * r['energy_after']:.2f}% "
            f"| {r['max_over_median_before']:.1f} → {r['max_over_median']:.2f} | {r['non_defect_cosine']:.4f} | {r['summary_cosine']:.4f} |"
            for r in rows
        ],
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--members", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    p.add_argument("--layers", nargs="+", type=int, help="layers to hook (default: every layer)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="also write the rows to this file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [row for member in args.members for row in run(member, args.layers)]
    print(table(rows))
    save_rows(rows, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
