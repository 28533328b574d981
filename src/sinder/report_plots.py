"""Matplotlib figures of ``sinder report``: A-vs-B image maps, per-layer curves, σ deltas and
training curves. Every function returns a Figure; ``png_data_uri`` embeds it in the page."""
from __future__ import annotations

import base64
import io
import math
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap, LogNorm, Normalize  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from mpl_toolkits.axes_grid1 import make_axes_locatable  # noqa: E402

from .figures import violin  # noqa: E402

# One colour per compared analysis (A, B), used by every figure so the page reads consistently.
SERIES_COLORS = ("tab:blue", "tab:orange")
MASK_CMAP = ListedColormap(["#f2f2f2", "#d62728"])


def png_data_uri(fig, dpi: int = 80) -> str:
    """Render ``fig`` to a ``data:image/png;base64,`` URI and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, bbox_inches="tight", format="png")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _shared_range(arrays: Sequence[np.ndarray | None]) -> tuple[float, float] | None:
    present = [np.asarray(a, dtype=np.float64) for a in arrays if a is not None and np.size(a)]
    if not present:
        return None
    lo = min(float(a.min()) for a in present)
    hi = max(float(a.max()) for a in present)
    return lo, hi if hi > lo else lo + 1e-12


def _blank(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_facecolor("#fafafa")


def _colorbar(fig, ax, im, label: str):
    """A colour bar exactly as tall as the image beside it."""
    cax = make_axes_locatable(ax).append_axes("right", size="4%", pad=0.05)
    return fig.colorbar(im, cax=cax, label=label)


def comparison_panel(rows: Sequence[tuple[str, object | None]], title: str):
    """One row per analysis (label, ImageMaps or None), six columns: input, PCA-RGB, token norm,
    |cos| to ν, defect mask, CLS attention. Norm (log) and attention share one colour scale across rows."""
    n = len(rows)
    fig, axes = plt.subplots(n, 6, figsize=(22, 3.2 * n + 0.4), squeeze=False)
    norm_range = _shared_range([m.norms if m is not None else None for _, m in rows])
    attn_range = _shared_range([m.cls_attention if m is not None else None for _, m in rows])
    # Log scale: defects are 10-20x the median, so a linear scale would hide every other token.
    norm_scale = LogNorm(*norm_range) if norm_range and norm_range[0] > 0 else Normalize(*(norm_range or (0, 1)))
    for r, (label, m) in enumerate(rows):
        ax = axes[r]
        for a in ax:
            a.set_xticks([])
            a.set_yticks([])
        ax[0].set_ylabel(label, fontsize=13)
        if m is None:
            for a in ax:
                _blank(a, "image not in this analysis")
            continue
        ax[0].imshow(m.input_rgb)
        ax[0].set_title(f"input ({m.input_rgb.shape[1]}×{m.input_rgb.shape[0]} px crop)")
        ax[1].imshow(m.pca_rgb, interpolation="nearest")
        ax[1].set_title("PCA-RGB, last layer")
        med = float(np.median(m.norms))
        im = ax[2].imshow(m.norms, cmap="inferno", norm=norm_scale, interpolation="nearest")
        ax[2].set_title(f"token norm (max/median {float(m.norms.max()) / max(med, 1e-12):.1f})")
        _colorbar(fig, ax[2], im, "L2 norm (log, shared)")
        im = ax[3].imshow(m.abs_cos, cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        ax[3].set_title("|cos(token, ν)|, last layer")
        _colorbar(fig, ax[3], im, "|cos| (unitless)")
        defects = np.asarray(m.defects, dtype=bool)
        ax[4].imshow(defects.astype(np.float32), cmap=MASK_CMAP, vmin=0, vmax=1, interpolation="nearest")
        ax[4].set_title(f"defects (red): {int(defects.sum())} of {defects.size}")
        if m.cls_attention is None or attn_range is None:
            _blank(ax[5], "no CLS token")
        else:
            im = ax[5].imshow(m.cls_attention, cmap="magma", vmin=attn_range[0], vmax=attn_range[1], interpolation="nearest")
            ax[5].set_title("CLS attention (mean of heads)")
            _colorbar(fig, ax[5], im, "weight (shared)")
    fig.suptitle(title, fontsize=13)
    fig.tight_layout()
    return fig


def norm_violins_compare(series: Sequence[tuple[str, dict, int]]):
    """Token-norm violins per layer, one colour per analysis (label, distributions, depth), log scale."""
    depth = max(d for _, _, d in series)
    k = len(series)
    width = 0.8 / k
    fig, ax = plt.subplots(figsize=(max(7, 0.7 * depth + 2), 4.2))
    for j, (label, dist, d) in enumerate(series):
        pos = np.arange(d) + (j - (k - 1) / 2) * width
        data = [np.asarray(dist.get(f"norms_{i}", np.zeros(0))) for i in range(d)]
        violin(ax, data, pos, SERIES_COLORS[j % len(SERIES_COLORS)], label, width * 0.95)
    ax.set_xticks(np.arange(depth))
    ax.set_yscale("log")
    ax.set_xlabel("layer (block index)")
    ax.set_ylabel("patch-token L2 norm (log scale)")
    ax.set_title("Token norms per layer (paper Fig. 2d)")
    ax.legend(loc="upper left")
    fig.tight_layout()
    return fig


def _layer_values(summary: dict, key: str, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for layer in summary.get("layers", []):
        value = layer.get(key)
        if value is not None and math.isfinite(float(value)):
            xs.append(int(layer["index"]))
            ys.append(float(value) * scale)
    return np.asarray(xs), np.asarray(ys)


def layer_curves(series: Sequence[tuple[str, dict]]):
    """Theory alignment, defect / high-norm rate and max/median norm versus layer, A vs B on each axis."""
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.2))
    for j, (label, summary) in enumerate(series):
        color = SERIES_COLORS[j % len(SERIES_COLORS)]
        x, y = _layer_values(summary, "theory_alignment")
        axes[0].plot(x, y, "o-", color=color, label=label)
        x, y = _layer_values(summary, "defect_rate", 100.0)
        axes[1].plot(x, y, "o-", color=color, label=f"{label}: defects (|cos| rule)")
        x, y = _layer_values(summary, "high_norm_rate", 100.0)
        axes[1].plot(x, y, "s--", color=color, alpha=0.7, label=f"{label}: high-norm tokens")
        ratio = [
            (int(layer["index"]), float(layer["norm_max"]) / max(float(layer["norm_median"]), 1e-12))
            for layer in summary.get("layers", [])
            if layer.get("norm_max") is not None and layer.get("norm_median") is not None
        ]
        if ratio:
            axes[2].plot(*zip(*ratio), "o-", color=color, label=label)
    axes[0].set_ylim(0, 1.02)
    axes[0].set_ylabel("|cos(ν_i, mean high-norm direction)|")
    axes[0].set_title("Theory alignment (1 = ν_i predicts the defects)")
    axes[1].set_ylabel("% of patch tokens")
    axes[1].set_title("Defect rate and high-norm rate")
    axes[2].set_yscale("log")
    axes[2].set_ylabel("max / median token norm (log scale)")
    axes[2].set_title("Largest token norm relative to the median")
    for ax in axes:
        ax.set_xlabel("layer (block index)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def sigma_delta_plot(entries: Sequence[tuple[int, str, np.ndarray, np.ndarray]], top: int = 3):
    """Learned minus original singular values, one panel per k ≤ ``top``, bars grouped by layer,
    one bar per linear part (appendix Fig. 7). ``entries`` = (layer, linear name, sigma, delta)."""
    kinds = sorted({kind for _, kind, _, _ in entries})
    layers = sorted({layer for layer, _, _, _ in entries})
    cmap = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, top, figsize=(6 * top, 4.2), sharey=True, squeeze=False)
    width = 0.8 / max(len(kinds), 1)
    for k in range(top):
        ax = axes[0, k]
        for j, kind in enumerate(kinds):
            xs, ys = [], []
            for layer, name, _sigma, delta in entries:
                if name == kind and delta.size > k:
                    xs.append(layers.index(layer) + (j - (len(kinds) - 1) / 2) * width)
                    ys.append(float(delta[k]))
            ax.bar(xs, ys, width=width, color=cmap(j % 10), label=kind if k == 0 else None)
        ax.axhline(0.0, color="0.3", lw=0.8)
        ax.set_xticks(range(len(layers)))
        ax.set_xticklabels([str(v) for v in layers])
        ax.set_xlabel("layer (block index)")
        ax.set_title(f"Δσ{_subscript(k + 1)} = learned − original")
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].set_ylabel("Δ singular value (weight units)")
    if kinds:
        fig.legend(loc="upper center", ncol=min(len(kinds), 6), bbox_to_anchor=(0.5, 1.08), fontsize=9)
    fig.tight_layout()
    return fig


def _subscript(n: int) -> str:
    return str(n).translate(str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉"))


def training_curves(rows: Sequence[dict], stop_ratio: float | None = None):
    """Skip ratio, loss and the repaired layer versus step, from ``log.jsonl``."""

    def series(key):
        xs, ys = [], []
        for row in rows:
            value = row.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                xs.append(row["step"])
                ys.append(float(value))
        return xs, ys

    fig, axes = plt.subplots(1, 3, figsize=(17, 3.8))
    x, y = series("skip_ratio")
    axes[0].plot(x, y, color="tab:green")
    if stop_ratio is not None:
        axes[0].axhline(stop_ratio, color="0.3", ls="--", lw=1, label=f"stop at {stop_ratio:g}")
        axes[0].legend(loc="lower right")
    axes[0].set_ylim(-0.02, 1.02)
    axes[0].set_ylabel("fraction of recent images skipped")
    axes[0].set_title("Skip ratio (images without defects)")
    x, y = series("loss")
    axes[1].plot(x, y, ".", ms=3, color="tab:purple")
    if y and min(y) > 0:
        axes[1].set_yscale("log")
    axes[1].set_ylabel("loss (distance / mean token norm)")
    axes[1].set_title("Repair loss (steps with defects)")
    x, y = series("layer")
    axes[2].plot(x, y, ".", ms=4, color="tab:brown")
    axes[2].set_ylabel("layer (block index)")
    axes[2].set_title("First layer with ≥ 3 defects")
    axes[2].yaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes:
        ax.set_xlabel("step (iteration)")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
