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

Detection, from what is on disk: ``--data`` named ``VOCdevkit`` or ``VOC20XX`` (inside
``VOCdevkit/`` or not), or holding ``VOCdevkit/``, is Pascal VOC; named or holding
``ADEChallengeData2016``, or holding ``images/{training,validation}``, is ADE20K. A folder holding
sinder's own layout (``train/images``, ``val/images``; ``images/`` for lost) is read as before,
whatever its name. A VOCdevkit holding several years gives VOC2012 to the segmentation tasks (the
benchmark year) and is refused for lost and intrinsic (VOC07 and VOC12 are two benchmarks: point at
the one meant). Blank lines of an ImageSets list are ignored; listed files that are missing are
skipped and counted; a missing list file or folder is one line naming the expected layout.

Intrinsic (:func:`intrinsic_images`) reads photos only, never labels: sinder's segmentation layout
gives its ``{train,val}/images/``, Pascal VOC its year's ``JPEGImages/``, ADE20K its
``images/{training,validation}/``, ImageNet-style class folders their ``train/CLASS/*`` and
``val/CLASS/*`` (as ImageFolder lists them); any other folder is a folder of photos, searched
recursively (:func:`.datasets.intrinsic_layout`).
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import SinderError
from .datasets import BoxData, SegSplit, ZeroIgnoredMask, class_folders, image_files, pair_by_stem, read_class_folders

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


VOC_PHOTOS = "Pascal VOC expects VOCdevkit/VOC20XX/JPEGImages/"  # what intrinsic reads of a VOC year


def voc_error(task: str, where: Path, problem: str) -> SinderError:
    return SinderError(f"{where}: {problem}; {VOC_TASKS[task].expects() if task in VOC_TASKS else VOC_PHOTOS}")


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
    if VOC_NAME.fullmatch(root.name):  # inside VOCdevkit/ as it unpacks, or moved out of it
        if root.name not in VOC_YEARS:
            raise voc_error(task, root, f"{root.name} is not a Pascal VOC year torchvision reads (VOC2007 to VOC2012)")
        return root
    devkit = root if root.name == "VOCdevkit" else root / "VOCdevkit"
    return pick_year(task, devkit) if devkit.is_dir() else None


def torchvision_voc(task: str, year_dir: Path, image_set: str) -> tuple[list[Path], list[Path]]:
    """(images, label files) of one image set as torchvision's dataset class lists them (file lists
    only; nothing is downloaded or decoded). torchvision reads a year at ROOT/VOCdevkit/VOC20XX: a
    year folder elsewhere is read through a temporary link placed there, the paths mapped back."""
    from torchvision.datasets.voc import DATASET_YEAR_DICT

    base = Path(DATASET_YEAR_DICT[year_dir.name[3:]]["base_dir"])  # VOCdevkit/VOC2012 (TrainVal/VOCdevkit/VOC2011)
    if year_dir.parts[-len(base.parts) :] == base.parts:
        return _voc_lists(task, year_dir, image_set, year_dir.parents[len(base.parts) - 1], year_dir)
    with tempfile.TemporaryDirectory(prefix="sinder-voc-") as tmp:
        link = Path(tmp) / base
        link.parent.mkdir(parents=True)
        try:
            link.symlink_to(year_dir.resolve(), target_is_directory=True)
        except OSError as err:
            raise voc_error(
                task,
                year_dir,
                f"torchvision reads {year_dir.name} at ROOT/{base.as_posix()} and no link could be made there "
                f"({type(err).__name__}); move it into VOCdevkit/",
            ) from None
        return _voc_lists(task, year_dir, image_set, Path(tmp), link)


def _voc_lists(task: str, year_dir: Path, image_set: str, root: Path, read_at: Path) -> tuple[list[Path], list[Path]]:
    from torchvision.datasets import VOCDetection, VOCSegmentation

    cls = VOCDetection if task == "lost" else VOCSegmentation
    try:
        ds = cls(str(root), year=year_dir.name[3:], image_set=image_set, download=False)
    except (RuntimeError, OSError, ValueError) as err:
        raise voc_error(task, year_dir, f"torchvision cannot read it ({type(err).__name__}: {str(err).splitlines()[0]})") from None
    back = lambda p: year_dir / Path(p).relative_to(read_at)  # noqa: E731
    return [back(p) for p in ds.images], [back(p) for p in (ds.annotations if task == "lost" else ds.masks)]


def voc_files(task: str, year_dir: Path, image_set: str) -> tuple[list[Path], list[Path], list[dict]]:
    """(images, label files, skips) of one image set, in the order of its ImageSets list (blank lines ignored)."""
    t = VOC_TASKS[task]
    listed = f"ImageSets/{t.sets_dir}/{image_set}.txt"
    if not (year_dir / listed).is_file():
        raise voc_error(task, year_dir, f"no {listed}")
    for folder in ("JPEGImages", t.label_dir):
        if not (year_dir / folder).is_dir():
            raise voc_error(task, year_dir, f"no {folder}/ folder")
    listed_images, labels = torchvision_voc(task, year_dir, image_set)
    pairs = [(img, label) for img, label in zip(listed_images, labels) if img.name != ".jpg"]  # a blank line lists id ""
    images, paired, skipped = [], [], []
    for img, label in pairs:
        if not img.is_file():
            skipped.append({"path": str(img), "reason": f"listed in {listed} but not in JPEGImages/"})
        elif not label.is_file():
            skipped.append({"path": str(img), "reason": f"no {t.label_dir}/{label.name}"})
        else:
            images.append(img)
            paired.append(label)
    if not pairs:
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


# -- intrinsic: the photos of a known layout ------------------------------------------------


def intrinsic_images(data_dir: str | os.PathLike) -> list[Path] | None:
    """The photos of a known layout, labels left out (see the module docstring); None when
    ``data_dir`` is no known layout: a plain folder of photos, searched recursively by the caller."""
    root = Path(os.path.abspath(data_dir))
    own = [root / s / "images" for s in ("train", "val") if (root / s / "images").is_dir() and (root / s / "masks").is_dir()]
    if own:
        return _photos(root, "sinder's segmentation layout", own, "masks/ not read")
    year_dir = find_voc("intrinsic", root)
    if year_dir is not None:
        if not (year_dir / "JPEGImages").is_dir():
            raise voc_error("intrinsic", year_dir, "no JPEGImages/ folder")
        return _photos(year_dir, "Pascal VOC", [year_dir / "JPEGImages"], "masks and annotations not read")
    ade = find_ade(root)
    if ade is not None:
        folders = [ade / "images" / sub for sub in ADE_SPLITS.values() if (ade / "images" / sub).is_dir()]
        if not folders:
            raise SinderError(
                f"{ade}: no images/training/ or images/validation/ folder; intrinsic on ADE20K expects {ADE_DIR}/images/{{training,validation}}/"
            )
        return _photos(ade, "ADE20K", folders, "annotations not read")
    splits = [root / s for s in ("train", "val")]
    if all(d.is_dir() and class_folders(d) for d in splits):
        paths = [Path(p) for d in splits for p, _ in read_class_folders(d)[1]]
        return _photos(root, "ImageNet-style class folders", splits, "only train/CLASS/ and val/CLASS/ read", paths)
    return None


def _photos(where: Path, kind: str, folders: list[Path], left_out: str, paths: list[Path] | None = None) -> list[Path]:
    paths = paths if paths is not None else [p for f in folders for p in image_files(f)]
    names = ", ".join(f"{f.relative_to(where).as_posix()}/" for f in folders)
    if not paths:
        raise SinderError(f"{where}: {kind} with no image files in {names}; intrinsic reads the photos there")
    logger.info("intrinsic: %s %s, %d photos of %s (%s)", kind, where, len(paths), names, left_out)
    return paths


# -- dispatch ----------------------------------------------------------------------------


def standard_layout(task: str, data_dir: str | os.PathLike) -> dict[str, SegSplit] | BoxData | list[Path] | None:
    """``task``'s data from a Pascal VOC or ADE20K folder (intrinsic: the photos of any known layout);
    None when ``data_dir`` holds sinder's own layout or no standard one (the caller then reads
    sinder's layout, which names what it expects)."""
    if task == "intrinsic":
        return intrinsic_images(data_dir)
    root = Path(os.path.abspath(data_dir))  # '.' and '..' resolved, symlinked names kept
    if task not in VOC_TASKS or any((root / m).is_dir() for m in SINDER_MARKERS[task]):
        return None
    year_dir = find_voc(task, root)
    if year_dir is not None:
        return voc_layout(task, year_dir)
    ade = find_ade(root) if task in SEG_SPLITS else None
    return ade_layout(task, ade) if ade is not None else None
