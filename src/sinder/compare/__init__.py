"""``sinder compare``: SINDER, test-time registers, σ clamp and neighbour interpolation run side by
side on one model, judged by the same numbers and maps (``compare.json``, ``compare.html``)."""

from .methods import DESCRIPTIONS, METHODS
from .run import COMPARE_FILE, PAGE_FILE, CompareConfig, check_compare_output, check_tasks, compare
from .table import format_table

__all__ = [
    "COMPARE_FILE",
    "DESCRIPTIONS",
    "METHODS",
    "PAGE_FILE",
    "CompareConfig",
    "check_compare_output",
    "check_tasks",
    "compare",
    "format_table",
]
