"""Training and held-out images for repair: folders, files, PIL images or pixel tensors.

Images are decoded lazily (a 30k-image folder is not read up front); files that cannot be
decoded are skipped, counted and logged once. Training cycles over the set in a seeded order:
epoch e visits ``randperm(n, seed + e)``, so the image at any global position is a pure
function of (seed, position) and a resumed run sees exactly the images it would have seen.
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from typing import Sequence, Union

import torch
from PIL import Image

from ..errors import ImageError
from ..images import SourceImage, image_digest, list_images, load_image, preprocess, subsample

log = logging.getLogger(__name__)

ImageItem = Union[str, os.PathLike, Image.Image, SourceImage, torch.Tensor]
CACHE_BYTES = 512 * 2**20  # keep decoded pixels when the whole set fits (small sets are cycled many times)


def expand_inputs(inputs: Sequence[ImageItem]) -> tuple[list[ImageItem], list[dict]]:
    """Folders/files -> image paths (recursive, sorted); in-memory items pass through in order."""
    items: list[ImageItem] = []
    missing: list[dict] = []
    for item in inputs:
        if isinstance(item, (str, os.PathLike)):
            paths, miss = list_images([item])
            items.extend(paths)
            missing.extend(miss)
        elif isinstance(item, (Image.Image, SourceImage, torch.Tensor)):
            items.append(item)
        else:
            raise ImageError(f"unsupported image input {type(item).__name__}; pass paths, PIL images or (3, H, W) tensors")
    return items, missing


def check_decodable(items: Sequence[ImageItem], what: str) -> None:
    """Raise ``ImageError`` unless one of ``items`` decodes; stops at the first that does."""
    first: tuple[ImageItem, ImageError] | None = None
    for item in items:
        if not isinstance(item, (str, os.PathLike)):
            return  # in-memory images are checked when they are used
        try:
            load_image(item)
            return
        except ImageError as err:
            first = first or (item, err)
    if first is not None:
        raise ImageError(f"none of the {len(items)} {what} can be used ({first[0]}: {first[1]}); pass images PIL can decode")


def item_name(item: ImageItem, index: int) -> str:
    if isinstance(item, SourceImage):
        return item.name
    if isinstance(item, Image.Image):
        return f"image{index}:{image_digest(item)}"
    if isinstance(item, torch.Tensor):
        return f"tensor{index}:{tuple(item.shape)}"
    return str(item)


def split_holdout(items: list[ImageItem], num_eval: int) -> tuple[list[ImageItem], list[ImageItem]]:
    """Deterministic held-out split: ``num_eval`` items at a fixed stride go to evaluation."""
    if num_eval <= 0 or len(items) < 2:
        return list(items), []
    num_eval = min(num_eval, len(items) - 1)
    stride = len(items) / num_eval
    picked = {int(i * stride + stride / 2) for i in range(num_eval)}
    return [x for i, x in enumerate(items) if i not in picked], [x for i, x in enumerate(items) if i in picked]


@dataclass
class ImageSet:
    """A list of images preprocessed on demand to ``resolution`` (square centre crop)."""

    items: list[ImageItem]
    resolution: int
    patch_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    names: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    _cache: dict[int, torch.Tensor | None] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not self.names:
            self.names = [item_name(x, i) for i, x in enumerate(self.items)]

    @classmethod
    def from_inputs(cls, inputs: Sequence[ImageItem], backbone, resolution: int, limit: int | None = None) -> ImageSet:
        items, missing = expand_inputs(inputs)
        if limit is not None:
            items = subsample(items, limit)
        out = cls(items, resolution, backbone.patch_size, tuple(backbone.mean), tuple(backbone.std))
        for m in missing:
            out.skipped[m["path"]] = m["reason"]
        return out

    def __len__(self) -> int:
        return len(self.items)

    def digest(self) -> str:
        """Identifies the image list (names and resolution), checked when a run is resumed."""
        h = hashlib.sha1(f"{self.resolution}|".encode())
        for n in self.names:
            h.update(n.encode() + b"\0")
        return h.hexdigest()[:16]

    def load(self, index: int) -> torch.Tensor | None:
        """(3, R, R) float32 pixels, or None when the image is unusable (reason in ``skipped``)."""
        if index in self._cache:
            return self._cache[index]
        item, name = self.items[index], self.names[index]
        try:
            if isinstance(item, torch.Tensor):
                px = self._check_tensor(item)
            else:
                img = item.image if isinstance(item, SourceImage) else item if isinstance(item, Image.Image) else load_image(item)
                px = preprocess(img, self.resolution, self.patch_size, self.mean, self.std, square=True)
        except ImageError as err:
            if name not in self.skipped:
                log.warning("skipping %s: %s", name, err)
            self.skipped[name] = str(err)
            px = None
        if len(self.items) * 3 * 4 * self.resolution**2 <= CACHE_BYTES:
            self._cache[index] = px
        return px

    def _check_tensor(self, t: torch.Tensor) -> torch.Tensor:
        if t.ndim != 3 or t.shape[0] != 3 or t.shape[1] % self.patch_size or t.shape[2] % self.patch_size:
            raise ImageError(f"tensor of shape {tuple(t.shape)} is not (3, H, W) with H, W multiples of {self.patch_size}")
        return t.float()


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


