"""``RepairConfig``: every knob of a SINDER repair run, validated once at the boundary."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from ..detect import DefectRule
from ..errors import ConfigError, require
from ..options import FLAG, Autocast, Directions, Overwrite, RunOptions, Seeded, integer, number, one_of, option, override, validate

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
    "along_weight",
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
# The reference's rule: one μ + 4σ pass, no norm gate, ≥ 3 defects, border cleared (kernel // 2).
FAITHFUL_RULE = DefectRule(mask_thr=4.0, border=1, norm_gate=0.0, skip_less_than=3, threshold="meanstd")


@dataclass(frozen=True)
class RepairConfig(RunOptions, Seeded, Directions, Autocast, Overwrite):
    """Hyper-parameters of a repair run (defaults: the reference SINDER settings), validated on
    construction: the shared run options (:mod:`sinder.options`; the batch size defaults to 1, the
    reference's) and its own.

    ``max_steps`` counts iterations (one batch per rank each); with ``batch_size=1`` an
    iteration is one image, as in the reference. ``window`` is the number of recent images
    the skip ratio is computed over; images not seen yet count as not skipped, as the
    reference's pre-filled history does. ``rule`` says what a defect is. With its default
    ``border`` 0 every cell can be a defect and the loss gives a border defect a target from
    the window cells inside the grid; a rule with a border (the faithful one) has it set to
    the window's half-width ``kernel // 2``, where the reference's window fits.
    """

    batch_size: int = override(RunOptions, "batch_size", 1)
    impl: str = option("fast", check=one_of("fast", "reference"), help="the fast path, or the literal reference loop")
    max_steps: int = option(30000, check=integer(1), help="iterations at most (one batch per rank each)")
    lr: float = option(0.005, check=number(above=0), help="SGD learning rate for the singular-value corrections")
    momentum: float = option(0.9, check=number(0, below=1), help="SGD momentum, below 1")
    kernel: int = option(3, check=one_of(3, 5), help="side of the neighbourhood window", flag="--kernel")
    tau: float = option(0.1, check=number(above=0), help="temperature of the window weights softmax(−|cos|/τ)")
    along_weight: float | None = option(
        None,
        check=number(0, optional=True),
        none="1 when the rule counts low-norm defects (--low-norm), else 0",
        help="weight of |⟨x − T, ν⟩| added to each defect's distance ‖x − T‖ to its target: the defect's own part, "
        "which the distance alone leaves behind on short defects (0: the reference loss; --faithful: 0)",
    )

    def loss_along_weight(self) -> float:
        """``along_weight``, decided: low-norm defects need the term (the distance alone stalls on
        them); high-norm ones do not, and on ``planted:late`` it costs the 0.999 cosines (docs/benchmarks.md)."""
        if self.along_weight is not None:
            return self.along_weight
        return 1.0 if self.rule.low_norm == "count" else 0.0

    limit_layers: int = option(10, check=integer(1), help="blocks ending at the defect layer that learn")
    window: int = option(1000, check=integer(1), help="recent images the skip ratio is computed over")
    stop_skip_ratio: float = option(0.75, check=number(above=0, high=1), help="stop when this fraction of recent images has no defect")
    from_onset: bool = option(
        True,
        check=FLAG,
        help="also train before the first layer where the rule finds a defect in the original model (--faithful does)",
        flag="--onset",
    )
    weak_defects: float = option(
        0.01,
        check=number(0, below=1),
        help="a layer also qualifies when this share of its tokens (at least 3) are |cos| outliers that the norm gate rejects: "
        "weakened defects, pulled to the end (0: off; --faithful: 0)",
    )
    order: str = option(
        "shuffle",
        check=one_of("shuffle", "sequential"),
        help="image order: reshuffled every epoch, or walked in order as the reference does (--faithful)",
    )
    stop_when_clean: bool = option(True, check=FLAG, help="stop after a whole pass over the training images finds nothing to train on")
    plateau_every: int = option(50, check=integer(1), help="steps between checks of the held-out residual (at most 16 images)")
    plateau_patience: int = option(
        4,
        check=integer(0),
        help="stop after this many checks without a relative improvement of the held-out residual (0: never; --faithful: 0)",
    )
    plateau_min_delta: float = option(0.01, check=number(0, below=1), help="relative improvement that counts")
    save_at_skip: tuple[float, ...] = ()
    checkpoint_every: int = option(500, check=integer(1), help="steps between checkpoints")
    gram_weight: float = option(0.0, check=number(0), help="Gram anchoring to the original model's non-defect tokens (0: off)")
    num_train_max: int = option(30000, check=integer(1), help="subsample the training images to at most N, fixed stride")
    num_eval_max: int = option(64, check=integer(0), help="at most N held-out images (0: none)", flag="--num-eval")
    compile: bool = option(False, check=FLAG, help="torch.compile the block calls (fast path)")
    one_pass: bool | None = None  # fast path: search with grad (None: on CPU, or when it fits in GPU memory)
    analysis: bool = option(True, check=FLAG, help="skip analysis_before/ and analysis_after/ (maps for sinder report)")
    export: bool = option(True, check=FLAG, help="export the repaired weights")
    export_tol: float = option(1e-4, check=number(above=0), help="re-load tolerance, relative to the largest |token|")
    resume: bool = option(False, check=FLAG, help="continue the run in --out from its checkpoint")
    prefetch: bool = option(True, check=FLAG, help="decode the next batch in a background thread")

    def __post_init__(self) -> None:
        object.__setattr__(self, "save_at_skip", tuple(float(v) for v in self.save_at_skip))
        if isinstance(self.rule, dict):
            object.__setattr__(self, "rule", DefectRule(**self.rule))
        if isinstance(self.rule, DefectRule) and self.rule.border and self.kernel in (3, 5):
            object.__setattr__(
                self, "rule", replace(self.rule, border=self.kernel // 2)
            )  # a cleared border is where the window does not fit
        self.validate()

    def validate(self) -> None:
        validate(self)
        require(
            self.impl == "fast" or self.batch_size == 1,
            "the reference implementation uses batch size 1; use --impl fast for --batch-size > 1",
        )
        require(all(0 < v <= 1 for v in self.save_at_skip), f"save_at_skip values must be in (0, 1], got {list(self.save_at_skip)}")
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
            along_weight=0.0,
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
