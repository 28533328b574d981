"""The options of ``sinder evaluate`` (one typed config, checked on construction); the tasks
read their own hyper-parameters from it."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from ..options import FLAG, Autocast, RunOptions, Seeded, integer, number, option, override, validate
from .features import Extraction


@dataclass(frozen=True)
class EvaluateConfig(RunOptions, Seeded, Autocast):
    """Options of ``sinder evaluate``; checked on construction (``ConfigError`` says what to fix):
    the shared run options (:mod:`sinder.options`; the batch size defaults to 32, bf16 autocast is
    for feature extraction only, never for the intrinsic norms, and ``rule`` is the intrinsic
    task's) and the tasks' own.

    ``weights``/``random_init`` apply when a model is given by spec.
    """

    batch_size: int = override(RunOptions, "batch_size", 32)
    weights: str | None = None
    random_init: bool = option(False, check=FLAG, help="use untrained weights when no checkpoint is given")
    knn_ks: tuple[int, ...] = (10, 20, 100, 200)
    knn_temperature: float = option(0.07, check=number(above=0), help="knn: softmax temperature of the neighbour votes")
    probe_steps: int = option(300, check=integer(1), help="linear-seg: training steps of the linear probe")
    probe_lr: float = option(1e-2, check=number(above=0), help="linear-seg: learning rate of the probe")
    probe_batch_size: int = option(16, check=integer(1), help="linear-seg: images per probe step")
    kmeans_iters: int = option(100, check=integer(1), help="unsup-seg: k-means iterations")
    kmeans_restarts: int = option(3, check=integer(1), help="unsup-seg: k-means restarts")
    lost_k_patches: int = option(100, check=integer(1), help="lost: patches with the fewest positive correlations it seeds from")
    lost_gram_bias: float = option(
        0.0,
        check=number(),
        help="lost: constant added to the key Gram matrix before LOST's sign tests, as the registers paper did "
        "for DINOv2 (no published value; 0 = LOST as published)",
        flag="--lost-gram-bias",
    )
    corloc_iou: float = option(0.5, check=number(above=0, high=1), help="lost: IoU a box needs to count as found")

    def __post_init__(self) -> None:
        validate(self)
        if not self.knn_ks or any(not isinstance(k, int) or isinstance(k, bool) or k <= 0 for k in self.knn_ks):
            raise ConfigError(f"--knn-k must be positive integers, got {self.knn_ks!r}")

    def extraction(self, resolution: int) -> Extraction:
        """How the tasks read and run their images, at ``resolution`` px."""
        return Extraction(resolution, self.batch_size, self.amp != "off", self.progress)
