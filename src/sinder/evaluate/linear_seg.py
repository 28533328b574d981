"""Linear semantic segmentation probe on frozen patch tokens.

A 1x1 linear layer (on per-channel standardised final-normed patch tokens) is trained with
cross-entropy (Adam, zero init, seeded mini-batches) against the train masks; its logits are
bilinearly upsampled to the label size. Training labels are the masks cropped and resized like
the images, then subsampled (nearest) to 4 cells per patch side to keep training cheap;
validation is at the masks' own resolution (the image's centre crop, in original pixels). mIoU is over classes present in ground truth or prediction; 255 is ignored.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..backbones.base import Backbone
from ..errors import ImageError, SinderError
from ..images import crop_geometry
from .checks import first_skip, require_mask_classes, warn_unseen
from .config import EvaluateConfig
from .datasets import IGNORE, SegSplit, load_mask
from .features import Extraction, extract_features
from .metrics import confusion_matrix, miou, pixel_accuracy

logger = logging.getLogger(__name__)

LABEL_FACTOR = 4  # training-label cells per patch side


@dataclass
class SegFeatures:
    patches: torch.Tensor  # (n, h, w, D)
    input_labels: list[np.ndarray]  # masks cropped/resized like the model input (H, W)
    eval_labels: list[np.ndarray]  # masks at their own resolution, centre crop
    skipped: list[dict] = field(default_factory=list)

    @property
    def max_label(self) -> int:
        vals = [int(m[m != IGNORE].max()) for m in self.eval_labels + self.input_labels if (m != IGNORE).any()]
        return max(vals, default=-1)


def load_split(backbone: Backbone, split: SegSplit, run: Extraction, desc: str) -> SegFeatures:
    """Patch tokens and aligned masks of one split; undecodable images or masks are skipped."""
    feats = extract_features(backbone, split.images, run, want=("patches",), desc=desc)
    skipped = list(split.skipped) + feats.skipped
    keep_rows, input_labels, eval_labels = [], [], []
    for row, (i, (w, h)) in enumerate(zip(feats.kept, feats.sizes)):
        try:
            mask = load_mask(split.masks[i])
            if mask.shape != (h, w):
                raise ImageError(f"mask {split.masks[i].name} is {mask.shape[1]}x{mask.shape[0]}, image is {w}x{h}")
        except ImageError as err:
            logger.warning("skipping %s: %s", split.images[i], err)
            skipped.append({"path": str(split.images[i]), "reason": str(err)})
            continue
        geo = crop_geometry(w, h, run.resolution, backbone.patch_size, square=True)
        resized = np.asarray(Image.fromarray(mask).resize((geo.resized_w, geo.resized_h), Image.NEAREST))
        input_labels.append(resized[geo.top : geo.top + geo.height, geo.left : geo.left + geo.width].copy())
        x0, y0, x1, y1 = geo.original_box()
        eval_labels.append(mask[y0:y1, x0:x1].copy())
        keep_rows.append(row)
    if not keep_rows:
        raise SinderError(f"{desc}: no usable image/mask pair ({len(skipped)} skipped{first_skip(skipped)}); check the images and masks")
    patches = feats.patches[keep_rows] if feats.patches is not None else torch.empty(0)
    return SegFeatures(patches, input_labels, eval_labels, skipped)


def train_probe(
    patches: torch.Tensor, labels: torch.Tensor, num_classes: int, config: EvaluateConfig, device: torch.device | str = "cpu"
) -> tuple[torch.nn.Linear, torch.Tensor, torch.Tensor]:
    """Fit a linear classifier on (n, h, w, D) tokens to (n, H, W) labels with the config's
    ``probe_steps``, ``probe_lr``, ``probe_batch_size`` and ``seed``; returns (linear, mean, std)."""
    steps, batch_size = config.probe_steps, config.probe_batch_size
    d = patches.shape[-1]
    flat = patches.reshape(-1, d)
    mean, std = flat.mean(0), flat.std(0).clamp_min(1e-6)
    linear = torch.nn.Linear(d, num_classes).to(device)
    torch.nn.init.zeros_(linear.weight)  # the problem is convex: zero init makes the probe deterministic
    torch.nn.init.zeros_(linear.bias)
    opt = torch.optim.Adam(linear.parameters(), lr=config.probe_lr)
    gen = torch.Generator().manual_seed(config.seed)
    n = patches.shape[0]
    mean_d, std_d = mean.to(device), std.to(device)
    for step in range(steps):
        idx = torch.randperm(n, generator=gen)[: min(batch_size, n)]
        x = (patches[idx].to(device) - mean_d) / std_d
        y = labels[idx].to(device)
        logits = upsample_logits(linear(x), y.shape[-2:])
        loss = F.cross_entropy(logits, y, ignore_index=IGNORE)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            logger.debug("linear probe step %d: loss %.4f", step, loss.item())
    return linear, mean, std


def training_labels(labels: torch.Tensor, grid: tuple[int, int], factor: int = LABEL_FACTOR) -> torch.Tensor:
    """Nearest-subsample (n, H, W) labels to ``factor`` cells per patch side: the loss sees the
    boundaries inside each patch at a fraction of the cost of full resolution."""
    h, w = min(labels.shape[1], factor * grid[0]), min(labels.shape[2], factor * grid[1])
    if (h, w) == tuple(labels.shape[1:]):
        return labels
    return F.interpolate(labels[:, None].float(), size=(h, w), mode="nearest")[:, 0].long()


def upsample_logits(logits: torch.Tensor, size) -> torch.Tensor:
    """(B, h, w, C) -> (B, C, H, W), bilinear."""
    return F.interpolate(logits.permute(0, 3, 1, 2), size=tuple(size), mode="bilinear", align_corners=False)


@torch.no_grad()
def predict_scores(scores: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """(h, w, C) patch scores -> (H, W) argmax after bilinear upsampling."""
    return upsample_logits(scores[None].float(), size)[0].argmax(0).cpu().numpy()


def segmentation_metrics(preds: list[np.ndarray], gts: list[np.ndarray], num_classes: int) -> dict[str, float]:
    conf = np.zeros((num_classes, num_classes), dtype=np.int64)
    for p, g in zip(preds, gts):
        conf += confusion_matrix(g, p, num_classes)
    return {"miou": miou(conf), "pixel_acc": pixel_accuracy(conf)}


def check_classes(splits: dict[str, SegSplit], train: SegFeatures, val: SegFeatures) -> None:
    """The probe needs two train classes, mIoU two val classes; val-only classes are warned about."""
    seen = require_mask_classes("linear-seg", train.input_labels, splits["train"].masks[0].parent, "a linear probe")
    wanted = require_mask_classes("linear-seg", val.eval_labels, splits["val"].masks[0].parent, "mIoU")
    warn_unseen("linear-seg", sorted(set(wanted) - set(seen)), "train pixels")


def linear_seg(backbone: Backbone, splits: dict[str, SegSplit], run: Extraction, config: EvaluateConfig) -> tuple[dict[str, float], dict]:
    train = load_split(backbone, splits["train"], run, "train")
    val = load_split(backbone, splits["val"], run, "val")
    check_classes(splits, train, val)
    num_classes = max(train.max_label, val.max_label) + 1
    labels = torch.from_numpy(np.stack(train.input_labels)).long()
    labels = training_labels(labels, train.patches.shape[1:3])
    device = backbone.device
    linear, mean, std = train_probe(train.patches, labels, num_classes, config, device)
    preds = []
    with torch.no_grad():
        for tokens, gt in zip(val.patches, val.eval_labels):
            scores = linear((tokens.to(device) - mean.to(device)) / std.to(device))
            preds.append(predict_scores(scores, gt.shape))
    metrics = segmentation_metrics(preds, val.eval_labels, num_classes)
    info = {
        "num_images": {"train": len(train.input_labels), "val": len(val.eval_labels)},
        "num_classes": num_classes,
        "skipped": train.skipped + val.skipped,
    }
    return metrics, info
