"""Intrinsic feature-quality statistics at the last layer, before the final norm (no labels needed).

Per image, on the patch-token grid (square crops, :data:`sinder.measure.CROP`), by the shared
:class:`~sinder.detect.DefectRule` and :class:`sinder.measure.ModelStats` (same names and
numbers as analysis.json and summary.json):
    high_norm_rate, max_over_median, defect_rate, energy_along_direction (ν_L from ``sinder.theory``),
    direction_consistency_deg / _images (from tokens both defective and high-norm),
    neighbour_consistency     mean over tokens of the mean cosine with its 4-neighbours (mean over images)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from ..backbones.base import Backbone
from ..detect import DefectRule
from ..errors import SinderError
from ..measure import ModelStats, Tokens, forward_tokens
from ..verdict import choose_low_norm
from .features import Extraction, iter_batches

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


INTRINSIC_KEYS = (
    "high_norm_rate",
    "max_over_median",
    "defect_rate",
    "energy_along_direction",
    "direction_consistency_deg",
    "direction_consistency_images",
)


class IntrinsicStats:
    """Running totals over images: the last layer by :class:`sinder.measure.ModelStats` (the numbers
    ``sinder analyze`` and repair's summary give), plus neighbour consistency."""

    def __init__(self, rule: DefectRule | None = None, direction: torch.Tensor | None = None) -> None:
        self.has_direction = direction is not None
        self.rule = rule or DefectRule()
        nu = None if direction is None else direction[None]
        # the last block is measured as layer 0 here, where a decided rule counts its low-norm
        # defects; an undecided one is measured both ways and decided at the end
        ways = ("drop", "count") if self.rule.low_norm == "auto" else (self.rule.low_norm,)
        self.stats = {way: ModelStats(replace(self.rule, low_norm=way, low_norm_from=0), nu, [0]) for way in ways}
        self.neighbour: list[float] = []

    @property
    def images(self) -> int:
        return self.stats[next(iter(self.stats))].images

    def update(self, tokens: Tokens) -> None:
        for stats in self.stats.values():
            stats.add(Tokens(tokens.grids[-1:], [0], tokens.final, tokens.ctx))
        self.neighbour += neighbour_consistency(tokens.last).tolist()

    def chosen_rule(self) -> DefectRule:
        """The rule the metrics are measured with (``auto`` decided from the last block)."""
        if self.rule.low_norm != "auto":
            return self.rule
        return choose_low_norm(self.rule, [self.stats["drop"].last_layer()])

    def metrics(self) -> dict[str, float | None]:
        s = self.stats[self.chosen_rule().low_norm].last_layer()
        out = {k: s[k] for k in INTRINSIC_KEYS}
        if not self.has_direction:
            out.update(defect_rate=None, energy_along_direction=None, direction_consistency_deg=None)
        out["neighbour_consistency"] = sum(self.neighbour) / len(self.neighbour) if self.neighbour else None
        return out


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
    backbone: Backbone, paths: Sequence[Path], run: Extraction, rule: DefectRule | None = None, direction: torch.Tensor | None = None
) -> tuple[dict[str, float | None], dict]:
    """Intrinsic statistics over ``paths``. ``direction`` overrides the theory's ν_L."""
    if direction is None:
        direction = theory_direction(backbone)
    stats = IntrinsicStats(rule, direction)
    skipped: list[dict] = []
    # fp32 throughout: the statistics are about norms, which reduced precision would blur.
    for batch in iter_batches(backbone, paths, run, skipped, desc="intrinsic"):
        stats.update(forward_tokens(backbone, batch.pixels))
    if stats.images == 0:
        raise SinderError(f"intrinsic: none of the {len(paths)} images could be decoded; check the folder")
    return stats.metrics(), {"num_images": stats.images, "skipped": skipped, "low_norm": stats.chosen_rule().low_norm}
