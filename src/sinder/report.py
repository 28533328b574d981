"""``sinder report``: one self-contained before/after HTML page from repair runs and analyses.

Inputs are a repair run folder (``config.json``, ``summary.json``, ``log.jsonl``,
``sigma.safetensors``, ``analysis_before/``, ``analysis_after/``; every piece optional) and/or
analysis folders (``analysis.json`` from ``sinder analyze``). Two analyses are compared side by
side (A vs B); one is shown alone. Every image is an embedded PNG data URI, styles are inline and
a Content-Security-Policy forbids any network access, so the page opens from disk anywhere.
"""
from __future__ import annotations

import html
import json
import logging
import math
import re
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .analyze import AnalysisResult, ImageMaps, load_analysis
from .errors import ConfigError, OutputExistsError, SinderError
from .io import write_text

log = logging.getLogger(__name__)

RUN_FILES = ("config.json", "summary.json", "log.jsonl", "sigma.safetensors")
RUN_ANALYSES = (("analysis_before", "before repair"), ("analysis_after", "after repair"))
SECTION_IDS = ("side-by-side", "per-layer", "sigma-deltas", "metrics", "config")
TIMING_KEYS = ("steps", "images_seen", "seconds")
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


@dataclass(frozen=True)
class ReportConfig:
    """Options of ``sinder report`` (validated on construction)."""

    title: str | None = None
    max_images: int = 12
    dpi: int = 80

    def __post_init__(self) -> None:
        if self.max_images < 1:
            raise ConfigError(f"--max-images must be at least 1, got {self.max_images}")
        if not 30 <= self.dpi <= 300:
            raise ConfigError(f"--dpi must be between 30 and 300, got {self.dpi}")


@dataclass
class AnalysisInput:
    label: str
    path: Path
    result: AnalysisResult


@dataclass(frozen=True)
class SigmaEntry:
    """One factorised linear part: original singular values (descending) and learned − original."""

    part: str
    layer: int | None
    linear: str
    sigma: np.ndarray
    delta: np.ndarray


@dataclass
class RunInput:
    path: Path
    config: dict | None = None
    summary: dict | None = None
    log: list[dict] = field(default_factory=list)
    sigma: list[SigmaEntry] = field(default_factory=list)


@dataclass
class ReportInputs:
    run: RunInput | None
    analyses: list[AnalysisInput]
    notes: list[str] = field(default_factory=list)  # shown at the top of the page


# ----------------------------------------------------------------------------- reading inputs


def is_analysis_folder(path: Path) -> bool:
    return (path / "analysis.json").is_file()


def is_run_folder(path: Path) -> bool:
    return any((path / f).is_file() for f in RUN_FILES) or any((path / d).is_dir() for d, _ in RUN_ANALYSES)


def read_json_dict(path: Path, notes: list[str]) -> dict | None:
    """The JSON object in ``path``, or None with a note when it is missing or unreadable."""
    if not path.is_file():
        notes.append(f"{path.name} not found in {path.parent}; its part of the report is skipped")
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        notes.append(f"{path} is not valid JSON ({err}); skipped")
        return None
    if not isinstance(value, dict):
        notes.append(f"{path} does not hold a JSON object; skipped")
        return None
    return value


def read_log(path: Path, notes: list[str]) -> list[dict]:
    """Rows of ``log.jsonl`` that are JSON objects with an integer ``step``; bad lines are counted."""
    if not path.is_file():
        notes.append(f"log.jsonl not found in {path.parent}; the training curves are skipped")
        return []
    rows, bad = [], 0
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), int):
                rows.append(row)
            else:
                bad += 1
    if bad:
        notes.append(f"{path}: {bad} line(s) are not JSON objects with an integer 'step' (e.g. a run cut short); ignored")
    return rows


_LAYER_RE = re.compile(r"(?:^|\.)(\d+)\.")


def split_part(part: str) -> tuple[int | None, str]:
    """``blocks.7.attn.qkv[768:1152]`` -> (7, ``attn.qkv[768:1152]``); no block index -> (None, part)."""
    m = _LAYER_RE.search(part)
    if m is None:
        return None, part
    return int(m.group(1)), part[m.end() :]


def read_sigma(path: Path, notes: list[str]) -> list[SigmaEntry]:
    """``<part>/sigma`` and ``<part>/delta`` pairs of ``sigma.safetensors``, ordered by layer."""
    if not path.is_file():
        notes.append(f"sigma.safetensors not found in {path.parent}; the σ deltas are skipped")
        return []
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError, ValueError) as err:
        notes.append(f"{path} cannot be read as safetensors ({err}); the σ deltas are skipped")
        return []
    parts: dict[str, dict[str, np.ndarray]] = {}
    for key, tensor in tensors.items():
        part, _, kind = key.rpartition("/")
        if part and kind in ("sigma", "delta"):
            parts.setdefault(part, {})[kind] = tensor.detach().double().cpu().numpy().reshape(-1)
    entries = []
    for part, pair in parts.items():
        if set(pair) != {"sigma", "delta"} or pair["sigma"].shape != pair["delta"].shape:
            notes.append(f"{path}: {part} lacks a matching sigma/delta pair; skipped")
            continue
        layer, linear = split_part(part)
        entries.append(SigmaEntry(part, layer, linear, pair["sigma"], pair["delta"]))
    if not entries:
        notes.append(f"{path} holds no <part>/sigma + <part>/delta pairs; the σ deltas are skipped")
    entries.sort(key=lambda e: (e.layer is None, e.layer or 0, e.linear))
    return entries


def read_analysis(path: Path, label: str, notes: list[str]) -> AnalysisInput | None:
    """Load an analysis folder; its maps/distributions are optional (noted when unreadable)."""
    from safetensors import SafetensorError

    summary = read_json_dict(path / "analysis.json", notes)
    if summary is None:
        return None
    if not isinstance(summary.get("layers"), list) or not summary["layers"]:
        notes.append(f"{path / 'analysis.json'} has no per-layer results: not written by sinder analyze; skipped")
        return None
    try:
        return AnalysisInput(label, path, load_analysis(path))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, SafetensorError) as err:
        notes.append(f"{path}: maps/distributions unreadable ({type(err).__name__}: {err}); image maps and violins skipped")
        import torch

        return AnalysisInput(label, path, AnalysisResult(summary=summary, directions=torch.zeros(0)))


def read_run(path: Path, notes: list[str]) -> tuple[RunInput, list[AnalysisInput]]:
    run = RunInput(path)
    run.config = read_json_dict(path / "config.json", notes)
    run.summary = read_json_dict(path / "summary.json", notes)
    run.log = read_log(path / "log.jsonl", notes)
    run.sigma = read_sigma(path / "sigma.safetensors", notes)
    analyses = []
    for sub, label in RUN_ANALYSES:
        folder = path / sub
        if is_analysis_folder(folder):
            found = read_analysis(folder, label, notes)
            if found is not None:
                analyses.append(found)
        else:
            notes.append(f"{folder} holds no analysis.json; the '{label}' column is missing")
    return run, analyses


def unique_labels(paths: Sequence[Path]) -> list[str]:
    labels = [p.name or str(p) for p in paths]
    if len(set(labels)) < len(labels):
        labels = [f"{p.parent.name}/{p.name}" for p in paths]
    if len(set(labels)) < len(labels):
        labels = [f"{chr(ord('A') + k)}: {lab}" for k, lab in enumerate(labels)]
    return labels


def read_inputs(paths: Sequence[str | Path]) -> ReportInputs:
    """Classify each path as a run or an analysis folder and read it; raise ``SinderError`` on
    a path that is neither, on more than one run, or on more than two analyses in all."""
    if not paths:
        raise SinderError("no input given; pass a repair run folder or one or two analysis folders")
    notes: list[str] = []
    run: RunInput | None = None
    analyses: list[AnalysisInput] = []
    explicit: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            raise SinderError(f"{raw} is not a folder; pass a repair run folder (from sinder repair/demo) or an analysis folder (from sinder analyze)")
        if is_analysis_folder(path):
            explicit.append(path)
        elif is_run_folder(path):
            if run is not None:
                raise SinderError(f"{raw}: only one repair run per report; write one report per run")
            run, found = read_run(path, notes)
            sinder_config = bool(run.config) and "max_steps" in run.config
            if not (found or run.log or run.sigma or run.summary or sinder_config):  # e.g. a Hugging Face model folder
                raise SinderError(
                    f"{raw} holds no readable sinder run (no summary.json, log.jsonl, sigma.safetensors or analyses); "
                    "pass a folder written by sinder repair, demo or analyze"
                )
            analyses.extend(found)
        else:
            raise SinderError(
                f"{raw} is neither a repair run folder (config.json, summary.json, log.jsonl, sigma.safetensors) "
                "nor an analysis folder (analysis.json); pass a folder written by sinder repair, demo or analyze"
            )
    if len(analyses) + len(explicit) > 2:
        raise SinderError(f"{len(analyses) + len(explicit)} analyses given; a report compares at most two (A vs B)")
    for path, label in zip(explicit, unique_labels(explicit)):
        found = read_analysis(path, label, notes)
        if found is not None:
            analyses.append(found)
    if run is None and not analyses:  # an empty page would look like a report of nothing
        raise SinderError(f"nothing to report: {notes[0].removesuffix('; skipped')}; pass a folder written by sinder repair, demo or analyze")
    return ReportInputs(run, analyses, notes)


# ----------------------------------------------------------------------------- HTML helpers


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: object) -> str:
    """A short, readable cell for a JSON value."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value == 0:
            return "0"
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        if all(not isinstance(v, (dict, list)) for v in value):
            shown = ", ".join(fmt(v) for v in value[:8])
            return f"[{shown}{', …' if len(value) > 8 else ''}]" + (f" ({len(value)} items)" if len(value) > 8 else "")
        return f"[{len(value)} items]"
    if isinstance(value, dict):
        return f"{{{len(value)} keys}}"
    return str(value)


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def flatten(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.extend(flatten(value, f"{name}."))
        else:
            out.append((name, value))
    return out


def table(header: Sequence[str], rows: Iterable[Sequence[object]], cls: str = "") -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def kv_table(pairs: Sequence[tuple[str, object]]) -> str:
    return table(("key", "value"), ((f"<code>{esc(k)}</code>", esc(fmt(v))) for k, v in pairs), "kv")


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def figure(uri: str, alt: str, caption: str = "") -> str:
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{uri}" alt="{esc(alt)}">{cap}</figure>'


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


def comparison_table(before: dict, after: dict, names: tuple[str, str] = ("before", "after")) -> str:
    fb, fa = dict(flatten(before)), dict(flatten(after))
    keys = list(fb) + [k for k in fa if k not in fb]
    rows = []
    for key in keys:
        b, a = fb.get(key), fa.get(key)
        change = fmt(a - b) if is_number(a) and is_number(b) else ""
        rows.append((f"<code>{esc(key)}</code>", esc(fmt(b)), esc(fmt(a)), esc(change)))
    return table(("metric", *names, "change (after − before)"), rows, "cmp")


def humanise_seconds(value: object) -> str:
    if not is_number(value):
        return fmt(value)
    s = float(value)
    return f"{s:.1f} s" + (f" ({int(s // 60)} min {s % 60:.0f} s)" if s >= 60 else "")


# ----------------------------------------------------------------------------- sections


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
    from .report_plots import comparison_panel, png_data_uri

    thresholds = sorted({str(a.result.summary.get("config", {}).get("mask_thr", "k")) for a in inputs.analyses})
    parts = [
        "<h2>Side by side: last-layer maps per image</h2>",
        "<p>Columns: the crop the model saw; PCA-RGB of last-layer patch tokens; token L2 norm "
        "(log colour scale shared by all rows of an image); |cos| between each token and the predicted "
        f"defect direction ν of the last layer; tokens flagged by the rule |cos| &gt; mean + {esc('/'.join(thresholds) or 'k')}·std "
        "(border excluded); CLS attention of the last block, mean over heads (shared scale).</p>",
    ]
    pairs = paired_maps(inputs.analyses)
    if not pairs:
        parts.append(note("no image maps available (no analysis folder with maps.npz was given)"))
    for name, maps in pairs[: cfg.max_images]:
        rows = [(a.label, m) for a, m in zip(inputs.analyses, maps)]
        caption = "; ".join(
            f"{lab}: {int(np.asarray(m.defects).sum())} defects, max/median norm {float(m.norms.max()) / max(float(np.median(m.norms)), 1e-12):.1f}"
            for lab, m in rows
            if m is not None
        )
        uri = png_data_uri(comparison_panel(rows, name), cfg.dpi)
        parts.append(figure(uri, f"maps of {name}", f"{name} — {caption}"))
    if len(pairs) > cfg.max_images:
        parts.append(note(f"{len(pairs) - cfg.max_images} more image(s) not shown (--max-images {cfg.max_images})"))
    return "".join(parts)


def has_distributions(result: AnalysisResult, depth: int, prefix: str) -> bool:
    return depth > 0 and all(f"{prefix}_{i}" in result.distributions for i in range(depth))


def section_per_layer(inputs: ReportInputs, cfg: ReportConfig) -> str:
    from .figures import angle_violins
    from .report_plots import layer_curves, norm_violins_compare, png_data_uri

    parts = ["<h2>Per-layer statistics</h2>"]
    if not inputs.analyses:
        return "".join(parts) + note("no analysis folder given; per-layer plots need analysis.json")
    series = [(a.label, a.result.summary) for a in inputs.analyses]
    uri = png_data_uri(layer_curves(series), cfg.dpi)
    parts.append(
        figure(uri, "theory alignment, defect rate and norm ratio per layer",
               "Theory alignment = |cos| between ν_i and the mean direction of the high-norm tokens; "
               "defect rate = share of patch tokens flagged by the |cos| rule; high-norm rate = share with norm > factor × median.")
    )
    norms = [(a.label, a.result.distributions, int(a.result.summary.get("num_layers", 0))) for a in inputs.analyses
             if has_distributions(a.result, int(a.result.summary.get("num_layers", 0)), "norms")]
    if norms:
        parts.append(figure(png_data_uri(norm_violins_compare(norms), cfg.dpi), "token norm violins per layer",
                            "Distribution of patch-token norms per layer (log scale); defects are the long upper tails."))
    else:
        parts.append(note("no norm distributions (distributions.npz) available"))
    parts.append('<div class="row">')
    for a in inputs.analyses:
        depth = int(a.result.summary.get("num_layers", 0))
        if has_distributions(a.result, depth, "angles"):
            fig = angle_violins(a.result.distributions, depth, title=f"{a.label}: angle between tokens and ν_i (paper Fig. 6)")
            parts.append(figure(png_data_uri(fig, cfg.dpi), f"angle violins, {a.label}",
                                f"{a.label}: unsigned angle between patch tokens and ν_i (red) and, as a control (appendix F), a random direction (grey). Defects sit near 0°."))
        else:
            parts.append(note(f"{a.label}: no angle distributions available"))
    parts.append("</div>")
    return "".join(parts)


def section_sigma(inputs: ReportInputs, cfg: ReportConfig) -> str:
    from .report_plots import png_data_uri, sigma_delta_plot

    parts = ["<h2>Singular-value deltas (appendix Fig. 7)</h2>"]
    entries = inputs.run.sigma if inputs.run is not None else []
    if not entries:
        return "".join(parts) + note("no σ deltas: pass a repair run folder with sigma.safetensors")
    plotted = [(e.layer, e.linear, e.sigma, e.delta) for e in entries if e.layer is not None]
    if plotted:
        parts.append(figure(png_data_uri(sigma_delta_plot(plotted), cfg.dpi), "singular value deltas per layer",
                            "Learned minus original singular value for the three largest singular values of each factorised linear part, grouped by block."))
    changed = [e for e in entries if np.any(e.delta != 0)]
    rows = []
    for e in changed:
        top = [fmt(float(v)) for v in e.sigma[:3]] + ["–"] * (3 - min(3, e.sigma.size))
        dtop = [fmt(float(v)) for v in e.delta[:3]] + ["–"] * (3 - min(3, e.delta.size))
        rel = float(np.linalg.norm(e.delta) / max(np.linalg.norm(e.sigma), 1e-30))
        rows.append((fmt(e.layer), f"<code>{esc(e.linear)}</code>", str(e.sigma.size), *top, *dtop,
                     fmt(float(np.abs(e.delta).max())), fmt(rel)))
    header = ("layer", "linear", "rank", "σ₁", "σ₂", "σ₃", "Δσ₁", "Δσ₂", "Δσ₃", "max |Δσ|", "‖Δσ‖ / ‖σ‖")
    parts.append(f"<details><summary>Table: σ and Δσ of the {len(changed)} changed linear part(s)</summary>{table(header, rows, 'num')}</details>")
    unchanged = len(entries) - len(changed)
    if unchanged:
        layers = sorted({e.layer for e in entries if not np.any(e.delta != 0) and e.layer is not None})
        parts.append(note(f"{unchanged} linear part(s) unchanged (Δσ = 0), in layer(s) {', '.join(map(str, layers)) or '–'}"))
    return "".join(parts)


def last_layer_rows(analyses: Sequence[AnalysisInput]) -> list[tuple]:
    def last(a: AnalysisInput) -> dict:
        layers = a.result.summary.get("layers") or [{}]
        return layers[-1]

    def ratio(layer: dict) -> object:
        mx, med = layer.get("norm_max"), layer.get("norm_median")
        return mx / med if is_number(mx) and is_number(med) and med > 0 else None

    def pct(value: object) -> str:
        return f"{100 * value:.2f} %" if is_number(value) else "–"

    metrics = [
        ("images analysed", lambda a: fmt(len(a.result.summary.get("images", [])))),
        ("defect rate, last layer", lambda a: pct(last(a).get("defect_rate"))),
        ("high-norm rate, last layer", lambda a: pct(last(a).get("high_norm_rate"))),
        ("max / median token norm, last layer", lambda a: fmt(ratio(last(a)))),
        ("median token norm, last layer", lambda a: fmt(last(a).get("norm_median"))),
        ("theory alignment, last layer", lambda a: fmt(last(a).get("theory_alignment"))),
        ("high-norm recall of the |cos| rule, last layer", lambda a: fmt(last(a).get("high_norm_recall"))),
        ("defect precision, last layer", lambda a: fmt(last(a).get("defect_precision"))),
        ("direction consistency (mean pairwise angle, deg)", lambda a: fmt(a.result.summary.get("direction_consistency_deg"))),
    ]
    return [(esc(name), *(esc(get(a)) for a in analyses)) for name, get in metrics]


def per_layer_table(a: AnalysisInput) -> str:
    keys = ("theory_alignment", "defect_rate", "high_norm_rate", "norm_median", "norm_max", "defect_norm_mean",
            "normal_norm_mean", "high_norm_recall", "defect_precision")
    rows = [(fmt(layer.get("index")), *(esc(fmt(layer.get(k))) for k in keys)) for layer in a.result.summary.get("layers", [])]
    return table(("layer", *keys), rows, "num")


def section_metrics(inputs: ReportInputs, cfg: ReportConfig) -> str:
    parts = ["<h2>Metrics</h2>"]
    run = inputs.run
    if run is not None:
        parts.append("<h3>Repair summary (summary.json)</h3>")
        if run.summary is None:
            parts.append(note("no summary.json in the run folder"))
        else:
            scalars, comparisons = split_comparisons(run.summary)
            for name, before, after in comparisons:
                where = "" if name == "summary" else f" (<code>{esc(name)}</code>)"
                parts.append(f"<h4>Before vs after repair{where}</h4>")
                parts.append(comparison_table(before, after))
            if not comparisons:
                parts.append(note("summary.json has no before/after metrics"))
            # config.* repeats config.json (shown under #config); timing is shown there too.
            rest = [(k, v) for k, v in scalars if k not in TIMING_KEYS and not k.startswith("config.")]
            if rest:
                parts.append("<h4>Other summary values</h4>" + kv_table(rest))
    if inputs.analyses:
        parts.append("<h3>Held-out analysis" + (" (A vs B)" if len(inputs.analyses) == 2 else "") + "</h3>")
        parts.append(table(("metric", *(a.label for a in inputs.analyses)), last_layer_rows(inputs.analyses), "cmp"))
        for a in inputs.analyses:
            parts.append(f"<details><summary>Per-layer table: {esc(a.label)}</summary>{per_layer_table(a)}</details>")
    if run is None and not inputs.analyses:
        parts.append(note("no metrics available"))
    return "".join(parts)


def find_stop_ratio(config: dict | None) -> float | None:
    """The skip-ratio stopping threshold, if the run config names one (key with 'stop' and 'ratio'/'fraction')."""
    for key, value in flatten(config or {}):
        leaf = key.rsplit(".", 1)[-1].lower()
        if "stop" in leaf and ("ratio" in leaf or "fraction" in leaf) and is_number(value) and 0 < value <= 1:
            return float(value)
    return None


def analysis_config_table(analyses: Sequence[AnalysisInput]) -> str:
    """One row per setting, one column per analysis."""

    def rows(a: AnalysisInput) -> dict[str, object]:
        s = a.result.summary
        out = {"folder": str(a.path), "model": s.get("model"), "resolution (px, short side)": s.get("resolution"),
               "patch size (px)": s.get("patch_size"), "layers": s.get("num_layers"), "prefix tokens": s.get("num_prefix_tokens"),
               "images": [i.get("path") for i in s.get("images", []) if isinstance(i, dict)],
               "skipped": [f"{i.get('path')}: {i.get('reason')}" for i in s.get("skipped", []) if isinstance(i, dict)]}
        out.update((f"config.{k}", v) for k, v in flatten(s.get("config") or {}))
        return out

    columns = [rows(a) for a in analyses]
    keys = list(dict.fromkeys(k for col in columns for k in col))
    body = [(f"<code>{esc(k)}</code>", *(esc(fmt(col.get(k))) for col in columns)) for k in keys]
    return table(("setting", *(a.label for a in analyses)), body, "kv")


def section_config(inputs: ReportInputs, cfg: ReportConfig) -> str:
    from .report_plots import png_data_uri, training_curves

    parts = ["<h2>Configuration and training</h2>"]
    run = inputs.run
    if run is not None:
        parts.append(f"<h3>Repair run <code>{esc(run.path)}</code></h3>")
        summary = run.summary or {}
        timing = [("steps", esc(fmt(summary.get("steps")))), ("images seen", esc(fmt(summary.get("images_seen")))),
                  ("time", esc(humanise_seconds(summary.get("seconds"))))]
        parts.append(table(("", "value"), timing, "kv"))
        if run.log:
            skips = [r["skip_ratio"] for r in run.log if is_number(r.get("skip_ratio"))]
            uri = png_data_uri(training_curves(run.log, find_stop_ratio(run.config)), cfg.dpi)
            parts.append(figure(uri, "skip ratio, loss and layer per step",
                                f"{len(run.log)} logged steps; final skip ratio {fmt(skips[-1]) if skips else '–'}."))
        else:
            parts.append(note("no training log (log.jsonl) to plot"))
        if run.config is not None:
            parts.append("<h4>config.json</h4>" + kv_table(flatten(run.config)))
        else:
            parts.append(note("no config.json in the run folder"))
    if inputs.analyses:
        parts.append("<h3>Analyses</h3>" + analysis_config_table(inputs.analyses))
    if run is None and not inputs.analyses:
        parts.append(note("no configuration available"))
    return "".join(parts)


STYLE = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;padding:0 24px 48px;max-width:1800px;color:#1d1d1f;background:#fff}
header{border-bottom:2px solid #ddd;margin-bottom:12px}
h1{font-size:26px;margin:18px 0 6px}h2{font-size:21px;margin:30px 0 8px;border-bottom:1px solid #e3e3e3}
h3{font-size:17px;margin:18px 0 6px}h4{font-size:15px;margin:14px 0 4px}
nav a{margin-right:14px}
figure{margin:10px 0 22px}figure img{max-width:100%;height:auto;display:block;border:1px solid #eee}
figcaption{font-size:13px;color:#555;margin-top:4px}
table{border-collapse:collapse;margin:6px 0 14px;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3}tbody tr:nth-child(even){background:#fafafa}
table.num td,table.cmp td{font-variant-numeric:tabular-nums}
.note{color:#8a5a00;background:#fff7e0;border-left:3px solid #f0b400;padding:4px 10px;margin:6px 0}
code{font-size:12.5px}
.row{display:flex;flex-wrap:wrap;gap:0 28px}.row figure{flex:1 1 560px;max-width:900px}
details{margin:6px 0 12px}summary{cursor:pointer;font-weight:600}
"""


def default_title(inputs: ReportInputs) -> str:
    model = None
    if inputs.run is not None and inputs.run.config:
        model = inputs.run.config.get("model")
    if isinstance(model, dict):  # repair writes backbone.describe()
        model = model.get("model")
    if model is None and inputs.analyses:
        model = inputs.analyses[0].result.summary.get("model")
    return f"SINDER report: {model}" if model else "SINDER report"


def render_report(inputs: ReportInputs, config: ReportConfig = ReportConfig()) -> str:
    """The complete HTML page for ``inputs``."""
    title = config.title or default_title(inputs)
    builders = {
        "side-by-side": section_side_by_side,
        "per-layer": section_per_layer,
        "sigma-deltas": section_sigma,
        "metrics": section_metrics,
        "config": section_config,
    }
    sections = []
    for sid, build in builders.items():
        log.info("report: rendering %s", sid)
        sections.append(f'<section id="{sid}">{build(inputs, config)}</section>')
    sources = [str(inputs.run.path)] if inputs.run else []
    sources += [f"{a.label}: {a.path}" for a in inputs.analyses]
    nav = "".join(f'<a href="#{sid}">{sid.replace("-", " ")}</a>' for sid in SECTION_IDS)
    notes = "".join(note(n) for n in inputs.notes)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>"
        f"<header><h1>{esc(title)}</h1><p>Generated {stamp} by <code>sinder report</code> from "
        f"{esc('; '.join(sources) or 'nothing')}.</p><nav>{nav}</nav>{notes}</header>"
        + "".join(sections)
        + "</body></html>\n"
    )


def build_report(paths: Sequence[str | Path], config: ReportConfig = ReportConfig()) -> str:
    """Read ``paths`` (run and/or analysis folders) and return the HTML page."""
    return render_report(read_inputs(paths), config)


def write_report(paths: Sequence[str | Path], out: str | Path, config: ReportConfig = ReportConfig(), overwrite: bool = False) -> Path:
    """Write the report to ``out`` atomically; refuse to replace an existing file unless ``overwrite``."""
    out = Path(out)
    if out.is_dir():
        raise OutputExistsError(f"{out} is a folder; pass a file name such as {out / 'report.html'}")
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} already exists; pass --overwrite to replace it or choose another --out")
    page = build_report(paths, config)
    write_text(out, page)
    log.info("report written to %s (%.1f MB)", out, len(page) / 1e6)
    return out
