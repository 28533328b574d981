"""LOST single-object discovery (Siméoni et al., BMVC 2021) and CorLoc.

As published: the keys of the last block (``view.k`` on ``view.norm1`` of the block's input, all
heads concatenated, no normalisation, prefix tokens dropped) build a patch similarity graph
A = K Kᵀ. The seed is the patch with the fewest positive correlations; the seed expands to those
of the k=100 lowest-degree patches that correlate positively with it; the box is the bounding box
of the seed's 4-connected component of {Σ_expansion A > 0}. Degree ties go to the lowest patch
index (the reference sorts with an unstable argsort). Images keep their aspect ratio (short side
= resolution) and run one at a time, so the box covers the whole image as in the paper; it is
mapped back to original pixels for CorLoc. The reference feeds VOC images at full size (padded to
a multiple of the patch size): pass ``--resolution`` near the images' short side to match that.

Gram bias (``gram_bias``, ``--lost-gram-bias``): "Vision Transformers Need Registers" (Darcet et
al., ICLR 2024, §3.3, Table 3) ran LOST on DINOv2's keys and "manually add[ed] a bias to the gram
matrix of features" because "the output features may have different conditioning". Here the
constant b is added to every entry, A' = K Kᵀ + b, and every step reads A': the degree counts
K_i·K_j > −b, the expansion keeps K_seed·K_j > −b, the box thresholds Σ_expansion K Kᵀ > −b·|S|.
A negative b makes "positively correlated" stricter, which undoes a large component shared by all
keys (then every pair correlates, every degree ties and the box is the whole image). The paper
gives no value and none is published, so the default is 0: exactly LOST as published. The bias is
in the units of K Kᵀ, so a value fits one model (e.g. about −‖mean key‖² to centre the keys).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F

from ..backbones.base import Backbone
from ..errors import ImageError, SinderError
from ..images import crop_geometry
from .checks import first_skip
from .config import EvaluateConfig
from .datasets import BoxData, read_voc_boxes
from .features import Extraction, autocast, iter_batches
from .metrics import corloc

logger = logging.getLogger(__name__)


@torch.no_grad()
def last_block_keys(backbone: Backbone, pixels: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """Patch keys of the last block (B, h·w, D) and the patch grid (h, w)."""
    last = backbone.depth - 1
    if last > 0:
        outputs, ctx = backbone.forward_layers(pixels, upto=last - 1)
        x = outputs[-1]
    else:
        x, ctx = backbone.embed(pixels)
    view = backbone.block_view(last)
    k = F.linear(view.norm1(x), view.k.weight, view.k.bias)
    return k[:, backbone.num_prefix_tokens :].float(), ctx.grid


def key_gram(keys: torch.Tensor, gram_bias: float = 0.0) -> torch.Tensor:
    """A' = K Kᵀ + gram_bias (N, N) in float64 for one image's patch keys (N, D)."""
    k = keys.double()
    return k @ k.T + gram_bias


def degrees(a: torch.Tensor) -> torch.Tensor:
    """Positive correlations per patch: #{j ≠ i : a_ij > 0}."""
    pos = a > 0
    pos.fill_diagonal_(False)
    return pos.sum(1)


def lost_box(
    keys: torch.Tensor, grid: tuple[int, int], k_patches: int = 100, gram_bias: float = 0.0
) -> tuple[tuple[int, int, int, int], int]:
    """LOST on one image's patch keys (N, D): box (x0, y0, x1, y1) in patch units, and the seed index."""
    from scipy import ndimage

    a = key_gram(keys, gram_bias)
    order = torch.sort(degrees(a), stable=True).indices  # ties go to the lowest index, deterministically
    seed = int(order[0])
    potentials = order[: min(k_patches, order.numel())]
    similars = potentials[a[seed, potentials] > 0]
    if similars.numel() == 0:
        similars = torch.tensor([seed])
    m = a[similars].sum(0).reshape(grid).cpu().numpy()
    labelled, _ = ndimage.label(m > 0)  # default structure: 4-connectivity
    h, w = grid
    sy, sx = divmod(seed, w)
    cc = labelled[sy, sx]
    if cc == 0:  # the seed's own score is not positive: fall back to the seed patch
        return (sx, sy, sx + 1, sy + 1), seed
    ys, xs = np.nonzero(labelled == cc)
    return (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1), seed


def lost(backbone: Backbone, data: BoxData, run: Extraction, config: EvaluateConfig) -> tuple[dict[str, float], dict]:
    """LOST's box per image (``lost_k_patches``, ``lost_gram_bias``), CorLoc at ``corloc_iou``."""
    skipped = list(data.skipped)
    preds, gts = [], []
    p = backbone.patch_size
    for batch in iter_batches(backbone, data.images, run, skipped, square=False, desc="lost"):
        (i,), (w, h) = batch.indices, batch.sizes[0]
        try:
            gt = read_voc_boxes(data.annotations[i])
        except ImageError as err:
            logger.warning("skipping %s: %s", data.images[i], err)
            skipped.append({"path": str(data.images[i]), "reason": str(err)})
            continue
        with autocast(backbone.device, run.amp):
            keys, grid = last_block_keys(backbone, batch.pixels)
        (x0, y0, x1, y1), _ = lost_box(keys[0], grid, config.lost_k_patches, config.lost_gram_bias)
        geo = crop_geometry(w, h, run.resolution, p, square=False)
        bx0, by0, bx1, by1 = geo.to_original((x0 * p, y0 * p, x1 * p, y1 * p))
        preds.append(np.array([max(bx0, 0.0), max(by0, 0.0), min(bx1, w), min(by1, h)]))
        gts.append(gt)
    if not preds:
        raise SinderError(
            f"lost: no usable image/annotation pair ({len(skipped)} skipped{first_skip(skipped)}); "
            "CorLoc needs images whose annotation holds an object box"
        )
    return {"corloc": corloc(preds, gts, config.corloc_iou)}, {"num_images": len(preds), "skipped": skipped}
