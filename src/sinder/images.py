"""Image input: robust decoding, the models' preprocessing, and the bundled scikit-image photos."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
MIN_SIDE = 16  # smaller images hold less than two patches of information: skip them
MAX_PIXELS = 200_000_000  # larger than any photo; refuses decompression bombs

# Photos shipped with scikit-image (no download). Split so that repair never sees the evaluation photos.
BUNDLED_TRAIN = ("astronaut", "coffee", "rocket", "camera", "brick", "grass", "coins", "page")
BUNDLED_EVAL = ("chelsea", "hubble_deep_field", "immunohistochemistry", "retina", "moon", "clock", "gravel", "text")


@dataclass(frozen=True)
class SourceImage:
    """An input image: ``name`` identifies it in outputs; ``path`` is None for bundled photos."""

    name: str
    image: Image.Image
    path: str | None = None


def to_rgb(img: Image.Image) -> Image.Image:
    """Normalise any PIL mode to 8-bit RGB: EXIF rotation applied, alpha composited on white,
    16-bit and float images rescaled to their own range."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        img = Image.fromarray(arr.astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("RGB")


def load_image(path: str | os.PathLike) -> Image.Image:
    """Decode ``path`` to RGB or raise ``ImageError`` whose message is the skip reason."""
    p = Path(path)
    if not p.is_file():
        raise ImageError("file not found")
    if p.stat().st_size == 0:
        raise ImageError("empty file")
    try:
        with Image.open(p) as im:
            if im.width * im.height > MAX_PIXELS:
                raise ImageError(f"too large ({im.width}x{im.height} pixels)")
            im.load()
            rgb = to_rgb(im)
    except ImageError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError):
        raise ImageError("not an image PIL can decode") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"corrupt or truncated image ({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
    if min(rgb.size) < MIN_SIDE:
        raise ImageError(f"too small ({rgb.width}x{rgb.height}; need at least {MIN_SIDE} px per side)")
    return rgb


def list_images(inputs: list[str | os.PathLike]) -> tuple[list[Path], list[dict]]:
    """Expand files and folders (recursive) into image paths, sorted; missing inputs become skips."""
    found: list[Path] = []
    skipped: list[dict] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found.extend(sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES))
        elif p.is_file():
            found.append(p)
        else:
            skipped.append({"path": str(p), "reason": "file not found"})
    return found, skipped


def subsample(paths: list[Path], limit: int) -> list[Path]:
    """Deterministic subsample with a fixed stride (as the reference does for ImageNet)."""
    if len(paths) <= limit:
        return list(paths)
    stride = len(paths) / limit
    return [paths[int(i * stride)] for i in range(limit)]


@dataclass(frozen=True)
class CropGeometry:
    """Where ``preprocess`` takes its crop: resize (w, h) -> (resized_w, resized_h), then
    crop ``width`` x ``height`` at (``left``, ``top``) of the resized image."""

    width_in: int
    height_in: int
    resized_w: int
    resized_h: int
    left: int
    top: int
    width: int
    height: int

    def original_box(self) -> tuple[int, int, int, int]:
        """The crop in original pixel coordinates (x0, y0, x1, y1), rounded to whole pixels."""
        sx, sy = self.resized_w / self.width_in, self.resized_h / self.height_in
        x0, y0 = round(self.left / sx), round(self.top / sy)
        x1 = min(self.width_in, round((self.left + self.width) / sx))
        y1 = min(self.height_in, round((self.top + self.height) / sy))
        return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)

    def to_original(self, box: Sequence[float]) -> tuple[float, float, float, float]:
        """A box (x0, y0, x1, y1) in model-input pixels -> original image pixels."""
        sx, sy = self.resized_w / self.width_in, self.resized_h / self.height_in
        x0, y0, x1, y1 = box
        return ((x0 + self.left) / sx, (y0 + self.top) / sy, (x1 + self.left) / sx, (y1 + self.top) / sy)


def crop_geometry(w: int, h: int, resolution: int, patch_size: int, square: bool) -> CropGeometry:
    """Where ``preprocess`` crops an image of size (w, h)."""
    scale = resolution / min(w, h)
    nw, nh = max(resolution, round(w * scale)), max(resolution, round(h * scale))
    tw, th = (resolution, resolution) if square else (nw, nh)
    tw, th = (tw // patch_size) * patch_size, (th // patch_size) * patch_size
    return CropGeometry(w, h, nw, nh, (nw - tw) // 2, (nh - th) // 2, tw, th)


def preprocess(
    img: Image.Image,
    resolution: int,
    patch_size: int,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    square: bool = False,
) -> torch.Tensor:
    """Resize the short side to ``resolution``, centre-crop (to a square if ``square``) to a
    multiple of the patch size, and normalise. Returns (3, H, W) float32."""
    geo = crop_geometry(*img.size, resolution, patch_size, square)
    if geo.width == 0 or geo.height == 0:
        raise ImageError(f"resolution {resolution} is smaller than the patch size {patch_size}")
    img = img.resize((geo.resized_w, geo.resized_h), Image.BICUBIC)
    img = img.crop((geo.left, geo.top, geo.left + geo.width, geo.top + geo.height))
    arr = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (arr - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def bundled_photos(names: tuple[str, ...] | None = None) -> list[SourceImage]:
    """Photos that ship with scikit-image, as RGB (names from ``skimage.data``)."""
    from skimage import data

    out = []
    for name in names or BUNDLED_TRAIN + BUNDLED_EVAL:
        arr = getattr(data, name)()
        img = to_rgb(Image.fromarray(arr))
        out.append(SourceImage(name=f"skimage:{name}", image=img))
    return out


def image_digest(img: Image.Image) -> str:
    return hashlib.sha1(img.tobytes()).hexdigest()[:12]
