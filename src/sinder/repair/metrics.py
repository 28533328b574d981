"""Before/after metrics on held-out images: are the defects gone, and are the features kept?

Measured by :mod:`sinder.measure` (the numbers ``sinder analyze`` gives for the same photos):

* defect statistics of the last block's patch tokens (before the final norm), original and
  repaired, by the run's :class:`~sinder.detect.DefectRule`;
* the residual per image: the high-norm tokens left after repair, and how strong they are;
* feature preservation: cosine between original and repaired final-normed tokens, for patch
  tokens that are neither high-norm nor defects in the original, and for CLS (pooled output).
"""

from __future__ import annotations

import torch

from ..backbones.base import Backbone
from ..detect import DefectRule
from ..images import ImageSet
from ..measure import FeatureCosines, ModelStats, Tokens, forward_tokens, ordinary_tokens, summary_token_name, truth_mask
from .singular import SingularModel

RESIDUAL_TOKENS_SHOWN = 5  # per image, the strongest high-norm tokens left after repair


def residual(name: str, grid: torch.Tensor, high: torch.Tensor) -> dict:
    """Which high-norm tokens an image (H, W, D) still has, strongest first, as norm / median."""
    norms = grid.norm(dim=-1)
    med = float(norms.median().clamp_min(1e-12))
    cells = high.nonzero().tolist()
    cells.sort(key=lambda rc: -float(norms[rc[0], rc[1]]))
    return {
        "image": name,
        "high_norm_tokens": len(cells),
        "max_over_median": float(norms.max()) / med,
        "strongest": [{"row": r, "col": c, "norm_over_median": float(norms[r, c]) / med} for r, c in cells[:RESIDUAL_TOKENS_SHOWN]],
    }


class _Comparison:
    def __init__(self, backbone: Backbone, rule: DefectRule, directions: torch.Tensor) -> None:
        last, truth = [backbone.depth - 1], backbone.ground_truth
        self.before, self.after = ModelStats(rule, directions, last, truth), ModelStats(rule, directions, last, truth)
        self.cosines = FeatureCosines(summary_token_name(backbone))
        self.residuals: list[dict] = []

    def add(self, backbone: Backbone, names: list[str], original: Tokens, repaired: Tokens, truth: torch.Tensor | None) -> None:
        found_o = self.before.add(original, truth)[backbone.depth - 1]
        found_r = self.after.add(repaired, truth)[backbone.depth - 1]
        self.cosines.add(backbone, original, backbone, repaired, ordinary_tokens(found_o))
        self.residuals += [residual(n, g, h) for n, g, h in zip(names, repaired.last, found_r.high)]

    def summary(self) -> dict:
        return {
            "num_images": self.before.images,
            "before": self.before.last_layer(),
            "after": self.after.last_layer(),
            "features": self.cosines.summary(),
            "residual": self.residuals,
        }


@torch.no_grad()
def compare(
    backbone: Backbone,
    handle: SingularModel,
    images: ImageSet,
    directions: torch.Tensor,
    rule: DefectRule,
    *,
    batch_size: int = 8,
    autocast=None,
) -> dict:
    """Original (``mode('original')``) versus repaired (``mode('fast')``) on ``images``."""
    comparison = _Comparison(backbone, rule, directions)
    for idxs, pixels in images.batches(batch_size):
        with handle.mode("original"):
            original = forward_tokens(backbone, pixels, autocast=autocast)
            truth = truth_mask(backbone, pixels)
        with handle.mode("fast"):
            repaired = forward_tokens(backbone, pixels, autocast=autocast)
        comparison.add(backbone, [images.names[k] for k in idxs], original, repaired, truth)
    return comparison.summary()


@torch.no_grad()
def last_layer_residual(
    backbone: Backbone, images: ImageSet, directions: torch.Tensor, rule: DefectRule, *, batch_size: int = 8, autocast=None
) -> dict:
    """The current model's last-layer statistics on ``images`` (what the plateau stop watches)."""
    stats = ModelStats(rule, directions, [backbone.depth - 1])
    for _, pixels in images.batches(batch_size):
        stats.add(forward_tokens(backbone, pixels, autocast=autocast))
    return stats.last_layer()


ONSET_IMAGES = 32  # training images scanned to find where the defects start


@torch.no_grad()
def onset_layer(backbone: Backbone, images: ImageSet, directions: torch.Tensor, rule: DefectRule, *, batch_size: int = 8) -> int:
    """The first layer at which the rule finds a defect in any of the first training images (0 when none)."""
    first: list[int] = []
    seen = 0
    for _, pixels in images.batches(batch_size):
        x, ctx = backbone.embed(pixels.to(backbone.device, backbone.dtype))
        pending = torch.ones(pixels.shape[0], dtype=torch.bool)
        for j in range(backbone.depth):
            x = backbone.run_block(j, x, ctx)
            grid = backbone.patch_grid(x, ctx)
            hit = rule.detect(grid, directions[j].to(grid.device), j).flatten(1).any(dim=1).cpu() & pending
            first += [j] * int(hit.sum())
            pending &= ~hit
            if not pending.any():
                break
        seen += pixels.shape[0]
        if seen >= ONSET_IMAGES:
            break
    return min(first) if first else 0
