"""The one interface every fix implements (as captum's ``Attribution(forward_func).attribute()``).

A :class:`Fix` holds its own options and :meth:`Fix.prepare` makes it ready on a backbone, given a
:class:`FixContext` (the directions, the rule, the images, an output folder). What comes back is a
:class:`FixHandle`: the model to run (a repaired or clamped copy, or the original), hooks that
:meth:`FixHandle.apply` attaches and :meth:`FixHandle.remove` takes off, the fix's details and its
:class:`Cost`. ``sinder compare`` iterates over fixes through this interface alone, and its command
line, its table and its page take their flags, names and descriptions from the fix classes.

Adding a fix is one module: a :class:`Fix` subclass with a ``name``, a ``description``,
``add_arguments``/``from_args`` for its flags and ``prepare``, listed in :data:`sinder.fixes.FIXES`.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..backbones.base import Backbone
from ..detect import DefectRule
from ..images import ImageItem, ImageSet


@dataclass(frozen=True)
class Cost:
    """What a fix needed: distinct images read, training images processed (with repeats), training
    steps, whether it edits the weights, and its preparation wall time."""

    images: int | None = 0
    training_images_seen: int | None = 0
    training_steps: int | None = 0
    edits_weights: bool = False
    seconds: float = 0.0

    def needs(self) -> dict:
        """The ``needs`` entry of ``compare.json`` (everything but the seconds)."""
        out = asdict(self)
        out.pop("seconds")
        return out


@dataclass
class FixContext:
    """What a fix may read while it prepares; compare fills it once for every fix."""

    directions: torch.Tensor  # (depth, D) the original model's ν_i
    rule: DefectRule
    batch_size: int = 8
    train: ImageSet | None = None  # decoded training images (searches read them)
    train_items: Sequence[ImageItem] | None = None  # the same, as given (training runs load them)
    out: Path | None = None  # a folder for the fix's own outputs (registers.json, a repair run)
    overwrite: bool = False


@dataclass
class FixHandle:
    """A fix made ready: ``backbone`` is the model it is judged on; ``hooks`` (if any) make a context
    manager that attaches the fix for its duration (test-time fixes edit no weight)."""

    name: str
    backbone: Backbone
    cost: Cost
    details: dict = field(default_factory=dict)
    hooks: Callable[[], contextlib.AbstractContextManager] | None = None
    live_details: Callable[[], dict] | None = None  # details counted while the fix ran (read after measuring)
    own_directions: bool = False  # judged along its own ν (a retrained model), not the original's
    _attached: contextlib.ExitStack | None = field(default=None, repr=False, compare=False)  # hooks while applied

    @contextlib.contextmanager
    def active(self) -> Iterator[Backbone]:
        """The backbone with the fix applied for the duration of ``with``."""
        self.apply()
        try:
            yield self.backbone
        finally:
            self.remove()

    def apply(self) -> Backbone:
        """Attach the fix's hooks (none for a weight edit); returns the model to run."""
        if self.hooks is not None and self._attached is None:
            self._attached = contextlib.ExitStack()
            self._attached.enter_context(self.hooks())
        return self.backbone

    def remove(self) -> None:
        if self._attached is not None:
            self._attached.close()
            self._attached = None

    def all_details(self) -> dict:
        return {**self.details, **(self.live_details() if self.live_details else {})}


class Fix:
    """Base class of the fixes. Subclasses are frozen dataclasses of their options, with:

    ``name``/``description``: the row's name and the page's sentence; ``prepare``: make it ready;
    ``check``: refuse options that do not fit a model; ``needs_training_images``: whether ``prepare`` reads ``context.train``; ``add_arguments`` /
    ``from_args``: its ``sinder compare`` flags; ``notes``: warnings about a prepared handle."""

    name: ClassVar[str]
    description: ClassVar[str]

    def prepare(self, backbone: Backbone, context: FixContext) -> FixHandle:
        raise NotImplementedError

    def check(self, backbone: Backbone) -> None:
        """Refuse options that do not fit ``backbone`` (one-line ``ConfigError``), before any work."""

    @property
    def needs_training_images(self) -> bool:
        return False

    def notes(self, handle: FixHandle) -> list[str]:
        return []

    @classmethod
    def add_arguments(cls, group: argparse._ArgumentGroup) -> None:
        """This fix's flags (none by default)."""

    @classmethod
    def from_args(cls, args: argparse.Namespace, shared: dict[str, Any]) -> Fix:
        """The fix from parsed flags; ``shared`` holds compare's rule, progress and overwrite."""
        return cls()
