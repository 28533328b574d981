"""Detection of singular defects (paper §4) and of high-norm tokens: one rule, one set of statistics.

:class:`DefectRule` is the only definition of "defect" in sinder; analyze, repair (its loss
and its held-out metrics), evaluate, the fixes and the report all call it. A patch token t at
layer i is a *defect* when |cos(t, ν_i)| is above a per-image threshold and, when ``norm_gate``
g > 0, it also stands out: norm(t) > g × the image's median patch norm, or its component along ν,
|⟨t, ν_i⟩|, > ``aligned_gate`` × that median (a defect that is long *along ν*, though not yet 2×
the median in norm); a rule that counts low-norm defects (``low_norm``) skips the gate from block
``low_norm_from`` on. The threshold is mean + ``mask_thr``·std
of the image's |cos| values: with ``threshold="robust"`` they are taken over
the image's tokens that are not defects, a fixed point reached from median + k·MAD (at most
:data:`ROBUST_ITERATIONS` passes), so many strong defects cannot lift it over weaker ones;
``"meanstd"`` (the default, see :class:`DefectRule`) is the reference's single pass. Every cell of the grid can be a defect: ``border``
> 0 clears the rows/columns within ``border`` of the edge, as the reference does because its
smoothing window does not fit there (``--faithful`` repair only).
A token is *high-norm* when its norm exceeds ``high_norm_factor`` × the image's median.

:class:`DefectStats` accumulates every per-layer number sinder reports, under one name each.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from .errors import require

# Per batch, at most this many unit vectors of high-norm tokens are kept for the theory alignment.
HIGH_UNITS_PER_BATCH = 4096
# Passes of the robust threshold (mean/std without the defects): on the zoo the set of defects
# is stable after 1 pass in 99.6% of (image, layer) pairs and never needs more than 3.
ROBUST_ITERATIONS = 8
MAD_TO_STD = 1.4826  # σ = 1.4826·MAD for a normal distribution
Threshold = Literal["robust", "meanstd"]
THRESHOLDS = ("robust", "meanstd")
LowNorm = Literal["auto", "count", "drop"]
LOW_NORM = ("auto", "count", "drop")


def abs_cosine(grid: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """|cos(token, ν)| for patch tokens (B, H, W, D) -> (B, H, W)."""
    nu = F.normalize(direction.to(grid.dtype).to(grid.device), dim=0)
    return (F.normalize(grid, dim=-1) @ nu).abs()


def interior_mask(h: int, w: int, border: int = 1, device: torch.device | str = "cpu") -> torch.Tensor:
    """Boolean (H, W) mask that is False within ``border`` rows/columns of the edge."""
    mask = torch.zeros(h, w, dtype=torch.bool, device=device)
    if h > 2 * border and w > 2 * border:
        mask[border : h - border, border : w - border] = True
    return mask


def median_norm(norms: torch.Tensor) -> torch.Tensor:
    """Per-image median of (B, H, W) token norms -> (B,)."""
    return norms.flatten(1).median(dim=1).values


def mean_direction(vectors: torch.Tensor) -> torch.Tensor | None:
    """Sign-invariant mean direction of row vectors: the top right singular vector of the unit rows."""
    if vectors.shape[0] == 0:
        return None
    unit = F.normalize(vectors.double(), dim=-1)
    _, _, vh = torch.linalg.svd(unit, full_matrices=False)
    d = vh[0]
    return d if (unit @ d).sum() >= 0 else -d


def angle_deg(a: torch.Tensor, b: torch.Tensor) -> float:
    """Unsigned angle between two directions, in [0, 90] degrees."""
    c = F.cosine_similarity(a.double(), b.double(), dim=0).abs().clamp(max=1.0)
    return float(torch.rad2deg(torch.arccos(c)))


def meanstd_threshold(scores: torch.Tensor, k: float) -> torch.Tensor:
    """The reference's per-image threshold mean + k·std of (B, H, W) scores -> (B,)."""
    flat = scores.flatten(1)
    return flat.mean(dim=1) + k * flat.std(dim=1)


def robust_threshold(
    scores: torch.Tensor, k: float, eligible: torch.Tensor | None = None, iterations: int = ROBUST_ITERATIONS
) -> torch.Tensor:
    """mean + k·std of each image's scores (B, H, W) over its tokens that are not defects -> (B,).

    A defect is a token above the threshold that is also ``eligible`` (B, H, W; the norm gate's
    verdict; None: every token), so the statistics and the defects are a fixed point: it starts
    from median + k·MAD (1.4826·MAD ≈ σ) and alternates "defects leave the statistics" and
    "mean + k·std of the rest" until the defects no longer change (at most ``iterations`` passes).
    Starting from the median, the defects cannot lift the threshold even when they are many
    (the plain mean + k·std flags nothing once ~7% of a grid are strong defects). Tokens that fail
    the gate (the noise tail of ordinary tokens) stay in the statistics, so an image without
    defects gets exactly the plain mean + k·std."""
    flat = scores.flatten(1).double()
    ok = torch.ones_like(flat, dtype=torch.bool) if eligible is None else eligible.flatten(1)
    med = flat.median(dim=1).values
    mad = (flat - med[:, None]).abs().median(dim=1).values * MAD_TO_STD
    keep = ~((flat > (med + k * mad)[:, None]) & ok)
    thr = med
    for _ in range(iterations):
        n = keep.sum(dim=1).clamp_min(2).to(flat.dtype)
        mean = (flat * keep).sum(dim=1) / n
        var = (((flat - mean[:, None]) ** 2) * keep).sum(dim=1) / (n - 1)
        thr = mean + k * var.sqrt()
        now = ~((flat > thr[:, None]) & ok)
        if flat.device.type == "cpu" and torch.equal(now, keep):
            break  # on an accelerator all passes run, without a sync: a stable set stays stable
        keep = now
    return thr.to(scores.dtype)


@dataclass(frozen=True)
class DefectRule:
    """What counts as a defect (validated on construction).

    ``threshold``: ``robust`` (mean/std of the tokens that are not defects, a fixed point from
    median + k·MAD) or ``meanstd`` (the reference's single μ + kσ over all tokens).
    ``border``: rows/columns at the edge that are never defects (0: the whole grid; the
    reference clears 1, where its 3×3 window does not fit).
    ``norm_gate``, ``aligned_gate``: the gate a |cos| outlier must also pass: norm > norm_gate ×
    the image's median patch norm, or component along ν > aligned_gate × that median (0: that
    half off; norm_gate 0: no gate at all). On the zoo the aligned half adds only planted tokens
    (weakly ignited ones at 1.3–2× the median norm, |cos| ≥ 0.8), none before any onset, and
    nothing on random-init models, whose |cos| tail stays ≤ 0.27 (docs/detection-and-repair.md).
    ``low_norm``: what becomes of |cos| outliers that fail the gate: ``drop`` them (the noise tail
    of ordinary tokens), ``count`` them as defects from block ``low_norm_from`` on (artifacts
    below the norm gate, as some CLIP towers have), or ``auto``: a command decides per model
    (:func:`sinder.verdict.choose_low_norm`: ``count`` from the first block with low-norm singular
    defects when its last block has them, ``drop`` otherwise) and records the decision; an
    undecided ``auto`` rule drops.
    ``skip_less_than``: how many defects a layer needs before repair trains on it (the
    reference's name). The defaults (whole grid, gate 2 or 1.25 along ν, one defect) were chosen on the zoo of
    planted models (docs/zoo.md). ``threshold`` stays ``meanstd`` by default: ``robust`` finds the
    dense late-layer defects of a ViT-L at 518 px that μ + 4σ misses, and the default repair then
    did worse there (docs/detection-and-repair.md); ``border=1, norm_gate=0,
    skip_less_than=3`` with ``meanstd`` is exactly the reference rule.
    """

    mask_thr: float = 4.0
    border: int = 0
    norm_gate: float = 2.0
    aligned_gate: float = 1.25
    high_norm_factor: float = 3.0
    skip_less_than: int = 1
    threshold: Threshold = "meanstd"
    low_norm: LowNorm = "auto"
    low_norm_from: int = 0

    def __post_init__(self) -> None:
        require(math.isfinite(self.mask_thr) and self.mask_thr > 0, f"--mask-thr must be > 0, got {self.mask_thr}")
        require(isinstance(self.border, int) and self.border >= 0, f"border must be an integer >= 0, got {self.border!r}")
        require(math.isfinite(self.norm_gate) and self.norm_gate >= 0, f"--norm-gate must be >= 0 (0: off), got {self.norm_gate}")
        require(
            math.isfinite(self.aligned_gate) and self.aligned_gate >= 0,
            f"--aligned-gate must be >= 0 (0: the norm gate alone), got {self.aligned_gate}",
        )
        require(
            math.isfinite(self.high_norm_factor) and self.high_norm_factor > 1,
            f"--high-norm-factor must be > 1, got {self.high_norm_factor}",
        )
        require(self.skip_less_than >= 1, f"--skip-less-than must be >= 1, got {self.skip_less_than}")
        require(self.threshold in THRESHOLDS, f"--threshold must be {' or '.join(THRESHOLDS)}, got {self.threshold!r}")
        require(self.low_norm in LOW_NORM, f"--low-norm must be {', '.join(LOW_NORM)}, got {self.low_norm!r}")
        require(
            isinstance(self.low_norm_from, int) and self.low_norm_from >= 0,
            f"low_norm_from must be a block index >= 0, got {self.low_norm_from!r}",
        )

    def to_dict(self) -> dict:
        return asdict(self)

    def counts_low_norm(self, layer: int | None = None) -> bool:
        """Whether tokens that fail the gate are defects at ``layer`` (None: any layer)."""
        return self.low_norm == "count" and (layer is None or layer >= self.low_norm_from)

    def cosine_threshold(self, scores: torch.Tensor, norms: torch.Tensor | None = None, layer: int | None = None) -> torch.Tensor:
        """The per-image |cos| threshold (B,) of scores (B, H, W). The robust one takes its
        statistics without the defects, so it needs the token ``norms`` for the norm gate
        (without them every |cos| outlier counts as a defect)."""
        if self.threshold == "meanstd":
            return meanstd_threshold(scores, self.mask_thr)
        gated = norms is not None and self.norm_gate > 0 and not self.counts_low_norm(layer)
        return robust_threshold(scores, self.mask_thr, self.gate_mask(norms, scores) if gated else None)

    def cosine_mask(self, scores: torch.Tensor, norms: torch.Tensor | None = None, layer: int | None = None) -> torch.Tensor:
        """The |cos| part alone, on scores (B, H, W): above the image's threshold, outside ``border``.

        As in the reference, the statistics are taken over the whole grid and the border rows
        and columns (if any) are cleared afterwards.
        """
        _, h, w = scores.shape
        above = scores > self.cosine_threshold(scores, norms, layer)[:, None, None]
        if self.border == 0:
            return above
        return above & interior_mask(h, w, self.border, scores.device)

    def gate_mask(self, norms: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """The gate alone (all True when it is off), from token norms and |cos| scores (B, H, W):
        norm > norm_gate × the image's median patch norm, or norm·|cos| (the component along ν)
        > aligned_gate × that median."""
        if self.norm_gate <= 0:
            return torch.ones_like(norms, dtype=torch.bool)
        med = median_norm(norms)[:, None, None]
        gate = norms > self.norm_gate * med
        if self.aligned_gate > 0:
            gate |= norms * scores > self.aligned_gate * med
        return gate

    def mask(self, scores: torch.Tensor, norms: torch.Tensor, layer: int | None = None) -> torch.Tensor:
        """Defects (B, H, W) at block ``layer`` from |cos| scores and token norms."""
        by_cos = self.cosine_mask(scores, norms, layer)
        return by_cos if self.counts_low_norm(layer) else by_cos & self.gate_mask(norms, scores)

    def detect(self, grid: torch.Tensor, direction: torch.Tensor, layer: int | None = None) -> torch.Tensor:
        """Defects (B, H, W) of patch tokens (B, H, W, D) at block ``layer`` for direction ν."""
        grid = grid.detach().float()
        return self.mask(abs_cosine(grid, direction.float()), grid.norm(dim=-1), layer)

    def high_norm(self, norms: torch.Tensor) -> torch.Tensor:
        """High-norm tokens (B, H, W) from token norms: norm > high_norm_factor × the image's median."""
        return norms > self.high_norm_factor * median_norm(norms)[:, None, None]


@dataclass
class LayerDetection:
    """What the rule found in one batch at one layer (all (B, H, W))."""

    scores: torch.Tensor  # |cos(t, ν)|
    norms: torch.Tensor
    defects: torch.Tensor
    high: torch.Tensor
    gate_rejected: torch.Tensor  # passed the |cos| rule, failed the norm gate (defects too where the rule counts them)

    def image(self, b: int) -> LayerDetection:
        """Image ``b`` alone ((H, W) each)."""
        return LayerDetection(self.scores[b], self.norms[b], self.defects[b], self.high[b], self.gate_rejected[b])


def detect_layer(rule: DefectRule, grid: torch.Tensor, direction: torch.Tensor | None, layer: int | None = None) -> LayerDetection:
    """The rule applied to patch tokens (B, H, W, D) of block ``layer``; without a direction only norms are judged."""
    grid = grid.detach().float()
    norms = grid.norm(dim=-1)
    if direction is None:
        none = torch.zeros_like(norms, dtype=torch.bool)
        return LayerDetection(torch.zeros_like(norms), norms, none, rule.high_norm(norms), none)
    scores = abs_cosine(grid, direction.float())
    by_cos = rule.cosine_mask(scores, norms, layer)
    gate = rule.gate_mask(norms, scores)
    defects = by_cos if rule.counts_low_norm(layer) else by_cos & gate
    return LayerDetection(scores, norms, defects, rule.high_norm(norms), by_cos & ~gate)


@dataclass
class DefectStats:
    """Running statistics of one layer over images (memory independent of the number of images).

    Names, as they appear in analysis.json, summary.json and metrics.json:
        defect_rate, high_norm_rate       share of patch tokens (border included in the denominator)
        max_over_median                   mean over images of max / median token norm
        max_over_median_max               the largest per-image value
        norm_median                       mean over images of the median token norm
        norm_max                          largest token norm seen
        energy_along_direction            Σ⟨t, ν⟩² / Σ‖t‖² over all patch tokens
        defect_norm_mean, normal_norm_mean
        high_norm_recall, defect_precision   of defects against high-norm tokens
        gate_rejected_rate                tokens that pass the |cos| rule but fail the norm gate
        theory_alignment                  |cos(ν, mean direction of the high-norm tokens)|
        direction_consistency_deg         mean pairwise angle between per-image mean directions of
                                          tokens that are both defects and high-norm; images with
                                          none are left out, and ``direction_consistency_images``
                                          says how many were used
        truth_recall, truth_precision     of defects against known defect tokens (a planted model's
                                          ignition mask); None when no truth was given
    """

    images: int = 0
    tokens: int = 0
    defects: int = 0
    high: int = 0
    defect_and_high: int = 0
    gate_rejected: int = 0
    defect_norm_sum: float = 0.0
    normal_norm_sum: float = 0.0
    norm_max: float = 0.0
    energy_along: float = 0.0
    energy_total: float = 0.0
    ratios: list[float] = field(default_factory=list)
    medians: list[float] = field(default_factory=list)
    image_directions: list[torch.Tensor] = field(default_factory=list)
    high_units: list[torch.Tensor] = field(default_factory=list)
    truth_tokens: int | None = None  # known defect tokens (None: no truth given)
    truth_hits: int = 0  # of them, flagged by the rule

    def add(self, grid: torch.Tensor, direction: torch.Tensor | None, found: LayerDetection, truth: torch.Tensor | None = None) -> None:
        """Add a batch of patch tokens (B, H, W, D) and what :func:`detect_layer` found in it;
        ``truth`` (B, H, W) bool marks the tokens known to be defects, when they are known."""
        grid = grid.detach().float()
        if truth is not None:
            truth = truth.to(found.defects.device)
            self.truth_tokens = (self.truth_tokens or 0) + int(truth.sum())
            self.truth_hits += int((truth & found.defects).sum())
        norms, defects, high = found.norms, found.defects, found.high
        both = defects & high
        med = median_norm(norms)
        self.images += grid.shape[0]
        self.tokens += norms.numel()
        self.defects += int(defects.sum())
        self.high += int(high.sum())
        self.defect_and_high += int(both.sum())
        self.gate_rejected += int(found.gate_rejected.sum())
        self.defect_norm_sum += float(norms[defects].sum())
        self.normal_norm_sum += float(norms[~defects].sum())
        self.norm_max = max(self.norm_max, float(norms.max()))
        if direction is not None:
            nu = F.normalize(direction.float().to(grid.device), dim=0)
            self.energy_along += float(((grid @ nu) ** 2).sum())
            self.energy_total += float((norms**2).sum())
        self.ratios += (norms.flatten(1).max(dim=1).values / med.clamp_min(1e-12)).tolist()
        self.medians += med.tolist()
        for g, m in zip(grid, both):
            if m.any():
                self.image_directions.append(mean_direction(g[m]).float().cpu())
        if high.any():
            self.high_units.append(F.normalize(grid[high], dim=-1).cpu()[: max(1, HIGH_UNITS_PER_BATCH // grid.shape[0])])

    def theory_alignment(self, direction: torch.Tensor) -> float | None:
        units = torch.cat(self.high_units) if self.high_units else torch.zeros(0, direction.numel())
        mdir = mean_direction(units)
        return None if mdir is None else abs(float(F.cosine_similarity(mdir.float(), direction.float().cpu(), dim=0)))

    def direction_consistency(self) -> float | None:
        dirs = self.image_directions
        if len(dirs) < 2:
            return None
        angles = [angle_deg(a, b) for a, b in itertools.combinations(dirs, 2)]
        return sum(angles) / len(angles)

    def summary(self, direction: torch.Tensor | None = None) -> dict:
        """The statistics as a JSON-ready dict (None where a value is undefined)."""
        n, nd = self.tokens, self.defects
        mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
        return {
            "images": self.images,
            "defect_rate": nd / n if n else None,
            "high_norm_rate": self.high / n if n else None,
            "gate_rejected_rate": self.gate_rejected / n if n else None,
            "max_over_median": mean(self.ratios),
            "max_over_median_max": max(self.ratios) if self.ratios else None,
            "norm_median": mean(self.medians),
            "norm_max": self.norm_max if n else None,
            "energy_along_direction": self.energy_along / self.energy_total if self.energy_total > 0 else None,
            "defect_norm_mean": self.defect_norm_sum / nd if nd else None,
            "normal_norm_mean": self.normal_norm_sum / (n - nd) if n > nd else None,
            "high_norm_recall": self.defect_and_high / self.high if self.high else None,
            "defect_precision": self.defect_and_high / nd if nd else None,
            "theory_alignment": None if direction is None else self.theory_alignment(direction),
            "direction_consistency_deg": self.direction_consistency(),
            "direction_consistency_images": len(self.image_directions),
            "truth_recall": self.truth_hits / self.truth_tokens if self.truth_tokens else None,
            "truth_precision": self.truth_hits / nd if nd and self.truth_tokens is not None else None,
        }
