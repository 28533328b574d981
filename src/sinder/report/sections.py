"""The five sections of the report page, each built from :class:`~.inputs.ReportInputs` alone."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from .. import plots
from ..runfolder import ANALYSIS_JSON, CONFIG, DISTRIBUTIONS, LOG, MAPS, SIGMA, SUMMARY, AnalysisResult, ImageMaps, max_over_median
from ..units import is_rate, percent, plural, points
from .html import esc, figure, flatten, fmt, is_number, kv_table, note, table
from .inputs import NO_ANALYSIS, AnalysisInput, ReportInputs, RunInput, find_stop_ratio, mask_threshold

if TYPE_CHECKING:
    from . import ReportConfig

TIMING_KEYS = ("steps", "images_seen", "seconds")

# ============================================================================= side by side


def paired_maps(analyses: Sequence[AnalysisInput]) -> list[tuple[str, list[ImageMaps | None]]]:
    """Images by name in first-seen order, with each analysis's maps (None where absent)."""
    names: list[str] = []
    by_name: list[dict[str, ImageMaps]] = []
    for a in analyses:
        lookup = {m.name: m for m in a.result.maps}
        by_name.append(lookup)
        names.extend(n for n in lookup if n not in names)
    return [(n, [lookup.get(n) for lookup in by_name]) for n in names]


def section_side_by_side(inputs: ReportInputs, cfg: ReportConfig) -> str:
    thresholds = sorted({str(mask_threshold(a.result.summary) or "k") for a in inputs.analyses})
    parts = [
        "<h2>Side by side: last-layer maps per image</h2>",
        "<p>Columns: the crop the model saw; PCA-RGB of last-layer patch tokens; token L2 norm "
        "(log colour scale shared by all rows of an image); |cos| between each token and the predicted "
        f"defect direction ν of the last layer; tokens flagged by the rule |cos| &gt; mean + {esc('/'.join(thresholds) or 'k')}·std "
        "(by default mean and std of the non-defect tokens of the image; every cell, border included); CLS attention of the last block, mean over heads (shared scale).</p>",
    ]
    pairs = paired_maps(inputs.analyses)
    if not pairs and _no_analysis_run(inputs):
        parts.append(f"<p>No image maps: {esc(NO_ANALYSIS)}.</p>")
    elif not pairs:
        parts.append(note(f"no image maps available (no analysis folder with {MAPS} was given)"))
    for name, maps in pairs[: cfg.max_images]:
        rows = [(a.label, m) for a, m in zip(inputs.analyses, maps)]
        caption = "; ".join(
            f"{label}: {int(np.asarray(m.defects).sum())} defects, max/median norm {plots.norm_ratio(m.norms):.1f}"
            for label, m in rows
            if m is not None
        )
        uri = plots.png_data_uri(plots.comparison_panel(rows, name), cfg.dpi)
        parts.append(figure(uri, f"maps of {name}", f"{name} — {caption}"))
    if len(pairs) > cfg.max_images:
        parts.append(note(f"{len(pairs) - cfg.max_images} more image(s) not shown (--max-images {cfg.max_images})"))
    return "".join(parts)


# ============================================================================= per layer


def depth(result: AnalysisResult) -> int:
    return int(result.summary.get("num_layers", 0))


def has_distributions(result: AnalysisResult, prefix: str) -> bool:
    return depth(result) > 0 and all(f"{prefix}_{i}" in result.distributions for i in range(depth(result)))


def _no_analysis_run(inputs: ReportInputs) -> bool:
    """A run made with --no-analysis: nothing is missing, there was nothing to analyse by design."""
    return inputs.run is not None and inputs.run.without_analysis and not inputs.analyses


def layer_curves_figure(inputs: ReportInputs, cfg: ReportConfig, lead: str = "") -> str:
    uri = plots.png_data_uri(plots.layer_curves([(a.label, a.result.summary) for a in inputs.analyses]), cfg.dpi)
    return figure(
        uri,
        "theory alignment, defect rate and norm ratio per layer",
        lead + "Theory alignment = |cos| between ν_i and the mean direction of the high-norm tokens; "
        "defect rate = share of patch tokens flagged by the |cos| rule; high-norm rate = share with norm > factor × median.",
    )


def section_per_layer(inputs: ReportInputs, cfg: ReportConfig) -> str:
    parts = ["<h2>Per-layer statistics</h2>"]
    if _no_analysis_run(inputs):
        return "".join(parts) + f"<p>No per-layer statistics: {esc(NO_ANALYSIS)}.</p>"
    if not inputs.analyses:
        return "".join(parts) + note(f"no analysis folder given; per-layer plots need {ANALYSIS_JSON}")
    if _run_owns_analyses(inputs):
        parts.append(
            '<p>The per-layer curves of theory alignment, defect rate and norm ratio are under <a href="#metrics">Metrics</a>, '
            "beside the before/after table they extend.</p>"
        )
    else:
        parts.append(layer_curves_figure(inputs, cfg))
    norms = [(a.label, a.result.distributions, depth(a.result)) for a in inputs.analyses if has_distributions(a.result, "norms")]
    if norms:
        parts.append(
            figure(
                plots.png_data_uri(plots.norm_violins(norms), cfg.dpi),
                "token norm violins per layer",
                "Distribution of patch-token norms per layer (log scale); defects are the long upper tails.",
            )
        )
    else:
        parts.append(note(f"no norm distributions ({DISTRIBUTIONS}) available"))
    parts.append('<div class="row">')
    for a in inputs.analyses:
        if has_distributions(a.result, "angles"):
            fig = plots.angle_violins(
                a.result.distributions, depth(a.result), title=f"{a.label}: angle between tokens and ν_i (paper Fig. 6)"
            )
            parts.append(
                figure(
                    plots.png_data_uri(fig, cfg.dpi),
                    f"angle violins, {a.label}",
                    f"{a.label}: unsigned angle between patch tokens and ν_i (red) and, as a control (appendix F), a random direction (grey). Defects sit near 0°.",
                )
            )
        else:
            parts.append(note(f"{a.label}: no angle distributions available"))
    parts.append("</div>")
    return "".join(parts)


# ============================================================================= σ deltas


def _top3(values: np.ndarray) -> list[str]:
    return [fmt(float(v)) for v in values[:3]] + ["–"] * (3 - min(3, values.size))


def section_sigma(inputs: ReportInputs, cfg: ReportConfig) -> str:
    parts = ["<h2>Singular-value deltas (appendix Fig. 7)</h2>"]
    if inputs.run is None:  # analyses only: nothing is missing, there is no repair to show
        return "".join(parts) + f"<p>σ deltas come from a repair run folder (its {SIGMA}); analysis folders have none.</p>"
    entries = inputs.run.sigma
    if not entries:  # the one place that says why (the notes at the top of the page do not repeat it)
        absent = not (inputs.run.path / SIGMA).exists() and not inputs.run.finished
        if absent:
            why = f"the run did not finish ({SIGMA} is written when training ends)"
        else:
            why = "; ".join(inputs.run.sigma_notes) or f"{SIGMA} is missing or unreadable"
        return "".join(parts) + note(f"no σ deltas: {why}")
    parts.extend(note(n) for n in inputs.run.sigma_notes)  # e.g. a part without its sigma/delta pair
    plotted = [(e.layer, e.linear, e.sigma, e.delta) for e in entries if e.layer is not None]
    if plotted:
        parts.append(
            figure(
                plots.png_data_uri(plots.sigma_delta_plot(plotted), cfg.dpi),
                "singular value deltas per layer",
                "Learned minus original singular value for the three largest singular values of each factorised linear part, grouped by block.",
            )
        )
    changed = [e for e in entries if np.any(e.delta != 0)]
    rows = []
    for e in changed:
        rel = float(np.linalg.norm(e.delta) / max(np.linalg.norm(e.sigma), 1e-30))
        rows.append(
            (
                fmt(e.layer),
                f"<code>{esc(e.linear)}</code>",
                str(e.sigma.size),
                *_top3(e.sigma),
                *_top3(e.delta),
                fmt(float(np.abs(e.delta).max())),
                fmt(rel),
            )
        )
    header = ("layer", "linear", "rank", "σ₁", "σ₂", "σ₃", "Δσ₁", "Δσ₂", "Δσ₃", "max |Δσ|", "‖Δσ‖ / ‖σ‖")
    parts.append(
        f"<details><summary>Table: σ and Δσ of the {len(changed)} changed linear part(s)</summary>{table(header, rows, 'num')}</details>"
    )
    unchanged = len(entries) - len(changed)
    if unchanged:
        layers = sorted({e.layer for e in entries if not np.any(e.delta != 0) and e.layer is not None})
        parts.append(note(f"{unchanged} linear part(s) unchanged (Δσ = 0), in layer(s) {', '.join(map(str, layers)) or '–'}"))
    return "".join(parts)


# ============================================================================= metrics


def split_comparisons(d: dict, prefix: str = "") -> tuple[list[tuple[str, object]], list[tuple[str, dict, dict]]]:
    """Scalars (dotted keys) and every nested ``before``/``after`` dict pair of a run summary."""
    scalars: list[tuple[str, object]] = []
    comparisons: list[tuple[str, dict, dict]] = []
    before, after = d.get("before"), d.get("after")
    paired = isinstance(before, dict) and isinstance(after, dict)
    if paired:
        comparisons.append((prefix.rstrip(".") or "summary", before, after))
    for key, value in d.items():
        if paired and key in ("before", "after"):
            continue
        if isinstance(value, dict) and value:
            s, c = split_comparisons(value, f"{prefix}{key}.")
            scalars.extend(s)
            comparisons.extend(c)
        else:
            scalars.append((f"{prefix}{key}", value))
    return scalars, comparisons


def value_cell(key: str, value: object) -> str:
    """A JSON value for a person: rates (fractions in the files) as percentages, the rest by ``fmt``."""
    return percent(value) if is_rate(key) and is_number(value) else fmt(value)


def comparison_table(before: dict, after: dict, names: tuple[str, str] = ("before", "after"), after_only: dict | None = None) -> str:
    """One row per metric: before, after and the change; ``after_only`` rows (the feature cosines
    of the repaired model to the original) have no before."""
    fb, fa = dict(flatten(before)), dict(flatten(after))
    keys = list(fb) + [k for k in fa if k not in fb]
    rows = []
    for key in keys:
        b, a = fb.get(key), fa.get(key)
        change = "" if not (is_number(a) and is_number(b)) else points(a - b) if is_rate(key) else fmt(a - b)
        rows.append((f"<code>{esc(key)}</code>", esc(value_cell(key, b)), esc(value_cell(key, a)), esc(change)))
    for key, value in flatten(after_only or {}):
        rows.append((f"<code>{esc(key)}</code>", "(original)", esc(value_cell(key, value)), ""))
    return table(("metric", *names, "change (after − before; rates in percentage points, pp)"), rows, "cmp")


def _last_layer(a: AnalysisInput) -> dict:
    return (a.result.summary.get("layers") or [{}])[-1]


def _consistency(summary: dict) -> str:
    angle, images = summary.get("direction_consistency_deg"), summary.get("direction_consistency_images")
    return fmt(angle) + (f" ({plural(int(images), 'image')})" if angle is not None and is_number(images) else "")


TRUTH_RECALL = "recall of the planted defect tokens (ground truth), last layer"
TRUTH_PRECISION = "precision against the planted defect tokens, last layer"


def _shown(name: str, analyses: Sequence[AnalysisInput]) -> bool:
    """Ground-truth rows only for planted models (others have no truth to score against)."""
    key = {TRUTH_RECALL: "truth_recall", TRUTH_PRECISION: "truth_precision"}.get(name)
    return key is None or any(_last_layer(a).get(key) is not None for a in analyses)


LAST_LAYER_METRICS: tuple[tuple[str, Callable[[AnalysisInput], str]], ...] = (
    ("images analysed", lambda a: fmt(len(a.result.summary.get("images", [])))),
    ("defect rate, last layer", lambda a: percent(_last_layer(a).get("defect_rate"))),
    ("high-norm rate, last layer", lambda a: percent(_last_layer(a).get("high_norm_rate"))),
    ("max / median token norm, last layer", lambda a: fmt(max_over_median(_last_layer(a)))),
    ("median token norm, last layer", lambda a: fmt(_last_layer(a).get("norm_median"))),
    ("theory alignment, last layer", lambda a: fmt(_last_layer(a).get("theory_alignment"))),
    ("high-norm recall of the |cos| rule, last layer", lambda a: percent(_last_layer(a).get("high_norm_recall"))),
    ("defect precision, last layer", lambda a: percent(_last_layer(a).get("defect_precision"))),
    (TRUTH_RECALL, lambda a: percent(_last_layer(a).get("truth_recall"))),
    (TRUTH_PRECISION, lambda a: percent(_last_layer(a).get("truth_precision"))),
    ("direction consistency (mean pairwise angle, deg)", lambda a: _consistency(a.result.summary)),
)

PER_LAYER_KEYS = (
    "theory_alignment",
    "defect_rate",
    "high_norm_rate",
    "max_over_median",
    "norm_median",
    "norm_max",
    "defect_norm_mean",
    "normal_norm_mean",
    "high_norm_recall",
    "defect_precision",
    "truth_recall",
    "truth_precision",
)


def per_layer_table(a: AnalysisInput) -> str:
    layers = a.result.summary.get("layers", [])
    keys = [k for k in PER_LAYER_KEYS if not k.startswith("truth_") or any(layer.get(k) is not None for layer in layers)]
    rows = [(fmt(layer.get("index")), *(esc(value_cell(k, layer.get(k))) for k in keys)) for layer in layers]
    return table(("layer", *keys), rows, "num")


def residual_table(residual: object) -> str:
    """Per held-out image: the high-norm tokens the repair left, strongest first."""
    if not isinstance(residual, list) or not residual:
        return ""
    rows = []
    for r in residual:
        if not isinstance(r, dict):
            continue
        strongest = ", ".join(
            f"({s.get('row')}, {s.get('col')}) {fmt(s.get('norm_over_median'))}×" for s in r.get("strongest") or [] if isinstance(s, dict)
        )
        rows.append(
            (esc(r.get("image")), esc(fmt(r.get("high_norm_tokens"))), esc(fmt(r.get("max_over_median"))), esc(strongest or "none"))
        )
    left = sum(1 for r in residual if isinstance(r, dict) and r.get("high_norm_tokens"))
    head = f"<h4>Residual after repair: {left} of {plural(len(rows), 'held-out image')} {'keeps' if len(rows) == 1 else 'keep'} high-norm tokens</h4>"
    return head + table(("image", "high-norm tokens left", "max / median norm", "strongest (row, col) norm / median"), rows, "num")


def _run_summary(summary: dict | None) -> list[str]:
    if summary is None:  # the banner (and a note, when unreadable) at the top says why
        return [note(f"no repair metrics without a readable {SUMMARY} (see the top of the page)")]
    parts = []
    summary = dict(summary)
    metrics = dict(summary.get("metrics") or {})
    residual = metrics.pop("residual", None)
    features = metrics.pop("features", None) if isinstance(metrics.get("before"), dict) else None
    summary["metrics"] = metrics or summary.get("metrics")
    scalars, comparisons = split_comparisons(summary)
    for name, before, after in comparisons:
        where = "" if name == "summary" else f" (<code>{esc(name)}</code>)"
        extra = {"features": features} if name == "metrics" and isinstance(features, dict) else None
        parts.append(f"<h4>Before vs after repair{where}</h4>" + comparison_table(before, after, after_only=extra))
    if not comparisons:
        parts.append(note(f"{SUMMARY} has no before/after metrics"))
    parts.append(residual_table(residual))
    # config.* repeats config.json (shown under #config); timing is shown there too.
    rest = [(k, v) for k, v in scalars if k not in TIMING_KEYS and not k.startswith("config.")]
    if rest:
        parts.append("<h4>Other summary values</h4>" + kv_table([(k, percent(v) if is_rate(k) and is_number(v) else v) for k, v in rest]))
    return parts


def _gate_warning(summary: dict) -> str | None:
    from ..verdict import gate_warning

    try:
        return gate_warning(summary)
    except (KeyError, IndexError, TypeError):  # an older or partial analysis.json
        return None


def analyses_heading(inputs: ReportInputs) -> str:
    """What analyses that are not a run's own are, in plain words."""
    return "Last layer: " + (
        " and ".join(a.label for a in inputs.analyses) + " side by side" if len(inputs.analyses) == 2 else inputs.analyses[0].label
    )


def _run_owns_analyses(inputs: ReportInputs) -> bool:
    return inputs.run is not None and bool(inputs.analyses) and all(a.path.parent == inputs.run.path for a in inputs.analyses)


def _same_numbers(summary: dict | None, analyses: Sequence[AnalysisInput]) -> bool:
    """Whether the run's before/after table and its analyses measured the same tokens (runs made
    before sinder measured both on square crops did not)."""
    metrics = (summary or {}).get("metrics") or {}
    for a in analyses:
        side = metrics.get("after" if a.repaired else "before")
        x, y = (side or {}).get("max_over_median"), _last_layer(a).get("max_over_median")
        if is_number(x) and is_number(y) and abs(x - y) > 1e-4 * max(abs(x), abs(y), 1e-12):
            return False
    return True


def section_metrics(inputs: ReportInputs, cfg: ReportConfig) -> str:
    parts = ["<h2>Metrics</h2>"]
    owned = _run_owns_analyses(inputs)
    if inputs.run is not None:
        parts.append(f"<h3>Repair summary ({SUMMARY})</h3>")
        parts.extend(_run_summary(inputs.run.summary))
    if owned:  # one before/after table (above); the analyses give its per-layer curves on the same photos
        folders = " and ".join(f"{a.path.name}/" for a in inputs.analyses)
        parts.append(
            layer_curves_figure(
                inputs,
                cfg,
                f"The same measurement per layer ({folders} of the same held-out photos): "
                "the last point of each curve is the table's row. ",
            )
        )
        if not _same_numbers(inputs.run.summary, inputs.analyses):
            parts.append(
                note(
                    "this run's analysis folders measured other crops than its summary (a run made before both used square crops): "
                    "their last-layer numbers differ from the table; rerun to get one measurement"
                )
            )
    if inputs.analyses:
        if not owned:
            parts.append(f"<h3>{esc(analyses_heading(inputs))}</h3>")
            rows = [
                (esc(name), *(esc(get(a)) for a in inputs.analyses)) for name, get in LAST_LAYER_METRICS if _shown(name, inputs.analyses)
            ]
            parts.append(table(("metric", *(a.label for a in inputs.analyses)), rows, "cmp"))
        for a in inputs.analyses:
            warning = _gate_warning(a.result.summary)
            if warning:
                parts.append(note(f"{a.label}: {warning}"))
            parts.append(f"<details><summary>Per-layer table: {esc(a.label)}</summary>{per_layer_table(a)}</details>")
    if inputs.run is None and not inputs.analyses:
        parts.append(note("no metrics available"))
    return "".join(parts)


# ============================================================================= configuration


def humanise_seconds(value: object) -> str:
    if not is_number(value):
        return fmt(value)
    s = float(value)
    return f"{s:.1f} s" + (f" ({int(s // 60)} min {s % 60:.0f} s)" if s >= 60 else "")


def analysis_config_table(analyses: Sequence[AnalysisInput]) -> str:
    """One row per setting, one column per analysis."""

    def rows(a: AnalysisInput) -> dict[str, object]:
        s = a.result.summary
        out = {
            "folder": str(a.path),
            "model": a.model,
            "resolution (px, short side)": s.get("resolution"),
            "patch size (px)": s.get("patch_size"),
            "layers": s.get("num_layers"),
            "prefix tokens": s.get("num_prefix_tokens"),
            "images": [i.get("path") for i in s.get("images", []) if isinstance(i, dict)],
            "skipped": [f"{i.get('path')}: {i.get('reason')}" for i in s.get("skipped", []) if isinstance(i, dict)],
        }
        out.update((f"rule.{k}", v) for k, v in flatten(s.get("rule") or {}))
        out.update((f"config.{k}", v) for k, v in flatten(s.get("config") or {}))
        return out

    columns = [rows(a) for a in analyses]
    keys = list(dict.fromkeys(k for col in columns for k in col))
    body = [(f"<code>{esc(k)}</code>", *(esc(fmt(col.get(k))) for col in columns)) for k in keys]
    return table(("setting", *(a.label for a in analyses)), body, "kv")


def _run_config(run: RunInput, cfg: ReportConfig) -> list[str]:
    summary = run.summary or {}
    # an unfinished run has no summary: its log still says how far it got
    steps = summary.get("steps") if run.finished else (run.log[-1]["step"] if run.log else None)
    timing = [
        ("steps", esc(fmt(steps))),
        ("images seen", esc(fmt(summary.get("images_seen")))),
        ("time", esc(humanise_seconds(summary.get("seconds")))),
    ]
    parts = [f"<h3>Repair run <code>{esc(run.path)}</code></h3>", table(("", "value"), timing, "kv")]
    if run.log:
        skips = [r["skip_ratio"] for r in run.log if is_number(r.get("skip_ratio"))]
        fig = plots.training_curves(
            run.log, find_stop_ratio(run.config), stop_reason=run.stop_reason, min_defects=run.min_defects, weak_defects=run.weak_defects
        )
        stopped = f" {plots.stop_text(run.stop_reason)}." if run.stop_reason else ""
        parts.append(
            figure(
                plots.png_data_uri(fig, cfg.dpi),
                "skip ratio, loss and layer per step",
                f"{plural(len(run.log), 'logged step')}; final skip ratio {percent(skips[-1]) if skips else '–'}.{stopped}",
            )
        )
    else:
        parts.append(note(f"no training log ({LOG}) to plot"))
    if run.config is not None:
        parts.append(f"<h4>{CONFIG}</h4>" + kv_table(flatten(run.config)))
    else:
        parts.append(note(f"no {CONFIG} in the run folder"))
    return parts


def section_config(inputs: ReportInputs, cfg: ReportConfig) -> str:
    parts = ["<h2>Configuration and training</h2>"]
    if inputs.run is not None:
        parts.extend(_run_config(inputs.run, cfg))
    if inputs.analyses:
        parts.append("<h3>Analyses</h3>" + analysis_config_table(inputs.analyses))
    if inputs.run is None and not inputs.analyses:
        parts.append(note("no configuration available"))
    return "".join(parts)


SECTIONS: dict[str, Callable[[ReportInputs, ReportConfig], str]] = {
    "side-by-side": section_side_by_side,
    "per-layer": section_per_layer,
    "sigma-deltas": section_sigma,
    "metrics": section_metrics,
    "config": section_config,
}
SECTION_IDS = tuple(SECTIONS)
