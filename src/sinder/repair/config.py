"""``RepairConfig``: every knob of a SINDER repair run, validated once at the boundary."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Literal

from ..detect import DefectRule
from ..errors import ConfigError, require

Impl = Literal["fast", "reference"]

# Fields that change what training computes: a resumed run must match them exactly.
TRAINING_FIELDS = (
    "impl",
    "batch_size",
    "resolution",
    "lr",
    "momentum",
    "rule",
    "kernel",
    "tau",
    "limit_layers",
    "window",
    "gram_weight",
    "num_train_max",
    "directions",
    "seed",
    "order",
    "plateau_every",
    "plateau_patience",
    "plateau_min_delta",
    "from_onset",
    "weak_defects",
)
Order = Literal["shuffle", "sequential"]
# The reference's rule: one μ + 4σ pass, no norm gate, ≥ 3 defects, border cleared (kernel // 2).
FAITHFUL_RULE = DefectRule(mask_thr=4.0, border=1, norm_gate=0.0, skip_less_than=3, threshold="meanstd")


@dataclass
class RepairConfig:
    """Hyper-parameters of a repair run (defaults: the reference SINDER settings).

    ``max_steps`` counts iterations (one batch per rank each); with ``batch_size=1`` an
    iteration is one image, as in the reference. ``window`` is the number of recent images
    the skip ratio is computed over; images not seen yet count as not skipped, as the
    reference's pre-filled history does. ``rule`` says what a defect is. With its default
    ``border`` 0 every cell can be a defect and the loss gives a border defect a target from
    the window cells inside the grid; a rule with a border (the faithful one) has it set to
    the window's half-width ``kernel // 2``, where the reference's window fits.
    """

    impl: Impl = "fast"
    max_steps: int = 30000
    batch_size: int = 1
    resolution: int | None = None  # None: the backbone's native image size
    lr: float = 0.005
    momentum: float = 0.9
    rule: DefectRule = field(default_factory=DefectRule)
    kernel: int = 3
    tau: float = 0.1
    limit_layers: int = 10
    window: int = 1000
    stop_skip_ratio: float = 0.75
    from_onset: bool = True  # never train before the first layer where the rule finds a defect (original model)
    weak_defects: float = 0.01  # a layer also qualifies when this share of tokens (≥ 3) are |cos| outliers the gate rejects (0: off)
    order: Order = "shuffle"  # sequential: image = step mod N, as the reference walks them
    stop_when_clean: bool = True  # stop after a whole pass over the training images finds nothing to train on
    plateau_every: int = 50  # steps between checks of the held-out residual (at most 16 images)
    plateau_patience: int = 4  # stop after this many checks without improvement (0: never)
    plateau_min_delta: float = 0.01  # relative improvement that counts
    save_at_skip: tuple[float, ...] = ()
    checkpoint_every: int = 500
    gram_weight: float = 0.0
    num_train_max: int = 30000
    num_eval_max: int = 64
    directions: Literal["exact", "montecarlo"] = "exact"
    device: str = "auto"  # CLI only: ``repair()`` trains on the backbone's own device
    seed: int = 0
    amp: Literal["auto", "bf16", "off"] = "auto"  # bf16 autocast on CUDA (fast path only)
    compile: bool = False  # torch.compile the block calls (fast path, CUDA)
    one_pass: bool | None = None  # fast path: search with grad (None: on CPU, or when it fits in GPU memory)
    analysis: bool = True  # analysis_before/ and analysis_after/ of the held-out images (single process, with out_dir)
    export: bool = True
    export_tol: float = 1e-4  # relative to the largest |token|
    resume: bool = False
    overwrite: bool = False
    progress: bool = True
    prefetch: bool = True  # decode the next batch in a background thread

    def __post_init__(self) -> None:
        self.save_at_skip = tuple(float(v) for v in self.save_at_skip)
        if isinstance(self.rule, dict):
            self.rule = DefectRule(**self.rule)
        if isinstance(self.rule, DefectRule) and self.rule.border and self.kernel in (3, 5):
            self.rule = replace(self.rule, border=self.kernel // 2)  # a cleared border is where the window does not fit
        self.validate()

    def validate(self) -> None:
        require(self.impl in ("fast", "reference"), f"impl must be 'fast' or 'reference', got {self.impl!r}")
        require(self.max_steps >= 1, f"max_steps must be >= 1, got {self.max_steps}")
        require(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        require(
            self.impl == "fast" or self.batch_size == 1,
            "the reference implementation uses batch size 1; use --impl fast for --batch-size > 1",
        )
        require(
            self.resolution is None or 16 <= self.resolution <= 4096, f"--resolution must be between 16 and 4096 px (got {self.resolution})"
        )
        for name in ("lr", "tau"):
            v = getattr(self, name)
            require(math.isfinite(v) and v > 0, f"{name} must be a positive number, got {v}")
        require(0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}")
        require(isinstance(self.rule, DefectRule), f"rule must be a DefectRule, got {type(self.rule).__name__}")
        require(self.kernel in (3, 5), f"kernel must be 3 or 5, got {self.kernel}")
        require(self.limit_layers >= 1, f"limit_layers must be >= 1, got {self.limit_layers}")
        require(self.window >= 1, f"window must be >= 1, got {self.window}")
        require(0 < self.stop_skip_ratio <= 1, f"stop_skip_ratio must be in (0, 1], got {self.stop_skip_ratio}")
        require(self.order in ("shuffle", "sequential"), f"order must be shuffle or sequential, got {self.order!r}")
        require(0 <= self.weak_defects < 1, f"weak_defects must be a share of the tokens in [0, 1) (0: off), got {self.weak_defects}")
        require(self.plateau_every >= 1, f"plateau_every must be >= 1, got {self.plateau_every}")
        require(self.plateau_patience >= 0, f"plateau_patience must be >= 0 (0: off), got {self.plateau_patience}")
        require(0 <= self.plateau_min_delta < 1, f"plateau_min_delta must be in [0, 1), got {self.plateau_min_delta}")
        require(all(0 < v <= 1 for v in self.save_at_skip), f"save_at_skip values must be in (0, 1], got {list(self.save_at_skip)}")
        require(self.checkpoint_every >= 1, f"checkpoint_every must be >= 1, got {self.checkpoint_every}")
        require(math.isfinite(self.gram_weight) and self.gram_weight >= 0, f"gram_weight must be >= 0, got {self.gram_weight}")
        require(self.num_train_max >= 1, f"num_train_max must be >= 1, got {self.num_train_max}")
        require(self.num_eval_max >= 0, f"num_eval_max must be >= 0, got {self.num_eval_max}")
        require(self.directions in ("exact", "montecarlo"), f"directions must be 'exact' or 'montecarlo', got {self.directions!r}")
        require(self.amp in ("auto", "bf16", "off"), f"amp must be auto, bf16 or off, got {self.amp!r}")
        require(self.export_tol > 0, f"export_tol must be > 0, got {self.export_tol}")
        require(not (self.resume and self.overwrite), "pass either --resume or --overwrite, not both")

    @classmethod
    def faithful(cls, **overrides) -> RepairConfig:
        """Exactly the reference SINDER settings: the μ+4σ rule alone with ≥ 3 defects, images
        walked in order, and the skip-ratio stop over a 1000-image history as the only stop rule."""
        settings = dict(
            rule=FAITHFUL_RULE,
            order="sequential",
            plateau_patience=0,
            window=1000,
            stop_skip_ratio=0.75,
            from_onset=False,
            weak_defects=0.0,
            stop_when_clean=False,
        )
        return cls(**(settings | overrides))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["save_at_skip"] = list(self.save_at_skip)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> RepairConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown repair option(s) {unknown}; known: {sorted(known)}")
        return cls(**d)

    def training_signature(self) -> dict:
        sig = {k: getattr(self, k) for k in TRAINING_FIELDS}
        sig["rule"] = self.rule.to_dict()
        return sig
