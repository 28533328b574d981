"""Standard dataset layouts, read exactly as they unpack, beside sinder's own (:mod:`.datasets`).

Pascal VOC: torchvision's ``VOCSegmentation`` / ``VOCDetection`` (always ``download=False``)
compute the file lists from ``ImageSets``; ADE20K: torchvision has no class for it, so images and
annotations are paired by stem. Only the file lists come from here: images and masks are decoded
and preprocessed by sinder's one pipeline, so every layout is evaluated alike. ImageNet-style
class folders are sinder's own knn layout (:func:`.datasets.knn_layout`, through ImageFolder).

    task        Pascal VOC: VOCdevkit/VOC20XX/...                        ADE20K: ADEChallengeData2016/...
    linear-seg  ImageSets/Segmentation/train.txt (probe), val.txt (mIoU)  {images,annotations}/training (probe),
                + JPEGImages/STEM.jpg, SegmentationClass/STEM.png          validation (mIoU)
    unsup-seg   ImageSets/Segmentation/val.txt                          {images,annotations}/validation
    lost        ImageSets/Main/trainval.txt + Annotations/STEM.xml      -

Labels: VOC's palette masks hold 0 = background, 1..20 = classes, 255 = boundary (ignored). ADE20K's
label 0 is "other": it is ignored and classes 1..150 become 0..149, as mmseg's
``reduce_zero_label`` and the DINOv2 linear protocol do (:class:`.datasets.ZeroIgnoredMask`).
LOST reads VOC07 trainval or VOC12 trainval, the two published LOST/CorLoc sets.

Detection, from what is on disk: ``--data`` named ``VOCdevkit`` or ``VOC20XX``, or holding
``VOCdevkit/``, is Pascal VOC; named or holding ``ADEChallengeData2016``, or holding
``images/{training,validation}``, is ADE20K. A folder holding sinder's own layout (``train/images``,
``val/images``; ``images/`` for lost) is read as before, whatever its name. A VOCdevkit holding
several years gives VOC2012 to the segmentation tasks (the benchmark year) and is refused for lost
(VOC07 and VOC12 are two benchmarks: point at the one meant). Listed files that are missing are
skipped and counted; a missing list file or folder is one line naming the expected layout.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import SinderError
from .datasets import BoxData, SegSplit, ZeroIgnoredMask, pair_by_stem

logger = logging.getLogger(__name__)

VOC_YEARS = tuple(f"VOC{y}" for y in range(2007, 2013))  # the years torchvision's VOC classes read
VOC_NAME = re.compile(r"VOC\d{4}")
SEG_YEAR = "VOC2012"  # the segmentation benchmark year (DINOv2's linear VOC numbers)
ADE_DIR = "ADEChallengeData2016"
ADE_SPLITS = {"train": "training", "val": "validation"}
SEG_SPLITS = {"linear-seg": ("train", "val"), "unsup-seg": ("val",)}
SINDER_MARKERS = {"linear-seg": ("train/images", "val/images"), "unsup-seg": ("val/images",), "lost": ("images",)}


@dataclass(frozen=True)
class VocTask:
    """What a task reads from a VOC year: the ImageSets sub-folder, our split -> VOC image set, the label folder."""

    sets_dir: str
    image_sets: dict[str, str]
    label_dir: str

    def expects(self) -> str:
        sets = list(self.image_sets.values())
        names = sets[0] if len(sets) == 1 else "{" + ",".join(sets) + "}"
        return f"Pascal VOC expects VOCdevkit/VOC20XX/{{ImageSets/{self.sets_dir}/{names}.txt, JPEGImages/, {self.label_dir}/}}"


VOC_TASKS = {
    "linear-seg": VocTask("Segmentation", {"train": "train", "val": "val"}, "SegmentationClass"),
    "unsup-seg": VocTask("Segmentation", {"val": "val"}, "SegmentationClass"),
    "lost": VocTask("Main", {"trainval": "trainval"}, "Annotations"),
}


def voc_error(task: str, where: Path, problem: str) -> SinderError:
    return SinderError(f"{where}: {problem}; {VOC_TASKS[task].expects()}")


def ade_error(task: str, where: Path, problem: str) -> SinderError:
    subs = [ADE_SPLITS[s] for s in SEG_SPLITS[task]]
    names = subs[0] if len(subs) == 1 else "{" + ",".join(subs) + "}"
    return SinderError(f"{where}: {problem}; ADE20K expects {ADE_DIR}/{{images,annotations}}/{names}/ (STEM.jpg beside STEM.png)")


# -- Pascal VOC --------------------------------------------------------------------------


def pick_year(task: str, devkit: Path) -> Path:
    """The VOC20XX folder of ``devkit`` that ``task`` reads (see the module docstring)."""
    found = sorted(d.name for d in devkit.iterdir() if d.is_dir() and VOC_NAME.fullmatch(d.name))
    if not found:
        raise voc_error(task, devkit, "no VOC20XX folder")
    years = [y for y in found if y in VOC_YEARS]
    if not years:
        raise voc_error(task, devkit, f"{', '.join(found)} is not a Pascal VOC year torchvision reads (VOC2007 to VOC2012)")
    if len(years) == 1:
        return devkit / years[0]
    if task in SEG_SPLITS and SEG_YEAR in years:
        logger.info("%s holds %s: %s reads %s", devkit, ", ".join(years), task, SEG_YEAR)
        return devkit / SEG_YEAR
    raise voc_error(task, devkit, f"holds {', '.join(years)}; pass --data {devkit}/VOC20XX for the year to evaluate")


def find_voc(task: str, root: Path) -> Path | None:
    """The VOC20XX folder that ``root`` (a dataset root, its VOCdevkit, or VOC20XX itself) names; None if not VOC."""
    if VOC_NAME.fullmatch(root.name):
        if root.name not in VOC_YEARS:
            raise voc_error(task, root, f"{root.name} is not a Pascal VOC year torchvision reads (VOC2007 to VOC2012)")
        if root.parent.name != "VOCdevkit":
            raise voc_error(task, root, "a VOC20XX folder is read where it unpacks, inside VOCdevkit/")
        return root
    devkit = root if root.name == "VOCdevkit" else root / "VOCdevkit"
    return pick_year(task, devkit) if devkit.is_dir() else None


def torchvision_voc(task: str, year_dir: Path, image_set: str):
    """torchvision's dataset object for one image set (file lists only; nothing is downloaded or decoded)."""
    from torchvision.datasets import VOCDetection, VOCSegmentation
    from torchvision.datasets.voc import DATASET_YEAR_DICT

    year = year_dir.name[3:]
    base = Path(DATASET_YEAR_DICT[year]["base_dir"])  # VOCdevkit/VOC2012 (TrainVal/VOCdevkit/VOC2011)
    if year_dir.parts[-len(base.parts) :] != base.parts:
        raise voc_error(task, year_dir, f"torchvision reads VOC{year} at ROOT/{base.as_posix()}")
    cls = VOCDetection if task == "lost" else VOCSegmentation
    try:
        return cls(str(year_dir.parents[len(base.parts) - 1]), year=year, image_set=image_set, download=False)
    except (RuntimeError, OSError, ValueError) as err:
        raise voc_error(task, year_dir, f"torchvision cannot read it ({type(err).__name__}: {str(err).splitlines()[0]})") from None


def voc_files(task: str, year_dir: Path, image_set: str) -> tuple[list[Path], list[Path], list[dict]]:
    """(images, label files, skips) of one image set, in the order of its ImageSets list."""
    t = VOC_TASKS[task]
    listed = f"ImageSets/{t.sets_dir}/{image_set}.txt"
    if not (year_dir / listed).is_file():
        raise voc_error(task, year_dir, f"no {listed}")
    for folder in ("JPEGImages", t.label_dir):
        if not (year_dir / folder).is_dir():
            raise voc_error(task, year_dir, f"no {folder}/ folder")
    ds = torchvision_voc(task, year_dir, image_set)
    labels = ds.annotations if task == "lost" else ds.masks
    images, paired, skipped = [], [], []
    for img, label in zip(map(Path, ds.images), map(Path, labels)):
        if not img.is_file():
            skipped.append({"path": str(img), "reason": f"listed in {listed} but not in JPEGImages/"})
        elif not label.is_file():
            skipped.append({"path": str(img), "reason": f"no {t.label_dir}/{label.name}"})
        else:
            images.append(img)
            paired.append(label)
    if not ds.images:
        raise voc_error(task, year_dir, f"{listed} lists no image")
    if not images:
        raise voc_error(task, year_dir, f"no image listed in {listed} has both JPEGImages/STEM.jpg and {t.label_dir}/STEM")
    return images, paired, skipped


def voc_layout(task: str, year_dir: Path) -> dict[str, SegSplit] | BoxData:
    sets = VOC_TASKS[task].image_sets
    files = {split: voc_files(task, year_dir, image_set) for split, image_set in sets.items()}
    counts = ", ".join(f"{sets[s]} {len(f[0])} images ({len(f[2])} skipped)" for s, f in files.items())
    logger.info("%s: Pascal VOC %s, %s", task, year_dir, counts)
    if task == "lost":
        return BoxData(*files["trainval"])
    return {split: SegSplit(*f) for split, f in files.items()}


# -- ADE20K ------------------------------------------------------------------------------


def find_ade(root: Path) -> Path | None:
    """The ADEChallengeData2016 folder that ``root`` is or holds; None if ``root`` is not ADE20K."""
    if root.name == ADE_DIR:
        return root
    if (root / ADE_DIR).is_dir():
        return root / ADE_DIR
    return root if any((root / "images" / s).is_dir() for s in ADE_SPLITS.values()) else None


def ade_layout(task: str, ade: Path) -> dict[str, SegSplit]:
    out = {}
    for split in SEG_SPLITS[task]:
        sub = ADE_SPLITS[split]
        for folder in ("images", "annotations"):
            if not (ade / folder / sub).is_dir():
                raise ade_error(task, ade, f"no {folder}/{sub}/ folder")
        images, masks, skipped = pair_by_stem(ade / "images" / sub, ade / "annotations" / sub, ".png", f"no annotations/{sub}/{{stem}}.png")
        if not images:
            raise ade_error(task, ade, f"no image of images/{sub}/ has its annotations/{sub}/STEM.png")
        out[split] = SegSplit(images, [ZeroIgnoredMask(m) for m in masks], skipped)
    counts = ", ".join(f"{ADE_SPLITS[s]} {len(v.images)} images ({len(v.skipped)} skipped)" for s, v in out.items())
    logger.info("%s: ADE20K %s (label 0 ignored, 1..150 -> 0..149), %s", task, ade, counts)
    return out


# -- dispatch ----------------------------------------------------------------------------


def standard_layout(task: str, data_dir: str | os.PathLike) -> dict[str, SegSplit] | BoxData | None:
    """``task``'s data from a Pascal VOC or ADE20K folder; None when ``data_dir`` holds sinder's own
    layout or no standard one (the caller then reads sinder's layout, which names what it expects)."""
    root = Path(os.path.abspath(data_dir))  # '.' and '..' resolved, symlinked names kept
    if task not in VOC_TASKS or any((root / m).is_dir() for m in SINDER_MARKERS[task]):
        return None
    year_dir = find_voc(task, root)
    if year_dir is not None:
        return voc_layout(task, year_dir)
    ade = find_ade(root) if task in SEG_SPLITS else None
    return ade_layout(task, ade) if ade is not None else None
