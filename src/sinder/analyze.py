"""``sinder analyze``: per-layer defect directions vs. the real high-norm tokens, on the user's images.

For every layer i: defects by the :class:`~sinder.detect.DefectRule`, high-norm tokens, norm
statistics and how well ν_i predicts the direction of the high-norm tokens (``theory_alignment``),
all accumulated by :class:`~sinder.measure.ModelStats` (with what the tokens the norm gate rejects
look like), and the model's verdict (:mod:`sinder.verdict`). Writes an analysis folder
(:class:`~sinder.runfolder.AnalysisFolder`): ``analysis.json``, ``directions.safetensors``,
``maps.npz`` / ``distributions.npz`` (for the report) and figures.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .backbones import Backbone, as_backbone
from .detect import LayerDetection, abs_cosine
from .errors import ImageError
from .images import ImageItem, ImageSet, check_grid, denormalise, pca_rgb
from .measure import CROP, ModelStats, tokens_of, truth_mask
from .options import FLAG, Directions, Overwrite, RunOptions, Seeded, integer, one_of, option, place, validate
from .runfolder import AnalysisFolder, AnalysisResult, ImageMaps
from .units import percent, plural
from .verdict import choose_low_norm, compute_verdict, gate_warning

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnalyzeConfig(RunOptions, Seeded, Directions, Overwrite):
    """Hyper-parameters of ``sinder analyze`` (validated on construction): the shared run options
    (:mod:`sinder.options`) and its own."""

    crop: str = option(
        CROP,
        check=one_of("square", "aspect"),
        help="square: a centre crop, the crop repair, compare and evaluate measure, so the numbers agree; "
        "aspect: keep the aspect ratio (the whole photo)",
    )
    figures: bool = option(True, check=FLAG, help="skip the matplotlib figures")
    max_distribution_samples: int = option(20_000, check=integer(1), help="token samples per layer kept for the violin plots")

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict:
        return asdict(self)


class Distributions:
    """Per-layer samples of token norms and angles (to ν_i and to a random control direction), for violins."""

    def __init__(self, depth: int, cap: int, seed: int) -> None:
        self.parts: dict[str, list[list[np.ndarray]]] = {k: [[] for _ in range(depth)] for k in ("norms", "angles", "angles_random")}
        self.cap = cap
        self.rng = np.random.default_rng(seed)

    def add(self, i: int, norms: torch.Tensor, scores: torch.Tensor, scores_random: torch.Tensor) -> None:
        self.parts["norms"][i].append(norms.flatten().float().cpu().numpy())
        for key, s in (("angles", scores), ("angles_random", scores_random)):
            self.parts[key][i].append(np.degrees(np.arccos(s.flatten().clamp(max=1).double().cpu().numpy())))

    def arrays(self) -> dict[str, np.ndarray]:
        out = {}
        for key, layers in self.parts.items():
            for i, parts in enumerate(layers):
                arr = np.concatenate(parts) if parts else np.zeros(0)
                if arr.size > self.cap:
                    arr = self.rng.choice(arr, self.cap, replace=False)
                out[f"{key}_{i}"] = arr.astype(np.float32)
        return out


def compute_directions(backbone: Backbone, method: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    from .theory import linearise

    lin = linearise(backbone, method=method, keep_matrices=False)
    return lin.directions, lin.singular_values


@dataclass
class _Run:
    """What one analysis accumulates while it walks the batches."""

    images: ImageSet
    stats: ModelStats
    distributions: Distributions
    random_dir: torch.Tensor
    maps: dict[int, ImageMaps] = field(default_factory=dict)
    meta: dict[int, dict] = field(default_factory=dict)


@torch.no_grad()
def analyze(
    backbone: Backbone | torch.nn.Module,
    inputs: Sequence[ImageItem],
    config: AnalyzeConfig = AnalyzeConfig(),
    *,
    directions: torch.Tensor | None = None,
    singular_values: torch.Tensor | None = None,
    out_dir: str | Path | None = None,
) -> AnalysisResult:
    """Analyse ``backbone`` on ``inputs`` (image files, folders, PIL or bundled images); optionally write ``out_dir``.

    ``directions`` (L, D) overrides the predicted ν_i (``singular_values``: their top-3 spectra, if known)."""
    backbone = as_backbone(backbone)  # the user's own timm / transformers module is wrapped in place
    folder = AnalysisFolder(out_dir) if out_dir is not None else None
    if folder is not None:
        folder.check(config.overwrite)  # refuse before any work; created once there is a result
    place(backbone, config.device)
    device = backbone.device
    resolution = config.resolution or backbone.image_size
    check_grid(resolution, backbone.patch_size)
    backbone.model.eval()
    if directions is None:
        directions, singular_values = compute_directions(backbone, config.directions)
    directions = directions.float().to(device)
    images = ImageSet.from_inputs(inputs, backbone, resolution, crop=config.crop)
    if not images.any_usable():
        first = next(iter(images.skipped.items()), None)
        reason = f" ({first[0]}: {first[1]})" if first else ""
        raise ImageError(f"none of the {len(images)} input image(s) can be used{reason}; pass images PIL can decode")
    run = _analysis_pass(backbone, images, directions, config)
    chosen = choose_low_norm(config.rule, run.stats.per_layer())  # "auto" decided on these images
    if chosen != config.rule:
        config = replace(config, rule=chosen)
        if chosen.low_norm == "count":  # the counted defects change every statistic: measure again
            log.info("low-norm singular defects in the last block: counted as defects from block %d; measuring again", chosen.low_norm_from)
            run = _analysis_pass(backbone, images, directions, config)
    result = _result(backbone, run, directions, singular_values, resolution, config)
    if folder is not None:
        from .plots import write_analysis_figures

        folder.write(result, config.overwrite, figures=write_analysis_figures if config.figures else None)
    return result


def _analysis_pass(backbone: Backbone, images: ImageSet, directions: torch.Tensor, config: AnalyzeConfig) -> _Run:
    gen = torch.Generator().manual_seed(config.seed)
    run = _Run(
        images,
        ModelStats(config.rule, directions, range(backbone.depth), backbone.ground_truth),
        Distributions(backbone.depth, config.max_distribution_samples, config.seed),
        F.normalize(torch.randn(backbone.embed_dim, generator=gen), dim=0).to(backbone.device),
    )
    for idxs, pixels in images.batches(config.batch_size, progress=config.progress, desc="analyze"):
        _analyse_batch(backbone, pixels.to(backbone.device), idxs, run)
    return run


def _analyse_batch(backbone: Backbone, pixels: torch.Tensor, idxs: list[int], run: _Run) -> None:
    outs, ctx = backbone.forward_layers(pixels)
    last = backbone.depth - 1
    tokens = tokens_of(backbone, outs, ctx, every_layer=True)
    detections = run.stats.add(tokens, truth_mask(backbone, pixels))
    for i, grid in enumerate(tokens.grids):
        found = detections[i]
        run.distributions.add(i, found.norms, found.scores, abs_cosine(grid, run.random_dir))
        if i == last:
            attn = None
            if backbone.has_cls_token:
                prev = outs[i - 1] if i > 0 else backbone.embed(pixels)[0]
                attn = backbone.cls_attention(i, prev, ctx).mean(dim=1).reshape(len(idxs), *ctx.grid)
            for b, k in enumerate(idxs):
                _keep_image(backbone, run, k, pixels[b], grid[b], found.image(b), None if attn is None else attn[b])


def _keep_image(backbone, run: _Run, k: int, pixels, grid, found: LayerDetection, attn) -> None:
    """Keep image ``k`` (``found``: its detection alone): its maps for the figures and its line in ``images``."""
    name = run.images.names[k]
    norms = found.norms
    run.maps[k] = ImageMaps(
        name=name,
        input_rgb=denormalise(pixels, backbone.mean, backbone.std),
        pca_rgb=pca_rgb(grid),
        norms=norms.cpu().numpy(),
        abs_cos=found.scores.cpu().numpy(),
        defects=found.defects.cpu().numpy(),
        cls_attention=None if attn is None else attn.float().cpu().numpy(),
    )
    run.meta[k] = {
        "path": name,
        "grid": list(grid.shape[:2]),
        "defects_last_layer": int(found.defects.sum()),
        "high_norm_last_layer": int(found.high.sum()),
        "gate_rejected_last_layer": int(found.gate_rejected.sum()),
        "max_over_median_last_layer": float(norms.max() / norms.median().clamp_min(1e-12)),
    }


def _result(backbone, run: _Run, directions, singular_values, resolution: int, config: AnalyzeConfig) -> AnalysisResult:
    layers = []
    for i, stats in enumerate(run.stats.per_layer()):
        entry = dict(stats)
        entry["top_singular_values"] = None if singular_values is None else [float(v) for v in singular_values[i]]
        layers.append(entry)
    last = layers[-1]
    summary = {
        "model": backbone.spec,
        "num_layers": backbone.depth,
        "patch_size": backbone.patch_size,
        "num_prefix_tokens": backbone.num_prefix_tokens,
        "resolution": resolution,
        "images": [run.meta[k] for k in sorted(run.meta)],
        "skipped": [{"path": p, "reason": r} for p, r in run.images.skipped.items()],
        "direction_consistency_deg": last["direction_consistency_deg"],
        "direction_consistency_images": last["direction_consistency_images"],
        "rule": config.rule.to_dict(),
        "config": config.to_dict(),
        "layers": layers,
    }
    summary["verdict"] = compute_verdict(summary)
    maps = [run.maps[k] for k in sorted(run.maps)]
    return AnalysisResult(summary=summary, directions=directions.cpu(), maps=maps, distributions=run.distributions.arrays())


def format_table(summary: dict) -> str:
    """A short per-layer table for the terminal."""
    rows = ["layer  align    defects   high-norm  median  max/med"]
    for layer in summary["layers"]:
        align = "   -  " if layer["theory_alignment"] is None else f"{layer['theory_alignment']:.3f}"
        rows.append(
            f"{layer['index']:>5}  {align:>6}  {percent(layer['defect_rate']):>8}  {percent(layer['high_norm_rate']):>10}"
            f"  {layer['norm_median']:6.2f}  {layer['max_over_median']:7.2f}"
        )
    cons, n = summary.get("direction_consistency_deg"), summary.get("direction_consistency_images", 0)
    rows.append(
        f"direction consistency (last layer): {'n/a' if cons is None else f'{cons:.1f} deg'} ({plural(n or 0, 'image')} with high-norm defects)"
    )
    warning = gate_warning(summary)
    if warning:  # counted artifacts are reported; dropped ones are a warning
        counted = (summary.get("rule") or {}).get("low_norm") == "count"
        rows.append(f"{'low-norm' if counted else 'warning'}: {warning}")
    return "\n".join(rows)


def verdict_line(summary: dict) -> str:
    """The last line ``sinder analyze`` prints: the verdict's reason (computed when absent)."""
    verdict = summary.get("verdict") or compute_verdict(summary)
    return f"verdict: {verdict['reason']}"
