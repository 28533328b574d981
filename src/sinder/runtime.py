"""Device selection shared by the commands."""
from __future__ import annotations

import torch

from .errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without it is a one-line error."""
    if name not in DEVICES and not name.startswith("cuda:"):
        raise ConfigError(f"device must be one of {', '.join(DEVICES)} (or cuda:N), got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA device is available; use --device cpu")
    return torch.device(name)
