"""Refusals for data on which a task's metric would be meaningless.

A metric that cannot be computed meaningfully (mIoU over a single class, k-NN over one class or
over fewer train images than k, CorLoc over no box, a one-patch grid) is never reported: each
check raises a :class:`~sinder.errors.ConfigError` whose one line names the data and what to pass.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import ConfigError, ImageError
from .datasets import IGNORE, BoxData, SegSplit, load_mask, read_voc_boxes

logger = logging.getLogger(__name__)

SEG_FIX = "pass masks with background and object labels"


def present_classes(masks: Sequence[np.ndarray]) -> list[int]:
    """The labels (other than ignore) that occur in ``masks``, sorted."""
    found: set[int] = set()
    for m in masks:
        found.update(int(v) for v in np.unique(m))
    found.discard(IGNORE)
    return sorted(found)


def _held(classes: Sequence) -> str:
    if not classes:
        return f"only ignore ({IGNORE}) pixels"
    return f"a single class ({classes[0]})"


def require_two(task: str, classes: Sequence[int], folder: Path, need: str, where: str = "") -> None:
    if len(classes) < 2:
        raise ConfigError(f"{task}: the masks in {folder} hold {_held(classes)}{where}; {need} needs at least 2 classes: {SEG_FIX}")


def require_mask_classes(task: str, masks: Sequence[np.ndarray], folder: Path, need: str) -> list[int]:
    """The classes of the usable ``masks`` as evaluated (cropped); refuses fewer than two (``need``: what they are for)."""
    classes = present_classes(masks)
    require_two(task, classes, folder, need, " in the usable images' centre crops")
    return classes


def scan_classes(paths: Sequence[Path], enough: int = 2) -> list[int]:
    """Classes of the mask files, read until ``enough`` are found (usually the first mask);
    undecodable masks are left to the task, which reports them as skips."""
    found: set[int] = set()
    for path in paths:
        try:
            found.update(present_classes([load_mask(path)]))
        except ImageError:
            continue
        if len(found) >= enough:
            break
    return sorted(found)


SEG_NEEDS = {"train": "a linear probe", "val": "mIoU"}


def check_seg_files(task: str, splits: dict[str, SegSplit]) -> None:
    """Before any model runs: refuse splits whose mask files hold fewer than two classes."""
    for name, split in splits.items():
        require_two(task, scan_classes(split.masks), split.masks[0].parent, SEG_NEEDS[name])


def check_box_files(data: BoxData) -> None:
    """Before any model runs: refuse when no annotation holds a usable object box."""
    reasons = []
    for path in data.annotations:
        try:
            read_voc_boxes(path)
            return
        except ImageError as err:
            reasons.append(str(err))
    raise ConfigError(
        f"lost: no annotation in {data.annotations[0].parent} holds a usable object box (e.g. {reasons[0]}); "
        "CorLoc needs Pascal VOC <object><bndbox> entries"
    )


def warn_unseen(task: str, unseen: Sequence, where: str) -> None:
    if unseen:  # kept (scored as misses), but a typo in a folder name should not go unnoticed
        logger.warning("%s: val class(es) %s have no %s and can never be predicted", task, ", ".join(map(str, unseen)), where)


def check_knn_labels(
    root: Path, classes: Sequence[str], train: Sequence[int], val: Sequence[int], ks: Sequence[int], warn: bool = True
) -> None:
    """k-NN top-1 is meaningful only with two train classes, a val class seen in train, and k ≤ the train images."""
    seen = sorted(set(train))
    if len(seen) < 2:
        name = classes[seen[0]] if seen else "none"
        raise ConfigError(
            f"knn: {root}/train holds a single class ({name}); top-1 accuracy needs at least 2 classes: "
            "add a train/CLASS/ folder of images for each class"
        )
    unseen = sorted({classes[i] for i in val} - {classes[i] for i in seen})
    if len(unseen) == len(set(val)):
        raise ConfigError(
            f"knn: no val class of {root} has train images (val: {', '.join(unseen)}; "
            f"train: {', '.join(classes[i] for i in seen)}); "
            "name the class folders alike in train/ and val/"
        )
    too_big = sorted(k for k in set(ks) if k > len(train))
    if too_big:
        raise ConfigError(
            f"knn: {root}/train has {len(train)} images, fewer than k={', '.join(map(str, too_big))}; "
            f"pass --knn-k (EvaluateConfig.knn_ks) with values up to {len(train)}, or add train images"
        )
    if warn:
        warn_unseen("knn", unseen, "train/ images")


def require_grid(task: str, resolution: int, patch_size: int, need: int) -> None:
    """Refuse inputs of fewer than ``need`` patches per side (a constant map or box says nothing)."""
    if resolution // patch_size < need:
        raise ConfigError(
            f"{task}: resolution {resolution} gives {resolution // patch_size} patch(es) per side at patch size "
            f"{patch_size}; {task} needs at least {need * patch_size} px: raise --resolution"
        )


def first_skip(skipped: Sequence[dict]) -> str:
    """``", e.g. PATH: REASON"`` for the first skipped file, to make an all-skipped refusal actionable."""
    if not skipped:
        return ""
    return f", e.g. {Path(skipped[0]['path']).name}: {skipped[0]['reason']}"
