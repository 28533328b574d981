"""Detection of singular defects (paper §4) and of high-norm tokens, per image and per layer.

A patch token t at layer i is a *defect* when |cos(t, ν_i)| > mean + mask_thr·std of that
image's values; rows/columns within ``border`` of the edge are never defects (as in the
reference, where the 3×3 smoothing window does not fit there). A token is *high-norm* when
its norm exceeds ``factor`` × the image's median patch-token norm.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


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


def defect_mask_from_scores(scores: torch.Tensor, mask_thr: float = 4.0, border: int = 1) -> torch.Tensor:
    """Defects from |cos| scores (B, H, W): above mean + mask_thr·std of the image, border excluded.

    As in the reference, the statistics are taken over the whole grid and the border rows and
    columns (where the k×k neighbourhood does not fit) are cleared afterwards.
    """
    b, h, w = scores.shape
    flat = scores.flatten(1)
    thr = flat.mean(dim=1) + mask_thr * flat.std(dim=1)
    return (scores > thr[:, None, None]) & interior_mask(h, w, border, scores.device)


def detect_defects(grid: torch.Tensor, direction: torch.Tensor, mask_thr: float = 4.0, border: int = 1) -> torch.Tensor:
    """Boolean (B, H, W): the μ + mask_thr·σ rule on |cos(token, ν)|."""
    return defect_mask_from_scores(abs_cosine(grid, direction), mask_thr, border)


def token_norms(grid: torch.Tensor) -> torch.Tensor:
    return grid.norm(dim=-1)


def high_norm_mask(grid: torch.Tensor, factor: float = 3.0) -> torch.Tensor:
    """Boolean (B, H, W): norm > factor × the image's median patch-token norm."""
    norms = token_norms(grid)
    med = norms.flatten(1).median(dim=1).values
    return norms > factor * med[:, None, None]


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
