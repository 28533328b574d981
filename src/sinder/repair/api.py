"""``repair()``: the whole run — data, directions, σ-parametrisation, training loop with
checkpoints and stop rule, before/after metrics, folding, export and its verification."""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..backbones.base import Backbone
from ..errors import ConfigError, ImageError, OutputExistsError, SinderError, WeightsError
from ..io import write_json, write_text
from .checkpoint import CHECKPOINT, TrainState, check_compatible, load_checkpoint, save_checkpoint
from .config import RepairConfig
from .data import ImageItem, ImageSet, SeededOrder, resolve_resolution
from .distributed import DistContext, current
from .engine import StepResult, Trainer
from .metrics import compare
from .singular import SingularModel, attach

log = logging.getLogger(__name__)

ARTEFACTS = ("config.json", "log.jsonl", "summary.json", "sigma.safetensors", CHECKPOINT, "checkpoints", "weights")


@dataclass
class RepairResult:
    backbone: Backbone  # the same object that was passed in, now repaired (folded, plain modules)
    config: RepairConfig  # with the resolution resolved
    summary: dict
    epsilon: dict[str, torch.Tensor]  # the learned singular-value corrections, by "blocks.i.role"
    log: list[dict] = field(default_factory=list)
    out_dir: Path | None = None
    weights_path: Path | None = None
    written: list[Path] = field(default_factory=list)  # files this process wrote

    @property
    def steps(self) -> int:
        return self.summary["steps"]

    @property
    def images_seen(self) -> int:
        return self.summary["images_seen"]

    @property
    def seconds(self) -> float:
        return self.summary["seconds"]

    @property
    def stop_reason(self) -> str:
        return self.summary["stop_reason"]


def _finite(v):
    return v if isinstance(v, (int, float)) and math.isfinite(v) else None


def _json_safe(obj):
    """NaN/inf -> None, recursively (summary.json is strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


class _Log:
    """``log.jsonl`` (rank 0 only): one JSON object per step, flushed as it goes."""

    def __init__(self, path: Path | None, keep_until: int | None) -> None:
        self.path = path
        self.rows: list[dict] = []
        if path is None:
            return
        if keep_until is not None and path.exists():
            kept = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= keep_until]
            write_text(path, "".join(ln + "\n" for ln in kept))
        else:
            write_text(path, "")
        self._fh = open(path, "a", encoding="utf-8")

    def write(self, row: dict) -> None:
        self.rows.append(row)
        if self.path is not None:
            self._fh.write(json.dumps(row) + "\n")
            self._fh.flush()

    def close(self) -> None:
        if self.path is not None:
            self._fh.close()


def check_out(out: Path, config: RepairConfig, resumable: bool = True) -> None:
    """Refuse an unusable ``--out`` before any work (``resumable``: the caller offers --resume)."""
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out} exists and is not a directory; choose another --out")
    if out.exists() and any(out.iterdir()) and not (config.resume or config.overwrite):
        options = "pass --resume to continue that run, --overwrite to replace it" if resumable else "pass --overwrite to replace it"
        raise OutputExistsError(f"{out} already exists; {options}, or choose another --out")
    # config.json is written when a run starts: without it there is nothing to continue (a run
    # stopped before its first checkpoint has it, and restarts from step 0)
    if config.resume and not (out / "config.json").is_file():
        raise ConfigError(f"--resume: {out} holds no repair run (no config.json); drop --resume to start a new run there")


def _clear_out(out: Path) -> None:
    for name in ARTEFACTS:
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def _directions(backbone: Backbone, config: RepairConfig, directions: torch.Tensor | None, dist: DistContext) -> torch.Tensor:
    if directions is None:
        from ..theory import defect_directions

        directions = defect_directions(backbone, method=config.directions)
    directions = torch.as_tensor(directions).detach().float().cpu()
    if directions.shape != (backbone.depth, backbone.embed_dim):
        raise ConfigError(f"directions must have shape ({backbone.depth}, {backbone.embed_dim}), got {tuple(directions.shape)}")
    if not bool(torch.isfinite(directions).all()):
        raise ConfigError("defect directions contain NaN/inf; check the model weights")
    return dist.broadcast(directions)


def _batch(data: ImageSet, order: SeededOrder, start: int, size: int) -> tuple[torch.Tensor | None, int]:
    """Pixels of positions [start, start+size) (unusable images dropped) and how many were usable."""
    px = [data.load(order(p)) for p in range(start, start + size)]
    px = [p for p in px if p is not None]
    if not px:
        return None, 0
    shape = px[0].shape
    px = [p for p in px if p.shape == shape]  # square crops at one resolution: always equal
    return torch.stack(px), len(px)


class _Batches:
    """Batches by global position; with ``threaded`` the next one is decoded while a step runs."""

    def __init__(self, data: ImageSet, order: SeededOrder, size: int, threaded: bool) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.data, self.order, self.size = data, order, size
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="sinder-data") if threaded else None
        self.pending: dict = {}

    def get(self, start: int, next_start: int) -> tuple[torch.Tensor | None, int]:
        fut = self.pending.pop(start, None)
        out = fut.result() if fut is not None else _batch(self.data, self.order, start, self.size)
        if self.pool is not None:
            self.pending = {next_start: self.pool.submit(_batch, self.data, self.order, next_start, self.size)}
        return out

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def repair(
    backbone: Backbone,
    train_images: Sequence[ImageItem],
    config: RepairConfig | None = None,
    eval_images: Sequence[ImageItem] | None = None,
    out_dir: str | os.PathLike | None = None,
    *,
    directions: torch.Tensor | None = None,
    dist: DistContext | None = None,
    on_step: Callable[[dict], None] | None = None,
) -> RepairResult:
    """Repair ``backbone`` in place with SINDER; returns what was learned and measured.

    ``train_images``/``eval_images``: folders, image files, PIL images, ``SourceImage``s or
    preprocessed (3, H, W) tensors. ``directions`` (L, D) overrides the predicted ν_i.
    With ``out_dir``: ``config.json``, ``log.jsonl``, checkpoints, ``summary.json`` and the
    repaired weights (``weights/``, the input's format), re-loaded and checked before returning.
    """
    config = config or RepairConfig()
    config.validate()
    dist = dist or current()
    config = replace(config, resolution=resolve_resolution(config.resolution, backbone))
    out = Path(out_dir) if out_dir is not None else None
    written: list[Path] = []

    if config.resolution // backbone.patch_size < 3:  # the border is excluded: no token could ever be a defect
        raise ConfigError(
            f"resolution {config.resolution} gives fewer than 3 patches per side at patch size {backbone.patch_size}; "
            f"use at least {3 * backbone.patch_size} px"
        )
    if out is not None:
        err = None
        try:
            check_out(out, config)
        except SinderError as e:
            err = e
        if not dist.agree(err is None):  # every rank raises, or none does
            raise err or OutputExistsError(f"{out} is refused on another rank; put --out on a filesystem shared by all ranks")

    # The data is checked before anything is written; every rank sees the same inputs, so all raise alike.
    train = ImageSet.from_inputs(train_images, backbone, config.resolution, limit=config.num_train_max)
    if len(train) == 0:
        raise ImageError("no training images found; pass image files, folders or PIL images")
    if not any(train.load(i) is not None for i in range(len(train))):  # stops at the first usable image
        name, reason = next(iter(train.skipped.items()))
        raise ImageError(f"none of the {len(train)} training image(s) can be used ({name}: {reason}); pass images PIL can decode")
    use_eval = eval_images and config.num_eval_max > 0  # 0: no held-out metrics
    held_out = ImageSet.from_inputs(eval_images, backbone, config.resolution, limit=config.num_eval_max) if use_eval else None

    if out is not None:
        if dist.is_main:
            if config.overwrite:
                _clear_out(out)
            out.mkdir(parents=True, exist_ok=True)
        dist.barrier()
    dirs = _directions(backbone, config, directions, dist)

    handle = attach(backbone, factor_frozen=config.impl == "reference")
    try:
        return _run(backbone, handle, train, held_out, dirs, config, out, dist, written, on_step)
    except BaseException:
        if not handle.folded:
            _restore_unrepaired(handle)
        raise


@torch.no_grad()
def _restore_unrepaired(handle: SingularModel) -> None:
    """On failure leave the user's model as it was: zero ε, then fold (W₀ rows written back)."""
    for p in handle.parameters():
        p.zero_()
    handle.fold()


def _run(
    backbone: Backbone,
    handle: SingularModel,
    train: ImageSet,
    held_out: ImageSet | None,
    dirs: torch.Tensor,
    config: RepairConfig,
    out: Path | None,
    dist: DistContext,
    written: list[Path],
    on_step: Callable[[dict], None] | None,
) -> RepairResult:
    main = dist.is_main
    trainer = Trainer(backbone, handle, dirs, config, dist)
    window = min(config.window, len(train))
    state = TrainState(window=window)
    meta = {"signature": config.training_signature(), "data_digest": train.digest(), "model": backbone.spec}
    ckpt = out / CHECKPOINT if out is not None else None
    resumed = False
    if _resume_from(ckpt, config, dist):
        eps, momentum, state, info = load_checkpoint(ckpt)
        check_compatible(info, meta["signature"], meta["data_digest"])
        handle.load_eps_state(eps)
        trainer.load_momentum_state(momentum)
        state.stop_reason = None  # re-decided below with this run's max_steps
        resumed = True
        log.info("resumed from %s at step %d (skip ratio %.2f)", ckpt, state.step, state.skip_ratio())
    elif config.resume:
        log.info("--resume: no checkpoint in %s, starting from scratch", out)

    def save(path: Path) -> None:
        if main and path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_checkpoint(path, handle.eps_state(), trainer.momentum_state(), state, meta)
            if path not in written:
                written.append(path)

    if main and out is not None:
        cfg = config.to_dict() | {"model": backbone.describe(), "num_train_images": len(train), "world_size": dist.world_size}
        written.append(write_json(out / "config.json", cfg))
    logger = _Log(out / "log.jsonl" if (main and out is not None) else None, state.step if resumed else None)
    if main and out is not None:
        written.append(out / "log.jsonl")

    order = SeededOrder(len(train), config.seed)
    per_step = dist.world_size * config.batch_size
    batches = _Batches(train, order, config.batch_size, config.prefetch)
    bar = None
    if main and config.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.max_steps, initial=state.step, desc="repair", unit="step", dynamic_ncols=True)
    try:
        while True:
            if state.stop_reason is None and state.skip_ratio() >= config.stop_skip_ratio:
                state.stop_reason = "skip_ratio"
            if state.stop_reason is None and state.step >= config.max_steps:
                state.stop_reason = "max_steps"
            if state.stop_reason is not None:
                break
            t0 = time.perf_counter()
            mine = state.position + dist.rank * config.batch_size
            pixels, _ = batches.get(mine, mine + per_step)
            res: StepResult = trainer.step(pixels)
            # per image of the global batch, in position order: (skipped, layer); -1 = unusable file
            local = torch.full((config.batch_size, 2), -1.0)
            for k, (skipped, layer) in enumerate(zip(res.skipped, res.image_layers)):
                local[k] = torch.tensor([float(skipped), float(layer)])
            table = dist.all_gather(local)
            used = table[table[:, 0] >= 0]
            state.record([bool(f > 0.5) for f in used[:, 0].tolist()])
            layers = [int(v) for v in used[:, 1].tolist() if v >= 0]
            state.position += per_step
            state.step += 1
            state.optimizer_steps += int(res.stepped)
            state.nonfinite_steps += int(res.nonfinite)
            dt = time.perf_counter() - t0
            state.seconds += dt
            ratio = state.skip_ratio()
            row = {
                "step": state.step,
                "layer": min(layers) if layers else None,
                "layers": layers,
                "defects": res.total_defects,
                "loss": _finite(res.loss),
                "skip_ratio": ratio,
                "images": len(used),
                "stepped": res.stepped,
                "nonfinite": res.nonfinite,
                "time": dt,
            }
            logger.write(row)
            if on_step is not None:
                on_step(row)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(skip=f"{ratio:.2f}", layer=row["layer"], loss=f"{row['loss']:.3f}" if row["loss"] is not None else "-")
            for v in sorted(config.save_at_skip):
                if v not in state.crossed and ratio >= v:
                    state.crossed.append(v)
                    if out is not None:
                        save(out / "checkpoints" / f"skip_{v:.2f}.safetensors")
                        log.info("skip ratio reached %.2f at step %d: checkpoint saved", v, state.step)
            if ckpt is not None and state.step % config.checkpoint_every == 0:
                save(ckpt)
    finally:
        batches.close()
        if bar is not None:
            bar.close()
        logger.close()
    if ckpt is not None:
        save(ckpt)
    log.info("stopped after %d steps (%s), skip ratio %.2f", state.step, state.stop_reason, state.skip_ratio())

    metrics = None
    if held_out is not None and len(held_out) and main:
        metrics = compare(
            backbone, handle, held_out, dirs, batch_size=max(config.batch_size, 8),
            factor=config.high_norm_factor, mask_thr=config.mask_thr, autocast=trainer.autocast,
        )  # fmt: skip
    epsilon = {k: v.cpu() for k, v in handle.eps_state().items()}
    if main and out is not None:
        written.append(_write_sigma(out / "sigma.safetensors", handle.sigma_state()))
    probe = _probe_pixels(held_out, train)
    with torch.no_grad():
        before_fold = backbone.model_forward(probe.to(backbone.device, backbone.dtype)) if probe is not None else None
    handle.fold()
    fold_diff = None
    if before_fold is not None:
        with torch.no_grad():
            after = backbone.model_forward(probe.to(backbone.device, backbone.dtype))
        fold_diff = float((after.float() - before_fold.float()).abs().max())

    weights_path, export_diff = None, None
    if out is not None and config.export and main:
        weights_path, export_diff = _export(backbone, out / "weights", probe, config.export_tol)
        written.append(weights_path)

    summary = _json_safe({
        "model": backbone.describe(),
        "config": config.to_dict(),
        "steps": state.step,
        "optimizer_steps": state.optimizer_steps,
        "nonfinite_steps": state.nonfinite_steps,
        "images_seen": state.images_seen,
        "skipped_images": state.skipped_images,
        "seconds": state.seconds,
        "steps_per_second": state.step / state.seconds if state.seconds > 0 else None,
        "images_per_second": state.images_seen / state.seconds if state.seconds > 0 else None,
        "stop_reason": state.stop_reason,
        "final_skip_ratio": state.skip_ratio(),
        "resumed": resumed,
        "world_size": dist.world_size,
        "num_train_images": len(train),
        "num_eval_images": len(held_out) if held_out is not None else 0,
        "skipped_files": [{"name": k, "reason": v} for k, v in {**train.skipped, **(held_out.skipped if held_out else {})}.items()],
        "trainable_parameters": handle.num_trainable(),
        "metrics": metrics,
        "fold_max_token_diff": fold_diff,
        "weights": str(weights_path) if weights_path is not None else None,
        "export_max_token_diff": export_diff,
    })
    if main and out is not None:
        written.append(write_json(out / "summary.json", summary))
    dist.barrier()
    return RepairResult(backbone, config, summary, epsilon, logger.rows, out, weights_path, written)


def _resume_from(ckpt: Path | None, config: RepairConfig, dist: DistContext) -> bool:
    """Whether to load ``ckpt``; every rank must decide alike (only rank 0 writes checkpoints)."""
    found = bool(config.resume and ckpt is not None and ckpt.exists())
    everywhere, nowhere = dist.agree(found), dist.agree(not found)
    if not (everywhere or nowhere):
        raise ConfigError(f"--resume: {ckpt} is visible on some ranks only; put --out on a filesystem shared by all ranks")
    return found


def _write_sigma(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    from safetensors.torch import save_file

    from ..io import atomic_path

    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "sinder-sigma/1"})
    return path


def _probe_pixels(held_out: ImageSet | None, train: ImageSet) -> torch.Tensor | None:
    for data in (held_out, train):
        if data is None:
            continue
        for i in range(len(data)):
            px = data.load(i)
            if px is not None:
                return px[None]
    return None


def _export(backbone: Backbone, folder: Path, probe: torch.Tensor | None, tol: float) -> tuple[Path, float | None]:
    """Write the repaired weights in the input's format, re-load them and compare tokens."""
    from ..export import max_token_diff, reload_exported, save_weights

    path = save_weights(backbone, folder, overwrite=True)
    if probe is None:
        return path, None
    reloaded = reload_exported(backbone, path)
    diff = max_token_diff(backbone, reloaded, probe)
    with torch.no_grad():
        scale = float(backbone.model_forward(probe.to(backbone.device, backbone.dtype)).abs().max())
    if not diff <= tol * max(1.0, scale):
        raise WeightsError(f"re-loading {path} gives tokens {diff:.3g} away from the repaired model (tolerance {tol * max(1.0, scale):.3g}); the export is wrong, do not use it")
    log.info("wrote %s (re-loaded: max token diff %.3g)", path, diff)
    return path, diff
