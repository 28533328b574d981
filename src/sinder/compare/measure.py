"""The numbers and maps ``sinder compare`` judges every method by, on the same evaluation images.

Per method, every batch goes through the method's model (its hooks attached) and through the
original, so nothing is cached across batches:

* per layer, by :class:`sinder.measure.ModelStats` (energy along ν_i, max/median norm, high-norm
  and defect rates), ν_i being the *original* model's predicted directions (a retrained model is
  judged along its own);
* feature preservation (:class:`sinder.measure.FeatureCosines`): cosine to the original's
  final-normed tokens, for patch tokens that are neither high-norm nor defects in the original,
  and for CLS (the pooled output without one);
* for planted models, the energy along the planted direction u and the rule's recall and
  precision of the planted defect tokens (ground truth);
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

from ..backbones.base import Backbone
from ..detect import DefectRule
from ..errors import require
from ..fixes import FixHandle
from ..images import ImageSet, denormalise, pca_rgb
from ..measure import FeatureCosines, ModelStats, forward_tokens, ordinary_tokens, summary_token_name, truth_mask

LAYER_KEYS = ("energy_along_direction", "max_over_median", "high_norm_rate", "defect_rate")
TRUTH_KEYS = ("energy_along_u", "truth_recall", "truth_precision")  # planted models only


@dataclass
class MethodMaps:
    pca: list[np.ndarray] = field(default_factory=list)
    norms: list[np.ndarray] = field(default_factory=list)
    attention: list[np.ndarray | None] = field(default_factory=list)


@dataclass
class _Tally:
    stats: ModelStats
    cosines: FeatureCosines
    seconds: float = 0.0
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
def _run(method: FixHandle, pixels: torch.Tensor, want_attention: bool):
    with method.active() as bb, _LastBlockInput(bb) as cap:
        start = time.perf_counter()
        tokens = forward_tokens(bb, pixels, every_layer=True)
        seconds = time.perf_counter() - start
        attn = None
        if want_attention and bb.has_cls_token and cap.x is not None:
            ctx = tokens.ctx
            extra = cap.x.shape[1] - (bb.num_prefix_tokens + ctx.grid[0] * ctx.grid[1])
            seen = copy.copy(bb)  # an inserted register token counts as one more prefix token
            seen.num_prefix_tokens = bb.num_prefix_tokens + extra
            attn = seen.cls_attention(bb.depth - 1, cap.x, ctx).mean(dim=1).reshape(pixels.shape[0], *ctx.grid).float().cpu()
    return tokens, seconds, attn


def measure(
    methods: list[FixHandle],
    images: ImageSet,
    directions: dict[str, torch.Tensor],
    rule: DefectRule,
    batch_size: int = 8,
    max_maps: int = 4,
    progress: bool = False,
) -> tuple[dict[str, dict], dict]:
    """(per-method results, maps) over ``images``; ``methods[0]`` must be the original."""
    original = methods[0]
    require(original.name == "original", f"measure() compares against the original model first, got {original.name!r} first")
    ob = original.backbone
    layers, truth, key = range(ob.depth), ob.ground_truth, summary_token_name(ob)
    tallies = {m.name: _Tally(ModelStats(rule, directions[m.name], layers, truth), FeatureCosines(key)) for m in methods}
    inputs: list[np.ndarray] = []
    names: list[str] = []
    for idxs, pixels in images.batches(batch_size, progress=progress, desc="compare"):
        keep = max(0, min(len(idxs), max_maps - len(inputs)))
        mask = truth_mask(ob, pixels)
        ref = None
        for method in methods:
            tokens, seconds, attn = _run(method, pixels, keep > 0)
            tally = tallies[method.name]
            tally.seconds += seconds
            found = tally.stats.add(tokens, mask)[ob.depth - 1]
            if ref is None:
                ref = (tokens, ordinary_tokens(found))
            else:
                tally.cosines.add(ob, ref[0], method.backbone, tokens, ref[1])
            for b in range(keep):
                tally.maps.pca.append(pca_rgb(tokens.last[b]))
                tally.maps.norms.append(tokens.last[b].norm(dim=-1).cpu().numpy())
                tally.maps.attention.append(None if attn is None else attn[b].numpy())
        for b in range(keep):
            inputs.append(denormalise(pixels[b], ob.mean, ob.std))
            names.append(images.names[idxs[b]])
    results = {m.name: _summary(m, tallies[m.name], tallies["original"]) for m in methods}
    maps = {"inputs": inputs, "names": names, "methods": {m.name: tallies[m.name].maps for m in methods}}
    return results, maps


def _summary(method: FixHandle, tally: _Tally, original: _Tally) -> dict:
    per_layer = [{"layer": e["index"], **{k: e[k] for k in LAYER_KEYS}} for e in tally.stats.per_layer()]
    last = {k: v for k, v in tally.stats.last_layer().items() if k in LAYER_KEYS + TRUTH_KEYS}
    features = None
    if method.name != "original" and not method.own_directions:
        features = tally.cosines.summary()
    ms = 1000 * tally.seconds / max(tally.stats.images, 1)
    return {
        "last_layer": last,
        "per_layer": per_layer,
        "features": features,
        "directions": "own" if method.own_directions else "original",
        "inference_ms_per_image": ms,
        "inference_vs_original": tally.seconds / original.seconds if original.seconds > 0 else None,
    }
