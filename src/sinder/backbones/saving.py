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


def write_weights_and_spec(model: nn.Module, weights: Path, spec_file: Path, meta: dict, overwrite: bool) -> Path:
    """A family's export: the state dict as safetensors and the recipe to rebuild the model as
    JSON, each written atomically, refusing existing files unless ``overwrite``."""
    import json

    from safetensors.torch import save_file

    from ..io import atomic_path

    refuse_existing([weights, spec_file], overwrite)
    with atomic_path(weights) as tmp:
        save_file(cpu_state_dict(model), str(tmp), metadata={"format": "pt"})
    with atomic_path(spec_file) as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
    return weights


def write_official_pth(state_dict: dict[str, torch.Tensor], backbone_spec: str, folder: Path, overwrite: bool) -> Path:
    """``<name>_sinder.pth`` (``dinov2:vits14`` -> ``vits14_sinder.pth``): a plain state dict in an
    official layout, written atomically, refusing an existing file unless ``overwrite``."""
    from ..io import atomic_path

    target = folder / f"{spec_name(backbone_spec)}_sinder.pth"
    refuse_existing([target], overwrite)
    with atomic_path(target) as tmp:
        torch.save(state_dict, tmp)
    return target
