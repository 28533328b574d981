"""How numbers are shown to people, in the terminal and on the pages: rates as percentages (JSON
files keep fractions), counts with their noun in the right number. One helper for every command,
so ``sinder repair`` and ``sinder demo`` never print the same rate in two units."""

from __future__ import annotations

import math

# Fractions of tokens, images, pixels or classes stored as 0-1 in JSON, shown as percentages. Keys
# ending in ``_rate`` are rates too (defect_rate, high_norm_rate, gate_rejected_rate, ...), and so
# are the downstream accuracies (``top1@K``, ``patch_top1@K``). Norm ratios, cosines, degrees and
# counts keep their own units.
RATE_KEYS = frozenset(
    {
        "energy_along_direction",
        "energy_along_u",
        "skip_ratio",
        "final_skip_ratio",
        "high_norm_recall",
        "defect_precision",
        "truth_recall",
        "truth_precision",
        "miou",
        "pixel_acc",
        "corloc",
    }
)
RATE_PREFIXES = ("top1@", "patch_top1@")


def is_rate(key: str) -> bool:
    """Whether the (possibly dotted) JSON key holds a 0-1 rate: ``metrics.before.defect_rate`` is one."""
    name = key.rsplit(".", 1)[-1]
    return name in RATE_KEYS or name.endswith("_rate") or name.startswith(RATE_PREFIXES)


def percent(fraction: object, digits: int = 2, missing: str = "–") -> str:
    """A 0-1 fraction as ``57.36%``; ``missing`` for None or a non-number."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not math.isfinite(fraction):
        return missing
    return f"{100 * fraction:.{digits}f}%"


def points(delta: object, digits: int = 2, missing: str = "–") -> str:
    """A change between two rates, in percentage points: ``-1.93 pp`` (never read as a relative change)."""
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not math.isfinite(delta):
        return missing
    return f"{100 * delta:+.{digits}f} pp"


def plural(n: int, noun: str, many: str | None = None) -> str:
    """``1 image``, ``2 images``, ``0 images`` (``many``: an irregular plural)."""
    return f"{n} {noun if n == 1 else many or noun + 's'}"
