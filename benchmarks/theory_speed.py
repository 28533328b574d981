"""Closed-form (Stein + quadrature) vs Monte-Carlo (sampled least squares) defect directions.

Prints the time of each, the speed ratio, the per-layer |cos| between the two directions, the
top singular values of G_i (a direction is only defined where σ₁/σ₂ > 1) and the matrix
relative error ‖G_exact − G_mc‖/‖G_exact‖. On ``planted:*`` models it also prints the
alignment |cos(ν_i, u)| with the planted defect direction.

    python benchmarks/theory_speed.py                       # planted:small (ViT-S, 12 blocks)
    python benchmarks/theory_speed.py --model timm:vit_small_patch14_dinov2 --layer-scale 0.1
"""

from __future__ import annotations

import argparse
import time

import torch

from sinder import theory
from sinder.backbones import load_backbone
from sinder.errors import ModelSpecError


def build(spec: str, layer_scale: float | None):
    try:
        backbone = load_backbone(spec, random_init=True)
    except (ModelSpecError, ImportError) as err:  # planted:* may be missing in older trees
        fallback = "timm:vit_small_patch14_dinov2"
        print(f"{spec} unavailable ({err}); falling back to random {fallback} with LayerScale 0.1")
        backbone, layer_scale = load_backbone(fallback, random_init=True), layer_scale or 0.1
    if layer_scale is not None:  # timm's random DINOv2 init has γ = 1e-5: blocks ≈ identity
        with torch.no_grad():
            for blk in backbone.blocks():
                for ls in (getattr(blk, "ls1", None), getattr(blk, "ls2", None)):
                    if ls is not None and hasattr(ls, "gamma"):
                        ls.gamma.fill_(layer_scale)
    return backbone


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="planted:small", help="model spec (default: planted:small)")
    parser.add_argument("--layer-scale", type=float, default=None, help="overwrite every LayerScale γ (random inits)")
    parser.add_argument("--samples", type=int, default=100_000, help="Monte-Carlo samples per block (reference: 100k)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="closed-form timing: best of N")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    backbone = build(args.model, args.layer_scale)
    print(
        f"model {backbone.spec}: {backbone.depth} blocks, d = {backbone.embed_dim}, "
        f"activation {backbone.block_view(0).activation}, {torch.get_num_threads()} threads"
    )

    times = []
    for _ in range(max(1, args.repeats)):
        t0 = time.perf_counter()
        exact = theory.linearise(backbone, "exact")
        times.append(time.perf_counter() - t0)
    t_exact = min(times)
    t0 = time.perf_counter()
    mc = theory.linearise(backbone, "montecarlo", samples=args.samples, seed=args.seed, progress=True)
    t_mc = time.perf_counter() - t0

    cos = (exact.directions.double() * mc.directions.double()).sum(1).abs()
    g_err = [float((ge - gm).norm() / ge.norm()) for ge, gm in zip(exact.composed, mc.composed)]
    u = (backbone.ground_truth or {}).get("u")
    align = (exact.directions.double() @ u.double()).abs() if u is not None else None

    print(f"\nexact      {t_exact:8.3f} s (best of {len(times)})")
    print(f"montecarlo {t_mc:8.3f} s ({args.samples} samples/block)")
    print(f"speed-up   {t_mc / t_exact:8.1f}x\n")
    header = f"{'layer':>5} {'|cos| ex/mc':>11} {'σ1':>9} {'σ2':>9} {'σ1/σ2':>7} {'‖ΔG‖/‖G‖':>10}"
    print(header + (f" {'|cos(ν,u)|':>10}" if align is not None else ""))
    for i in range(backbone.depth):
        s = exact.singular_values[i]
        row = f"{i:>5} {cos[i]:>11.4f} {s[0]:>9.4f} {s[1]:>9.4f} {s[0] / s[1]:>7.3f} {g_err[i]:>10.2e}"
        print(row + (f" {align[i]:>10.4f}" if align is not None else ""))
    gapped = exact.singular_values[:, 0] / exact.singular_values[:, 1] > 1.05
    if gapped.any():
        print(f"\nmin |cos| over layers with σ1/σ2 > 1.05: {float(cos[gapped].min()):.4f} ({int(gapped.sum())} layers)")
    print(f"max ‖G_exact − G_mc‖/‖G_exact‖: {max(g_err):.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
