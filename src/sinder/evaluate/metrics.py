"""Segmentation and detection metrics: confusion matrix, mIoU, pixel accuracy, Hungarian matching, box IoU."""

from __future__ import annotations

import numpy as np

IGNORE = 255


def confusion_matrix(gt: np.ndarray, pred: np.ndarray, num_classes: int, ignore: int = IGNORE) -> np.ndarray:
    """(num_classes, num_classes) counts, rows = ground truth, columns = prediction; ``ignore`` pixels dropped."""
    gt = np.asarray(gt).ravel().astype(np.int64)
    pred = np.asarray(pred).ravel().astype(np.int64)
    keep = gt != ignore
    gt, pred = gt[keep], pred[keep]
    if gt.size and (gt.max() >= num_classes or pred.min() < 0 or pred.max() >= num_classes):
        raise ValueError(f"labels outside [0, {num_classes})")
    return np.bincount(gt * num_classes + pred, minlength=num_classes**2).reshape(num_classes, num_classes)


def miou(conf: np.ndarray) -> float:
    """Mean IoU over the classes present in the ground truth or the prediction."""
    conf = np.asarray(conf, dtype=np.float64)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    present = union > 0
    if not present.any():
        return float("nan")
    return float((tp[present] / union[present]).mean())


def pixel_accuracy(conf: np.ndarray) -> float:
    conf = np.asarray(conf, dtype=np.float64)
    total = conf.sum()
    return float(np.trace(conf) / total) if total > 0 else float("nan")


def hungarian_mapping(conf: np.ndarray) -> np.ndarray:
    """Cluster -> label map maximising matched pixels; ``conf`` is (labels, clusters).

    Clusters left unmatched (more clusters than labels) map to -1."""
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(np.asarray(conf), maximize=True)
    mapping = np.full(conf.shape[1], -1, dtype=np.int64)
    mapping[cols] = rows
    return mapping


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU between boxes (n, 4) and (m, 4) in (x0, y0, x1, y1) -> (n, m)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    ix0 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy0 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix1 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ix1 - ix0, 0, None) * np.clip(iy1 - iy0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def corloc(pred_boxes: list[np.ndarray], gt_boxes: list[np.ndarray], threshold: float = 0.5) -> float:
    """Fraction of images whose predicted box has IoU >= ``threshold`` with any ground-truth box."""
    if not pred_boxes:
        return float("nan")
    hits = [bool((box_iou(p, g) >= threshold).any()) for p, g in zip(pred_boxes, gt_boxes)]
    return float(np.mean(hits))
