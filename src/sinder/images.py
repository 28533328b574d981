"""Image input, one pipeline for every command: robust decoding, the models' preprocessing with
two crop policies (``square`` centre-crops: training and every measurement, see
:data:`sinder.measure.CROP`; ``aspect`` keeps the aspect ratio, for ``analyze --crop aspect`` and
the tasks that need the whole photo), lazy image sets, and the bundled scikit-image photos."""

from __future__ import annotations

import errno
import hashlib
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ConfigError, ImageError

# the resolutions sinder measures at, and the fewest patches per side: fewer than 9 tokens leave
# nothing for the per-image mean + k·std rule to stand out from
MIN_RESOLUTION, MAX_RESOLUTION = 16, 4096
MIN_GRID = 3

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
MIN_SIDE = 16  # smaller images hold less than two patches of information: skip them
MAX_PIXELS = 200_000_000  # larger than any photo; refuses decompression bombs
# A large photo is first shrunk by a whole factor (JPEG: decoded at 1/2..1/8 scale; others: box
# reduce) to no less than this many times the target size, then resized exactly. PIL's documented
# "indistinguishable from fair resampling" gap; smaller downscales (ImageNet -> 518 px) are untouched.
REDUCING_GAP = 3.0

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


def link_problem(path: Path) -> str | None:
    """Why a symlink cannot be read ("dangling symlink", "symlink loop"), or None."""
    if not path.is_symlink():
        return None
    try:
        os.stat(path)
        return None
    except OSError as err:
        return "symlink loop" if err.errno == errno.ELOOP else f"dangling symlink (to {os.readlink(path)})"


def load_image(path: str | os.PathLike) -> Image.Image:
    """Decode ``path`` to RGB or raise ``ImageError`` whose message is the skip reason."""
    return decode_image(path)[0]


def decode_image(path: str | os.PathLike, short_side: int | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """(RGB image, its full (w, h)). With ``short_side`` a JPEG may be decoded at a reduced scale
    (still at least ``REDUCING_GAP`` x ``short_side`` px): a 4096 px photo needs no full decode."""
    p = Path(path)
    problem = link_problem(p)
    if problem:
        raise ImageError(problem)
    if not p.is_file():
        raise ImageError("file not found")
    if p.stat().st_size == 0:
        raise ImageError("empty file")
    try:
        with Image.open(p) as im:
            if im.width * im.height > MAX_PIXELS:
                raise ImageError(f"too large ({im.width}x{im.height} pixels)")
            full = im.size
            if short_side is not None:
                _draft(im, short_side)
            decoded = im.size
            im.load()
            rgb = to_rgb(im)
    except ImageError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError):
        raise ImageError("not an image PIL can decode") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"corrupt or truncated image ({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
    size = full if rgb.size == decoded else full[::-1]  # EXIF rotation swaps the sides
    if min(size) < MIN_SIDE:
        raise ImageError(f"too small ({size[0]}x{size[1]}; need at least {MIN_SIDE} px per side)")
    return rgb, size


def _draft(im: Image.Image, short_side: int) -> None:
    """Let the decoder skip detail the resize would average away (JPEG only; a no-op elsewhere)."""
    scale = REDUCING_GAP * short_side / min(im.size)
    if scale < 0.5:
        im.draft(im.mode, (math.ceil(im.width * scale), math.ceil(im.height * scale)))


def is_image_file(path: Path) -> bool:
    """An image by its suffix, not hidden (``._x.jpg`` resource forks and dotfiles are never images
    here); a broken symlink so named counts, so that it is reported as skipped, not lost."""
    named = path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
    return named and (path.is_file() or link_problem(path) is not None)


def _hidden_below(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def file_identity(path: Path) -> tuple:
    """What makes two paths one image: the same inode (symlinks, hard links, ``a/../a``)."""
    try:
        st = os.stat(path)
    except OSError:  # a broken link is its own entry: two dangling links are two skips
        return ("link", os.path.abspath(path))
    return ("inode", st.st_dev, st.st_ino) if st.st_ino else ("path", os.path.realpath(path))


class _Collector:
    """Image paths in input order, each file once (the first path that reaches it)."""

    def __init__(self) -> None:
        self.found: list[Path] = []
        self.skipped: list[dict] = []
        self.seen: dict[tuple, Path] = {}
        self.repeats: list[tuple[Path, Path]] = []

    def add_input(self, item: str | os.PathLike) -> list[Path]:
        p = Path(item)
        if p.is_dir():
            candidates = sorted(f for f in p.rglob("*") if is_image_file(f) and not _hidden_below(f, p))
        elif p.is_file() or link_problem(p):
            candidates = [p]  # a broken link given by name is skipped with its reason, later
        else:
            self.skipped.append({"path": str(p), "reason": "file not found"})
            return []
        added = []
        for f in candidates:
            key = file_identity(f)
            if key in self.seen:
                self.repeats.append((f, self.seen[key]))
                continue
            self.seen[key] = f
            added.append(f)
        self.found += added
        return added

    def report(self) -> None:
        log.debug("%d image path(s) listed, %d input(s) missing", len(self.found), len(self.skipped))
        if self.repeats:
            again, first = self.repeats[0]
            log.info(
                "%d image path(s) skipped as repeats of a file already listed (e.g. %s, the same file as %s); each file is used once",
                len(self.repeats),
                again,
                first,
            )


def list_images(inputs: Sequence[str | os.PathLike]) -> tuple[list[Path], list[dict]]:
    """Expand files and folders (recursive, sorted) into image paths, each file once; missing inputs become skips."""
    collector = _Collector()
    for item in inputs:
        collector.add_input(item)
    collector.report()
    return collector.found, collector.skipped


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
    """Where ``preprocess`` crops an image of size (w, h), with torchvision's semantics (the
    reference's ``Resize(resolution)`` + ``CenterCrop(resolution)``): the short side becomes
    ``resolution`` and the long side ``int(resolution · long / short)`` (truncated); a square crop
    is centred with ``round(d / 2)`` offsets and trimmed at the bottom/right to a multiple of the
    patch size, as the reference does; an aspect-keeping crop is trimmed evenly on both sides."""
    if w <= h:
        nw, nh = resolution, int(resolution * h / w)
    else:
        nw, nh = int(resolution * w / h), resolution
    if square:
        left, top = int(round((nw - resolution) / 2.0)), int(round((nh - resolution) / 2.0))
        side = (resolution // patch_size) * patch_size
        return CropGeometry(w, h, nw, nh, left, top, side, side)
    tw, th = (nw // patch_size) * patch_size, (nh // patch_size) * patch_size
    return CropGeometry(w, h, nw, nh, (nw - tw) // 2, (nh - th) // 2, tw, th)


def preprocess(
    img: Image.Image,
    resolution: int,
    patch_size: int,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    square: bool = False,
    size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Resize the short side to ``resolution``, centre-crop (to a square if ``square``) to a
    multiple of the patch size, and normalise. Returns (3, H, W) float32.

    ``size``: the full (w, h) when ``img`` was decoded smaller (:func:`decode_image`); the crop
    is the full image's either way. Bit-exact with torchvision below a ``2·REDUCING_GAP`` x downscale."""
    geo = crop_geometry(*(size or img.size), resolution, patch_size, square)
    if geo.width == 0 or geo.height == 0:
        raise ImageError(f"resolution {resolution} is smaller than the patch size {patch_size}")
    img = img.resize((geo.resized_w, geo.resized_h), Image.BICUBIC, reducing_gap=REDUCING_GAP)
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


# ----------------------------------------------------------------------------- image sets

ImageItem = str | os.PathLike | Image.Image | SourceImage | torch.Tensor
Crop = Literal["square", "aspect"]
CACHE_BYTES = 512 * 2**20  # keep decoded pixels when the whole set fits (small sets are cycled many times)


def expand_inputs(inputs: Sequence[ImageItem]) -> tuple[list[ImageItem], list[dict]]:
    """Folders/files -> image paths (recursive, sorted, each file once); in-memory items pass through in order."""
    items: list[ImageItem] = []
    collector = _Collector()
    for item in inputs:
        if isinstance(item, (str, os.PathLike)):
            items.extend(collector.add_input(item))
        elif isinstance(item, (Image.Image, SourceImage, torch.Tensor)):
            items.append(item)
        else:
            raise ImageError(f"unsupported image input {type(item).__name__}; pass paths, PIL images or (3, H, W) tensors")
    collector.report()
    return items, collector.skipped


def item_name(item: ImageItem, index: int) -> str:
    if isinstance(item, SourceImage):
        return item.name
    if isinstance(item, Image.Image):
        return f"image{index}:{image_digest(item)}"
    if isinstance(item, torch.Tensor):
        return f"tensor{index}:{tuple(item.shape)}"
    return str(item)


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


def split_holdout(items: list, num_eval: int) -> tuple[list, list]:
    """Deterministic held-out split: ``num_eval`` items at a fixed stride go to evaluation."""
    if num_eval <= 0 or len(items) < 2:
        return list(items), []
    num_eval = min(num_eval, len(items) - 1)
    stride = len(items) / num_eval
    picked = {int(i * stride + stride / 2) for i in range(num_eval)}
    return [x for i, x in enumerate(items) if i not in picked], [x for i, x in enumerate(items) if i in picked]


@dataclass
class ImageSet:
    """Images preprocessed on demand (decoded lazily: a 30k-image folder is not read up front).

    ``crop``: ``square`` (centre crop, every image the same shape) or ``aspect`` (short side to
    ``resolution``, aspect kept). Unusable images give ``None`` from :meth:`load` and their
    reason in ``skipped``.
    """

    items: list[ImageItem]
    resolution: int
    patch_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop: Crop = "square"
    names: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    sizes: dict[int, tuple[int, int]] = field(default_factory=dict)  # original (w, h) of decoded images
    _cache: dict[int, torch.Tensor | None] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.crop not in ("square", "aspect"):
            raise ValueError(f"crop must be 'square' or 'aspect', got {self.crop!r}")
        if not self.names:
            self.names = [item_name(x, i) for i, x in enumerate(self.items)]

    @classmethod
    def from_inputs(
        cls, inputs: Sequence[ImageItem], backbone, resolution: int, crop: Crop = "square", limit: int | None = None
    ) -> ImageSet:
        items, missing = expand_inputs(inputs)
        if limit is not None:
            items = subsample(items, limit)
        out = cls(items, resolution, backbone.patch_size, tuple(backbone.mean), tuple(backbone.std), crop)
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
        """(3, H, W) float32 pixels, or None when the image is unusable (reason in ``skipped``)."""
        if index in self._cache:
            return self._cache[index]
        item, name = self.items[index], self.names[index]
        try:
            px = self._check_tensor(item) if isinstance(item, torch.Tensor) else self._preprocess(index, item)
        except ImageError as err:
            if name not in self.skipped:
                log.warning("skipping %s: %s", name, err)
            self.skipped[name] = str(err)
            px = None
        if len(self.items) * 3 * 4 * self.resolution**2 <= CACHE_BYTES:
            self._cache[index] = px
        return px

    def _preprocess(self, index: int, item: ImageItem) -> torch.Tensor:
        if isinstance(item, (SourceImage, Image.Image)):
            img = item.image if isinstance(item, SourceImage) else item
            size = img.size
        else:
            img, size = decode_image(item, short_side=self.resolution)
        self.sizes[index] = size
        return preprocess(img, self.resolution, self.patch_size, self.mean, self.std, square=self.crop == "square", size=size)

    def _check_tensor(self, t: torch.Tensor) -> torch.Tensor:
        if t.ndim != 3 or t.shape[0] != 3 or t.shape[1] % self.patch_size or t.shape[2] % self.patch_size:
            raise ImageError(f"tensor of shape {tuple(t.shape)} is not (3, H, W) with H, W multiples of {self.patch_size}")
        return t.float()

    def usable(self) -> list[int]:
        """Indices of the images that decode (decoding each once)."""
        return [i for i in range(len(self)) if self.load(i) is not None]

    def any_usable(self) -> bool:
        """Whether some image decodes; stops at the first that does (a large set is not read up front)."""
        return any(self.load(i) is not None for i in range(len(self)))

    def batches(self, batch_size: int, progress: bool = False, desc: str = "images") -> Iterator[tuple[list[int], torch.Tensor]]:
        """(indices, stacked pixels) of usable images, same-shape images together, input order within a shape.

        ``progress``: a bar, drawn only on a terminal (:func:`sinder.progress.progress_bar`); an
        image counts once its batch has been used, so the bar never sits ahead of the work."""
        from .progress import progress_bar

        pending: dict[tuple, list[tuple[int, torch.Tensor]]] = {}
        bar = progress_bar(progress, total=len(self), desc=desc, unit="img", leave=False)
        try:
            for i in range(len(self)):
                px = self.load(i)
                if px is None:
                    bar.update(1)
                    continue
                group = pending.setdefault(tuple(px.shape), [])
                group.append((i, px))
                if len(group) == batch_size:
                    yield [k for k, _ in group], torch.stack([p for _, p in group])
                    bar.update(len(group))
                    group.clear()
            for group in pending.values():
                if group:
                    yield [k for k, _ in group], torch.stack([p for _, p in group])
                    bar.update(len(group))
        finally:
            bar.close()


def pca_rgb(tokens: torch.Tensor) -> np.ndarray:
    """(h, w, D) -> (h, w, 3) uint8: the three leading principal components, each min-max scaled."""
    h, w, d = tokens.shape
    flat = tokens.reshape(-1, d).double()
    flat = flat - flat.mean(dim=0)
    _, _, vh = torch.linalg.svd(flat, full_matrices=False)
    comps = flat @ vh[:3].T
    lo, hi = comps.min(dim=0).values, comps.max(dim=0).values
    scaled = (comps - lo) / (hi - lo).clamp_min(1e-12) * 255.0
    out = np.zeros((h * w, 3), dtype=np.uint8)
    out[:, : scaled.shape[1]] = scaled.round().clamp(0, 255).byte().cpu().numpy()
    return out.reshape(h, w, 3)


def denormalise(pixels: torch.Tensor, mean, std) -> np.ndarray:
    img = pixels.float().cpu() * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
    return (img.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


def check_grid(resolution: int, patch_size: int, flag: str = "--resolution") -> None:
    """Refuse a resolution whose grid is too small for the per-image defect rule (< MIN_GRID
    patches per side); the range itself is checked with the options (:mod:`sinder.options`)."""
    if resolution // patch_size < MIN_GRID:
        raise ConfigError(
            f"{flag} must be between {MIN_GRID * patch_size} and {MAX_RESOLUTION} px for {patch_size} px patches "
            f"(at least {MIN_GRID} per side) (got {resolution})"
        )
