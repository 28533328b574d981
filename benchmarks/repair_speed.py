"""Repair speed: steps/s and images/s of ``--impl reference`` and ``--impl fast`` on the same
model and images, in one run, and their ratio.

    python benchmarks/repair_speed.py [--steps 8] [--batch-size 4] [--device cpu] [--json out.json]

Model: ``planted:small`` (ViT-S/14, 224 px, real planted defects) when it loads, else a timm
ViT-S/14 with LayerScale 0.1 and a planted marker along an artificial direction. Steps of the
paths are interleaved (ref, fast, fast-batched, ref, ...) so that load from other processes
hits them alike; each path has its own copy of the model and takes real optimiser steps.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def load_model(device: str):
    from sinder.backbones import load_backbone

    try:
        bb = load_backbone("planted:small", device=device)
        from sinder.theory import defect_directions

        return bb, defect_directions(bb), "planted:small"
    except Exception as err:  # fall back to an artificial defect in a random ViT-S
        print(f"planted:small unavailable ({err}); using a timm ViT-S with an artificial direction")
    import timm

    from sinder.backbones.timm_loader import wrap_timm

    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, img_size=224, init_values=0.1, dynamic_img_size=True).eval()
    u = torch.randn(model.embed_dim)
    u = u - u.mean()
    u = u / u.norm()
    grid = 16
    with torch.no_grad():
        model.pos_embed.normal_(0, 0.3)
        for r, c in ((3, 4), (8, 9), (12, 5), (6, 12), (10, 2)):
            model.pos_embed[0, 1 + r * grid + c] += 12 * u
    return wrap_timm(model.to(device), "timm:vit_small_patch14_dinov2"), u.expand(12, -1).clone(), "timm ViT-S (artificial)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=8, help="timed steps per path (after 1 warm-up step)")
    ap.add_argument("--batch-size", type=int, default=4, help="batch size of the extra batched fast path")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--json", help="also write the numbers here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from sinder.images import BUNDLED_TRAIN, bundled_photos, preprocess
    from sinder.repair import RepairConfig, Trainer, attach

    paths = {"reference": dict(impl="reference"), "fast": dict(impl="fast"), f"fast b{args.batch_size}": dict(impl="fast", batch_size=args.batch_size)}
    trainers, name = {}, None
    for label, kw in paths.items():
        bb, dirs, name = load_model(args.device)
        handle = attach(bb, factor_frozen=kw["impl"] == "reference")
        trainers[label] = Trainer(bb, handle, dirs, RepairConfig(progress=False, **kw))
    bb = next(iter(trainers.values())).backbone
    photos = [preprocess(p.image, 224, bb.patch_size, bb.mean, bb.std, square=True) for p in bundled_photos(BUNDLED_TRAIN)]
    times = {k: [] for k in trainers}
    images = {k: 0 for k in trainers}
    layers = {k: [] for k in trainers}
    cursor = {k: 0 for k in trainers}
    for step in range(args.steps + 1):
        for label, tr in trainers.items():
            b = tr.config.batch_size
            px = torch.stack([photos[(cursor[label] + i) % len(photos)] for i in range(b)])
            cursor[label] += b
            if tr.device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            res = tr.step(px)
            if tr.device.type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            if step > 0:  # step 0 warms up
                times[label].append(dt)
                images[label] += b
                layers[label] += res.layers
    out = {"model": name, "device": args.device, "threads": torch.get_num_threads(), "steps": args.steps, "paths": {}}
    for label in trainers:
        total = sum(times[label])
        out["paths"][label] = {
            "steps_per_s": len(times[label]) / total,
            "images_per_s": images[label] / total,
            "median_step_s": statistics.median(times[label]),
            "defect_layers": sorted(set(layers[label])),
        }
    ref = out["paths"]["reference"]
    for label, row in out["paths"].items():
        row["speedup_images_per_s"] = row["images_per_s"] / ref["images_per_s"]
        # medians resist the outliers that other processes on a shared machine cause
        per_image = row["median_step_s"] / trainers[label].config.batch_size
        row["speedup_median"] = ref["median_step_s"] / per_image
    print(f"{name}, {args.device}, {out['threads']} threads, {args.steps} timed steps per path")
    print(f"{'path':<12}{'steps/s':>10}{'images/s':>10}{'median s':>10}{'× ref':>8}{'× ref (median)':>16}  layers")
    for label, row in out["paths"].items():
        print(f"{label:<12}{row['steps_per_s']:>10.2f}{row['images_per_s']:>10.2f}{row['median_step_s']:>10.3f}"
              f"{row['speedup_images_per_s']:>8.2f}{row['speedup_median']:>16.2f}  {row['defect_layers']}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
