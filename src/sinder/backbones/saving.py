"""What every family's ``save`` needs: refusing to clobber, and a portable copy of the weights."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import OutputExistsError


def refuse_existing(paths: list[Path], overwrite: bool) -> None:
    """Raise (writing nothing) when one of ``paths`` exists and ``overwrite`` is False."""
    if overwrite:
        return
    existing = [p for p in paths if p.exists()]
    if existing:
        raise OutputExistsError(f"{existing[0]} already exists; pass --overwrite to replace it")


def cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU tensors: what safetensors and ``torch.save`` can write as-is."""
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def spec_name(spec: str) -> str:
    """``dinov2:vits14`` -> ``vits14``."""
    return spec.partition(":")[2]
