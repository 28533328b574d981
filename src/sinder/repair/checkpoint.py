"""Training checkpoints: one safetensors file (ε and momentum buffers) whose metadata
holds the rest as JSON (step, data position, skip history, config signature). Written with
temp file + ``os.replace``; read without unpickling anything.
"""

from __future__ import annotations

import json
import logging
import os
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import ConfigError, WeightsError
from ..io import atomic_path

log = logging.getLogger(__name__)

FORMAT = "sinder-repair-checkpoint/1"


@dataclass
class TrainState:
    """Everything besides tensors that a resumed run needs to continue exactly."""

    step: int = 0
    position: int = 0  # global data position (images consumed by all ranks)
    images_seen: int = 0  # decodable images processed
    skipped_images: int = 0  # images without a qualifying layer
    optimizer_steps: int = 0
    nonfinite_steps: int = 0
    seconds: float = 0.0
    crossed: list[float] = field(default_factory=list)  # save_at_skip values already saved
    stop_reason: str | None = None
    window: int = 1000
    history: deque = field(default_factory=deque)  # recent skip flags, newest last
    residual_best: dict = field(default_factory=dict)  # best held-out residual so far (the plateau stop)
    residual_checks: list = field(default_factory=list)  # [step, residual] of every check
    residual_stale: int = 0  # checks since the residual last improved
    clean_streak: int = 0  # images in a row without a qualifying layer

    def __post_init__(self) -> None:
        self.history = deque(self.history, maxlen=self.window)

    def record(self, flags: list[bool]) -> None:
        self.history.extend(flags)
        for skipped in flags:
            self.clean_streak = self.clean_streak + 1 if skipped else 0
        self.images_seen += len(flags)
        self.skipped_images += sum(flags)

    def skip_ratio(self) -> float:
        """Skipped fraction of the last ``window`` images; images not seen yet count as not skipped."""
        return sum(self.history) / self.window

    def to_json(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "history"}
        d["history"] = "".join("1" if f else "0" for f in self.history)
        return d

    @classmethod
    def from_json(cls, d: dict) -> TrainState:
        d = dict(d)
        hist = [c == "1" for c in d.pop("history", "")]
        return cls(**d, history=deque(hist))


def save_checkpoint(
    path: str | Path, eps: dict[str, torch.Tensor], momentum: dict[str, torch.Tensor], state: TrainState, meta: dict
) -> Path:
    from safetensors.torch import save_file

    tensors = {f"eps/{k}": v.detach().cpu().contiguous() for k, v in eps.items()}
    tensors.update({f"momentum/{k}": v.detach().cpu().contiguous() for k, v in momentum.items()})
    info = {"format": FORMAT, "state": state.to_json(), **meta}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"sinder": json.dumps(info)})
    return path


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], TrainState, dict]:
    """-> (ε, momentum buffers, state, metadata). Training draws no random numbers (the image
    order is a pure function of seed and position), so no RNG state is saved or restored."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (OSError, SafetensorError, ValueError) as err:
        raise WeightsError(f"{path}: not a readable repair checkpoint ({err}); start again with --overwrite") from None
    try:
        info = json.loads(raw["sinder"])
    except (KeyError, json.JSONDecodeError):
        raise WeightsError(f"{path}: missing repair metadata; start again with --overwrite") from None
    if info.get("format") != FORMAT:
        raise WeightsError(f"{path}: unknown checkpoint format {info.get('format')!r}; start again with --overwrite")
    eps = {k[4:]: v for k, v in tensors.items() if k.startswith("eps/")}
    momentum = {k[9:]: v for k, v in tensors.items() if k.startswith("momentum/")}
    state = TrainState.from_json(info.pop("state"))
    return eps, momentum, state, info


def read_checkpoint_step(path: str | os.PathLike) -> int:
    """The step a checkpoint was written at, from its metadata alone (no tensor is read)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            info = json.loads((f.metadata() or {})["sinder"])
        return int(info["state"]["step"])
    except (OSError, SafetensorError, ValueError, KeyError, TypeError) as err:
        raise WeightsError(f"{path}: not a readable repair checkpoint ({err}); start again with --overwrite") from None


def check_same_settings(saved: dict, signature: dict, source: str, undecided: tuple[str, ...] = ()) -> None:
    """Each setting of ``signature`` that ``saved`` also holds must be equal (``source`` names where
    ``saved`` came from); keys in ``undecided`` are skipped while their value is still None."""
    for key, value in signature.items():
        if key in undecided and value is None:
            continue
        if key in saved and normalised(saved[key]) != normalised(value):
            raise ConfigError(f"--resume: {key} is {value!r} but {source} used {saved[key]!r}; pass the same value or use --overwrite")


def check_compatible(info: dict, signature: dict, data_digest: str) -> None:
    """A resumed run must train exactly as the checkpointed one did."""
    check_same_settings(info.get("signature", {}), signature, "the checkpoint")
    if info.get("data_digest") not in (None, data_digest):
        raise ConfigError("--resume: the training images differ from the checkpointed run's; pass the same --data or use --overwrite")


def normalised(v):
    """Settings as JSON gives them back (tuples become lists)."""
    return list(v) if isinstance(v, tuple) else v
