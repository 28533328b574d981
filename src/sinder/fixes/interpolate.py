"""Neighbour interpolation (as in SC-CLIP): at inference, after one chosen block, every defect
token (sinder's defect rule on |cos| with that layer's ν_i) is replaced by the mean of its
non-defect 3×3 neighbours. No training and no weight edit: a forward hook on the user's own
block, removed by :meth:`NeighbourInterpolation.remove` (or on leaving ``with``).

The hook sees tokens, not pixels, so the patch grid is taken as square unless ``grid`` is given.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..backbones.base import Backbone
from ..detect import DefectRule
from ..errors import ConfigError, require
from ..options import add_option, integer, option, validate
from .base import Cost, Fix, FixContext, FixHandle


def interpolate_defects(grid: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, H, W, D) tokens with each ``mask``ed one replaced by the mean of its unmasked 3×3
    neighbours; a token whose neighbours are all masked is left as it was."""
    x = grid.permute(0, 3, 1, 2)  # B, D, H, W
    keep = (~mask).to(x.dtype)[:, None]
    ring = torch.ones(3, 3, dtype=x.dtype, device=x.device)
    ring[1, 1] = 0
    d = x.shape[1]
    total = F.conv2d(x * keep, ring.expand(d, 1, 3, 3), padding=1, groups=d)
    count = F.conv2d(keep, ring[None, None], padding=1)
    replace = mask[:, None] & (count > 0)
    return torch.where(replace, total / count.clamp_min(1), x).permute(0, 2, 3, 1)


class NeighbourInterpolation:
    """``with NeighbourInterpolation(backbone, layer, direction):`` — the model's forward (and
    sinder's block calls) then interpolate the defects of block ``layer``'s output."""

    def __init__(
        self, backbone: Backbone, layer: int, direction: torch.Tensor, rule: DefectRule | None = None, grid: tuple[int, int] | None = None
    ) -> None:
        require(0 <= layer < backbone.depth, f"layer must be in 0..{backbone.depth - 1}, got {layer}")
        self.backbone, self.layer, self.grid = backbone, layer, grid
        self.direction = direction.detach().float()
        self.rule = rule or DefectRule()
        self.replaced = 0  # tokens replaced since attached (a measurement for compare)
        self._handle = None

    def _grid(self, patches: int) -> tuple[int, int]:
        if self.grid is not None:
            return self.grid
        side = math.isqrt(patches)
        if side * side != patches:
            raise ConfigError(f"{patches} patch tokens are not a square grid; pass grid=(rows, cols) to NeighbourInterpolation")
        return side, side

    @torch.no_grad()
    def _hook(self, module, inputs, output):
        x = output[0] if isinstance(output, tuple) else output
        p = self.backbone.num_prefix_tokens
        h, w = self._grid(x.shape[1] - p)
        grid = x[:, p:].reshape(x.shape[0], h, w, x.shape[-1])
        mask = self.rule.detect(grid, self.direction.to(grid.device), self.layer)
        self.replaced += int(mask.sum())
        fixed = torch.cat([x[:, :p], interpolate_defects(grid.float(), mask).to(x.dtype).flatten(1, 2)], dim=1)
        return (fixed, *output[1:]) if isinstance(output, tuple) else fixed

    def attach(self) -> NeighbourInterpolation:
        if self._handle is None:
            self._handle = self.backbone.blocks()[self.layer].register_forward_hook(self._hook)
        return self

    def remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def __enter__(self) -> NeighbourInterpolation:
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.remove()


@dataclass(frozen=True)
class InterpolationFix(Fix):
    """Neighbour interpolation as a :class:`~sinder.fixes.base.Fix`: hooks on the original model at
    block ``layer`` (None: the last, where it measured best on the zoo), along that block's ν."""

    layer: int | None = option(
        None,
        check=integer(0, optional=True),
        help="neighbour interpolation: the block whose output is interpolated",
        flag="--interp-layer",
        none="the last",
    )

    name = "interp"
    description = "neighbour interpolation: defect tokens of one block replaced by their clean 3×3 neighbours at inference"

    def __post_init__(self) -> None:
        validate(self)

    def check(self, backbone: Backbone) -> None:
        self.resolve_layer(backbone)

    def resolve_layer(self, backbone: Backbone) -> int:
        layer = backbone.depth - 1 if self.layer is None else self.layer
        require(0 <= layer < backbone.depth, f"--interp-layer must be in 0..{backbone.depth - 1}, got {self.layer}")
        return layer

    def prepare(self, backbone: Backbone, context: FixContext) -> FixHandle:
        layer = self.resolve_layer(backbone)
        hook = NeighbourInterpolation(backbone, layer, context.directions[layer], context.rule)
        return FixHandle(
            self.name, backbone, Cost(), {"layer": layer}, hooks=lambda: hook, live_details=lambda: {"replaced_tokens": hook.replaced}
        )

    @classmethod
    def add_arguments(cls, group: argparse._ArgumentGroup) -> None:
        add_option(group, cls, "layer", dest="interp_layer")

    @classmethod
    def from_args(cls, args: argparse.Namespace, shared: dict[str, Any]) -> InterpolationFix:
        return cls(layer=args.interp_layer)
