"""Before/after metrics on held-out images: are the defects gone, and are the features kept?

* high-norm rate: patch tokens of the last block (before the final norm) with norm >
  ``factor`` × the image's median, and the per-image max/median norm ratio;
* defect rate: the μ + mask_thr·σ rule on |cos(token, ν_last)| at the last block;
* feature preservation: cosine between original and repaired final-normed tokens, for patch
  tokens that are neither high-norm nor defects in the original, and for CLS.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..backbones.base import Backbone
from ..detect import detect_defects, high_norm_mask
from .data import ImageSet
from .singular import SingularModel


class _Stats:
    def __init__(self) -> None:
        self.tokens = 0
        self.high = 0
        self.defects = 0
        self.ratios: list[float] = []

    def add(self, grid: torch.Tensor, direction: torch.Tensor, factor: float, mask_thr: float) -> torch.Tensor:
        high = high_norm_mask(grid, factor)
        defects = detect_defects(grid, direction, mask_thr)
        norms = grid.norm(dim=-1).flatten(1)
        self.ratios += (norms.max(dim=1).values / norms.median(dim=1).values).tolist()
        self.tokens += high.numel()
        self.high += int(high.sum())
        self.defects += int(defects.sum())
        return high | defects

    def summary(self) -> dict:
        if not self.tokens:
            return dict.fromkeys(("high_norm_rate", "defect_rate", "max_median_norm_ratio", "max_median_norm_ratio_max"))
        r = self.ratios
        return {
            "high_norm_rate": self.high / self.tokens,
            "defect_rate": self.defects / self.tokens,
            "max_median_norm_ratio": sum(r) / len(r),
            "max_median_norm_ratio_max": max(r),
        }


def _run(backbone: Backbone, pixels: torch.Tensor, autocast) -> tuple[torch.Tensor, torch.Tensor, object]:
    with autocast():
        x, ctx = backbone.embed(pixels)
        for j in range(backbone.depth):
            x = backbone.run_block(j, x, ctx)
        return x.float(), backbone.final_norm(x).float(), ctx


@torch.no_grad()
def compare(
    backbone: Backbone,
    handle: SingularModel,
    images: ImageSet,
    directions: torch.Tensor,
    *,
    batch_size: int = 8,
    factor: float = 3.0,
    mask_thr: float = 4.0,
    autocast=None,
) -> dict:
    """Original (``mode('original')``) versus repaired (``mode('fast')``) on ``images``."""
    import contextlib

    autocast = autocast or contextlib.nullcontext
    before, after = _Stats(), _Stats()
    cos_patch: list[torch.Tensor] = []
    cos_cls: list[torch.Tensor] = []
    direction = directions[-1].to(backbone.device)
    usable = [px for px in (images.load(i) for i in range(len(images))) if px is not None]
    for k in range(0, len(usable), batch_size):
        group: dict[tuple, list[torch.Tensor]] = {}
        for px in usable[k : k + batch_size]:
            group.setdefault(tuple(px.shape), []).append(px)
        for same in group.values():
            pixels = torch.stack(same).to(backbone.device, backbone.dtype)
            with handle.mode("original"):
                last_o, fin_o, ctx = _run(backbone, pixels, autocast)
            with handle.mode("fast"):
                last_r, fin_r, _ = _run(backbone, pixels, autocast)
            flagged = before.add(backbone.patch_grid(last_o, ctx), direction, factor, mask_thr)
            after.add(backbone.patch_grid(last_r, ctx), direction, factor, mask_thr)
            cos = F.cosine_similarity(backbone.patch_grid(fin_o, ctx), backbone.patch_grid(fin_r, ctx), dim=-1)
            cos_patch.append(cos[~flagged].cpu())
            if backbone.has_cls_token:
                cos_cls.append(F.cosine_similarity(fin_o[:, 0], fin_r[:, 0], dim=-1).cpu())
    out: dict = {"num_images": len(usable), "before": before.summary(), "after": after.summary()}
    feats: dict = {}
    c = torch.cat(cos_patch) if cos_patch else torch.empty(0)
    if c.numel():
        feats.update(non_defect_cosine=float(c.mean()), non_defect_cosine_p01=float(c.quantile(0.01)))
    if cos_cls:
        c = torch.cat(cos_cls)
        feats.update(cls_cosine=float(c.mean()), cls_cosine_min=float(c.min()))
    out["features"] = feats
    return out
