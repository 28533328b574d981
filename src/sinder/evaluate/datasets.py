"""Dataset layouts for the evaluation tasks, and their label readers (masks, VOC boxes).

sinder's own layouts (a wrong one is a ``SinderError`` naming the expected layout):
    knn:                 DIR/{train,val}/CLASS/* (ImageNet's class folders, read by torchvision's ImageFolder)
    linear-seg:          DIR/{train,val}/images/* + DIR/{train,val}/masks/STEM.png
    unsup-seg:           DIR/val/images/* + DIR/val/masks/STEM.png (train is not used)
    lost:                DIR/images/* + DIR/annotations/STEM.xml (Pascal VOC boxes)
    intrinsic:           any folder of images (recursive); the photos only of a known layout
                         (:func:`.layouts.intrinsic_images`: never masks or annotations)
Pascal VOC and ADE20K as they unpack are read by :mod:`.layouts`. Files whose suffix is not an
image suffix are ignored; images without labels are skipped and counted.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import ImageError, SinderError
from ..images import is_image_file

IGNORE = 255

LAYOUTS = {
    "knn": "DIR/train/CLASS/* and DIR/val/CLASS/* (one sub-folder of images per class, as ImageNet unpacks)",
    "linear-seg": "DIR/{train,val}/images/* and DIR/{train,val}/masks/STEM.png (index or VOC palette PNG, 255 = ignore), "
    "or a Pascal VOC (VOCdevkit/VOC20XX) or ADE20K (ADEChallengeData2016) root",
    "unsup-seg": "DIR/val/images/* and DIR/val/masks/STEM.png (index or VOC palette PNG, 255 = ignore), "
    "or a Pascal VOC (VOCdevkit/VOC20XX) or ADE20K (ADEChallengeData2016) root",
    "lost": "DIR/images/* and DIR/annotations/STEM.xml (Pascal VOC boxes), or a Pascal VOC root (VOCdevkit/VOC20XX)",
    "intrinsic": "a folder holding images (searched recursively), or a dataset root of which only the photos are read: "
    "Pascal VOC (VOC20XX/JPEGImages), ADE20K (images/), class folders ({train,val}/CLASS/*) or sinder's {train,val}/images",
}


def layout_error(task: str, root: Path, problem: str) -> SinderError:
    return SinderError(f"{root}: {problem}; {task} expects {LAYOUTS[task]}")


def image_files(folder: Path, recursive: bool = False) -> list[Path]:
    it = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in it if is_image_file(p))


# -- knn ---------------------------------------------------------------------------------


def pair_by_stem(img_dir: Path, side_dir: Path, suffix: str, reason: str) -> tuple[list[Path], list[Path], list[dict]]:
    """Images of ``img_dir`` with the ``side_dir`` file of the same stem; the others as skips."""
    sides = {p.stem: p for p in side_dir.iterdir() if p.is_file() and p.suffix.lower() == suffix}
    images, paired, skipped = [], [], []
    for p in image_files(img_dir):
        if p.stem in sides:
            images.append(p)
            paired.append(sides[p.stem])
        else:
            skipped.append({"path": str(p), "reason": reason.format(stem=p.stem)})
    return images, paired, skipped


@dataclass
class LabelledImages:
    paths: list[Path]
    labels: list[int]


@dataclass
class KnnData:
    classes: list[str]
    train: LabelledImages
    val: LabelledImages
    root: Path = Path(".")


def class_folders(folder: Path) -> list[Path]:
    """The class sub-folders of a split (hidden ones, e.g. ``.ipynb_checkpoints``, are not classes)."""
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def read_class_folders(folder: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """(class names, (path, class index) samples) of ``folder``/CLASS/**, as torchvision's
    ImageFolder lists them, with sinder's image-suffix rule. Empty class folders are kept here so
    that the caller can name them."""
    from torchvision.datasets import ImageFolder

    class Listing(ImageFolder):
        def find_classes(self, directory):
            names = [d.name for d in class_folders(Path(directory))]
            return names, {n: i for i, n in enumerate(names)}

    listing = Listing(str(folder), is_valid_file=lambda p: is_image_file(Path(p)), allow_empty=True)
    return list(listing.classes), list(listing.samples)


def knn_layout(root: Path) -> KnnData:
    """DIR/{train,val}/CLASS/* (also torchvision's ImageNet layout, without its devkit files).
    Class ids: the train classes in sorted order, then val-only classes (they can never be predicted)."""
    classes: list[str] = []
    splits = {}
    for split in ("train", "val"):
        folder = root / split
        if not folder.is_dir():
            raise layout_error("knn", root, f"no {split}/ folder")
        if not class_folders(folder):
            raise layout_error("knn", root, f"{split}/ has no class sub-folders")
        names, samples = read_class_folders(folder)
        empty = sorted(set(names) - {names[i] for _, i in samples})
        if empty:
            raise layout_error("knn", root, f"{split}/ class folder(s) {', '.join(empty)} hold no images")
        classes += [n for n in names if n not in classes]
        ids = [classes.index(n) for n in names]  # this split's class index -> the shared id
        splits[split] = LabelledImages([Path(p) for p, _ in samples], [ids[i] for _, i in samples])
    return KnnData(classes, splits["train"], splits["val"], root)  # checked by checks.check_knn_labels


# -- segmentation ------------------------------------------------------------------------


class ZeroIgnoredMask(type(Path())):  # type: ignore[misc]  # the concrete Path class (PosixPath here)
    """A mask path whose label 0 means "other" (ignored) and whose classes 1..254 read as 0..253.

    ADE20K's annotations are stored that way; mmseg's ``reduce_zero_label`` and the DINOv2 linear
    protocol evaluate 150 classes 0..149 with "other" ignored, and so does :func:`load_mask` for
    such a path. The type carries the rule, so every reader of ``SegSplit.masks`` applies it."""

    __slots__ = ()


REDUCE_ZERO_LABEL = (np.arange(256) - 1).astype(np.uint8)  # k -> k - 1, and 0 wraps to 255 = ignore
REDUCE_ZERO_LABEL[IGNORE] = IGNORE


@dataclass
class SegSplit:
    images: list[Path]
    masks: list[Path]  # a ZeroIgnoredMask reads with ADE20K's label shift
    skipped: list[dict] = field(default_factory=list)


def seg_layout(root: Path, task: str, splits: tuple[str, ...]) -> dict[str, SegSplit]:
    out = {}
    for split in splits:
        img_dir, mask_dir = root / split / "images", root / split / "masks"
        if not img_dir.is_dir() or not mask_dir.is_dir():
            raise layout_error(task, root, f"no {split}/images/ and {split}/masks/ folders")
        s = SegSplit(*pair_by_stem(img_dir, mask_dir, ".png", f"no mask {split}/masks/{{stem}}.png"))
        if not s.images:
            raise layout_error(task, root, f"{split}/ has no image with a matching mask")
        out[split] = s
    return out


def voc_colormap(n: int = 256) -> np.ndarray:
    """The Pascal VOC palette: (n, 3) uint8, class index -> colour (255 -> the ignore colour)."""
    cmap = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap[i] = (r, g, b)
    return cmap


def load_mask(path: Path) -> np.ndarray:
    """Class-index mask (H, W) uint8 from an index PNG, a palette PNG (its indices) or an RGB PNG
    in the VOC palette; raises ``ImageError`` (the skip reason) otherwise. A :class:`ZeroIgnoredMask`
    gets ADE20K's shift (0 -> ignore, k -> k - 1)."""
    mask = _read_mask(path)
    return REDUCE_ZERO_LABEL[mask] if isinstance(path, ZeroIgnoredMask) else mask


def _read_mask(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in ("P", "L"):
                return np.array(im, dtype=np.uint8)
            if mode in ("I", "I;16", "I;16B", "I;16L"):
                arr = np.array(im)
                if arr.max() > 255:
                    raise ImageError(f"mask values above 255 in {path.name}")
                return arr.astype(np.uint8)
            if mode in ("RGB", "RGBA"):
                rgb = np.array(im.convert("RGB"), dtype=np.int64)
    except ImageError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"mask {path.name} cannot be decoded ({type(err).__name__})") from None
    if mode not in ("RGB", "RGBA"):
        raise ImageError(f"mask {path.name} has unsupported mode {mode}; use an index or palette PNG")
    codes = voc_colormap().astype(np.int64) @ np.array([65536, 256, 1])
    lookup = {int(c): i for i, c in enumerate(codes)}
    flat = rgb @ np.array([65536, 256, 1])
    uniq, inverse = np.unique(flat, return_inverse=True)
    missing = [u for u in uniq if int(u) not in lookup]
    if missing:
        raise ImageError(f"RGB mask {path.name} has colours outside the VOC palette; use an index PNG")
    return np.array([lookup[int(u)] for u in uniq], dtype=np.uint8)[inverse].reshape(rgb.shape[:2])


# -- LOST --------------------------------------------------------------------------------


@dataclass
class BoxData:
    images: list[Path]
    annotations: list[Path]
    skipped: list[dict] = field(default_factory=list)


def lost_layout(root: Path) -> BoxData:
    img_dir, ann_dir = root / "images", root / "annotations"
    if not img_dir.is_dir() or not ann_dir.is_dir():
        raise layout_error("lost", root, "no images/ and annotations/ folders")
    data = BoxData(*pair_by_stem(img_dir, ann_dir, ".xml", "no annotation annotations/{stem}.xml"))
    if not data.images:
        raise layout_error("lost", root, "no image has a matching annotation")
    return data


def read_voc_boxes(path: Path) -> np.ndarray:
    """Object boxes (n, 4) as float (x0, y0, x1, y1) in pixels; VOC's 1-based xmin/ymin become 0-based."""
    try:
        root = ET.parse(path).getroot()
        boxes = []
        for obj in root.iter("object"):
            bb = obj.find("bndbox")
            if bb is None:
                continue
            x0, y0, x1, y1 = (float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
            boxes.append((x0 - 1.0, y0 - 1.0, x1, y1))
    except (ET.ParseError, TypeError, ValueError, OSError) as err:
        raise ImageError(f"annotation {path.name} is not a readable VOC file ({type(err).__name__})") from None
    if not boxes:
        raise ImageError(f"annotation {path.name} has no object box")
    if any(x1 <= x0 or y1 <= y0 for x0, y0, x1, y1 in boxes):
        raise ImageError(f"annotation {path.name} has a box with xmax < xmin or ymax < ymin")
    return np.asarray(boxes, dtype=np.float64)


# -- intrinsic ---------------------------------------------------------------------------


def intrinsic_layout(root: Path) -> list[Path]:
    if not root.is_dir():
        raise layout_error("intrinsic", root, "not a folder")
    paths = image_files(root, recursive=True)
    if not paths:
        raise layout_error("intrinsic", root, "no image files")
    return paths
