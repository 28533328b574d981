"""Unsupervised segmentation: k-means on L2-normalised patch tokens of the whole val set.

k = the number of ground-truth classes present in the val masks (at least 2: with one class every
pixel would match and mIoU would be 1 whatever the features, so that is refused). Cluster scores
(−squared distance to each centroid) are bilinearly upsampled to the masks' own resolution;
clusters are matched to labels by the Hungarian algorithm on the pixel confusion matrix.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F

from ..backbones.base import Backbone
from ..errors import ConfigError
from .checks import require_mask_classes
from .config import EvaluateConfig
from .datasets import IGNORE, SegSplit
from .features import Extraction
from .linear_seg import load_split, predict_scores
from .metrics import confusion_matrix, hungarian_mapping, miou, pixel_accuracy

logger = logging.getLogger(__name__)


def _plus_plus_init(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    centres = [x[torch.randint(n, (1,), generator=gen)].squeeze(0)]
    d2 = ((x - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        probs = d2 / d2.sum() if d2.sum() > 0 else torch.full_like(d2, 1.0 / n)
        c = x[torch.multinomial(probs, 1, generator=gen)].squeeze(0)
        centres.append(c)
        d2 = torch.minimum(d2, ((x - c) ** 2).sum(1))
    return torch.stack(centres)


def kmeans(
    x: torch.Tensor, k: int, iters: int = 100, restarts: int = 3, seed: int = 0, tol: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Lloyd's k-means with k-means++ seeding; best of ``restarts``. Returns (centroids, labels, inertia)."""
    x = x.float()
    if x.shape[0] < k:
        raise ConfigError(f"k-means needs at least k={k} samples, got {x.shape[0]}; add images")
    gen = torch.Generator().manual_seed(seed)
    best: tuple[torch.Tensor, torch.Tensor, float] | None = None
    sq = (x**2).sum(1)
    for _ in range(restarts):
        c = _plus_plus_init(x, k, gen)
        prev = float("inf")
        for _ in range(iters):
            d2 = sq[:, None] - 2 * x @ c.T + (c**2).sum(1)[None]
            dist, labels = d2.min(1)
            inertia = float(dist.clamp_min(0).sum())
            sums = torch.zeros_like(c).index_add_(0, labels, x)
            counts = torch.bincount(labels, minlength=k)
            empty = counts == 0
            c = sums / counts.clamp_min(1)[:, None].float()
            if empty.any():  # re-seed empty clusters at the worst-fit samples
                c[empty] = x[dist.topk(int(empty.sum())).indices]
            if prev - inertia <= tol * max(prev, 1.0) and not empty.any():
                break
            prev = inertia
        d2 = sq[:, None] - 2 * x @ c.T + (c**2).sum(1)[None]
        dist, labels = d2.min(1)
        inertia = float(dist.clamp_min(0).sum())
        if best is None or inertia < best[2]:
            best = (c, labels, inertia)
    assert best is not None
    return best


def require_tokens(tokens: torch.Tensor, k: int) -> None:
    """k-means into ``k`` clusters needs at least ``k`` patch tokens (n, h, w, D)."""
    n = tokens[..., 0].numel()
    if n < k:
        raise ConfigError(
            f"unsup-seg: {k} classes need at least {k} patch tokens, the val images give {n}; add val images or raise --resolution"
        )


def matched_confusion(tokens: torch.Tensor, centres: torch.Tensor, masks: list[np.ndarray], present: list[int]) -> np.ndarray:
    """Pixel confusion (labels × labels) after matching each cluster to a label (Hungarian)."""
    k = len(present)
    lut = np.full(256, IGNORE, dtype=np.int64)
    lut[present] = np.arange(k)
    bias = -(centres**2).sum(1)
    conf = np.zeros((k, k), dtype=np.int64)
    for t, gt in zip(tokens, masks):
        scores = 2 * t @ centres.T + bias  # = −‖t − c‖² + const, since ‖t‖ = 1
        conf += confusion_matrix(lut[gt], predict_scores(scores, gt.shape), k)  # rows: labels, columns: clusters
    mapping = hungarian_mapping(conf)  # a permutation: as many clusters as labels
    return conf[:, np.argsort(mapping)]  # column l: the cluster matched to label l


def unsup_seg(backbone: Backbone, splits: dict[str, SegSplit], run: Extraction, config: EvaluateConfig) -> tuple[dict[str, float], dict]:
    """k-means of the val patch tokens into as many clusters as labels (``kmeans_iters``,
    ``kmeans_restarts``, ``seed`` of the config), clusters matched to labels, mIoU."""
    val = load_split(backbone, splits["val"], run, "val")
    present = require_mask_classes("unsup-seg", val.eval_labels, splits["val"].masks[0].parent, "mIoU")
    tokens = F.normalize(val.patches.float(), dim=-1)
    require_tokens(tokens, len(present))
    centres, _, _ = kmeans(
        tokens.reshape(-1, tokens.shape[-1]), len(present), iters=config.kmeans_iters, restarts=config.kmeans_restarts, seed=config.seed
    )
    matched = matched_confusion(tokens, centres, val.eval_labels, present)
    metrics = {"miou": miou(matched), "pixel_acc": pixel_accuracy(matched)}
    info = {"num_images": {"val": len(val.eval_labels)}, "num_classes": len(present), "skipped": val.skipped}
    return metrics, info
