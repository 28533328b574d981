"""The fixes ``sinder compare`` runs side by side, behind one interface.

Each :class:`Method` holds the model it is judged on (a repaired or clamped copy, or the
original with hooks) and :meth:`Method.active` makes it the one that runs. Preparing a method
records what it needed (images, training steps, seconds), so the table can say what each fix
costs besides how well it works.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..backbones.base import Backbone
from ..errors import ConfigError, WeightsError
from ..fixes import NeighbourInterpolation, NeuronRegisters, RegisterNeurons, clamp_singular_values, find_register_neurons
from ..images import ImageSet

log = logging.getLogger(__name__)

METHODS = ("sinder", "registers", "clamp", "interp")
DESCRIPTIONS = {
    "original": "the model as given",
    "sinder": "SINDER: singular values of the last blocks fine-tuned on unlabelled images, folded back into the weights",
    "registers": "test-time registers: register neurons moved into one extra token at inference (no weight edit)",
    "clamp": "σ clamp (SINDER appendix B): every block Linear's singular values capped at γ, no data",
    "interp": "neighbour interpolation: defect tokens of one block replaced by their clean 3×3 neighbours at inference",
    "retrained": "the same architecture retrained with register tokens (the costly fix the others try to match)",
}

# what a fix needs: distinct images read, training images processed (with repeats), steps, a weight edit
NO_DATA = {"images": 0, "training_images_seen": 0, "training_steps": 0, "edits_weights": False}


@dataclass
class Method:
    """One row of the comparison."""

    name: str
    backbone: Backbone
    needs: dict  # images (distinct), training_images_seen (with repeats), training_steps, edits_weights
    seconds: float  # preparation wall time (search, training, clamping)
    details: dict = field(default_factory=dict)
    hooks: Callable[[], contextlib.AbstractContextManager] | None = None
    own_directions: bool = False  # judged along its own ν (a retrained model), not the original's

    @contextlib.contextmanager
    def active(self) -> Iterator[Backbone]:
        """The backbone, with this method's hooks attached for the duration."""
        if self.hooks is None:
            yield self.backbone
            return
        with self.hooks():
            yield self.backbone


def original_method(backbone: Backbone) -> Method:
    return Method("original", backbone, dict(NO_DATA), 0.0)


def clamp_method(backbone: Backbone, gamma: float) -> Method:
    start = time.perf_counter()
    clamped = copy.deepcopy(backbone)
    result = clamp_singular_values(clamped, gamma)
    details = {"gamma": gamma, "clamped_values": result.clamped_values, "layers": result.layers, "largest_sigma": result.largest_sigma}
    return Method("clamp", clamped, {**NO_DATA, "edits_weights": True}, time.perf_counter() - start, details)


def interp_method(backbone: Backbone, layer: int, direction: torch.Tensor, rule) -> Method:
    """Neighbour interpolation at block ``layer``, along that block's ``direction`` ν."""
    fix = NeighbourInterpolation(backbone, layer, direction, rule)
    details = {"layer": layer}
    method = Method("interp", backbone, dict(NO_DATA), 0.0, details, hooks=lambda: fix)
    method.details["fix"] = fix  # its replaced-token count is read after measuring (not written to JSON)
    return method


def registers_method(
    backbone: Backbone, search_images: ImageSet | None, search_config, registers_file: str | Path | None, out: Path | None
) -> Method:
    start = time.perf_counter()
    if registers_file is not None:
        found = RegisterNeurons.load(registers_file)
        source = str(registers_file)
    else:
        if search_images is None or not len(search_images):
            raise ConfigError("registers: no training images to search register neurons on; give --data or --registers FILE")
        log.info("searching register neurons on %d images", len(search_images))
        found = find_register_neurons(backbone, search_images, search_config)
        source = "searched"
        if out is not None:
            found.save(out / "registers.json", overwrite=True)
            source = str(out / "registers.json")
    seconds = time.perf_counter() - start
    mode = search_config.mode if search_config is not None else "move"
    details = {
        "neurons": [list(n) for n in found.neurons],
        "settings": found.settings,
        "measured_on_search_images": found.measured,
        "source": source,
        "mode": mode,
    }
    images = int(found.settings.get("images", 0))
    return Method(
        "registers", backbone, {**NO_DATA, "images": images}, seconds, details, hooks=lambda: NeuronRegisters(backbone, found, mode)
    )


def sinder_from_run(backbone: Backbone, run_dir: str | Path) -> Method:
    """SINDER's row from a finished ``sinder repair`` run folder (its exported weights)."""
    from ..export import reload_exported

    run = Path(run_dir)
    path = run / "summary.json"
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"--repair-run {run}: no summary.json; give the --out folder of a finished `sinder repair` (resume an unfinished one first)"
        ) from None
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"--repair-run {run}: summary.json is unreadable ({type(err).__name__}); rerun the repair") from None
    spec = (summary.get("model") or {}).get("model")
    if spec != backbone.spec:
        raise ConfigError(f"--repair-run {run} repaired {spec!r}, not {backbone.spec!r}; compare the model that run repaired")
    weights = summary.get("weights")
    if not weights or not Path(weights).exists():
        raise WeightsError(f"--repair-run {run}: its exported weights ({weights}) are missing; rerun the repair with export on")
    start = time.perf_counter()
    repaired = reload_exported(backbone, weights)
    log.info("loaded the repaired weights of %s in %.1f s", run, time.perf_counter() - start)
    needs = {
        "images": summary.get("num_train_images"),
        "training_images_seen": summary.get("images_seen"),
        "training_steps": summary.get("steps"),
        "edits_weights": True,
    }
    details = {"run": str(run), "weights": weights, "stop_reason": summary.get("stop_reason"), "reused": True}
    return Method("sinder", repaired, needs, float(summary.get("seconds") or 0.0), details)


def sinder_by_training(backbone: Backbone, train_items, eval_items, repair_config, out: Path) -> Method:
    """SINDER's row by repairing a copy of ``backbone`` now (the run folder is kept under ``out``)."""
    from ..repair import repair

    repaired = copy.deepcopy(backbone)
    start = time.perf_counter()
    result = repair(repaired, train_items, repair_config, eval_items, out_dir=out)
    s = result.summary
    details = {"run": str(out), "weights": s.get("weights"), "stop_reason": s.get("stop_reason"), "reused": False}
    needs = {
        "images": s.get("num_train_images"),
        "training_images_seen": s.get("images_seen"),
        "training_steps": s.get("steps"),
        "edits_weights": True,
    }
    return Method("sinder", repaired, needs, time.perf_counter() - start, details)


def retrained_method(spec: str, weights: str | None, device, original: Backbone) -> Method:
    from ..backbones import load_backbone

    start = time.perf_counter()
    other = load_backbone(spec, weights, device=device)
    if other.patch_size != original.patch_size:
        raise ConfigError(
            f"--retrained {spec} has {other.patch_size} px patches and {original.spec} {original.patch_size} px; the maps must line up: give the same architecture"
        )
    details = {"model": spec, "weights": weights}
    return Method(
        "retrained",
        other,
        {"images": None, "training_images_seen": None, "training_steps": None, "edits_weights": True},
        time.perf_counter() - start,
        details,
        own_directions=True,
    )
