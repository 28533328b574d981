"""After training: measure on the held-out images, fold σ back into plain weights (checking the
fold changed nothing), export in the input's format and verify the re-loaded file."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..backbones.base import Backbone
from ..errors import WeightsError
from ..images import ImageSet
from .singular import SingularModel

log = logging.getLogger(__name__)

EVAL_BATCH = 8  # held-out images per forward pass at least


def probe_pixels(*sets: ImageSet | None) -> torch.Tensor | None:
    """One usable image (1, 3, H, W) from the first set that has one: the fold and export check."""
    for data in sets:
        if data is None:
            continue
        for i in range(len(data)):
            px = data.load(i)
            if px is not None:
                return px[None]
    return None


@torch.no_grad()
def fold_checked(backbone: Backbone, handle: SingularModel, probe: torch.Tensor | None) -> float | None:
    """Fold ε into the weights; returns the largest token change the fold caused on ``probe``."""
    before = backbone.model_forward(probe.to(backbone.device, backbone.dtype)) if probe is not None else None
    handle.fold()
    if before is None:
        return None
    after = backbone.model_forward(probe.to(backbone.device, backbone.dtype))
    return float((after.float() - before.float()).abs().max())


def export_checked(backbone: Backbone, folder: Path, probe: torch.Tensor | None, tol: float) -> tuple[Path, float | None]:
    """Write the repaired weights in the input's format, re-load them and compare tokens."""
    from ..export import max_token_diff, reload_exported, save_weights

    path = save_weights(backbone, folder, overwrite=True)
    if probe is None:
        return path, None
    reloaded = reload_exported(backbone, path)
    diff = max_token_diff(backbone, reloaded, probe)
    with torch.no_grad():
        scale = float(backbone.model_forward(probe.to(backbone.device, backbone.dtype)).abs().max())
    if not diff <= tol * max(1.0, scale):
        raise WeightsError(
            f"re-loading {path} gives tokens {diff:.3g} away from the repaired model (tolerance {tol * max(1.0, scale):.3g}); the export is wrong, do not use it"
        )
    log.info("wrote %s (re-loaded: max token diff %.3g)", path, diff)
    return path, diff


def training_summary(state, train: ImageSet, held_out: ImageSet | None, resumed: bool, world_size: int) -> dict:
    """What the loop did, for summary.json."""
    skipped = {**train.skipped, **(held_out.skipped if held_out else {})}
    return {
        "steps": state.step,
        "optimizer_steps": state.optimizer_steps,
        "nonfinite_steps": state.nonfinite_steps,
        "images_seen": state.images_seen,
        "skipped_images": state.skipped_images,
        "seconds": state.seconds,
        "steps_per_second": state.step / state.seconds if state.seconds > 0 else None,
        "images_per_second": state.images_seen / state.seconds if state.seconds > 0 else None,
        "stop_reason": state.stop_reason,
        "final_skip_ratio": state.skip_ratio(),
        "resumed": resumed,
        "world_size": world_size,
        "num_train_images": len(train),
        "num_eval_images": len(held_out) if held_out is not None else 0,
        "skipped_files": [{"name": k, "reason": v} for k, v in skipped.items()],
    }
