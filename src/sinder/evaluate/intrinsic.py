"""Intrinsic feature-quality statistics at the last layer, before the final norm (no labels needed).

Per image, on the patch-token grid:
    high_norm_rate            tokens with norm > factor × the image's median norm (over all tokens)
    max_over_median           max norm / median norm (mean over images)
    defect_rate               μ + thr·σ defects on |cos(t, ν_L)| (ν from ``sinder.theory``; over all tokens)
    direction_consistency_deg mean pairwise angle between the images' mean defect directions
                              (None when fewer than two images have defects)
    neighbour_consistency     mean over tokens of the mean cosine with its 4-neighbours (mean over images)
"""
from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from ..backbones.base import Backbone
from ..detect import angle_deg, detect_defects, high_norm_mask, mean_direction
from ..errors import SinderError
from .features import iter_batches, last_tokens

logger = logging.getLogger(__name__)


def neighbour_consistency(grid: torch.Tensor) -> torch.Tensor:
    """(B, H, W, D) -> (B,): mean over tokens of the mean cosine with the token's 4-neighbours."""
    unit = F.normalize(grid.double(), dim=-1)
    b, h, w, _ = unit.shape
    total = torch.zeros(b, h, w, dtype=unit.dtype, device=unit.device)
    count = torch.zeros(h, w, dtype=unit.dtype, device=unit.device)
    if w > 1:
        horiz = (unit[:, :, 1:] * unit[:, :, :-1]).sum(-1)
        total[:, :, 1:] += horiz
        total[:, :, :-1] += horiz
        count[:, 1:] += 1
        count[:, :-1] += 1
    if h > 1:
        vert = (unit[:, 1:] * unit[:, :-1]).sum(-1)
        total[:, 1:] += vert
        total[:, :-1] += vert
        count[1:] += 1
        count[:-1] += 1
    return (total / count.clamp_min(1)).flatten(1).mean(1)


@dataclass
class IntrinsicStats:
    """Running totals over images; ``metrics()`` gives the final numbers."""

    tokens: int = 0
    high: int = 0
    defects: int = 0
    images: int = 0
    max_over_median: list[float] = field(default_factory=list)
    neighbour: list[float] = field(default_factory=list)
    directions: list[torch.Tensor] = field(default_factory=list)
    has_direction: bool = False

    def update(
        self,
        grid: torch.Tensor,
        direction: torch.Tensor | None,
        factor: float = 3.0,
        mask_thr: float = 4.0,
        border: int = 1,
    ) -> None:
        grid = grid.float()
        norms = grid.norm(dim=-1).flatten(1)
        med = norms.median(dim=1).values
        self.images += grid.shape[0]
        self.tokens += norms.numel()
        self.high += int(high_norm_mask(grid, factor).sum())
        self.max_over_median += (norms.max(dim=1).values / med.clamp_min(1e-12)).tolist()
        self.neighbour += neighbour_consistency(grid).tolist()
        if direction is not None:
            self.has_direction = True
            mask = detect_defects(grid, direction, mask_thr, border)
            self.defects += int(mask.sum())
            for g, m in zip(grid, mask):
                if m.any():
                    self.directions.append(mean_direction(g[m]))

    def metrics(self) -> dict[str, float | None]:
        consistency = None
        if len(self.directions) >= 2:
            angles = [angle_deg(a, b) for a, b in itertools.combinations(self.directions, 2)]
            consistency = sum(angles) / len(angles)
        mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
        return {
            "high_norm_rate": self.high / self.tokens if self.tokens else None,
            "max_over_median": mean(self.max_over_median),
            "defect_rate": self.defects / self.tokens if self.has_direction and self.tokens else None,
            "direction_consistency_deg": consistency,
            "neighbour_consistency": mean(self.neighbour),
        }


def theory_direction(backbone: Backbone) -> torch.Tensor | None:
    """ν of the last layer from ``sinder.theory``; None (with a warning) when it is unavailable."""
    try:
        from ..theory import defect_directions
    except ImportError as err:
        logger.warning("sinder.theory is unavailable (%s): defect_rate and direction_consistency_deg are null", err)
        return None
    try:
        return defect_directions(backbone, method="exact")[-1]
    except SinderError as err:  # e.g. an architecture the linear theory does not cover
        logger.warning("no defect direction for %s (%s): defect_rate and direction_consistency_deg are null", backbone.spec, err)
        return None


@torch.no_grad()
def intrinsic(
    backbone: Backbone,
    paths: Sequence[Path],
    resolution: int,
    batch_size: int,
    factor: float = 3.0,
    mask_thr: float = 4.0,
    direction: torch.Tensor | None = None,
    use_theory: bool = True,
) -> tuple[dict[str, float | None], dict]:
    """Intrinsic statistics over ``paths``. ``direction`` overrides the theory's ν_L."""
    if direction is None and use_theory:
        direction = theory_direction(backbone)
    stats = IntrinsicStats()
    skipped: list[dict] = []
    # fp32 throughout: the statistics are about norms, which reduced precision would blur.
    for batch in iter_batches(backbone, paths, resolution, batch_size, skipped, desc="intrinsic"):
        x, ctx = last_tokens(backbone, batch.pixels)
        stats.update(backbone.patch_grid(x, ctx), direction, factor, mask_thr)
    if stats.images == 0:
        raise SinderError(f"intrinsic: none of the {len(paths)} images could be decoded; check the folder")
    return stats.metrics(), {"num_images": stats.images, "skipped": skipped}
