"""The fixes of singular defects, behind one interface (:class:`~sinder.fixes.base.Fix`), which
``sinder compare`` runs side by side:

* :mod:`~sinder.fixes.sinder`: SINDER's repair (:mod:`sinder.repair`), trained now or reused from a run.
* :mod:`~sinder.fixes.registers`: test-time registers, register neurons moved into an extra token.
* :mod:`~sinder.fixes.clamp`: SINDER appendix B, every block Linear's singular values clamped to ≤ γ.
* :mod:`~sinder.fixes.interpolate`: SC-CLIP-style replacement of defect tokens by their neighbours.

A new fix is one module with a :class:`~sinder.fixes.base.Fix` subclass, added to :data:`FIXES`.
"""

from .base import Cost, Fix, FixContext, FixHandle
from .clamp import ClampFix, ClampResult, clamp_singular_values
from .interpolate import InterpolationFix, NeighbourInterpolation, interpolate_defects
from .registers import NeuronRegisters, RegisterNeurons, RegisterSearchConfig, RegistersFix, apply_registers, find_register_neurons
from .sinder import SinderFix

# Every fix by name, in the order compare runs and shows them.
FIXES: dict[str, type[Fix]] = {fix.name: fix for fix in (SinderFix, RegistersFix, ClampFix, InterpolationFix)}

__all__ = [
    "FIXES",
    "ClampFix",
    "ClampResult",
    "Cost",
    "Fix",
    "FixContext",
    "FixHandle",
    "InterpolationFix",
    "NeighbourInterpolation",
    "NeuronRegisters",
    "RegisterNeurons",
    "RegisterSearchConfig",
    "RegistersFix",
    "SinderFix",
    "apply_registers",
    "clamp_singular_values",
    "find_register_neurons",
    "interpolate_defects",
]
