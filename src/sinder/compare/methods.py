"""The rows of ``sinder compare`` that are not fixes: the original model and a model retrained
with registers, as :class:`~sinder.fixes.base.FixHandle` s beside the fixes' own; and the names and
descriptions the table and page show, taken from the fix classes (:data:`sinder.fixes.FIXES`)."""

from __future__ import annotations

import time

from ..backbones.base import Backbone
from ..errors import ConfigError
from ..fixes import FIXES, Cost, FixHandle

METHODS = tuple(FIXES)
DESCRIPTIONS = {
    "original": "the model as given",
    **{name: fix.description for name, fix in FIXES.items()},
    "retrained": "the same architecture retrained with register tokens (the costly fix the others try to match)",
}


def original_method(backbone: Backbone) -> FixHandle:
    return FixHandle("original", backbone, Cost())


def retrained_method(spec: str, weights: str | None, device, original: Backbone) -> FixHandle:
    from ..backbones import load_backbone

    start = time.perf_counter()
    other = load_backbone(spec, weights, device=device)
    if other.patch_size != original.patch_size:
        raise ConfigError(
            f"--retrained {spec} has {other.patch_size} px patches and {original.spec} {original.patch_size} px; the maps must line up: give the same architecture"
        )
    cost = Cost(None, None, None, True, time.perf_counter() - start)
    return FixHandle("retrained", other, cost, {"model": spec, "weights": weights}, own_directions=True)
