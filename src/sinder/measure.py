"""One measurement behind every number that compares a model with another or with itself.

``sinder analyze``, repair's held-out summary, ``sinder compare``, ``evaluate --task intrinsic``,
the report and the benchmarks all take their token statistics and feature cosines from here, so
the same photos give the same numbers whichever command printed them:

* :func:`forward_tokens`: the patch tokens of every block (or of the last one), before the final
  norm, and the final-normed tokens, in float32;
* :class:`ModelStats`: per measured layer, :class:`~sinder.detect.DefectStats` by the run's
  :class:`~sinder.detect.DefectRule` (energy along ν_i, max/median norm, defect and high-norm
  rates, ...); with a planted model's truth also recall and precision against its ignition mask
  and the energy along the planted direction u;
* :class:`FeatureCosines`: the cosine between two models' final-normed tokens, over the patch
  tokens the reference model has neither as defects nor as high-norm, and for the summary token
  (CLS, or the pooled output of a model without one: its pooling head or the mean patch token).

Crop policy (:data:`CROP`): every before/after measurement uses square centre crops at the
model's resolution. ViTs are trained on square crops (DINOv2 at 518, CLIP at 224), repair trains on
them, and a fixed grid lets images batch; an aspect-keeping crop would measure a different token
grid per photo, which is why ``analyze`` and ``repair`` once disagreed on the same photos.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from .backbones.base import Backbone, TokenContext
from .detect import DefectRule, DefectStats, LayerDetection, detect_layer, mean_direction

CROP = "square"
log = logging.getLogger(__name__)


@dataclass
class Tokens:
    """One batch through one model."""

    grids: list[torch.Tensor]  # per measured layer: patch tokens (B, H, W, D), before the final norm
    layers: list[int]  # which blocks ``grids`` come from (ascending; the last is the last block)
    final: torch.Tensor  # (B, N, D) the final-normed tokens of the last block
    ctx: TokenContext

    @property
    def last(self) -> torch.Tensor:
        return self.grids[-1]


@torch.no_grad()
def forward_tokens(backbone: Backbone, pixels: torch.Tensor, *, every_layer: bool = False, autocast: Callable | None = None) -> Tokens:
    """``pixels`` through ``backbone`` (moved to its device and dtype); float32 tokens out."""
    autocast = autocast or contextlib.nullcontext
    with autocast():
        outputs, ctx = backbone.forward_layers(pixels.to(backbone.device, backbone.dtype))
        return tokens_of(backbone, outputs, ctx, every_layer=every_layer)


def tokens_of(backbone: Backbone, outputs: list[torch.Tensor], ctx: TokenContext, *, every_layer: bool = False) -> Tokens:
    """:class:`Tokens` from the block outputs of :meth:`~sinder.backbones.base.Backbone.forward_layers`."""
    layers = list(range(len(outputs))) if every_layer else [len(outputs) - 1]
    grids = [backbone.patch_grid(outputs[i], ctx).float() for i in layers]
    return Tokens(grids, layers, backbone.final_norm(outputs[-1]).float(), ctx)


def summary_token(backbone: Backbone, tokens: Tokens) -> torch.Tensor:
    """(B, D): the final-normed CLS token, or the model's pooled output when it has no CLS
    (:meth:`~sinder.backbones.base.Backbone.pooled`: its pooling head, or the mean patch token)."""
    return backbone.pooled(tokens.final, tokens.ctx).float()


def summary_token_name(backbone: Backbone) -> str:
    return "cls_cosine" if backbone.has_cls_token else "pooled_cosine"


def summary_cosine(features: dict) -> float | None:
    """The CLS cosine of a :meth:`FeatureCosines.summary`, or the pooled output's for a model without CLS."""
    value = features.get("cls_cosine")
    return features.get("pooled_cosine") if value is None else value


def neighbour_norm_ratio(norms: torch.Tensor) -> torch.Tensor:
    """(B, H, W) token norms -> each token's norm over the mean norm of its (up to 8) neighbours."""
    kernel = torch.ones(1, 1, 3, 3, dtype=norms.dtype, device=norms.device)
    kernel[0, 0, 1, 1] = 0.0
    x = norms[:, None]
    total = F.conv2d(x, kernel, padding=1)[:, 0]
    count = F.conv2d(torch.ones_like(x), kernel, padding=1)[:, 0]
    return norms / (total / count.clamp_min(1)).clamp_min(1e-12)


class GateRejectedStats:
    """What the tokens of one layer that pass the |cos| rule but fail the norm gate look like: how
    strongly each lies along ν (median |cos|), whether together they point along ν in every image
    (``gate_rejected_alignment``: |cos| between ν and the mean of the per-image mean directions),
    and their norm against their neighbours'. The verdict's low-norm case
    (:func:`sinder.verdict.low_norm_defects`) reads these."""

    CAP = 100_000  # values kept per layer for the medians

    def __init__(self) -> None:
        self.cos: list[torch.Tensor] = []
        self.ratio: list[torch.Tensor] = []
        self.kept = 0
        self.directions: list[torch.Tensor] = []

    def add(self, grid: torch.Tensor, found: LayerDetection) -> None:
        rejected = found.gate_rejected
        if not rejected.any():
            return
        if self.kept < self.CAP:
            self.cos.append(found.scores[rejected].float().cpu())
            self.ratio.append(neighbour_norm_ratio(found.norms)[rejected].float().cpu())
            self.kept += int(rejected.sum())
        for g, m in zip(grid, rejected):
            if m.any():
                self.directions.append(mean_direction(g[m]).float().cpu())

    def summary(self, direction: torch.Tensor) -> dict:
        median = lambda parts: float(torch.cat(parts).median()) if parts else None  # noqa: E731
        pooled = mean_direction(torch.stack(self.directions)) if self.directions else None
        return {
            "gate_rejected_cos_median": median(self.cos),
            "gate_rejected_alignment": None
            if pooled is None
            else abs(float(F.cosine_similarity(pooled.float(), direction.float().cpu(), dim=0))),
            "gate_rejected_norm_over_neighbours": median(self.ratio),
            "gate_rejected_images": len(self.directions),
        }


class ModelStats:
    """Per-layer statistics of one model over batches of :class:`Tokens`.

    ``directions`` (L, D) are the ν_i the rule and the energy use (None: norms only). ``truth`` is a
    planted model's :class:`~sinder.planted.PlantedTruth`; with it, layers from its ignition block
    on are scored against the ignition mask and the last layer reports the energy along u."""

    def __init__(self, rule: DefectRule, directions: torch.Tensor | None, layers: Sequence[int], truth=None) -> None:
        self.rule, self.directions, self.truth = rule, directions, truth
        self.layers = list(layers)
        self.stats = {i: DefectStats() for i in self.layers}
        self.rejected = {i: GateRejectedStats() for i in self.layers}
        self.u_along = self.u_total = 0.0

    def direction(self, layer: int) -> torch.Tensor | None:
        return None if self.directions is None else self.directions[layer]

    def add(self, tokens: Tokens, truth_mask: torch.Tensor | None = None) -> dict[int, LayerDetection]:
        """Detect and accumulate every measured layer; returns what the rule found, per layer."""
        found = {}
        for layer, grid in zip(tokens.layers, tokens.grids):
            if layer not in self.stats:
                continue
            d = self.direction(layer)
            d = None if d is None else d.to(grid.device)
            found[layer] = f = detect_layer(self.rule, grid, d, layer)
            scored = truth_mask if truth_mask is not None and self.truth is not None and layer >= self.truth.ignition_layer else None
            self.stats[layer].add(grid, d, f, scored)
            self.rejected[layer].add(grid, f)
        if self.truth is not None:
            last = tokens.last
            u = self.truth.u.to(last.device, last.dtype)
            self.u_along += float(((last @ u) ** 2).sum())
            self.u_total += float((last**2).sum())
        return found

    def layer_summary(self, layer: int) -> dict:
        d = self.direction(layer)
        out = self.stats[layer].summary(None if d is None else d.cpu())
        return out if d is None else out | self.rejected[layer].summary(d.cpu())

    def last_layer(self) -> dict:
        out = self.layer_summary(self.layers[-1])
        if self.truth is not None:
            out["energy_along_u"] = self.u_along / self.u_total if self.u_total > 0 else None
        return out

    def per_layer(self) -> list[dict]:
        return [{"index": i, **self.layer_summary(i)} for i in self.layers]

    @property
    def images(self) -> int:
        return self.stats[self.layers[-1]].images


@torch.no_grad()
def truth_mask(backbone: Backbone, pixels: torch.Tensor) -> torch.Tensor | None:
    """(B, H, W) the tokens a planted ``backbone`` ignites on ``pixels``; None for other models."""
    truth = backbone.ground_truth
    return None if truth is None else truth.ignition(backbone, pixels).cpu()


def ordinary_tokens(found: LayerDetection) -> torch.Tensor:
    """The tokens whose features must be kept: neither defects nor high-norm."""
    return ~(found.high | found.defects)


class FeatureCosines:
    """Cosine between a reference's final-normed tokens and another model's, on the same pixels."""

    def __init__(self, summary_key: str = "cls_cosine") -> None:
        self.summary_key = summary_key
        self.patch: list[torch.Tensor] = []
        self.summary_tokens: list[torch.Tensor] = []

    @torch.no_grad()  # a pooling head (SigLIP's) runs here: no graph for it
    def add(self, reference_backbone: Backbone, reference: Tokens, backbone: Backbone, other: Tokens, keep: torch.Tensor) -> None:
        """``keep`` (B, H, W): the patch tokens compared (:func:`ordinary_tokens` of the reference)."""
        ref_grid = reference_backbone.patch_grid(reference.final, reference.ctx)
        cos = F.cosine_similarity(backbone.patch_grid(other.final, other.ctx), ref_grid, dim=-1)
        self.patch.append(cos[keep.to(cos.device)].cpu())
        if reference_backbone.has_cls_token == backbone.has_cls_token:
            a, b = summary_token(reference_backbone, reference), summary_token(backbone, other)
            self.summary_tokens.append(F.cosine_similarity(a, b, dim=-1).cpu())

    def summary(self) -> dict:
        """Mean and 1% quantile of the ordinary patch cosines; mean and min of the summary token's."""
        out: dict = {}
        c = torch.cat(self.patch) if self.patch else torch.empty(0)
        if c.numel():
            out.update(non_defect_cosine=float(c.mean()), non_defect_cosine_p01=float(c.quantile(0.01)))
        if self.summary_tokens:
            c = torch.cat(self.summary_tokens)
            out.update({self.summary_key: float(c.mean()), f"{self.summary_key}_min": float(c.min())})
        return out


LOW_NORM_PROBE_IMAGES = 8  # images the auto low-norm decision looks at (the verdict's thresholds were set on 8)


@torch.no_grad()
def resolve_low_norm(
    backbone: Backbone, images, directions: torch.Tensor, rule: DefectRule, *, batch_size: int = 8, autocast: Callable | None = None
) -> DefectRule:
    """``rule`` with ``low_norm="auto"`` decided for ``backbone`` (:func:`sinder.verdict.choose_low_norm`)
    from its statistics at every block on the first :data:`LOW_NORM_PROBE_IMAGES` of ``images`` (an
    :class:`~sinder.images.ImageSet`); any other rule comes back as it is."""
    from .verdict import choose_low_norm

    if rule.low_norm != "auto":
        return rule
    if rule.norm_gate <= 0:  # no gate: nothing fails it, nothing to decide
        return replace(rule, low_norm="drop")
    stats = ModelStats(rule, directions, range(backbone.depth))
    for _, pixels in images.batches(min(batch_size, LOW_NORM_PROBE_IMAGES)):
        stats.add(forward_tokens(backbone, pixels, every_layer=True, autocast=autocast))
        if stats.images >= LOW_NORM_PROBE_IMAGES:
            break
    chosen = choose_low_norm(rule, stats.per_layer() if stats.images else [])
    if chosen.low_norm == "count":
        log.info(
            "low-norm singular defects in the last block: counted as defects from block %d (--low-norm drop: not)", chosen.low_norm_from
        )
    return chosen
