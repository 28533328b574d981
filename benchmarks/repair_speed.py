"""Repair speed per trained image: sinder's fast path against a plain batch-1 loop, with peak memory.

The plain loop is the straightforward implementation (written here, in the style of the reference
code): every block Linear becomes ``U @ diag(S + ε) @ Vᵀ``, rebuilt on every call; one forward
with grad that stops at the first layer with enough defects, ``loss.backward()`` through
everything, gradients outside the 10-block window dropped, an SGD step. The fast path is
``sinder.repair.Trainer`` (``impl="fast"``) at batch 1 and 8. Both use the same defect rule and
predicted directions, so they train at the same layers: ``--rule faithful`` the reference's (no
norm gate, from block 0), ``--rule default`` sinder's default (norm gate, from the onset layer the
repair finds on the same photos; the fast path's weak-defect qualification off, which the plain
loop lacks). The learning rate is tiny, so every step trains (a repaired model would skip).

Each (model, path) runs in its own process, so its peak resident memory is its own. Every timed
batch is first run once untimed: the plain loop factorises every Linear up front, sinder a block
when a window first reaches it (a one-off SVD per matrix, a few seconds at ViT-L, that a run pays
once), so the timed steps are the steady state of both.

    python benchmarks/repair_speed.py                              # planted:small, 224 px
    python benchmarks/repair_speed.py --models native518@L --paths plain "fast b1" --rule default   # ViT-L/14, 518 px
    python benchmarks/repair_speed.py --models native518@L --paths plain "fast b1" --rule default --from-layer 16
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

LR = 1e-9  # so small that the model never gets repaired while we time it
PATHS = ("plain", "fast b1", "fast b8")


class PlainSVD(nn.Module):
    """U @ diag(S + ε) @ Vᵀ rebuilt on every call; only ε of the trainable chunks learns."""

    def __init__(self, linear: nn.Linear, trainable: tuple[bool, ...] = (True,)) -> None:
        super().__init__()
        self.bias = linear.bias.detach()
        self.factors = [torch.linalg.svd(w, full_matrices=False) for w in linear.weight.detach().chunk(len(trainable), dim=0)]
        self.eps = nn.ParameterList(nn.Parameter(torch.zeros_like(s), requires_grad=t) for (_, s, _), t in zip(self.factors, trainable))

    def forward(self, x):
        return F.linear(x, torch.cat([u @ torch.diag(s + e) @ vt for (u, s, vt), e in zip(self.factors, self.eps)]), self.bias)


class PlainLoop:
    """The plain batch-1 training step on a timm ViT."""

    def __init__(self, backbone, directions, rule, start: int = 0, limit: int = 10) -> None:
        self.bb, self.dirs, self.rule, self.start, self.limit = backbone, directions, rule, start, limit
        model = backbone.model
        for p in model.parameters():
            p.requires_grad = False
        for blk in model.blocks:
            blk.attn.qkv = PlainSVD(blk.attn.qkv, (False, False, True))
            blk.attn.proj, blk.mlp.fc1, blk.mlp.fc2 = PlainSVD(blk.attn.proj), PlainSVD(blk.mlp.fc1), PlainSVD(blk.mlp.fc2)
        self.opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR, momentum=0.9)

    def step(self, pixels: torch.Tensor) -> int:
        from sinder.repair.loss import neighbour_loss

        model, bb = self.bb.model, self.bb
        model.zero_grad()
        x, ctx = bb.embed(pixels)
        for j, blk in enumerate(model.blocks):
            x = blk(x)
            grid = bb.patch_grid(x, ctx)
            mask = self.rule.detect(grid, self.dirs[j], j)
            if j >= self.start and int(mask.sum()) >= self.rule.skip_less_than:
                neighbour_loss(grid, self.dirs[j], mask).sum().backward()
                for t in range(j - self.limit + 1):
                    for p in model.blocks[t].parameters():
                        p.grad = None
                self.opt.step()
                return [j]
        return []


def child(model: str, path: str, steps: int, rule_name: str, from_layer: int) -> dict:
    """Time ``steps`` steps of one path (each batch run once untimed first) in this process."""
    from sinder.backbones import load_backbone
    from sinder.detect import DefectRule
    from sinder.images import BUNDLED_TRAIN, ImageSet, bundled_photos
    from sinder.measure import resolve_low_norm
    from sinder.repair import RepairConfig, Trainer, attach
    from sinder.repair.config import FAITHFUL_RULE
    from sinder.repair.metrics import onset_layer
    from sinder.theory import defect_directions

    bb = load_backbone(f"planted:{model}")
    dirs = torch.nn.functional.normalize(defect_directions(bb), dim=-1)
    images = ImageSet.from_inputs(bundled_photos(BUNDLED_TRAIN), bb, bb.image_size)
    photos = [images.load(i) for i in range(len(images))]
    batch = 8 if path == "fast b8" else 1
    if rule_name == "faithful":
        rule, start = FAITHFUL_RULE, from_layer
        config = RepairConfig.faithful(lr=LR, batch_size=batch, progress=False)
    else:
        rule = resolve_low_norm(bb, images, dirs, DefectRule())
        start = max(from_layer, onset_layer(bb, images, dirs, rule))
        config = RepairConfig(lr=LR, batch_size=batch, progress=False, rule=rule, weak_defects=0.0)
    if path == "plain":
        runner = PlainLoop(bb, dirs, rule, start)
        step = lambda px: runner.step(px)  # noqa: E731
    else:
        trainer = Trainer(bb, attach(bb), dirs, config)
        trainer.start_layer = start
        step = lambda px: trainer.step(px).layers  # noqa: E731
    batches = [torch.stack([photos[(k * batch + i) % len(photos)] for i in range(batch)]) for k in range(steps)]
    for px in batches:  # warm-up on the timed batches: sinder factorises a block when a window first reaches it
        step(px)
    times, layers = [], []
    for px in batches:
        t0 = time.perf_counter()
        layers += step(px)
        times.append(time.perf_counter() - t0)
    trained = len(layers)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "model": model,
        "path": path,
        "rule": rule_name,
        "layers": layers,
        "batch": batch,
        "steps": steps,
        "trained_images": trained,
        "seconds": sum(times),
        "median_step_s": statistics.median(times),
        "peak_rss_mb": peak_mb,
        "seconds_per_trained_image": sum(times) / max(trained, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["small"], help="planted zoo names (e.g. small, native518@L)")
    p.add_argument("--steps", type=int, default=6, help="timed steps per path (default 6; at most 4 for models at 518 px or larger)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    p.add_argument("--rule", choices=("faithful", "default"), default="faithful", help="the defect rule both loops train with")
    p.add_argument(
        "--from-layer",
        type=int,
        default=0,
        help="neither loop trains before this block (later in a repair the defects that are left sit deeper)",
    )
    p.add_argument("--json")
    p.add_argument("--child", nargs=2, metavar=("MODEL", "PATH"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.steps, args.rule, args.from_layer)))
        return 0
    rows = []
    for model in args.models:
        steps = args.steps if "518" not in model and "@" not in model else min(args.steps, 4)
        for path in args.paths:
            cmd = [sys.executable, __file__, "--child", model, path, "--steps", str(steps), "--threads", str(args.threads)]
            cmd += ["--rule", args.rule, "--from-layer", str(args.from_layer)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    since = f", from block {args.from_layer}" if args.from_layer else ""
    print(f"{args.threads} threads, {args.rule} rule{since}; seconds per trained image (lower is better), peak resident memory")
    print("| model | path | layers trained | s / trained image | × plain | peak RSS (MB) | × plain |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        plain = next(x for x in rows if x["model"] == r["model"] and x["path"] == "plain")
        ratio = plain["seconds_per_trained_image"] / r["seconds_per_trained_image"]
        mem = r["peak_rss_mb"] / plain["peak_rss_mb"]
        where = ", ".join(map(str, sorted(set(r["layers"])))) or "–"
        print(
            f"| {r['model']} | {r['path']} | {where} | {r['seconds_per_trained_image']:.3f} | {ratio:.2f}× | {r['peak_rss_mb']:.0f} | {mem:.2f}× |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
