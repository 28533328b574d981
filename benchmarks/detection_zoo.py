"""Recall and precision of the defect rule against the planted ground truth, on every zoo member.

The ground truth of a planted member is the set of patch tokens its ignition circuit fires on
(``PlantedTruth.ignition``): those are the defect tokens at every later layer. At the last layer,
with ν the theory's last direction, each rule's detections are scored against them, pooled over a
photo set. Two photo sets: the 8 bundled evaluation photos, and photos used for nothing else in
sinder (no test, no demo, no training: cat, colorwheel, the left stereo_motorcycle view, cell,
logo, horse). Square crops at the member's native size (other grids resample the positional
embedding, and with it the positional markers).

    python benchmarks/detection_zoo.py                       # default and faithful rules, every member
    python benchmarks/detection_zoo.py --members border crowded --json det.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sinder.backbones import load_backbone
from sinder.detect import DefectRule, detect_layer
from sinder.images import BUNDLED_EVAL, ImageSet, SourceImage, bundled_photos, to_rgb
from sinder.measure import resolve_low_norm
from sinder.planted import PRESETS
from sinder.repair.config import FAITHFUL_RULE
from sinder.theory import defect_directions

UNSEEN = ("cat", "colorwheel", "stereo_motorcycle", "cell", "logo", "horse")
RULES = {"default": DefectRule(), "faithful": FAITHFUL_RULE}


def unseen_photos() -> list[SourceImage]:
    from skimage import data

    out = []
    for name in UNSEEN:
        arr = getattr(data, name)()
        arr = arr[0] if isinstance(arr, tuple) else arr  # stereo: the left view
        arr = (arr * 255).astype(np.uint8) if arr.dtype == bool else arr
        out.append(SourceImage(name=f"skimage:{name}", image=to_rgb(Image.fromarray(arr))))
    return out


@torch.no_grad()
def score(member: str, photos: list[SourceImage]) -> dict:
    bb = load_backbone(f"planted:{member}")
    directions = defect_directions(bb)
    truth, nu = bb.ground_truth, directions[-1]
    images = ImageSet.from_inputs(photos, bb, bb.image_size, crop="square")
    # as every command does: the default rule's low-norm handling decided on these photos
    rules = {name: resolve_low_norm(bb, images, directions, rule) for name, rule in RULES.items()}
    counts = {name: [0, 0, 0] for name in RULES}  # hits, detected, planted
    for _, px in images.batches(4):
        planted = truth.ignition(bb, px)
        outs, ctx = bb.forward_layers(px)
        grid = bb.patch_grid(outs[-1], ctx)
        for name, rule in rules.items():
            found = detect_layer(rule, grid, nu, bb.depth - 1).defects.cpu()
            c = counts[name]
            c[0] += int((found & planted).sum())
            c[1] += int(found.sum())
            c[2] += int(planted.sum())
    row = {"member": member}
    for name, (hits, detected, planted) in counts.items():
        row[name] = {
            "recall": hits / planted if planted else None,
            "precision": hits / detected if detected else None,
            "planted": planted,
            "detected": detected,
            "low_norm": rules[name].low_norm,
        }
    return row


def fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--members", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    p.add_argument("--json")
    args = p.parse_args(argv)
    sets = {"eval": bundled_photos(BUNDLED_EVAL), "unseen": unseen_photos()}
    rows = []
    for member in args.members:
        for set_name, photos in sets.items():
            rows.append(score(member, photos) | {"photos": set_name})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print("| member | photos | planted | default recall | default precision | faithful recall | faithful precision |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        d, f = r["default"], r["faithful"]
        print(
            f"| {r['member']} | {r['photos']} | {d['planted']} | {fmt(d['recall'])} | {fmt(d['precision'])} | {fmt(f['recall'])} | {fmt(f['precision'])} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
