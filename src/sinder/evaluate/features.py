"""Batched frozen-feature extraction: image decoding with skips, preprocessing, autocast."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..backbones.base import Backbone, TokenContext
from ..images import ImageSet

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Extraction:
    """How a task reads and runs its images: at ``resolution`` px, ``batch_size`` at a time, with
    bf16 autocast on CUDA (``amp``; features only) and progress bars (drawn on a terminal only)."""

    resolution: int
    batch_size: int = 32
    amp: bool = True
    progress: bool = True


@dataclass
class Batch:
    indices: list[int]  # positions in the input path list
    pixels: torch.Tensor  # (B, 3, H, W) on the backbone's device
    sizes: list[tuple[int, int]]  # original (w, h)


@dataclass
class Features:
    """Per-image features of the images that decoded, in input order."""

    kept: list[int]  # positions in the input path list
    sizes: list[tuple[int, int]]  # original (w, h) per kept image
    skipped: list[dict] = field(default_factory=list)  # {"path", "reason"}
    cls: torch.Tensor | None = None  # (n, D) final-normed CLS (None without a CLS token)
    patches: torch.Tensor | None = None  # (n, h, w, D) final-normed patch tokens
    patch_mean: torch.Tensor | None = None  # (n, D) mean of the final-normed patch tokens


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA (features only; norms for the intrinsic metrics are kept in fp32)."""
    if enabled and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def iter_batches(
    backbone: Backbone, paths: Sequence[Path], run: Extraction, skipped: list[dict], square: bool = True, desc: str = "images"
) -> Iterator[Batch]:
    """Decode, preprocess and stack images (sinder's one image pipeline); undecodable ones are
    appended to ``skipped``. With ``square=False`` images keep their aspect ratio and come one per batch."""
    images = ImageSet(
        list(paths), run.resolution, backbone.patch_size, tuple(backbone.mean), tuple(backbone.std), crop="square" if square else "aspect"
    )
    size = run.batch_size if square else 1
    try:
        for idxs, pixels in images.batches(size, progress=run.progress, desc=desc):
            # a half-precision model gets half pixels
            yield Batch(idxs, pixels.to(device=backbone.device, dtype=backbone.dtype), [images.sizes[i] for i in idxs])
    finally:
        skipped.extend({"path": name, "reason": reason} for name, reason in images.skipped.items())


def last_tokens(backbone: Backbone, pixels: torch.Tensor) -> tuple[torch.Tensor, TokenContext]:
    """Tokens after the last block, before the final norm (B, N, D)."""
    outputs, ctx = backbone.forward_layers(pixels)
    return outputs[-1], ctx


@torch.no_grad()
def extract_features(
    backbone: Backbone, paths: Sequence[Path], run: Extraction, want: Sequence[str] = ("cls", "patches"), desc: str = "features"
) -> Features:
    """Final-normed features of ``paths`` (``want`` ⊂ {"cls", "patches", "patch_mean"}), on the CPU in fp32."""
    unknown = set(want) - {"cls", "patches", "patch_mean"}
    if unknown:
        raise ValueError(f"unknown feature kinds {sorted(unknown)}")
    out = Features(kept=[], sizes=[])
    chunks: dict[str, list[torch.Tensor]] = {k: [] for k in want}
    device = backbone.device
    for batch in iter_batches(backbone, paths, run, out.skipped, desc=desc):
        with autocast(device, run.amp):
            x, ctx = last_tokens(backbone, batch.pixels)
            normed = backbone.final_norm(x)
            if "cls" in want and backbone.has_cls_token:
                chunks["cls"].append(normed[:, 0].float().cpu())
            grid = backbone.patch_grid(normed, ctx).float()
            if "patches" in want:
                chunks["patches"].append(grid.cpu())
            if "patch_mean" in want:
                chunks["patch_mean"].append(grid.mean(dim=(1, 2)).cpu())
        out.kept.extend(batch.indices)
        out.sizes.extend(batch.sizes)
    for key, parts in chunks.items():
        if parts:
            setattr(out, key, torch.cat(parts))
    if out.skipped:
        logger.warning("%s: %d of %d images skipped (undecodable)", desc, len(out.skipped), len(paths))
    return out


def default_resolution(backbone: Backbone, resolution: int | None) -> int:
    res = backbone.image_size if resolution is None else resolution
    if res < backbone.patch_size:
        from ..errors import ConfigError

        raise ConfigError(f"resolution {res} is smaller than the patch size {backbone.patch_size}; raise --resolution")
    return res
