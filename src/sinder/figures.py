"""Matplotlib figures for analyses: per-image maps and per-layer violins (paper Fig. 2d, 6)."""
from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .io import atomic_path  # noqa: E402


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(name).stem if "/" in name else name.replace("skimage:", ""))[:60]


def save(fig, path: Path, dpi: int = 110) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def image_panel(m, title: str | None = None):
    """Input | PCA-RGB | token norm | |cos| to ν with detected defects outlined."""
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.9))
    axes[0].imshow(m.input_rgb)
    axes[0].set_title("input (model crop)")
    axes[1].imshow(m.pca_rgb, interpolation="nearest")
    axes[1].set_title("PCA-RGB, last layer")
    im = axes[2].imshow(m.norms, cmap="inferno", interpolation="nearest")
    axes[2].set_title("token norm, last layer")
    fig.colorbar(im, ax=axes[2], fraction=0.046, pad=0.04, label="L2 norm")
    im = axes[3].imshow(m.abs_cos, cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    ys, xs = np.nonzero(m.defects)
    axes[3].scatter(xs, ys, s=60, facecolors="none", edgecolors="red", linewidths=1.5, label="defect")
    axes[3].set_title("|cos(token, ν)|, red = defect")
    fig.colorbar(im, ax=axes[3], fraction=0.046, pad=0.04, label="|cos|")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title or m.name)
    return fig


def violin(ax, data: list[np.ndarray], positions, color: str, label: str, width: float = 0.7) -> None:
    data = [d if d.size else np.zeros(1) for d in data]
    parts = ax.violinplot(data, positions=positions, widths=width, showmedians=True, showextrema=True)
    for body in parts["bodies"]:
        body.set_facecolor(color)
        body.set_edgecolor(color)
        body.set_alpha(0.45)
    for key in ("cmedians", "cmins", "cmaxes", "cbars"):
        parts[key].set_color(color)
    ax.plot([], [], color=color, lw=6, alpha=0.45, label=label)


def norm_violins(distributions: dict, depth: int, title: str = "Patch-token norms per layer"):
    fig, ax = plt.subplots(figsize=(max(6, 0.55 * depth + 2), 4))
    violin(ax, [distributions[f"norms_{i}"] for i in range(depth)], list(range(depth)), "tab:blue", "token norm")
    ax.set_yscale("log")
    ax.set_xlabel("layer (block index)")
    ax.set_ylabel("L2 norm (log scale)")
    ax.set_title(title)
    ax.legend(loc="upper left")
    return fig


def angle_violins(distributions: dict, depth: int, title: str = "Angle between tokens and ν_i"):
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * depth + 2), 4))
    pos = np.arange(depth)
    violin(ax, [distributions[f"angles_{i}"] for i in range(depth)], pos - 0.2, "tab:red", "to ν_i (theory)", 0.4)
    if "angles_random_0" in distributions:
        violin(ax, [distributions[f"angles_random_{i}"] for i in range(depth)], pos + 0.2, "tab:gray", "to a random direction (control)", 0.4)
    ax.set_xticks(pos)
    ax.set_ylim(0, 90)
    ax.set_xlabel("layer (block index)")
    ax.set_ylabel("unsigned angle (degrees)")
    ax.set_title(title)
    ax.legend(loc="lower left")
    return fig


def write_analysis_figures(result, folder: Path) -> list[Path]:
    folder = Path(folder)
    depth = result.summary["num_layers"]
    paths = [
        save(norm_violins(result.distributions, depth), folder / "violin_norms.png"),
        save(angle_violins(result.distributions, depth), folder / "violin_angles.png"),
    ]
    for k, m in enumerate(result.maps):
        paths.append(save(image_panel(m), folder / f"maps_{k:03d}_{slug(m.name)}.png"))
    return paths
