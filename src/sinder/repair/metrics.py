"""Before/after metrics on held-out images: are the defects gone, and are the features kept?

* defect statistics of the last block's patch tokens (before the final norm), original and
  repaired, by the run's :class:`~sinder.detect.DefectRule` and accumulated by
  :class:`~sinder.detect.DefectStats` (the same names as in analysis.json);
* the residual per image: the high-norm tokens left after repair, and how strong they are;
* feature preservation: cosine between original and repaired final-normed tokens, for patch
  tokens that are neither high-norm nor defects in the original, and for CLS.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from ..backbones.base import Backbone
from ..detect import DefectRule, DefectStats, detect_layer
from ..images import ImageSet
from .singular import SingularModel

RESIDUAL_TOKENS_SHOWN = 5  # per image, the strongest high-norm tokens left after repair


def _last_layer(backbone: Backbone, pixels: torch.Tensor, autocast) -> tuple[torch.Tensor, torch.Tensor, object]:
    with autocast():
        x, ctx = backbone.embed(pixels)
        for j in range(backbone.depth):
            x = backbone.run_block(j, x, ctx)
        return x.float(), backbone.final_norm(x).float(), ctx


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


def feature_summary(cos_patch: list[torch.Tensor], cos_cls: list[torch.Tensor]) -> dict:
    """Mean and 1% quantile of the non-defect patch cosines, mean and min of the CLS cosines (keys
    only for what was measured)."""
    feats: dict = {}
    c = torch.cat(cos_patch) if cos_patch else torch.empty(0)
    if c.numel():
        feats.update(non_defect_cosine=float(c.mean()), non_defect_cosine_p01=float(c.quantile(0.01)))
    if cos_cls:
        c = torch.cat(cos_cls)
        feats.update(cls_cosine=float(c.mean()), cls_cosine_min=float(c.min()))
    return feats


class _Comparison:
    def __init__(self, rule: DefectRule, direction: torch.Tensor) -> None:
        self.rule, self.direction = rule, direction
        self.before, self.after = DefectStats(), DefectStats()
        self.cos_patch: list[torch.Tensor] = []
        self.cos_cls: list[torch.Tensor] = []
        self.residuals: list[dict] = []

    def add(self, backbone: Backbone, names: list[str], original, repaired) -> None:
        (last_o, fin_o, ctx), (last_r, fin_r, _) = original, repaired
        grid_o, grid_r = backbone.patch_grid(last_o, ctx), backbone.patch_grid(last_r, ctx)
        found_o, found_r = detect_layer(self.rule, grid_o, self.direction), detect_layer(self.rule, grid_r, self.direction)
        self.before.add(grid_o, self.direction, found_o)
        self.after.add(grid_r, self.direction, found_r)
        flagged = found_o.high | found_o.defects
        cos = F.cosine_similarity(backbone.patch_grid(fin_o, ctx), backbone.patch_grid(fin_r, ctx), dim=-1)
        self.cos_patch.append(cos[~flagged].cpu())
        if backbone.has_cls_token:
            self.cos_cls.append(F.cosine_similarity(fin_o[:, 0], fin_r[:, 0], dim=-1).cpu())
        self.residuals += [residual(n, g, h) for n, g, h in zip(names, grid_r, found_r.high)]

    def summary(self) -> dict:
        return {
            "num_images": self.before.images,
            "before": self.before.summary(),
            "after": self.after.summary(),
            "features": feature_summary(self.cos_patch, self.cos_cls),
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
    autocast = autocast or contextlib.nullcontext
    comparison = _Comparison(rule, directions[-1].to(backbone.device))
    for idxs, pixels in images.batches(batch_size):
        pixels = pixels.to(backbone.device, backbone.dtype)
        with handle.mode("original"):
            original = _last_layer(backbone, pixels, autocast)
        with handle.mode("fast"):
            repaired = _last_layer(backbone, pixels, autocast)
        comparison.add(backbone, [images.names[k] for k in idxs], original, repaired)
    return comparison.summary()


@torch.no_grad()
def last_layer_residual(backbone: Backbone, images: ImageSet, direction: torch.Tensor, rule: DefectRule, *, batch_size: int = 8, autocast=None) -> dict:
    """The current model's last-layer statistics on ``images`` (what the plateau stop watches)."""
    autocast = autocast or contextlib.nullcontext
    stats = DefectStats()
    direction = direction.to(backbone.device)
    for _, pixels in images.batches(batch_size):
        last, _, ctx = _last_layer(backbone, pixels.to(backbone.device, backbone.dtype), autocast)
        grid = backbone.patch_grid(last, ctx)
        stats.add(grid, direction, detect_layer(rule, grid, direction))
    return stats.summary()


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
            hit = rule.detect(grid, directions[j].to(grid.device)).flatten(1).any(dim=1).cpu() & pending
            first += [j] * int(hit.sum())
            pending &= ~hit
            if not pending.any():
                break
        seen += pixels.shape[0]
        if seen >= ONSET_IMAGES:
            break
    return min(first) if first else 0
