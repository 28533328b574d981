"""What the zoo benchmarks share: the ground-truth numbers of a repaired (or fixed) planted model
against its original (by :mod:`sinder.measure`), and how rows are saved and tabulated.

Imported by ``repair_zoo.py``, ``clamp_tradeoff.py``, ``interpolation_layers.py`` and
``compare_zoo.py``, which run from this folder (``python benchmarks/NAME.py``)."""

from __future__ import annotations

import json

import torch

from sinder.detect import DefectRule
from sinder.images import ImageSet
from sinder.measure import FeatureCosines, ModelStats, forward_tokens, ordinary_tokens, summary_cosine, summary_token_name, truth_mask


@torch.no_grad()
def measure(original, repaired, images: ImageSet) -> dict:
    """Ground-truth numbers on ``images`` by :mod:`sinder.measure` (the default rule's high-norm
    factor), before (original) and after (repaired). The features kept are those of tokens that
    neither ignited nor were high-norm or defects in the original. ``summary_cosine`` is the CLS
    token's, or the pooled output's for a model without CLS."""
    last, truth = [original.depth - 1], original.ground_truth
    stats = {"before": ModelStats(DefectRule(), None, last, truth), "after": ModelStats(DefectRule(), None, last, truth)}
    cosines = FeatureCosines(summary_token_name(original))
    for _, px in images.batches(8):
        ignited = truth_mask(original, px)
        before, after = forward_tokens(original, px), forward_tokens(repaired, px)
        found = stats["before"].add(before, ignited)[last[0]]
        stats["after"].add(after, ignited)
        cosines.add(original, before, repaired, after, ordinary_tokens(found) & ~ignited)
    b, a = stats["before"].last_layer(), stats["after"].last_layer()
    features = cosines.summary()
    return {
        "energy_before": b["energy_along_u"],
        "energy_after": a["energy_along_u"],
        "energy_drop": 1 - a["energy_along_u"] / max(b["energy_along_u"], 1e-12),
        "max_over_median_before": b["max_over_median"],
        "max_over_median": a["max_over_median"],
        "high_norm_rate_before": b["high_norm_rate"],
        "high_norm_rate": a["high_norm_rate"],
        **features,
        "summary_cosine": summary_cosine(features),
    }


def save_rows(rows: list[dict], path: str | None) -> None:
    if path:
        with open(path, "w") as fh:
            json.dump(rows, fh, indent=1)


def markdown(head: str, lines: list[str]) -> str:
    """A markdown table: ``head`` (``| a | b |``), its separator, then ``lines``."""
    return "\n".join([head, "|---" * (head.count("|") - 1) + "|", *lines])
