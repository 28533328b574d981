"""Every matplotlib figure of sinder: image maps (one row per analysis), per-layer curves and
violins, σ deltas and training curves, for the HTML report and an analysis folder's figures/.

Figures are built as :class:`matplotlib.figure.Figure` objects, never through pyplot, so nothing
here touches the global backend or keeps figures alive after they are rendered.
"""

from __future__ import annotations

import base64
import math
import re
import textwrap
from collections.abc import Sequence
from io import BytesIO
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.colors import ListedColormap, LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullFormatter
from matplotlib.transforms import offset_copy
from mpl_toolkits.axes_grid1 import make_axes_locatable

from .io import atomic_path
from .runfolder import REPAIRED, AnalysisResult, ImageMaps, is_after_repair, max_over_median

# One colour per compared analysis (A, B), used by every figure so the page reads consistently.
SERIES_COLORS = ("tab:blue", "tab:orange")
MASK_CMAP = ListedColormap(["#f2f2f2", "#d62728"])
LAYER_AXIS = "layer (block index)"
ANGLE_LIMITS = (-5.0, 95.0)  # degrees: a violin at 0° or 90° stays clear of the frame
LOG_MANTISSAS = ((1.0,), (1.0, 2.0, 5.0), (1.0, 1.5, 2.0, 3.0, 5.0, 7.0))  # round log ticks, coarse to fine
LEGEND_DROP = 40  # points below an axes: past its tick labels and x label


# ----------------------------------------------------------------------------- output


def png_bytes(fig: Figure, dpi: int) -> bytes:
    buf = BytesIO()
    fig.savefig(buf, dpi=dpi, bbox_inches="tight", format="png")
    return buf.getvalue()


def png_data_uri(fig: Figure, dpi: int = 80) -> str:
    """``fig`` as a ``data:image/png;base64,`` URI for an <img> of a self-contained page."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(fig, dpi)).decode("ascii")


def save_png(fig: Figure, path: Path, dpi: int = 110) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(png_bytes(fig, dpi))
    return path


def slug(name: str) -> str:
    """A file-name-safe stem for an image name (a path, or ``skimage:NAME``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(name).stem if "/" in name else name.replace("skimage:", ""))[:60]


# ----------------------------------------------------------------------------- image maps


def norm_ratio(norms: np.ndarray) -> float:
    """Largest token norm of one image over its median."""
    return float(np.max(norms)) / max(float(np.median(norms)), 1e-12)


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


def _colorbar(fig: Figure, ax, im, label: str):
    """A colour bar exactly as tall as the image beside it."""
    cax = make_axes_locatable(ax).append_axes("right", size="4%", pad=0.05)
    return fig.colorbar(im, cax=cax, label=label)


def _maps_row(fig: Figure, ax, m: ImageMaps, norm_scale: Normalize, attn_range: tuple[float, float] | None) -> None:
    """The six panels of one image: input, PCA-RGB, norm, |cos| to ν, defect mask, CLS attention."""
    ax[0].imshow(m.input_rgb)
    ax[0].set_title(f"input ({m.input_rgb.shape[1]}×{m.input_rgb.shape[0]} px crop)")
    ax[1].imshow(m.pca_rgb, interpolation="nearest")
    ax[1].set_title("PCA-RGB, last layer")
    im = ax[2].imshow(m.norms, cmap="inferno", norm=norm_scale, interpolation="nearest")
    ax[2].set_title(f"token norm (max/median {norm_ratio(m.norms):.1f})")
    bar = _colorbar(fig, ax[2], im, "L2 norm (log, shared)")
    if isinstance(norm_scale, LogNorm):  # plain round values: narrower than 3×10², and more of them
        label_log_axis(bar.ax.yaxis, norm_scale.vmin, norm_scale.vmax)
    im = ax[3].imshow(m.abs_cos, cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    ax[3].set_title("|cos(token, ν)|, last layer")
    _colorbar(fig, ax[3], im, "|cos| (unitless)")
    defects = np.asarray(m.defects, dtype=bool)
    ax[4].imshow(defects.astype(np.float32), cmap=MASK_CMAP, vmin=0, vmax=1, interpolation="nearest")
    ax[4].set_title(f"defects (red): {int(defects.sum())} of {defects.size}")
    if m.cls_attention is None or attn_range is None:
        _blank(ax[5], "no CLS token")
        return
    im = ax[5].imshow(m.cls_attention, cmap="magma", vmin=attn_range[0], vmax=attn_range[1], interpolation="nearest")
    ax[5].set_title("CLS attention (mean of heads)")
    _colorbar(fig, ax[5], im, "weight (shared)")


def comparison_panel(rows: Sequence[tuple[str, ImageMaps | None]], title: str) -> Figure:
    """One row per analysis (label, maps of the image or None), six columns (see ``_maps_row``).
    Norm (log) and attention share one colour scale across rows."""
    fig = Figure(figsize=(22, 3.2 * len(rows) + 0.4))
    axes = fig.subplots(len(rows), 6, squeeze=False)
    norm_range = _shared_range([m.norms if m is not None else None for _, m in rows])
    attn_range = _shared_range([m.cls_attention if m is not None else None for _, m in rows])
    # Log scale: defects are 10-20x the median, so a linear scale would hide every other token.
    norm_scale = LogNorm(*norm_range) if norm_range and norm_range[0] > 0 else Normalize(*(norm_range or (0, 1)))
    for ax, (label, m) in zip(axes, rows):
        for a in ax:
            a.set_xticks([])
            a.set_yticks([])
        ax[0].set_ylabel(label, fontsize=13)
        if m is None:
            for a in ax:
                _blank(a, "image not in this analysis")
        else:
            _maps_row(fig, ax, m, norm_scale, attn_range)
    fig.suptitle(title, fontsize=13)
    # w_pad: clear white space between a colour bar's label and the next panel
    fig.tight_layout(w_pad=2.5)
    return fig


# ----------------------------------------------------------------------------- per layer


def legend_below(ax, ncol: int = 2) -> None:
    """The legend under the axes, past its x label, so it never hides a curve or a violin
    (``tight_layout`` and ``bbox_inches="tight"`` make room for it)."""
    under = offset_copy(ax.transAxes, fig=ax.figure, y=-LEGEND_DROP, units="points")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, 0.0), bbox_transform=under, ncol=ncol, fontsize=8, frameon=False)


def label_log_axis(axis, lo: float, hi: float, want: int = 4) -> None:
    """At least ``want`` labelled round values on a log axis over [lo, hi]: matplotlib labels only
    the powers of ten once a range passes a decade, which left 1.1–20 with just 10⁰ and 10¹."""
    decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
    for mantissas in LOG_MANTISSAS:
        ticks = [m * 10.0**k for k in decades for m in mantissas if lo <= m * 10.0**k <= hi]
        if len(ticks) >= want:
            axis.set_major_locator(FixedLocator(ticks[:: math.ceil(len(ticks) / 10)]))  # at most 10 labels
            break
    else:  # under a factor of ~3 a log axis is nearly linear: evenly spaced values read best
        axis.set_major_locator(MaxNLocator(nbins=want))
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())  # unlabelled minor ticks: labels would collide with the majors


def violin(ax, data: list[np.ndarray], positions, color: str, label: str, width: float = 0.7) -> None:
    """One violin per position, in ``color``, with a legend entry ``label``."""
    data = [d if d.size else np.zeros(1) for d in data]
    parts = ax.violinplot(data, positions=positions, widths=width, showmedians=True, showextrema=True)
    for body in parts["bodies"]:
        body.set_facecolor(color)
        body.set_edgecolor(color)
        body.set_alpha(0.45)
    for key in ("cmedians", "cmins", "cmaxes", "cbars"):
        parts[key].set_color(color)
    # a dot at each median: a violin of near-equal values is a hairline and would look missing
    ax.plot(positions, [float(np.median(d)) for d in data], "o", ms=4, color=color, mec="white", mew=0.8, zorder=3)
    ax.plot([], [], color=color, lw=6, alpha=0.45, label=label)


def norm_violins(series: Sequence[tuple[str, dict, int]], title: str = "Token norms per layer (paper Fig. 2d)") -> Figure:
    """Token-norm violins per layer, one colour per (label, distributions, depth), log scale."""
    depth = max(d for _, _, d in series)
    width = 0.8 / len(series)
    fig = Figure(figsize=(max(7, 0.7 * depth + 2), 4.8))
    ax = fig.add_subplot()
    for j, (label, dist, d) in enumerate(series):
        pos = np.arange(d) + (j - (len(series) - 1) / 2) * width
        data = [np.asarray(dist.get(f"norms_{i}", np.zeros(0))) for i in range(d)]
        violin(ax, data, pos, SERIES_COLORS[j % len(SERIES_COLORS)], label, width * 0.95)
    ax.set_xticks(np.arange(depth))
    ax.set_yscale("log")
    label_log_axis(ax.yaxis, *ax.get_ylim())
    ax.set_xlabel(LAYER_AXIS)
    ax.set_ylabel("patch-token L2 norm (log scale)")
    ax.set_title(title)
    legend_below(ax)
    fig.tight_layout()
    return fig


def angle_violins(distributions: dict, depth: int, title: str = "Angle between tokens and ν_i") -> Figure:
    """Angle between tokens and ν_i per layer (paper Fig. 6), beside a random direction as control."""
    fig = Figure(figsize=(max(6, 0.7 * depth + 2), 4.6))
    ax = fig.add_subplot()
    pos = np.arange(depth)
    violin(ax, [distributions[f"angles_{i}"] for i in range(depth)], pos - 0.2, "tab:red", "to ν_i (theory)", 0.4)
    if "angles_random_0" in distributions:
        violin(
            ax, [distributions[f"angles_random_{i}"] for i in range(depth)], pos + 0.2, "tab:gray", "to a random direction (control)", 0.4
        )
    ax.set_xticks(pos)
    ax.set_ylim(*ANGLE_LIMITS)
    ax.set_yticks(np.arange(0, 91, 15))
    ax.set_xlabel(LAYER_AXIS)
    ax.set_ylabel("unsigned angle (degrees)")
    ax.set_title(title)
    legend_below(ax)
    fig.tight_layout()
    return fig


def _layer_series(summary: dict, value, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(layer index, ``value(layer)`` × scale) for the layers where it is a finite number."""
    xs, ys = [], []
    for layer in summary.get("layers", []):
        y = value(layer)
        if y is not None and math.isfinite(float(y)):
            xs.append(int(layer["index"]))
            ys.append(float(y) * scale)
    return np.asarray(xs), np.asarray(ys)


def layer_curves(series: Sequence[tuple[str, dict]]) -> Figure:
    """Theory alignment, defect / high-norm rate and max/median norm versus layer, both analyses on each axis."""
    fig = Figure(figsize=(17, 5))
    axes = fig.subplots(1, 3)
    for j, (label, summary) in enumerate(series):
        color = SERIES_COLORS[j % len(SERIES_COLORS)]
        axes[0].plot(*_layer_series(summary, lambda layer: layer.get("theory_alignment")), "o-", color=color, label=label)
        axes[1].plot(
            *_layer_series(summary, lambda layer: layer.get("defect_rate"), 100.0),
            "o-",
            color=color,
            label=f"{label}: defects (|cos| rule)",
        )
        axes[1].plot(
            *_layer_series(summary, lambda layer: layer.get("high_norm_rate"), 100.0),
            "s--",
            color=color,
            alpha=0.7,
            label=f"{label}: high-norm tokens",
        )
        x, y = _layer_series(summary, max_over_median)
        if x.size:
            axes[2].plot(x, y, "o-", color=color, label=label)
    axes[0].set_ylim(0, 1.02)
    axes[0].set_ylabel("|cos(ν_i, mean high-norm direction)|")
    axes[0].set_title("Theory alignment (1 = ν_i predicts the defects)")
    axes[1].set_ylabel("% of patch tokens")
    axes[1].set_title("Defect rate and high-norm rate")
    axes[2].set_yscale("log")
    if axes[2].lines:
        label_log_axis(axes[2].yaxis, *axes[2].get_ylim())
    axes[2].set_ylabel("max / median token norm (log scale)")
    axes[2].set_title("Largest token norm relative to the median")
    for ax in axes:
        ax.set_xlabel(LAYER_AXIS)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            legend_below(ax)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- repair run


def _subscript(n: int) -> str:
    return str(n).translate(str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉"))


def sigma_delta_plot(entries: Sequence[tuple[int, str, np.ndarray, np.ndarray]], top: int = 3) -> Figure:
    """Learned minus original singular values, one panel per k ≤ ``top``, bars grouped by layer,
    one bar per linear part (appendix Fig. 7). ``entries`` = (layer, linear name, sigma, delta)."""
    kinds = sorted({kind for _, kind, _, _ in entries})
    layers = sorted({layer for layer, _, _, _ in entries})
    cmap = matplotlib.colormaps["tab10"]
    fig = Figure(figsize=(6 * top, 4.2))
    axes = fig.subplots(1, top, sharey=True, squeeze=False)[0]
    width = 0.8 / max(len(kinds), 1)
    for k, ax in enumerate(axes):
        for j, kind in enumerate(kinds):
            bars = [
                (layers.index(layer) + (j - (len(kinds) - 1) / 2) * width, float(delta[k]))
                for layer, name, _sigma, delta in entries
                if name == kind and delta.size > k
            ]
            xs, ys = zip(*bars) if bars else ((), ())
            ax.bar(xs, ys, width=width, color=cmap(j % 10), label=kind if k == 0 else None)
        ax.axhline(0.0, color="0.3", lw=0.8)
        ax.set_xticks(range(len(layers)))
        ax.set_xticklabels([str(v) for v in layers])
        ax.set_xlabel(LAYER_AXIS)
        ax.set_title(f"Δσ{_subscript(k + 1)} = learned − original")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("Δ singular value (weight units)")
    if kinds:
        fig.legend(loc="upper center", ncol=min(len(kinds), 6), bbox_to_anchor=(0.5, 1.08), fontsize=9)
    fig.tight_layout()
    return fig


def _log_series(rows: Sequence[dict], key: str) -> tuple[list[int], list[float]]:
    """(step, value) of the log rows where ``key`` is a finite number."""
    xs, ys = [], []
    for row in rows:
        value = row.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            xs.append(row["step"])
            ys.append(float(value))
    return xs, ys


STOP_REASONS = {  # summary.json's stop_reason, in words
    "skip_ratio": "the skip ratio: the share of recent images without defects reached its stop line",
    "clean_pass": "a clean pass: a whole pass over the training images found no defect left to train on",
    "residual_plateau": "a plateau: the held-out residual stopped improving",
    "max_steps": "the step budget (--max-steps)",
}


def stop_text(reason: str | None) -> str:
    """``Stopped by a clean pass: ...`` for a summary's ``stop_reason`` (unknown ones as written)."""
    return f"Stopped by {STOP_REASONS.get(reason, reason)}" if reason else "No stop recorded (unfinished run)"


def _skip_ratio_panel(ax, rows: Sequence[dict], stop_ratio: float | None, stop_reason: str | None) -> None:
    """The skip ratio (in %) versus step, the stop line and why the run stopped."""
    x, y = _log_series(rows, "skip_ratio")
    ax.plot(x, [100 * v for v in y], color="tab:green")
    if stop_ratio is not None:
        reached = stop_reason == "skip_ratio"
        ax.axhline(
            100 * stop_ratio,
            color="0.3",
            ls="--",
            lw=1,
            label=f"skip-ratio stop at {100 * stop_ratio:g}%" + ("" if reached or stop_reason is None else " (not needed)"),
        )
        ax.legend(loc="lower right")
    if stop_reason is not None and x:
        ax.axvline(x[-1], color="tab:red", lw=1, alpha=0.6)
        wrapped = "\n".join(textwrap.wrap(stop_text(stop_reason), 48))
        ax.text(
            0.02,
            0.95,
            wrapped,
            transform=ax.transAxes,
            va="top",
            ha="left",
            fontsize=8,
            bbox={"boxstyle": "round", "fc": "white", "ec": "0.7", "alpha": 0.9},
        )
    ax.set_ylim(-2, 102)
    ax.set_ylabel("% of recent images skipped")
    stopped = {
        "skip_ratio": "stop line reached",
        "clean_pass": "stopped by a clean pass",
        "residual_plateau": "stopped by a plateau",
        "max_steps": "stopped at --max-steps",
    }.get(stop_reason, stop_reason)
    ax.set_title("Skip ratio (images without defects)" + (f": {stopped}" if stopped else ""))


def training_curves(
    rows: Sequence[dict],
    stop_ratio: float | None = None,
    stop_reason: str | None = None,
    min_defects: int | None = None,
    weak_defects: bool = False,
) -> Figure:
    """Skip ratio (in %), loss and the repaired layer versus step, from the run's log. The skip-ratio
    chart says why the run stopped: a run stopped by a clean pass or a plateau never needs the
    skip-ratio stop line, and its flat curve must not read as 'never converged'. ``min_defects``
    (the rule's skip_less_than) and ``weak_defects`` name the rule that picks the trained layer."""
    fig = Figure(figsize=(17, 3.8))
    axes = fig.subplots(1, 3)
    _skip_ratio_panel(axes[0], rows, stop_ratio, stop_reason)
    x, y = _log_series(rows, "loss")
    axes[1].plot(x, y, ".", ms=3, color="tab:purple")
    if y and min(y) > 0:
        axes[1].set_yscale("log")
    axes[1].set_ylabel("loss (distance / mean token norm)")
    axes[1].set_title("Repair loss (steps with defects)")
    axes[2].plot(*_log_series(rows, "layer"), ".", ms=4, color="tab:brown")
    axes[2].set_ylabel(LAYER_AXIS)
    if min_defects is None:
        axes[2].set_title("Layer trained (the first with defects)")
    else:
        weak = " (or weak defects)" if weak_defects else ""
        axes[2].set_title(f"First layer with ≥ {min_defects} defect{'' if min_defects == 1 else 's'}{weak}")
    axes[2].yaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes:
        ax.set_xlabel("step (iteration)")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- analysis folder


def write_analysis_figures(result: AnalysisResult, folder: Path) -> list[Path]:
    """The PNGs of an analysis folder's figures/: norm and angle violins, one map panel per image."""
    folder = Path(folder)
    depth = result.summary["num_layers"]
    model = str(result.summary.get("model", ""))
    if is_after_repair(folder.parent):  # analysis.json names the spec the run started from
        model += REPAIRED
    paths = [
        save_png(norm_violins([("token norm", result.distributions, depth)], "Patch-token norms per layer"), folder / "violin_norms.png"),
        save_png(angle_violins(result.distributions, depth), folder / "violin_angles.png"),
    ]
    for k, m in enumerate(result.maps):
        paths.append(save_png(comparison_panel([(model, m)], m.name), folder / f"maps_{k:03d}_{slug(m.name)}.png"))
    return paths
