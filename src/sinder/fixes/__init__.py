"""Training-free fixes that ``sinder compare`` puts beside SINDER's repair (issue #9).

* :mod:`~sinder.fixes.clamp`: SINDER appendix B, every block Linear's singular values clamped to ≤ γ.
"""
from .clamp import ClampResult, clamp_singular_values

__all__ = ["ClampResult", "clamp_singular_values"]
