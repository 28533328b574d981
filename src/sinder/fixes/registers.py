"""Test-time registers (Jiang et al., NeurIPS 2025, "Vision Transformers Don't Need Trained
Registers"): a few MLP hidden units ("register neurons") write the high-norm outliers; at
inference their activation is moved from the patch tokens into one extra token.

* :func:`find_register_neurons` marks outlier patch tokens by norm at a detection layer, scores
  every MLP hidden unit (after the activation) of the layers up to a limit by its mean
  |activation| at those tokens, averaged over images, and keeps the global top-k. sinder
  automates the paper's rules of thumb: the layer limit is where the outliers first appear,
  and top-k is raised until the outliers are gone on the search images.
* :class:`RegisterNeurons` is what was found: the ``registers.json`` of a run.
* :class:`NeuronRegisters` applies it to the user's own model with hooks (no weight edit):
  one zero token is inserted after the prefix tokens before every block and dropped after
  it, so every block output has the model's own shape; the token travels from block to block.
  At each register neuron the token gets the neuron's signed maximum over the image's tokens
  (the value of largest magnitude) and the patch tokens get 0; prefix tokens (CLS, trained
  registers) keep theirs, as in the public code. Each image of a batch is handled on its own
  (the public code edits only the first image), so results do not depend on the batch.

``mode="zero"`` only zeroes the neurons on the patch tokens, with no extra token: an ablation
known to hurt (OpenCLIP zero-shot 70.4 → 55.6 in the paper).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ..backbones.base import Backbone
from ..errors import ConfigError, OutputExistsError, WeightsError, require
from ..images import ImageSet
from ..io import write_json
from .base import Cost, Fix, FixContext, FixHandle

log = logging.getLogger(__name__)

FORMAT = "sinder-registers"
VERSION = 1
Mode = Literal["move", "zero"]
TOP_K_STEPS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def hidden_units(backbone: Backbone, layer: int) -> int:
    """MLP hidden units of block ``layer``: the input width of its output projection."""
    return backbone.block_view(layer).mlp_out.module.in_features


@dataclass(frozen=True)
class RegisterNeurons:
    """Register neurons of one model: ``(layer, unit)`` pairs, best first, and how they were found."""

    neurons: tuple[tuple[int, int], ...]
    model: str
    depth: int
    hidden: tuple[int, ...]  # hidden units per layer (checked when applied to a model)
    scores: tuple[float, ...] = ()
    settings: dict = field(default_factory=dict)
    measured: dict = field(default_factory=dict)  # outlier counts on the search images

    def by_layer(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for layer, unit in self.neurons:
            out.setdefault(layer, []).append(unit)
        return out

    def top(self, k: int) -> RegisterNeurons:
        return RegisterNeurons(self.neurons[:k], self.model, self.depth, self.hidden, self.scores[:k], self.settings, self.measured)

    def check_fits(self, backbone: Backbone) -> None:
        """One-line error when these neurons were found on a model of another shape."""
        if backbone.depth != self.depth:
            raise ConfigError(
                f"register neurons were found on a {self.depth}-block model ({self.model}); {backbone.spec} has {backbone.depth} blocks"
            )
        for layer, unit in self.neurons:
            if unit >= hidden_units(backbone, layer):
                raise ConfigError(
                    f"register neuron ({layer}, {unit}) does not exist in {backbone.spec}: block {layer} has {hidden_units(backbone, layer)} MLP hidden units"
                )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["neurons"] = [list(n) for n in self.neurons]
        d["hidden"] = list(self.hidden)
        d["scores"] = list(self.scores)
        return {"format": FORMAT, "version": VERSION, **d}

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        path = Path(path)
        if path.exists() and not overwrite:
            raise OutputExistsError(f"{path} exists; pass --overwrite (overwrite=True) to replace it")
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> RegisterNeurons:
        path = Path(path)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise WeightsError(
                f"{path}: no such file; give the registers.json written by `sinder compare` or find_register_neurons"
            ) from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise WeightsError(
                f"{path}: not a readable registers.json ({type(err).__name__}); write it again with `sinder compare`"
            ) from None
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise WeightsError(f'{path}: not a sinder registers file (no "format": "{FORMAT}")')
        if d.get("version") != VERSION:
            raise WeightsError(f"{path}: registers format version {d.get('version')!r}; this sinder reads version {VERSION}")
        try:
            neurons = tuple((int(a), int(b)) for a, b in d["neurons"])
            depth, hidden = int(d["depth"]), tuple(int(h) for h in d["hidden"])
            scores = tuple(float(s) for s in d.get("scores", ()))
        except (KeyError, TypeError, ValueError) as err:
            raise WeightsError(
                f"{path}: malformed registers.json ({type(err).__name__}: {err}); write it again with `sinder compare`"
            ) from None
        bad = [n for n in neurons if not (0 <= n[0] < depth and len(hidden) == depth and 0 <= n[1] < hidden[n[0]])]
        if bad:
            raise WeightsError(
                f"{path}: neuron {bad[0]} is outside the recorded model ({depth} blocks); write it again with `sinder compare`"
            )
        return cls(neurons, str(d.get("model", "")), depth, hidden, scores, dict(d.get("settings", {})), dict(d.get("measured", {})))


class NeuronRegisters:
    """``with NeuronRegisters(backbone, neurons):`` runs the model with test-time registers.

    Works through the model's own forward (the hooks sit on its blocks and MLP output
    projections) and through sinder's ``embed``/``run_block``. :meth:`remove` restores the
    original model exactly."""

    def __init__(self, backbone: Backbone, neurons: RegisterNeurons, mode: Mode = "move") -> None:
        require(mode in ("move", "zero"), f"mode must be 'move' or 'zero', got {mode!r}")
        require(len(neurons.neurons) > 0, "no register neurons to apply; search with a larger top_k or a lower threshold")
        neurons.check_fits(backbone)
        self.backbone, self.neurons, self.mode = backbone, neurons, mode
        self._handles: list = []
        self._carry: torch.Tensor | None = None  # the extra token between two blocks
        self._expect = 0  # the block whose input gets the carried token (any other starts afresh)
        self._inside = False  # a block call with the extra token is running

    @property
    def inserts_token(self) -> bool:
        return self.mode == "move"

    # -- hooks -------------------------------------------------------------------------------
    def _enter(self, index: int, module, args, kwargs):
        x = args[0]
        p = self.backbone.num_prefix_tokens
        carry = self._carry
        if index == 0 or index != self._expect or carry is None or carry.shape[0] != x.shape[0]:
            carry = x.new_zeros(x.shape[0], 1, x.shape[-1])
        self._inside = True
        x = torch.cat([x[:, :p], carry.to(x.dtype), x[:, p:]], dim=1)
        return (x, *args[1:]), self.backbone.extra_prefix_kwargs(kwargs)

    def _leave(self, index: int, module, args, output):
        self._inside = False
        x = output[0] if isinstance(output, tuple) else output
        p = self.backbone.num_prefix_tokens
        self._carry, self._expect = x[:, p : p + 1], index + 1
        x = torch.cat([x[:, :p], x[:, p + 1 :]], dim=1)
        return (x, *output[1:]) if isinstance(output, tuple) else x

    def _edit_hidden(self, units: torch.Tensor, module, args):
        h = args[0]
        p = self.backbone.num_prefix_tokens
        if self.mode == "zero":
            h = h.clone()
            h[:, p:, units.to(h.device)] = 0
            return (h, *args[1:])
        if not self._inside:  # the MLP called outside a block with the extra token: leave it alone
            return None
        units = units.to(h.device)
        acts = h[:, :, units]  # B, N+1, k
        pick = acts.abs().argmax(dim=1, keepdim=True)
        signed_max = acts.gather(1, pick)  # B, 1, k: per image and neuron, the value of largest magnitude
        h = h.clone()
        h[:, p : p + 1, units] = signed_max
        h[:, p + 1 :, units] = 0
        return (h, *args[1:])

    # -- life cycle --------------------------------------------------------------------------
    def attach(self) -> NeuronRegisters:
        if self._handles:
            return self
        try:
            if self.inserts_token:
                for i, blk in enumerate(self.backbone.blocks()):
                    self._handles.append(blk.register_forward_pre_hook(partial(self._enter, i), with_kwargs=True))
                    self._handles.append(blk.register_forward_hook(partial(self._leave, i)))
            for layer, units in self.neurons.by_layer().items():
                out: nn.Module = self.backbone.block_view(layer).mlp_out.module
                self._handles.append(out.register_forward_pre_hook(partial(self._edit_hidden, torch.tensor(units))))
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._carry, self._expect, self._inside = None, 0, False

    def __enter__(self) -> NeuronRegisters:
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.remove()


def apply_registers(backbone: Backbone, registers: RegisterNeurons | str | Path, mode: Mode = "move") -> NeuronRegisters:
    """Attach test-time registers (a :class:`RegisterNeurons` or a ``registers.json`` path) to
    ``backbone``'s model; call ``.remove()`` on the result (or use it in ``with``) to undo."""
    if not isinstance(registers, RegisterNeurons):
        registers = RegisterNeurons.load(registers)
    return NeuronRegisters(backbone, registers, mode).attach()


# -- the search -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RegisterSearchConfig:
    """Settings of the register-neuron search (validated on construction).

    detect_layer: where outliers are marked (None: the second-to-last block, as published for
        DINOv2-L; negative counts from the end).
    threshold: absolute norm above which a patch token is an outlier (DINOv2-L: 150); None:
        mean + ``sigmas``·std of that layer's patch norms over the search images.
    layer_limit: the last layer whose units are scored (None: the first layer where the outliers
        appear, i.e. where most of them are already norm outliers).
    top_k: neurons kept (None: 1, 2, 4, … until at most ``residual`` of the outliers are left on
        the search images, up to ``max_top_k``).
    """

    detect_layer: int | None = None
    threshold: float | None = None
    sigmas: float = 3.0
    layer_limit: int | None = None
    top_k: int | None = None
    max_top_k: int = 64
    residual: float = 0.05
    mode: Mode = "move"

    def __post_init__(self) -> None:
        require(self.threshold is None or self.threshold > 0, f"threshold must be > 0, got {self.threshold}")
        require(self.sigmas > 0, f"sigmas must be > 0, got {self.sigmas}")
        require(self.top_k is None or self.top_k >= 1, f"top_k must be >= 1, got {self.top_k}")
        require(self.layer_limit is None or self.layer_limit >= 0, f"layer_limit must be >= 0, got {self.layer_limit}")
        require(self.max_top_k >= 1, f"max_top_k must be >= 1, got {self.max_top_k}")
        require(0 <= self.residual < 1, f"residual must be in [0, 1), got {self.residual}")
        require(self.mode in ("move", "zero"), f"mode must be 'move' or 'zero', got {self.mode!r}")

    def resolve_layer(self, depth: int) -> int:
        layer = depth - 2 if self.detect_layer is None else self.detect_layer
        layer = layer + depth if layer < 0 else layer
        require(0 <= layer < depth, f"detect_layer must be in -{depth}..{depth - 1}, got {self.detect_layer}")
        require(
            self.layer_limit is None or 0 <= self.layer_limit <= layer,
            f"layer_limit must be in 0..{layer} (the detection layer), got {self.layer_limit}",
        )
        return max(layer, 0)


@torch.no_grad()
def patch_norms(backbone: Backbone, pixels: torch.Tensor, upto: int) -> torch.Tensor:
    """(layers, B, H·W) patch-token norms of blocks 0..upto (before the final norm)."""
    outputs, _ = backbone.forward_layers(pixels.to(backbone.device, backbone.dtype), upto=upto)
    p = backbone.num_prefix_tokens
    return torch.stack([x[:, p:].float().norm(dim=-1).cpu() for x in outputs])


def count_outliers(backbone: Backbone, images: ImageSet, layer: int, threshold: float, batch_size: int = 8) -> int:
    """Patch tokens of block ``layer``'s output with a norm above ``threshold``, over ``images``."""
    return sum(int((patch_norms(backbone, px, layer)[-1] > threshold).sum()) for _, px in images.batches(batch_size))


@torch.no_grad()
def _score_units(
    backbone: Backbone, images: ImageSet, layer: int, limit: int, threshold: float, batch_size: int
) -> tuple[torch.Tensor, int]:
    """(limit+1, max hidden) mean |activation| at the outlier tokens, averaged over the images that have some."""
    p = backbone.num_prefix_tokens
    widths = [hidden_units(backbone, i) for i in range(limit + 1)]
    total = torch.zeros(limit + 1, max(widths), dtype=torch.float64)
    seen: dict[int, torch.Tensor] = {}
    handles = [
        backbone.block_view(i).mlp_out.module.register_forward_pre_hook(
            lambda m, a, i=i: seen.__setitem__(i, a[0][:, p:].detach().float().cpu())
        )
        for i in range(limit + 1)
    ]
    counted = 0
    try:
        for _, px in images.batches(batch_size):
            seen.clear()
            outlier = patch_norms(backbone, px, layer)[-1] > threshold  # B, H·W
            for b in range(px.shape[0]):
                if not outlier[b].any():
                    continue
                counted += 1
                for i in range(limit + 1):
                    total[i, : widths[i]] += seen[i][b][outlier[b]].abs().mean(dim=0).double()
    finally:
        for h in handles:
            h.remove()
    return total / max(counted, 1), counted


class NoOutliersError(ConfigError):
    """The search found no high-norm outlier to attribute to neurons: nothing for registers to do."""


def find_register_neurons(
    backbone: Backbone, images: ImageSet, config: RegisterSearchConfig | None = None, *, batch_size: int = 8
) -> RegisterNeurons:
    """Search the register neurons of ``backbone`` on ``images`` (unlabelled; a few dozen suffice),
    ``batch_size`` images per forward pass.

    Raises a one-line ``ConfigError`` when no image has an outlier at the detection layer."""
    cfg = config or RegisterSearchConfig()
    depth = backbone.depth
    layer = cfg.resolve_layer(depth)
    norms = torch.cat([patch_norms(backbone, px, layer) for _, px in images.batches(batch_size)], dim=1)  # L, B, HW
    if norms.shape[1] == 0:
        raise ConfigError("no usable image to search register neurons on; give a folder of photos")
    last = norms[-1]
    threshold = cfg.threshold if cfg.threshold is not None else float(last.mean() + cfg.sigmas * last.std())
    outliers = last > threshold
    before = int(outliers.sum())
    if before == 0:
        raise NoOutliersError(
            f"no patch token at block {layer} has a norm above {threshold:.4g} on {norms.shape[1]} image(s); "
            "this model may have no high-norm outliers there: pick another detect_layer or a lower threshold"
        )
    limit = cfg.layer_limit if cfg.layer_limit is not None else first_outlier_layer(norms, outliers, cfg.sigmas)
    scores, counted = _score_units(backbone, images, layer, limit, threshold, batch_size)
    ranked = _ranked_units(backbone, scores, cfg.top_k if cfg.top_k is not None else cfg.max_top_k)
    found = RegisterNeurons(
        neurons=tuple(ranked),
        model=backbone.spec,
        depth=depth,
        hidden=tuple(hidden_units(backbone, i) for i in range(depth)),
        scores=tuple(float(scores[layer, u]) for layer, u in ranked),
        settings={
            **asdict(cfg),
            "detect_layer": layer,
            "threshold": threshold,
            "layer_limit": limit,
            "images": norms.shape[1],
            "images_with_outliers": counted,
        },
    )
    k, after = _choose_top_k(backbone, images, found, before, cfg, batch_size)
    chosen = found.top(k)
    measured = {
        "outliers_before": before,
        "outliers_after": after,
        "outlier_rate_before": before / outliers.numel(),
        "outlier_rate_after": after / outliers.numel(),
    }
    settings = {**chosen.settings, "top_k": k, "top_k_auto": cfg.top_k is None}
    log.info("register neurons: top-%d of layers 0..%d; outliers at block %d: %d -> %d", k, limit, layer, before, after)
    if after > cfg.residual * before:
        log.warning(
            "register neurons leave %d of %d outliers at block %d even at top-%d: they may not be written by MLP neurons "
            "(e.g. by attention), and test-time registers will not remove them",
            after,
            before,
            layer,
            k,
        )
    return RegisterNeurons(chosen.neurons, chosen.model, depth, chosen.hidden, chosen.scores, settings, measured)


def _ranked_units(backbone: Backbone, scores: torch.Tensor, keep: int) -> list[tuple[int, int]]:
    """The ``keep`` best (layer, unit) of ``scores`` (layers, widest hidden), best first; units past
    a narrower layer's width (padding) are skipped."""
    widths = [hidden_units(backbone, i) for i in range(scores.shape[0])]
    width = scores.shape[1]
    ranked = [(int(i) // width, int(i) % width) for i in scores.flatten().argsort(descending=True)]
    return [(layer, u) for layer, u in ranked if u < widths[layer]][:keep]


def first_outlier_layer(norms: torch.Tensor, outliers: torch.Tensor, sigmas: float) -> int:
    """The first layer at which most of the detection layer's outliers are already norm outliers
    (mean + sigmas·std of that layer's patch norms); the detection layer when none is earlier."""
    for i in range(norms.shape[0]):
        layer_norms = norms[i]
        above = layer_norms > layer_norms.mean() + sigmas * layer_norms.std()
        if float(above[outliers].float().mean()) >= 0.5:
            return i
    return norms.shape[0] - 1


def _choose_top_k(backbone, images, found: RegisterNeurons, before: int, cfg: RegisterSearchConfig, batch_size: int) -> tuple[int, int]:
    """(k, outliers left at the search's layer and threshold) for the configured top_k, or the
    smallest step that leaves ≤ residual."""
    layer, threshold = found.settings["detect_layer"], found.settings["threshold"]
    available = len(found.neurons)
    steps = (
        [min(cfg.top_k, available)]
        if cfg.top_k is not None
        else sorted({min(s, available) for s in TOP_K_STEPS if s <= cfg.max_top_k} | {min(cfg.max_top_k, available)})
    )
    after = before
    for k in steps:
        with NeuronRegisters(backbone, found.top(k), cfg.mode):
            after = count_outliers(backbone, images, layer, threshold, batch_size)
        log.debug("top-%d register neurons leave %d of %d outliers", k, after, before)
        if after <= cfg.residual * before:
            return k, after
    return steps[-1], after


# -- as a fix -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RegistersFix(Fix):
    """Test-time registers as a :class:`~sinder.fixes.base.Fix`: register neurons read from
    ``file`` or searched on the context's training images (with ``search``, at the context's batch
    size), applied by hooks on the original model. The search's result is saved as
    ``registers.json`` in the context's output folder."""

    file: str | None = None
    search: RegisterSearchConfig = field(default_factory=RegisterSearchConfig)

    name = "registers"
    description = "test-time registers: register neurons moved into one extra token at inference (no weight edit)"

    @property
    def needs_training_images(self) -> bool:
        return self.file is None

    def prepare(self, backbone: Backbone, context: FixContext) -> FixHandle:
        start = time.perf_counter()
        if self.file is not None:
            found, source = RegisterNeurons.load(self.file), str(self.file)
        else:
            if context.train is None or not len(context.train):
                raise ConfigError("registers: no training images to search register neurons on; give --data or --registers FILE")
            log.info("searching register neurons on %d images", len(context.train))
            found = find_register_neurons(backbone, context.train, self.search, batch_size=context.batch_size)
            source = "searched"
            if context.out is not None:
                found.save(context.out / "registers.json", overwrite=True)
                source = str(context.out / "registers.json")
        mode = self.search.mode
        details = {
            "neurons": [list(n) for n in found.neurons],
            "settings": found.settings,
            "measured_on_search_images": found.measured,
            "source": source,
            "mode": mode,
        }
        cost = Cost(images=int(found.settings.get("images", 0)), seconds=time.perf_counter() - start)
        return FixHandle(self.name, backbone, cost, details, hooks=lambda: NeuronRegisters(backbone, found, mode))

    def notes(self, handle: FixHandle) -> list[str]:
        measured, d = handle.details.get("measured_on_search_images"), handle.details
        if not measured or measured["outliers_after"] <= d["settings"].get("residual", 0.05) * measured["outliers_before"]:
            return []
        return [
            f"registers: the {len(d['neurons'])} register neuron(s) left {measured['outliers_after']} of "
            f"{measured['outliers_before']} outliers on the search images; this model's outliers may not be written by "
            "MLP neurons (e.g. by attention), which test-time registers assume"
        ]

    @classmethod
    def add_arguments(cls, group: argparse._ArgumentGroup) -> None:
        group.add_argument(
            "--registers",
            metavar="FILE",
            help="apply this registers.json instead of searching register neurons (default: search on --data)",
        )
        group.add_argument(
            "--registers-mode",
            choices=("move", "zero"),
            default=RegisterSearchConfig.mode,
            help="move: into an extra token (the method); zero: only zero them on patch tokens (an ablation) (default move)",
        )
        group.add_argument(
            "--registers-threshold",
            type=float,
            metavar="NORM",
            help="register search: outlier patch-token norm (published for DINOv2-L/14: 150; default: mean + 3 std over --data)",
        )
        group.add_argument(
            "--registers-layer-limit",
            type=int,
            metavar="N",
            help="register search: score the MLP units of blocks 0..N (published for DINOv2-L/14: 17; default: where the outliers appear)",
        )
        group.add_argument(
            "--registers-top-k",
            type=int,
            metavar="K",
            help="register search: keep K neurons (published for DINOv2-L/14: 50; default: grow 1, 2, 4, ... until the outliers are gone)",
        )

    @classmethod
    def from_args(cls, args: argparse.Namespace, shared: dict[str, Any]) -> RegistersFix:
        try:
            search = RegisterSearchConfig(
                threshold=args.registers_threshold,
                layer_limit=args.registers_layer_limit,
                top_k=args.registers_top_k,
                mode=args.registers_mode,
            )
        except ConfigError as err:
            raise ConfigError(f"--registers-{str(err).replace('_', '-', 1)}") from None  # top_k -> --registers-top-k
        return cls(file=args.registers, search=search)
