"""Reading checkpoints safely: safetensors, or ``.pth`` with ``weights_only=True`` (never unpickled)."""

from __future__ import annotations

import os
import pickle
import socket
import struct
from pathlib import Path
from urllib.parse import urlparse

import torch

from ..errors import ModelSpecError, WeightsError

# What torch.load raised on empty, truncated, corrupted and pickled-object files (weights_only=True):
# a bad zip record or CRC (RuntimeError), a refused or broken pickle (UnpicklingError, EOFError,
# UnicodeDecodeError, IndexError, KeyError, struct.error), an unreadable record (OSError), and
# asserts in the legacy format reader.
_TORCH_LOAD_ERRORS = (
    RuntimeError,
    pickle.UnpicklingError,
    EOFError,
    OSError,
    ValueError,
    LookupError,
    struct.error,
    AssertionError,
)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a flat ``{name: tensor}`` from ``.safetensors``, ``.pth``/``.pt``/``.bin``.

    ``.pth`` files are opened with ``weights_only=True``; a pickled model object is refused.
    Common wrappers (``{"model": sd}``, ``{"state_dict": sd}``, ``{"teacher": sd}``) are unwrapped.
    """
    p = Path(path)
    if p.is_dir():
        raise WeightsError(f"weights {p} is a folder; pass the checkpoint file itself (.safetensors or .pth)")
    if not p.is_file():
        raise WeightsError(f"weights file not found: {p}; check --weights")
    if p.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(p))
        except (SafetensorError, OSError, ValueError) as err:  # a bad header or a truncated body: SafetensorError
            raise WeightsError(
                f"{p}: not a readable safetensors file ({str(err).splitlines()[0] if str(err) else type(err).__name__}); re-download or re-export it"
            ) from None
    if p.suffix not in {".pth", ".pt", ".bin", ".ckpt"}:
        raise WeightsError(f"{p}: unknown weights format; use .safetensors or a .pth state dict")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except _TORCH_LOAD_ERRORS as err:
        raise WeightsError(f"{p}: cannot be read as a state dict with weights_only=True ({_load_failure(err)})") from None
    for key in ("state_dict", "model", "teacher", "module"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise WeightsError(f"{p}: holds a {type(obj).__name__}, not a state dict; save model.state_dict() instead")
    bad = next((k for k, v in obj.items() if not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise WeightsError(
            f"{p}: expected a state dict of tensors, but {bad!r} is a {type(obj[bad]).__name__}; save model.state_dict() instead"
        )
    return dict(obj)


def load_state_dict_checked(model: torch.nn.Module, state_dict: dict, spec: str, ignore: tuple[str, ...] = ()) -> None:
    """``model.load_state_dict`` with a one-line :class:`WeightsError` (naming a first culprit)
    when the file does not fit: shape mismatches, missing or unexpected keys. Keys starting with
    one of ``ignore`` (a classifier head the backbone does not use) may be missing or extra."""
    own = model.state_dict()
    mismatched = [k for k, v in state_dict.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if mismatched:  # load_state_dict would raise a many-line RuntimeError
        k = mismatched[0]
        raise WeightsError(
            f"{spec}: weights do not fit ({len(mismatched)} shape mismatch(es), e.g. {k} is {tuple(state_dict[k].shape)} "
            f"in the file but {tuple(own[k].shape)} in the model); check the model name"
        )
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    missing = [k for k in missing if not k.startswith(ignore)] if ignore else list(missing)
    unexpected = [k for k in unexpected if not k.startswith(ignore)] if ignore else list(unexpected)
    if missing or unexpected:
        raise WeightsError(
            f"{spec}: weights do not fit (missing {missing[:3]}{'…' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'…' if len(unexpected) > 3 else ''}); check the model name"
        )


def _load_failure(err: Exception) -> str:
    """Why ``torch.load`` failed, in a few words (its own messages span many lines, with ANSI codes)."""
    text = str(err)
    if "Weights only load failed" in text:
        return "it holds pickled Python objects (a whole nn.Module, training args, ...), which sinder never unpickles; save model.state_dict() or convert to safetensors"
    return "not a PyTorch checkpoint, or the file is truncated or corrupt; re-download or re-export it"


def hub_reachable(timeout: float = 3.0, host: str | None = None) -> bool:
    """Whether a download host answers (default: the Hugging Face hub, which HF_HUB_OFFLINE turns
    off); checked up front so offline runs fail in seconds, not minutes."""
    if host is None:
        if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
            return False
        host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def require_hub(spec: str) -> None:
    if not hub_reachable():
        raise ModelSpecError(
            f"{spec}: the model hub is unreachable, so pretrained weights cannot be downloaded; "
            "pass --weights FILE (.safetensors or .pth), or --random-init for an untrained model"
        )


def grid_from_pos_embed(num_positions: int, prefix_in_pos_embed: int) -> int:
    """Side of the square patch grid a positional embedding was trained for."""
    n = num_positions - prefix_in_pos_embed
    side = int(round(n**0.5))
    if side * side != n:
        raise WeightsError(f"positional embedding has {num_positions} entries: not a square grid plus {prefix_in_pos_embed} prefix")
    return side


def check_finite(named_tensors, source: str) -> None:
    """Refuse weights with NaN/Inf, naming the first such tensor (SVD and quadrature would fail far away)."""
    for name, t in named_tensors:
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise WeightsError(
                f"{source}: tensor {name} holds {bad} non-finite value(s) (NaN/Inf); the weights are corrupt: re-download or re-export them"
            )
