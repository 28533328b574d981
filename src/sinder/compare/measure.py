"""The numbers and maps ``sinder compare`` judges every method by, on the same evaluation images.

Per method, every batch goes through the method's model (its hooks attached) and through the
original, so nothing is cached across batches:

* per layer, the :class:`~sinder.detect.DefectStats` names (energy along ν_i, max/median
  norm, high-norm and defect rates), ν_i being the *original* model's predicted directions (a
  retrained model is judged along its own);
* feature preservation: cosine to the original's final-normed tokens, for patch tokens that
  are neither high-norm nor defects in the original, and for CLS;
* for planted models, the energy along the planted direction u (ground truth);
* inference time per image next to the original's;
* maps of the first images: PCA of the last layer's patch tokens, their norms, and the CLS
  attention of the last block (with a register token present, attention to it is left out, so
  the patch shares sum to less than one).
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..analyze import denormalise, pca_rgb
from ..backbones.base import Backbone
from ..detect import DefectRule, DefectStats, detect_layer
from ..images import ImageSet
from ..repair.metrics import feature_summary
from .methods import Method

LAYER_KEYS = ("energy_along_direction", "max_over_median", "high_norm_rate", "defect_rate")


@dataclass
class MethodMaps:
    pca: list[np.ndarray] = field(default_factory=list)
    norms: list[np.ndarray] = field(default_factory=list)
    attention: list[np.ndarray | None] = field(default_factory=list)


@dataclass
class _Tally:
    layers: list[DefectStats]
    cos_patch: list[torch.Tensor] = field(default_factory=list)
    cos_cls: list[torch.Tensor] = field(default_factory=list)
    u_along: float = 0.0
    u_total: float = 0.0
    seconds: float = 0.0
    images: int = 0
    maps: MethodMaps = field(default_factory=MethodMaps)


class _LastBlockInput:
    """Captures the input of the last block as the block sees it (with a register token, if a
    method inserted one), so the CLS attention is the one the model computes."""

    def __init__(self, backbone: Backbone) -> None:
        self.backbone, self.x = backbone, None

    def __enter__(self):
        blk = self.backbone.blocks()[-1]
        self.handle = blk.register_forward_pre_hook(lambda m, args: setattr(self, "x", args[0].detach()))
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


@torch.no_grad()
def _run(method: Method, pixels: torch.Tensor, want_attention: bool):
    with method.active() as bb, _LastBlockInput(bb) as cap:
        start = time.perf_counter()
        outs, ctx = bb.forward_layers(pixels.to(bb.device, bb.dtype))
        final = bb.final_norm(outs[-1]).float()
        seconds = time.perf_counter() - start
        attn = None
        if want_attention and bb.has_cls_token and cap.x is not None:
            extra = cap.x.shape[1] - (bb.num_prefix_tokens + ctx.grid[0] * ctx.grid[1])
            seen = copy.copy(bb)  # an inserted register token counts as one more prefix token
            seen.num_prefix_tokens = bb.num_prefix_tokens + extra
            attn = seen.cls_attention(bb.depth - 1, cap.x, ctx).mean(dim=1).reshape(pixels.shape[0], *ctx.grid).float().cpu()
    grids = [bb.patch_grid(x, ctx).float() for x in outs]
    return grids, final, ctx, seconds, attn


def measure(methods: list[Method], images: ImageSet, directions: dict[str, torch.Tensor], rule: DefectRule,
            batch_size: int = 8, max_maps: int = 4, progress: bool = False) -> tuple[dict[str, dict], dict]:  # fmt: skip
    """(per-method results, maps) over ``images``; ``methods[0]`` must be the original."""
    original = methods[0]
    assert original.name == "original"
    depth = original.backbone.depth
    tallies = {m.name: _Tally([DefectStats() for _ in range(depth)]) for m in methods}
    truth = getattr(original.backbone, "ground_truth", None)
    inputs: list[np.ndarray] = []
    names: list[str] = []
    for idxs, pixels in images.batches(batch_size, progress=progress, desc="compare"):
        keep = max(0, min(len(idxs), max_maps - len(inputs)))
        ref = None
        for method in methods:
            d = directions[method.name]
            grids, final, ctx, seconds, attn = _run(method, pixels, keep > 0)
            tally = tallies[method.name]
            tally.seconds += seconds
            tally.images += pixels.shape[0]
            for i, grid in enumerate(grids):
                tally.layers[i].add(grid, d[i], detect_layer(rule, grid, d[i]))
            last = grids[-1]
            if truth is not None:
                u = truth.u.to(last.device, last.dtype)
                tally.u_along += float(((last @ u) ** 2).sum())
                tally.u_total += float((last**2).sum())
            if ref is None:
                found = detect_layer(rule, last, d[-1])
                ref = (final, ctx, ~(found.high | found.defects))
            else:
                ref_final, ref_ctx, clean = ref
                bb = method.backbone
                cos = F.cosine_similarity(bb.patch_grid(final, ctx), original.backbone.patch_grid(ref_final, ref_ctx), dim=-1)
                tally.cos_patch.append(cos[clean].cpu())
                if bb.has_cls_token and original.backbone.has_cls_token:
                    tally.cos_cls.append(F.cosine_similarity(final[:, 0], ref_final[:, 0], dim=-1).cpu())
            for b in range(keep):
                tally.maps.pca.append(pca_rgb(last[b]))
                tally.maps.norms.append(last[b].norm(dim=-1).cpu().numpy())
                tally.maps.attention.append(None if attn is None else attn[b].numpy())
        for b in range(keep):
            inputs.append(denormalise(pixels[b], original.backbone.mean, original.backbone.std))
            names.append(images.names[idxs[b]])
    results = {m.name: _summary(m, tallies[m.name], tallies["original"], directions[m.name], truth is not None) for m in methods}
    maps = {"inputs": inputs, "names": names, "methods": {m.name: tallies[m.name].maps for m in methods}}
    return results, maps


def _summary(method: Method, tally: _Tally, original: _Tally, directions: torch.Tensor, planted: bool) -> dict:
    per_layer = []
    for i, stats in enumerate(tally.layers):
        s = stats.summary()
        per_layer.append({"layer": i, **{k: s[k] for k in LAYER_KEYS}})
    last = dict(per_layer[-1])
    last.pop("layer")
    if planted:
        last["energy_along_u"] = tally.u_along / tally.u_total if tally.u_total > 0 else None
    features = None
    if method.name != "original" and not method.own_directions:
        features = feature_summary(tally.cos_patch, tally.cos_cls)
    ms = 1000 * tally.seconds / max(tally.images, 1)
    return {
        "last_layer": last,
        "per_layer": per_layer,
        "features": features,
        "directions": "own" if method.own_directions else "original",
        "inference_ms_per_image": ms,
        "inference_vs_original": tally.seconds / original.seconds if original.seconds > 0 else None,
    }
