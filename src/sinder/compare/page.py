"""The comparison page (``compare.html``): one row per method in every table and every map grid,
self-contained like the report (inline styles, images as data URIs, no network)."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from ..measure import summary_cosine
from ..plots import png_data_uri
from ..report.html import esc, fmt, note, page, table
from .methods import DESCRIPTIONS
from .table import IMAGE_COLUMNS, IMAGES_NOTE, downstream_cell, downstream_keys, pct

COLORS = {
    "original": "tab:gray",
    "sinder": "tab:blue",
    "registers": "tab:green",
    "clamp": "tab:red",
    "interp": "tab:purple",
    "retrained": "tab:orange",
}
SECTION_IDS = ("summary", "per-layer", "downstream", "maps", "settings")


def _drop(before, after) -> str:
    if before is None or after is None or before <= 0:
        return "–"
    return f"{100 * (1 - after / before):.1f}%"


def summary_table(report: dict) -> str:
    methods = report["methods"]
    base = methods["original"]["last_layer"]
    planted = "energy_along_u" in base
    head = [
        "method",
        "energy along ν (last)",
        "energy drop",
        *(["energy along u (planted)"] if planted else []),
        "max/median",
        "high-norm rate",
        "defect rate",
        "non-defect cos",
        "CLS/pooled cos",
        *IMAGE_COLUMNS,
        "training steps",
        "prepare",
        "inference / image",
    ]
    rows = []
    for name in report["order"]:
        m = methods[name]
        last, feats, needs = m["last_layer"], m["features"] or {}, m["needs"]
        rows.append(
            [
                f"<b>{esc(name)}</b>",
                pct(last["energy_along_direction"]),
                _drop(base["energy_along_direction"], last["energy_along_direction"]) if name != "original" else "–",
                *([pct(last.get("energy_along_u"))] if planted else []),
                esc(fmt(last["max_over_median"])),
                pct(last["high_norm_rate"]),
                pct(last["defect_rate"]),
                esc(fmt(feats.get("non_defect_cosine"))),
                esc(fmt(summary_cosine(feats))),
                esc(fmt(needs.get("images"))),
                esc(fmt(needs.get("training_images_seen"))),
                esc(fmt(needs.get("training_steps"))),
                f"{m['prepare_seconds']:.1f} s",
                f"{m['inference_ms_per_image']:.1f} ms",
            ]
        )
    said = lambda n: report["methods"][n].get("description") or DESCRIPTIONS.get(n, "")  # noqa: E731  (older compare.json: the table's)
    described = "".join(f"<li><b>{esc(n)}</b>: {esc(said(n))}</li>" for n in report["order"])
    return (
        "<h2>Summary</h2>"
        + table(head, rows, "num")
        + "<p>Last block's patch tokens (before the final norm) on the evaluation images. Energy along ν: Σ⟨t, ν⟩² / Σ‖t‖² with "
        "the original model's predicted direction; cosines compare final-normed tokens with the original's, for patch tokens that "
        f"were neither high-norm nor defects there. Images: {esc(IMAGES_NOTE)}.</p>"
        f"<ul>{described}</ul>"
    )


def per_layer_figure(report: dict) -> Figure:
    fig = Figure(figsize=(12, 3.8))
    axes = fig.subplots(1, 3)
    keys = (
        ("energy_along_direction", "energy along ν_i (%)"),
        ("max_over_median", "max / median norm"),
        ("high_norm_rate", "high-norm rate (%)"),
    )
    for ax, (key, label) in zip(axes, keys):
        scale = 1.0 if key == "max_over_median" else 100.0  # rates in %, as in the tables
        for name in report["order"]:
            rows = report["methods"][name]["per_layer"]
            xs = [r["layer"] for r in rows]
            ys = [np.nan if r[key] is None else scale * r[key] for r in rows]
            ax.plot(xs, ys, marker="o", ms=3, label=name, color=COLORS.get(name))
        ax.set_xlabel("layer (block index)")
        ax.set_title(label, fontsize=11)
        if key == "max_over_median":
            ax.set_yscale("log")
    axes[0].legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def downstream_table(report: dict) -> str:
    tasks = report.get("tasks") or {}
    if not tasks:
        return "<h2>Downstream</h2>" + note(
            "no downstream data was given (--task TASK=DIR); only the defect and feature numbers above were measured"
        )
    parts = ["<h2>Downstream</h2>"]
    for task in tasks:
        keys = downstream_keys(report, task)
        rows = [
            [f"<b>{esc(n)}</b>", *(esc(downstream_cell(k, (report["methods"][n].get("tasks", {}).get(task) or {}).get(k))) for k in keys)]
            for n in report["order"]
        ]
        parts.append(f"<h3>{esc(task)} on <code>{esc(tasks[task])}</code></h3>" + table(["method", *keys], rows, "num"))
    return "".join(parts)


def maps_figure(name: str, rgb: np.ndarray, order: list[str], maps: dict, index: int) -> Figure:
    """One image: a row per method (PCA, norms on a shared scale, CLS attention)."""
    rows = len(order)
    fig = Figure(figsize=(11, 2.6 * rows))
    axes = fig.subplots(rows, 4, squeeze=False)
    norms = [maps[m].norms[index] for m in order]
    vmax = max(float(n.max()) for n in norms)
    for r, method in enumerate(order):
        mm = maps[method]
        panels = (
            (rgb, None, "input"),
            (mm.pca[index], None, "PCA"),
            (mm.norms[index], "viridis", "token norm"),
            (mm.attention[index], "inferno", "CLS attention"),
        )
        for c, (img, cmap, title) in enumerate(panels):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if img is None:
                ax.text(0.5, 0.5, "no CLS token", ha="center", va="center", transform=ax.transAxes)
                continue
            kw = {"vmin": 0.0, "vmax": vmax} if title == "token norm" else {}
            im = ax.imshow(img, cmap=cmap, interpolation="nearest", **kw)
            if cmap is not None:
                fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
            if r == 0:
                ax.set_title(title, fontsize=11)
        axes[r, 0].set_ylabel(method, fontsize=12, fontweight="bold")
    fig.suptitle(name, fontsize=12)
    fig.tight_layout()
    return fig


def neurons(pairs: list, shown: int = 8) -> str:
    """Register neurons as (block, unit) pairs: ``[(4, 1535)]``; past ``shown``, the rest as a count."""
    text = ", ".join(f"({int(b)}, {int(u)})" for b, u in pairs[:shown])
    return f"[{text}, … +{len(pairs) - shown} more ({len(pairs)} in all)]" if len(pairs) > shown else f"[{text}]"


def settings_section(report: dict) -> str:
    rows = []
    for name in report["order"]:
        m = report["methods"][name]
        details = {k: v for k, v in m.get("details", {}).items() if k not in ("settings", "measured_on_search_images")}
        text = "; ".join(f"{k}={neurons(v) if k == 'neurons' else fmt(v)}" for k, v in details.items()) or "–"
        rows.append([f"<b>{esc(name)}</b>", esc(text), esc(fmt(m.get("inference_vs_original")))])
    return (
        "<h2>Settings</h2>"
        + table(["method", "details", "inference time ÷ original"], rows)
        + f"<p>Defect rule: <code>{esc(report['rule'])}</code>; resolution {report['resolution']} px; {report['images']['eval']} evaluation image(s).</p>"
    )


def build_page(report: dict, maps: dict, dpi: int = 70) -> str:
    order = report["order"]
    figures = "".join(
        f'<figure><img src="{png_data_uri(maps_figure(name, rgb, order, maps["methods"], i), dpi)}" alt="maps of {esc(name)}, one row per method">'
        f"<figcaption>{esc(name)}: norms share one colour scale across methods.</figcaption></figure>"
        for i, (name, rgb) in enumerate(zip(maps["names"], maps["inputs"]))
    )
    sections = {
        "summary": summary_table(report),
        "per-layer": "<h2>Per layer</h2>"
        + f'<figure><img src="{png_data_uri(per_layer_figure(report), dpi)}" alt="per-layer defect numbers, one line per method"></figure>',
        "downstream": downstream_table(report),
        "maps": "<h2>Maps</h2>" + (figures or note("no maps (--max-maps 0)")),
        "settings": settings_section(report),
    }
    return page(f"sinder compare: {report['model']['model']}", [report["out"]], report.get("notes", []), sections, tool="sinder compare")
