"""The options of ``sinder report`` (a light module: the command line reads them without loading
the figures)."""

from __future__ import annotations

from dataclasses import dataclass

from ..options import integer, option, validate


@dataclass(frozen=True)
class ReportConfig:
    """Options of ``sinder report`` (validated on construction)."""

    title: str | None = None
    max_images: int = option(12, check=integer(1), help="at most this many images side by side")
    dpi: int = option(80, check=integer(30, 300), help="resolution of the embedded figures")

    def __post_init__(self) -> None:
        validate(self)
