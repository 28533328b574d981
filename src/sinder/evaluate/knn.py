"""Weighted k-NN classification on frozen features (DINOv2's protocol).

Features are L2-normalised; a val image's k nearest train images by cosine similarity vote for
their class with weight exp(sim / T), T = 0.07; the prediction is the class with the largest
summed vote. :func:`knn_votes` caps k by the train-set size; the task refuses a k larger than
the train set, a single train class, or val classes none of which is in train (the accuracy would
not measure the features).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..backbones.base import Backbone
from ..errors import SinderError
from .checks import check_knn_labels
from .config import EvaluateConfig
from .datasets import KnnData
from .features import Extraction, extract_features

SIM_BUDGET = 1 << 26  # similarity entries per query chunk (256 MB in fp32)


def knn_votes(
    train: torch.Tensor,
    train_labels: torch.Tensor,
    query: torch.Tensor,
    k: int,
    num_classes: int,
    temperature: float = 0.07,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Summed class votes (n_query, num_classes) of the k nearest train features."""
    train = F.normalize(train.float().to(device), dim=-1)
    query = F.normalize(query.float(), dim=-1)
    train_labels = train_labels.to(device)
    k = min(k, train.shape[0])
    chunk = max(1, SIM_BUDGET // train.shape[0])  # bounds the (chunk, n_train) similarity block
    out = []
    for q in query.split(chunk):
        sim, idx = (q.to(device) @ train.T).topk(k, dim=1)
        weights = (sim / temperature).exp()
        votes = torch.zeros(q.shape[0], num_classes, dtype=weights.dtype, device=device)
        votes.scatter_add_(1, train_labels[idx], weights)
        out.append(votes.cpu())
    return torch.cat(out)


def knn_top1(
    train: torch.Tensor,
    train_labels: torch.Tensor,
    query: torch.Tensor,
    query_labels: torch.Tensor,
    ks: tuple[int, ...] = (10, 20, 100, 200),
    temperature: float = 0.07,
    num_classes: int | None = None,
) -> dict[int, float]:
    """Top-1 accuracy (fraction) for each k, computed on ``train``'s device."""
    device = train.device
    if num_classes is None:
        num_classes = int(max(train_labels.max(), query_labels.max())) + 1
    result = {}
    for k in ks:
        pred = knn_votes(train, train_labels, query, k, num_classes, temperature, device).argmax(dim=1)
        result[k] = float((pred == query_labels).float().mean())
    return result


def knn_task(backbone: Backbone, data: KnnData, run: Extraction, config: EvaluateConfig) -> tuple[dict[str, float | None], dict]:
    """k-NN top-1 on CLS tokens (``top1@k``) and on mean-pooled patch tokens (``patch_top1@k``),
    with the config's ``knn_ks`` and ``knn_temperature``."""
    ks = config.knn_ks
    feats = {}
    labels = {}
    skipped: list[dict] = []
    for split in ("train", "val"):
        part = getattr(data, split)
        f = extract_features(backbone, part.paths, run, want=("cls", "patch_mean"), desc=split)
        if not f.kept:
            raise SinderError(f"knn: no {split} image could be decoded ({len(f.skipped)} skipped); check {split}/")
        feats[split] = f
        labels[split] = torch.tensor([part.labels[i] for i in f.kept])
        skipped += f.skipped
    check_knn_labels(data.root, data.classes, labels["train"].tolist(), labels["val"].tolist(), ks, warn=False)
    num_classes = len(data.classes)
    metrics: dict[str, float | None] = {}
    cls_ok = feats["train"].cls is not None and feats["val"].cls is not None
    for prefix, get in (("", lambda f: f.cls), ("patch_", lambda f: f.patch_mean)):
        if prefix == "" and not cls_ok:
            metrics.update({f"top1@{k}": None for k in ks})  # the model has no CLS token
            continue
        train = get(feats["train"]).to(backbone.device)
        top1 = knn_top1(train, labels["train"], get(feats["val"]), labels["val"], ks, config.knn_temperature, num_classes)
        metrics.update({f"{prefix}top1@{k}": v for k, v in top1.items()})
    info = {
        "num_images": {"train": len(feats["train"].kept), "val": len(feats["val"].kept)},
        "num_classes": num_classes,
        "skipped": skipped,
    }
    return metrics, info
