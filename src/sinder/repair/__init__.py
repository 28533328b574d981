"""SINDER repair: train additive singular-value corrections so defect tokens blend into their
neighbourhoods, then fold them back into plain weights.

    from sinder.repair import RepairConfig, repair
    result = repair(backbone, ["train_dir/"], RepairConfig(max_steps=300), eval_images=["eval_dir/"], out_dir="out")

Modules: ``config`` (RepairConfig), ``singular`` (σ-parametrisation, folding), ``loss``
(neighbourhood target, loss), ``data`` (seeded order), ``engine`` (fast and reference steps),
``loop`` (training loop and its callbacks), ``finish`` (fold, export, check), ``checkpoint``,
``distributed``, ``metrics`` (before/after on held-out images), ``api`` (``repair``).
"""

from .api import RepairResult, repair
from .config import RepairConfig
from .engine import StepResult, Trainer
from .loss import gaussian_kernel, gram_loss, neighbour_loss, neighbourhood_target
from .singular import SingularLinear, SingularModel, attach

__all__ = [
    "RepairConfig",
    "RepairResult",
    "SingularLinear",
    "SingularModel",
    "StepResult",
    "Trainer",
    "attach",
    "gaussian_kernel",
    "gram_loss",
    "neighbour_loss",
    "neighbourhood_target",
    "repair",
]
