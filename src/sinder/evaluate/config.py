"""The options of ``sinder evaluate`` (one typed config, checked on construction); the tasks
read their own hyper-parameters from it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..detect import DefectRule
from ..errors import ConfigError
from .features import Extraction


@dataclass(frozen=True)
class EvaluateConfig:
    """Options of ``sinder evaluate``; checked on construction (``ConfigError`` says what to fix).

    ``weights``/``random_init`` apply when a model is given by spec. ``resolution`` defaults to
    the model's native size. ``device`` is used when loading a spec; an in-memory backbone runs
    where it already is.
    """

    resolution: int | None = None
    batch_size: int = 32
    device: str = "auto"
    weights: str | None = None
    random_init: bool = False
    amp: bool = True  # bf16 autocast on CUDA for feature extraction (never for the intrinsic norms)
    seed: int = 0
    knn_ks: tuple[int, ...] = (10, 20, 100, 200)
    knn_temperature: float = 0.07
    probe_steps: int = 300
    probe_lr: float = 1e-2
    probe_batch_size: int = 16
    kmeans_iters: int = 100
    kmeans_restarts: int = 3
    lost_k_patches: int = 100
    lost_gram_bias: float = 0.0  # added to LOST's key Gram matrix (registers paper §3.3); 0 = LOST as published
    corloc_iou: float = 0.5
    rule: DefectRule = field(default_factory=DefectRule)  # intrinsic: what a defect / a high-norm token is
    progress: bool = True  # progress bars (drawn on a terminal only)

    def __post_init__(self) -> None:
        def positive(name: str, value, kind=int) -> None:
            if not isinstance(value, kind) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} must be a positive {kind.__name__}, got {value!r}")

        if self.resolution is not None:
            positive("resolution", self.resolution)
        for name in ("batch_size", "probe_steps", "probe_batch_size", "kmeans_iters", "kmeans_restarts", "lost_k_patches"):
            positive(name, getattr(self, name))
        if not isinstance(self.rule, DefectRule):
            raise ConfigError(f"rule must be a DefectRule, got {type(self.rule).__name__}")
        for name in ("knn_temperature", "probe_lr"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0 or not math.isfinite(value):
                raise ConfigError(f"{name} must be a positive number, got {value!r}")
        if self.device not in ("auto", "cpu", "cuda") and not str(self.device).startswith("cuda:"):
            raise ConfigError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if not self.knn_ks or any(not isinstance(k, int) or isinstance(k, bool) or k <= 0 for k in self.knn_ks):
            raise ConfigError(f"knn_ks must be positive integers, got {self.knn_ks!r}")
        bias = self.lost_gram_bias
        if not isinstance(bias, (int, float)) or isinstance(bias, bool) or not math.isfinite(bias):
            raise ConfigError(f"lost_gram_bias must be a finite number, got {bias!r}")
        if not 0.0 < self.corloc_iou <= 1.0:
            raise ConfigError(f"corloc_iou must be in (0, 1], got {self.corloc_iou!r}")

    def extraction(self, resolution: int) -> Extraction:
        """How the tasks read and run their images, at ``resolution`` px."""
        return Extraction(resolution, self.batch_size, self.amp, self.progress)
