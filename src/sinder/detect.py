"""Detection of singular defects (paper §4) and of high-norm tokens: one rule, one set of statistics.

:class:`DefectRule` is the only definition of "defect" in sinder; analyze, repair (its loss
and its held-out metrics) and evaluate all call it. A patch token t at layer i is a *defect*
when |cos(t, ν_i)| > mean + ``mask_thr``·std of that image's values (rows/columns within
``border`` of the edge are never defects, as in the reference, where the smoothing window does
not fit there) and, when ``norm_gate`` g > 0, also norm(t) > g × the image's median patch norm.
A token is *high-norm* when its norm exceeds ``high_norm_factor`` × the image's median.

:class:`DefectStats` accumulates every per-layer number sinder reports, under one name each.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from .errors import require

# Per batch, at most this many unit vectors of high-norm tokens are kept for the theory alignment.
HIGH_UNITS_PER_BATCH = 4096


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


@dataclass(frozen=True)
class DefectRule:
    """What counts as a defect (validated on construction).

    ``skip_less_than``: how many defects a layer needs before repair trains on it (the
    reference's name). The defaults (gate 2, one defect) were chosen on the zoo of planted
    models (README); ``norm_gate=0, skip_less_than=3`` is exactly the reference rule.
    """

    mask_thr: float = 4.0
    border: int = 1
    norm_gate: float = 2.0
    high_norm_factor: float = 3.0
    skip_less_than: int = 1

    def __post_init__(self) -> None:
        require(math.isfinite(self.mask_thr) and self.mask_thr > 0, f"--mask-thr must be > 0, got {self.mask_thr}")
        require(self.border >= 0, f"border must be >= 0, got {self.border}")
        require(math.isfinite(self.norm_gate) and self.norm_gate >= 0, f"--norm-gate must be >= 0 (0: off), got {self.norm_gate}")
        require(math.isfinite(self.high_norm_factor) and self.high_norm_factor > 1, f"--high-norm-factor must be > 1, got {self.high_norm_factor}")
        require(self.skip_less_than >= 1, f"--skip-less-than must be >= 1, got {self.skip_less_than}")

    def to_dict(self) -> dict:
        return asdict(self)

    def cosine_mask(self, scores: torch.Tensor) -> torch.Tensor:
        """The μ + mask_thr·σ part alone, on |cos| scores (B, H, W); border cleared.

        As in the reference, the statistics are taken over the whole grid and the border rows
        and columns are cleared afterwards.
        """
        _, h, w = scores.shape
        flat = scores.flatten(1)
        thr = flat.mean(dim=1) + self.mask_thr * flat.std(dim=1)
        return (scores > thr[:, None, None]) & interior_mask(h, w, self.border, scores.device)

    def norm_mask(self, norms: torch.Tensor) -> torch.Tensor:
        """The norm gate alone (all True when it is off): norm > g × the image's median patch norm."""
        if self.norm_gate <= 0:
            return torch.ones_like(norms, dtype=torch.bool)
        return norms > self.norm_gate * median_norm(norms)[:, None, None]

    def mask(self, scores: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
        """Defects (B, H, W) from |cos| scores and token norms."""
        return self.cosine_mask(scores) & self.norm_mask(norms)

    def detect(self, grid: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
        """Defects (B, H, W) of patch tokens (B, H, W, D) for direction ν."""
        grid = grid.detach().float()
        return self.mask(abs_cosine(grid, direction.float()), grid.norm(dim=-1))

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
    gate_rejected: torch.Tensor  # passed the |cos| rule, failed the norm gate


def detect_layer(rule: DefectRule, grid: torch.Tensor, direction: torch.Tensor | None) -> LayerDetection:
    """The rule applied to patch tokens (B, H, W, D); without a direction only norms are judged."""
    grid = grid.detach().float()
    norms = grid.norm(dim=-1)
    if direction is None:
        none = torch.zeros_like(norms, dtype=torch.bool)
        return LayerDetection(torch.zeros_like(norms), norms, none, rule.high_norm(norms), none)
    scores = abs_cosine(grid, direction.float())
    by_cos = rule.cosine_mask(scores)
    gate = rule.norm_mask(norms)
    return LayerDetection(scores, norms, by_cos & gate, rule.high_norm(norms), by_cos & ~gate)


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

    def add(self, grid: torch.Tensor, direction: torch.Tensor | None, found: LayerDetection) -> None:
        """Add a batch of patch tokens (B, H, W, D) and what :func:`detect_layer` found in it."""
        grid = grid.detach().float()
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
        }
