"""``sinder analyze``: per-layer defect directions vs. the real high-norm tokens, on the user's images.

For every layer i and image: defects by the μ + mask_thr·σ rule on |cos(t, ν_i)|, high-norm
tokens by norm > high_norm_factor × median, norm statistics, and how well ν_i predicts the
direction of the high-norm tokens (``theory_alignment``). Writes ``analysis.json``,
``directions.safetensors``, ``maps.npz`` / ``distributions.npz`` (for the report) and figures.
"""
from __future__ import annotations

import itertools
import logging
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .backbones import Backbone
from .detect import abs_cosine, angle_deg, defect_mask_from_scores, high_norm_mask, mean_direction
from .errors import ConfigError, ImageError
from .images import SourceImage, load_image, preprocess
from .io import atomic_path, check_output_dir, prepare_output_dir, write_json
from .runtime import resolve_device

log = logging.getLogger(__name__)

ImageInput = str | Path | SourceImage


@dataclass(frozen=True)
class AnalyzeConfig:
    """Hyper-parameters of ``sinder analyze`` (validated on construction)."""

    resolution: int | None = None  # short side in px; None = the model's native size
    square: bool = False  # centre-crop to a square (the model's native geometry) instead of keeping the aspect
    directions: Literal["exact", "montecarlo"] = "exact"
    mask_thr: float = 4.0
    high_norm_factor: float = 3.0
    border: int = 1
    batch_size: int = 8
    device: str = "auto"
    figures: bool = True
    max_distribution_samples: int = 20_000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.resolution is not None and not 16 <= self.resolution <= 4096:
            raise ConfigError(f"--resolution must be between 16 and 4096 px, got {self.resolution}")
        if self.directions not in ("exact", "montecarlo"):
            raise ConfigError(f"--directions must be exact or montecarlo, got {self.directions!r}")
        if not self.mask_thr > 0:
            raise ConfigError(f"--mask-thr must be positive, got {self.mask_thr}")
        if not self.high_norm_factor > 1:
            raise ConfigError(f"--high-norm-factor must be > 1, got {self.high_norm_factor}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.border < 0:
            raise ConfigError(f"border must be >= 0, got {self.border}")


@dataclass
class ImageMaps:
    """Last-layer maps of one image, for figures and the HTML report."""

    name: str
    input_rgb: np.ndarray  # (H, W, 3) uint8, the crop the model saw
    pca_rgb: np.ndarray  # (h, w, 3) uint8
    norms: np.ndarray  # (h, w)
    abs_cos: np.ndarray  # (h, w)
    defects: np.ndarray  # (h, w) bool
    cls_attention: np.ndarray | None  # (h, w), mean over heads


@dataclass
class AnalysisResult:
    summary: dict
    directions: torch.Tensor
    maps: list[ImageMaps] = field(default_factory=list)
    distributions: dict[str, np.ndarray] = field(default_factory=dict)


def pca_rgb(tokens: torch.Tensor) -> np.ndarray:
    """(h, w, D) -> (h, w, 3) uint8: the three leading principal components, each min-max scaled."""
    h, w, d = tokens.shape
    flat = tokens.reshape(-1, d).double()
    flat = flat - flat.mean(dim=0)
    _, _, vh = torch.linalg.svd(flat, full_matrices=False)
    comps = flat @ vh[:3].T
    lo, hi = comps.min(dim=0).values, comps.max(dim=0).values
    scaled = (comps - lo) / (hi - lo).clamp_min(1e-12) * 255.0
    out = np.zeros((h * w, 3), dtype=np.uint8)
    out[:, : scaled.shape[1]] = scaled.round().clamp(0, 255).byte().cpu().numpy()
    return out.reshape(h, w, 3)


def denormalise(pixels: torch.Tensor, mean, std) -> np.ndarray:
    img = pixels.cpu() * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
    return (img.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


class LayerAccumulator:
    """Running per-layer statistics over images (memory independent of the number of images)."""

    def __init__(self, depth: int, cap: int, seed: int) -> None:
        self.counts = defaultdict(lambda: np.zeros(depth, dtype=np.int64))
        self.sums = defaultdict(lambda: np.zeros(depth, dtype=np.float64))
        self.norm_max = np.zeros(depth)
        self.norms: list[list[np.ndarray]] = [[] for _ in range(depth)]
        self.angles: list[list[np.ndarray]] = [[] for _ in range(depth)]
        self.angles_random: list[list[np.ndarray]] = [[] for _ in range(depth)]
        self.high_units: list[list[torch.Tensor]] = [[] for _ in range(depth)]
        self.cap = cap
        self.rng = np.random.default_rng(seed)

    def add(self, i: int, norms, scores, scores_random, defects, high) -> None:
        c, s = self.counts, self.sums
        c["tokens"][i] += norms.numel()
        c["defects"][i] += int(defects.sum())
        c["high"][i] += int(high.sum())
        c["defect_and_high"][i] += int((defects & high).sum())
        s["defect_norm"][i] += float(norms[defects].sum())
        s["normal_norm"][i] += float(norms[~defects].sum())
        self.norm_max[i] = max(self.norm_max[i], float(norms.max()))
        self.norms[i].append(norms.flatten().float().cpu().numpy())
        self.angles[i].append(np.degrees(np.arccos(scores.flatten().clamp(max=1).double().cpu().numpy())))
        self.angles_random[i].append(np.degrees(np.arccos(scores_random.flatten().clamp(max=1).double().cpu().numpy())))

    def sample(self, parts: list[np.ndarray]) -> np.ndarray:
        arr = np.concatenate(parts) if parts else np.zeros(0)
        if arr.size > self.cap:
            arr = self.rng.choice(arr, self.cap, replace=False)
        return arr.astype(np.float32)


def load_sources(inputs: Sequence[ImageInput]) -> tuple[list[SourceImage], list[dict]]:
    sources, skipped = [], []
    for item in inputs:
        if isinstance(item, SourceImage):
            sources.append(item)
            continue
        try:
            sources.append(SourceImage(name=str(item), image=load_image(item), path=str(item)))
        except ImageError as err:
            skipped.append({"path": str(item), "reason": str(err)})
            log.warning("skipping %s: %s", item, err)
    return sources, skipped


def batches_by_shape(tensors: list[torch.Tensor], batch_size: int) -> list[list[int]]:
    """Indices grouped by (H, W), in input order within each group."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for idx, t in enumerate(tensors):
        groups[tuple(t.shape)].append(idx)
    return [idxs[k : k + batch_size] for idxs in groups.values() for k in range(0, len(idxs), batch_size)]


def compute_directions(backbone: Backbone, method: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    from .theory import linearise

    lin = linearise(backbone, method=method, keep_matrices=False)
    return lin.directions, lin.singular_values


@torch.no_grad()
def analyze(
    backbone: Backbone,
    inputs: Sequence[ImageInput],
    config: AnalyzeConfig = AnalyzeConfig(),
    *,
    directions: torch.Tensor | None = None,
    out_dir: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> AnalysisResult:
    """Analyse ``backbone`` on ``inputs`` (paths or bundled images); optionally write ``out_dir``."""
    if out_dir is not None:
        check_output_dir(out_dir, "analysis.json", overwrite)  # refuse before any work; created once there is a result
    device = resolve_device(config.device)
    resolution = config.resolution or backbone.image_size
    if resolution // backbone.patch_size < 3:  # the border is excluded: no token could ever be a defect
        raise ConfigError(
            f"--resolution {resolution} gives fewer than 3 patches per side at patch size {backbone.patch_size}; "
            f"use at least {3 * backbone.patch_size} px"
        )
    backbone.model.to(device).eval()
    singular_values = None
    if directions is None:
        directions, singular_values = compute_directions(backbone, config.directions)
    directions = directions.float().to(device)
    depth = backbone.depth

    sources, skipped = load_sources(inputs)
    kept: list[SourceImage] = []
    pixels: list[torch.Tensor] = []
    for src in sources:
        try:
            pixels.append(preprocess(src.image, resolution, backbone.patch_size, backbone.mean, backbone.std, square=config.square))
            kept.append(src)
        except ImageError as err:
            skipped.append({"path": src.name, "reason": str(err)})
    if not kept:
        first = f" ({skipped[0]['path']}: {skipped[0]['reason']})" if skipped else ""
        raise ImageError(f"none of the {len(skipped)} input image(s) can be used{first}; pass images PIL can decode")

    gen = torch.Generator().manual_seed(config.seed)
    random_dir = F.normalize(torch.randn(backbone.embed_dim, generator=gen), dim=0).to(device)
    acc = LayerAccumulator(depth, config.max_distribution_samples, config.seed)
    maps: list[ImageMaps | None] = [None] * len(kept)
    images_meta: list[dict | None] = [None] * len(kept)
    last_defect_dirs: list[torch.Tensor] = []

    bar = tqdm(total=len(kept), desc="analyze", unit="img", disable=not progress)
    for idxs in batches_by_shape(pixels, config.batch_size):
        batch = torch.stack([pixels[k] for k in idxs]).to(device)
        outs, ctx = backbone.forward_layers(batch)
        for i, x in enumerate(outs):
            grid = backbone.patch_grid(x, ctx).float()
            norms = grid.norm(dim=-1)
            scores = abs_cosine(grid, directions[i])
            defects = defect_mask_from_scores(scores, config.mask_thr, config.border)
            high = high_norm_mask(grid, config.high_norm_factor)
            acc.add(i, norms, scores, abs_cosine(grid, random_dir), defects, high)
            if high.any():
                units = F.normalize(grid[high], dim=-1).cpu()
                acc.high_units[i].append(units[: max(1, 4096 // len(idxs))])
            if i == depth - 1:
                attn = None
                if backbone.has_cls_token:
                    prev = outs[i - 1] if i > 0 else backbone.embed(batch)[0]
                    attn = backbone.cls_attention(i, prev, ctx).mean(dim=1).reshape(len(idxs), *ctx.grid)
                for b, k in enumerate(idxs):
                    if defects[b].any():
                        last_defect_dirs.append(mean_direction(grid[b][defects[b]]).float().cpu())
                    maps[k] = ImageMaps(
                        name=kept[k].name,
                        input_rgb=denormalise(batch[b], backbone.mean, backbone.std),
                        pca_rgb=pca_rgb(grid[b]),
                        norms=norms[b].cpu().numpy(),
                        abs_cos=scores[b].cpu().numpy(),
                        defects=defects[b].cpu().numpy(),
                        cls_attention=None if attn is None else attn[b].float().cpu().numpy(),
                    )
                    images_meta[k] = {
                        "path": kept[k].name,
                        "grid": list(ctx.grid),
                        "defects_last_layer": int(defects[b].sum()),
                        "high_norm_last_layer": int(high[b].sum()),
                        "max_over_median_last_layer": float(norms[b].max() / norms[b].median()),
                    }
        bar.update(len(idxs))
    bar.close()

    layers = []
    for i in range(depth):
        c, s = acc.counts, acc.sums
        tokens = max(int(c["tokens"][i]), 1)
        units = torch.cat(acc.high_units[i]) if acc.high_units[i] else torch.zeros(0, backbone.embed_dim)
        mdir = mean_direction(units)
        alignment = None if mdir is None else abs(float(F.cosine_similarity(mdir.float(), directions[i].cpu(), dim=0)))
        all_norms = np.concatenate(acc.norms[i]) if acc.norms[i] else np.zeros(1)
        n_def, n_high, n_both = int(c["defects"][i]), int(c["high"][i]), int(c["defect_and_high"][i])
        layers.append(
            {
                "index": i,
                "theory_alignment": alignment,
                "defect_rate": n_def / tokens,
                "high_norm_rate": n_high / tokens,
                "norm_median": float(np.median(all_norms)),
                "norm_max": float(acc.norm_max[i]),
                "defect_norm_mean": float(s["defect_norm"][i] / n_def) if n_def else None,
                "normal_norm_mean": float(s["normal_norm"][i] / max(tokens - n_def, 1)),
                "high_norm_recall": n_both / n_high if n_high else None,
                "defect_precision": n_both / n_def if n_def else None,
                "top_singular_values": None if singular_values is None else [float(v) for v in singular_values[i]],
            }
        )
    consistency = None
    if len(last_defect_dirs) >= 2:
        consistency = float(np.mean([angle_deg(a, b) for a, b in itertools.combinations(last_defect_dirs, 2)]))
    summary = {
        "model": backbone.spec,
        "num_layers": depth,
        "patch_size": backbone.patch_size,
        "num_prefix_tokens": backbone.num_prefix_tokens,
        "resolution": resolution,
        "images": [m for m in images_meta if m is not None],
        "skipped": skipped,
        "direction_consistency_deg": consistency,
        "config": asdict(config),
        "layers": layers,
    }
    distributions = {}
    for i in range(depth):
        distributions[f"norms_{i}"] = acc.sample(acc.norms[i])
        distributions[f"angles_{i}"] = acc.sample(acc.angles[i])
        distributions[f"angles_random_{i}"] = acc.sample(acc.angles_random[i])
    result = AnalysisResult(summary=summary, directions=directions.cpu(), maps=[m for m in maps if m is not None], distributions=distributions)
    if out_dir is not None:
        write_analysis(result, prepare_output_dir(out_dir, "analysis.json", overwrite), figures=config.figures)
    return result


def write_analysis(result: AnalysisResult, out: Path, figures: bool = True) -> None:
    from safetensors.torch import save_file

    with atomic_path(out / "directions.safetensors") as tmp:
        save_file({"directions": result.directions.contiguous()}, str(tmp), metadata={"model": result.summary["model"]})
    arrays = {}
    for k, m in enumerate(result.maps):
        for key in ("input_rgb", "pca_rgb", "norms", "abs_cos", "defects", "cls_attention"):
            value = getattr(m, key)
            if value is not None:
                arrays[f"{k}/{key}"] = value
    with atomic_path(out / "maps.npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, names=np.array([m.name for m in result.maps]), **arrays)
    with atomic_path(out / "distributions.npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **result.distributions)
    if figures:
        from .figures import write_analysis_figures

        write_analysis_figures(result, out / "figures")
    write_json(out / "analysis.json", result.summary)  # last: its presence marks a complete analysis


def load_analysis(folder: str | Path) -> AnalysisResult:
    """Read back what ``write_analysis`` wrote (for ``sinder report``)."""
    import json

    from safetensors.torch import load_file

    folder = Path(folder)
    summary = json.loads((folder / "analysis.json").read_text())
    directions = load_file(str(folder / "directions.safetensors"))["directions"]
    maps = []
    with np.load(folder / "maps.npz") as z:
        for k, name in enumerate(z["names"]):
            get = lambda key: z[f"{k}/{key}"] if f"{k}/{key}" in z.files else None  # noqa: E731
            maps.append(ImageMaps(str(name), get("input_rgb"), get("pca_rgb"), get("norms"), get("abs_cos"), get("defects"), get("cls_attention")))
    with np.load(folder / "distributions.npz") as z:
        distributions = {k: z[k] for k in z.files}
    return AnalysisResult(summary=summary, directions=directions, maps=maps, distributions=distributions)


def format_table(summary: dict) -> str:
    """A short per-layer table for the terminal."""
    rows = ["layer  align   defect%  high-norm%  median  max/med"]
    for layer in summary["layers"]:
        align = "   -  " if layer["theory_alignment"] is None else f"{layer['theory_alignment']:.3f}"
        rows.append(
            f"{layer['index']:>5}  {align:>6}  {100 * layer['defect_rate']:7.2f}  {100 * layer['high_norm_rate']:10.2f}"
            f"  {layer['norm_median']:6.2f}  {layer['norm_max'] / max(layer['norm_median'], 1e-12):7.2f}"
        )
    cons = summary.get("direction_consistency_deg")
    rows.append(f"direction consistency (last layer): {'n/a' if cons is None else f'{cons:.1f} deg'}")
    return "\n".join(rows)


def analyze_around(backbone: Backbone, inputs: Sequence[ImageInput], out: str | Path, change, config: AnalyzeConfig = AnalyzeConfig()):
    """Analyse ``inputs`` before and after ``change(directions)`` edits ``backbone`` in place.

    Writes ``out/analysis_before`` and ``out/analysis_after`` (with the same ν_i, so the two are
    comparable) once ``change`` has succeeded; returns (before, after, what ``change`` returned).
    """
    out = Path(out)
    before = analyze(backbone, inputs, config, progress=False)
    changed = change(before.directions)
    write_analysis(before, prepare_output_dir(out / "analysis_before", "analysis.json", overwrite=True), figures=config.figures)
    after = analyze(backbone, inputs, config, directions=before.directions, out_dir=out / "analysis_after", overwrite=True, progress=False)
    return before, after, changed
