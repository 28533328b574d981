"""Training-free fixes that ``sinder compare`` puts beside SINDER's repair (issue #9).

* :mod:`~sinder.fixes.clamp`: SINDER appendix B, every block Linear's singular values clamped to ≤ γ.
* :mod:`~sinder.fixes.interpolate`: SC-CLIP-style replacement of defect tokens by their neighbours.
"""
from .clamp import ClampResult, clamp_singular_values
from .interpolate import NeighbourInterpolation, interpolate_defects

__all__ = ["ClampResult", "NeighbourInterpolation", "clamp_singular_values", "interpolate_defects"]
