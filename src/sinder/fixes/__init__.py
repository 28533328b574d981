"""Training-free fixes that ``sinder compare`` puts beside SINDER's repair (issue #9).

* :mod:`~sinder.fixes.clamp`: SINDER appendix B, every block Linear's singular values clamped to ≤ γ.
* :mod:`~sinder.fixes.interpolate`: SC-CLIP-style replacement of defect tokens by their neighbours.
* :mod:`~sinder.fixes.registers`: test-time registers, register neurons moved into an extra token.
"""

from .clamp import ClampResult, clamp_singular_values
from .interpolate import NeighbourInterpolation, interpolate_defects
from .registers import NeuronRegisters, RegisterNeurons, RegisterSearchConfig, apply_registers, find_register_neurons

__all__ = [
    "ClampResult",
    "NeighbourInterpolation",
    "NeuronRegisters",
    "RegisterNeurons",
    "RegisterSearchConfig",
    "apply_registers",
    "clamp_singular_values",
    "find_register_neurons",
    "interpolate_defects",
]
