"""The SINDER neighbourhood loss: pull defect tokens toward a smooth estimate from their window.

At layer i, with ν_i the predicted defect direction and patch tokens on an H×W grid:
  * defects: the :class:`~sinder.detect.DefectRule` (the caller passes its mask);
  * target T at a defect: w = exp(−|cos(token, ν_i)|/τ) over its k×k window, normalised, times
    the Gaussian kernel, renormalised; T = Σ w·token (no gradient). The defect itself is in the
    window but its weight is tiny (its |cos| is large). At the border only the window cells
    inside the grid count (their weights renormalised): beyond the reference, which clears the
    border from its rule because its window does not fit there;
  * loss = mean over defects of ‖x − T‖₂ / mean token norm of the image (no gradient): of the
    whole grid by default, of the interior (``kernel // 2`` from the edge) with the reference's
    cleared border;
  * beyond the reference, ``along_weight`` w adds w·|⟨x − T, ν_i⟩| per defect: the part of the
    distance that *is* the defect. For a short (low-norm) defect it is a small share of ‖x − T‖,
    whose rest (its content against the neighbourhood's) σ cannot remove, and ‖x − T‖ alone
    stalls with some of it left (``planted:lownorm``: 93% of the energy along u removed, 100%
    with w = 1; docs/benchmarks.md). w = 0 is the reference loss, operation for operation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..detect import abs_cosine

_GAUSS3 = ((1, 2, 1), (2, 4, 2), (1, 2, 1))
_GAUSS5 = ((1, 4, 7, 4, 1), (4, 16, 26, 16, 4), (7, 26, 41, 26, 7), (4, 16, 26, 16, 4), (1, 4, 7, 4, 1))


def gaussian_kernel(kernel: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The reference's smoothing kernels: [1,2,1]ᵀ[1,2,1]/16 (3×3) and the usual /273 kernel (5×5)."""
    if kernel == 3:
        return torch.tensor(_GAUSS3, dtype=torch.float32, device=device) / 16
    if kernel == 5:
        return torch.tensor(_GAUSS5, dtype=torch.float32, device=device) / 273
    raise ValueError(f"kernel must be 3 or 5, got {kernel}")


def token_scores(grid: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """|cos(token, ν)| of patch tokens (B, H, W, D) -> (B, H, W), float32, no gradient."""
    return abs_cosine(grid.detach().float(), direction.float())


def window_offsets(kernel: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    r = torch.arange(kernel, device=device) - kernel // 2
    dy, dx = torch.meshgrid(r, r, indexing="ij")
    return dy.flatten(), dx.flatten()


@torch.no_grad()
def neighbourhood_target(
    grid: torch.Tensor, scores: torch.Tensor, positions: torch.Tensor, kernel: int = 3, tau: float = 0.1
) -> torch.Tensor:
    """Targets (n, D) at ``positions`` (n, 3) = (image, row, col), anywhere on the grid.

    ``scores``: |cos(token, ν)| (B, H, W). Window cells outside the grid get no weight and the
    others' weights are renormalised (a corner defect of a 3×3 window has 4 cells, itself
    included). Where the whole window fits (the reference's case) every cell is kept and the
    computation is the reference's, operation for operation."""
    _, rows, cols = scores.shape
    dy, dx = window_offsets(kernel, grid.device)
    b, y, x = positions[:, 0:1], positions[:, 1:2] + dy, positions[:, 2:3] + dx  # (n, k²)
    inside = (y >= 0) & (y < rows) & (x >= 0) & (x < cols)
    y, x = y.clamp(0, rows - 1), x.clamp(0, cols - 1)  # outside cells read a valid token, then get weight 0
    logits = (-scores[b, y, x] / tau).masked_fill(~inside, float("-inf"))  # all inside: unchanged values
    w = torch.softmax(logits, dim=1)  # = exp(−|cos|/τ) normalised, without underflow for small τ
    w = w * gaussian_kernel(kernel, grid.device).flatten()
    w = w / w.sum(dim=1, keepdim=True)
    neighbours = grid.detach()[b, y, x].float()  # (n, k², D)
    return (w[..., None] * neighbours).sum(dim=1)


def interior_mean_norm(grid: torch.Tensor, border: int) -> torch.Tensor:
    """Mean token norm over each image (B,) without the ``border`` rows/columns at the edge (0: the
    whole grid), no gradient."""
    _, h, w, _ = grid.shape
    with torch.no_grad():
        inner = grid.detach()[:, border : h - border, border : w - border].float()
        return inner.norm(dim=-1).flatten(1).mean(dim=1)


def neighbour_loss(
    grid: torch.Tensor,
    direction: torch.Tensor,
    mask: torch.Tensor,
    kernel: int = 3,
    tau: float = 0.1,
    border: int = 0,
    along_weight: float = 0.0,
) -> torch.Tensor:
    """Per-image loss (B,): mean ‖x − T‖ (+ ``along_weight``·|⟨x − T, ν⟩|) over the image's defects /
    the image's mean token norm.

    ``grid`` (B, H, W, D) carries the gradient; ``mask`` (B, H, W) marks the defects (images
    without any get 0). ``border``: the rule's cleared border; the normaliser is then the mean
    norm inside it, as in the reference (``kernel // 2``); 0 (the whole grid can hold defects):
    the mean norm of the whole grid. Computed in float32 whatever the autocast dtype.
    """
    bsz = grid.shape[0]
    pos = mask.nonzero()
    if pos.shape[0] == 0:
        return grid.sum() * 0.0 + torch.zeros(bsz, device=grid.device)
    target = neighbourhood_target(grid, token_scores(grid, direction), pos, kernel, tau)
    diff = grid[pos[:, 0], pos[:, 1], pos[:, 2]].float() - target
    dist = diff.norm(dim=-1)
    if along_weight:
        dist = dist + along_weight * (diff @ F.normalize(direction.float().to(diff.device), dim=0)).abs()
    counts = mask.flatten(1).sum(dim=1).clamp(min=1).to(dist.dtype)
    per_image = torch.zeros(bsz, device=grid.device, dtype=dist.dtype).index_add(0, pos[:, 0], dist) / counts
    return per_image / interior_mean_norm(grid, border)


def gram_loss(tokens: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """‖X_s X_sᵀ − X_o X_oᵀ‖² (mean over entries) of L2-normalised tokens (n, D); ``original`` is frozen."""
    a = F.normalize(tokens.float(), dim=-1)
    b = F.normalize(original.detach().float(), dim=-1)
    return ((a @ a.T - b @ b.T) ** 2).mean()
