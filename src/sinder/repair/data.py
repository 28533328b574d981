"""The order in which training visits its images.

Training cycles over the set in a seeded order: epoch e visits ``randperm(n, seed + e)``, so the
image at any global position is a pure function of (seed, position) and a resumed run sees
exactly the images it would have seen.
"""

from __future__ import annotations

import torch

from ..errors import ImageError


class SeededOrder:
    """Global position -> dataset index, cycling over epochs of ``randperm(n, seed + epoch)``."""

    def __init__(self, n: int, seed: int) -> None:
        if n < 1:
            raise ImageError("no training images")
        self.n, self.seed = n, seed
        self._perms: dict[int, list[int]] = {}

    def __call__(self, position: int) -> int:
        epoch, offset = divmod(position, self.n)
        perm = self._perms.get(epoch)
        if perm is None:
            gen = torch.Generator().manual_seed(self.seed + epoch)
            perm = torch.randperm(self.n, generator=gen).tolist()
            self._perms = {epoch: perm}  # positions only move forward: keep one epoch
        return perm[offset]


def resolve_resolution(resolution: int | None, backbone) -> int:
    return int(resolution or backbone.image_size)
