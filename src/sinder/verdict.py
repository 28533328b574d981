"""The verdict on a model ("does it have singular defects, from which block, how bad?") and the
low-norm warning, both decided from the per-layer statistics of an analysis (``analysis.json``).

A block has singular defects when either

- *high-norm*: the rule flags high-norm tokens there (``defect_precision`` > 0) and the mean
  direction of the block's high-norm tokens is its predicted ν_i (``theory_alignment`` ≥
  :data:`MIN_ALIGNMENT`), or
- *low-norm* (CLIP-like artifacts the norm gate drops): the tokens the gate rejects outnumber the
  defects, lie along ν_i (median |cos| ≥ :data:`MIN_REJECTED_COS`) and their mean direction over
  the images is ν_i (|cos| ≥ :data:`MIN_REJECTED_ALIGNMENT`).

The model has them when some block does; ``onset_layer`` is the first such block and the numbers
are the last block's (the features a user takes). The low-norm case at the last block also decides
the rule's ``low_norm="auto"`` (:func:`choose_low_norm`): such a model's low-norm artifacts count as
defects from the first block that has them, so detection, interpolation and repair see them; any
other model keeps the gate, which drops only the noise tail there. The low-norm line
(:func:`gate_warning`) says which of the two happened when the last block has them. Measured with 8 bundled photos (docs/command-line.md, "Verdict"): at the onset blocks of the zoo
``theory_alignment`` ≥ 0.94, on random-init models of every family ≤ 0.20 in every block; the
gate-rejected tokens of defect-free blocks (random init, and the zoo before its onset) have median
|cos| ≤ 0.45 and mean-direction |cos| ≤ 0.36, the zoo's low-norm artifacts 0.74 and 0.88.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

from .detect import DefectRule
from .units import percent, plural

MIN_ALIGNMENT = 0.9
MIN_REJECTED_COS = 0.5
MIN_REJECTED_ALIGNMENT = 0.6

Kind = Literal["high-norm", "low-norm"]


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _counted(summary: dict, layer: dict) -> bool:
    """Whether the rule of ``summary`` counted gate-rejected tokens as defects at ``layer``."""
    rule = summary.get("rule") or {}
    return rule.get("low_norm") == "count" and int(layer.get("index", 0)) >= int(rule.get("low_norm_from") or 0)


def low_norm_defects(layer: dict, counted: bool = False) -> bool:
    """The low-norm case alone (False for an analysis made before the gate-rejected statistics);
    ``counted``: the rule counted the gate-rejected tokens among the layer's defects."""
    rejected, found = _num(layer.get("gate_rejected_rate")) or 0.0, _num(layer.get("defect_rate")) or 0.0
    found = found - rejected if counted else found
    cos, align = _num(layer.get("gate_rejected_cos_median")), _num(layer.get("gate_rejected_alignment"))
    return rejected > found and cos is not None and align is not None and cos >= MIN_REJECTED_COS and align >= MIN_REJECTED_ALIGNMENT


def layer_defects(layer: dict, counted: bool = False) -> Kind | None:
    """Which singular defects one layer entry of ``analysis.json`` holds, if any (module doc)."""
    precision, alignment = _num(layer.get("defect_precision")), _num(layer.get("theory_alignment"))
    if precision and alignment is not None and alignment >= MIN_ALIGNMENT:
        return "high-norm"
    return "low-norm" if low_norm_defects(layer, counted) else None


def choose_low_norm(rule: DefectRule, layers: list[dict]) -> DefectRule:
    """``rule`` with ``low_norm="auto"`` decided from per-layer statistics measured with it
    (``ModelStats.per_layer()``): ``count`` from the first low-norm block when the last block has
    low-norm singular defects, ``drop`` otherwise. A decided rule comes back as it is."""
    if rule.low_norm != "auto":
        return rule
    if not layers or not low_norm_defects(layers[-1]):
        return replace(rule, low_norm="drop")
    first = next(int(layer.get("index", i)) for i, layer in enumerate(layers) if low_norm_defects(layer))
    return replace(rule, low_norm="count", low_norm_from=first)


def compute_verdict(summary: dict) -> dict:
    """The ``verdict`` of an analysis summary; only its ``layers`` are read, so an older
    ``analysis.json`` without a verdict gets one too."""
    layers = summary.get("layers") or []
    last = layers[-1] if layers else {}
    kinds = [layer_defects(layer, _counted(summary, layer)) for layer in layers]
    hits = [int(layer.get("index", i)) for i, (layer, kind) in enumerate(zip(layers, kinds)) if kind]
    out = {
        "has_defects": bool(hits),
        "onset_layer": hits[0] if hits else None,
        "defect_rate": _num(last.get("defect_rate")),
        "max_over_median": _num(last.get("max_over_median")),
        "direction_consistency_deg": _num(last.get("direction_consistency_deg")),
        "theory_alignment": _num(last.get("theory_alignment")),
        "last_layer_defects": kinds[-1] if kinds else None,  # "high-norm", "low-norm" or None
        "low_norm_artifacts": bool(last) and low_norm_defects(last, _counted(summary, last)),
        "low_norm_counted": bool(last) and _counted(summary, last),
    }
    out["reason"] = _reason(out, layers, kinds, hits, last)
    return out


def _reason(v: dict, layers: list[dict], kinds: list[Kind | None], hits: list[int], last: dict) -> str:
    mom = _fmt(v["max_over_median"])
    fate = "counted as defects" if v["low_norm_counted"] else "dropped by the norm gate (see the warning)"
    low = (
        f"{percent(_num(last.get('gate_rejected_rate')))} of tokens along ν at "
        f"{_fmt(_num(last.get('gate_rejected_norm_over_neighbours')), 2)}× their neighbours' norm, {fate}"
    )
    if v["last_layer_defects"] == "high-norm":
        images = int(_num(last.get("direction_consistency_images")) or 0)
        spread = v["direction_consistency_deg"]
        if spread is not None:
            direction = f"one direction ({spread:.1f}° between {plural(images, 'image')})"
        else:
            direction = f"along ν (alignment {_fmt(v['theory_alignment'], 2)}, {plural(images, 'image')} with defects)"
        return f"singular defects from block {hits[0]}: {percent(v['defect_rate'])} of tokens, max/median norm {mom}, {direction}"
    if v["last_layer_defects"] == "low-norm":
        if "high-norm" not in kinds:
            return f"low-norm singular defects from block {hits[0]}: {low}"
        return f"singular defects from block {hits[0]}, low-norm in the last block: {low}"
    if hits:
        span = f"block {hits[0]}" if len(hits) == 1 else f"blocks {hits[0]}–{hits[-1]}"
        return f"singular defects in {span}, none in the last block (max/median norm {mom} there)"
    parts = [f"no singular defects: max/median {mom}"]
    high = [layer for layer in layers if (_num(layer.get("high_norm_rate")) or 0) > 0]
    if high:
        worst = max(_num(layer.get("high_norm_rate")) or 0 for layer in high)
        align = max((_num(layer.get("theory_alignment")) or 0 for layer in high), default=0.0)
        parts.append(f"high-norm tokens (up to {percent(worst)}) not along ν (alignment ≤ {align:.2f})")
    parts.append("nothing aligned with ν above the noise tail")
    return ", ".join(parts)


def gate_warning(summary: dict) -> str | None:
    """A line when the last block has low-norm singular defects (module doc): tokens along ν that
    fail the norm gate, and whether the rule counted them. None otherwise, and for an analysis made
    before the gate-rejected statistics."""
    layers = summary.get("layers") or []
    counted = bool(layers) and _counted(summary, layers[-1])
    if not layers or not low_norm_defects(layers[-1], counted):
        return None
    last, rule = layers[-1], summary.get("rule") or {}
    images = int(_num(last.get("gate_rejected_images")) or 0)
    nb = _num(last.get("gate_rejected_norm_over_neighbours"))
    norm = f", {nb:.2f}× their neighbours' norm" if nb is not None else ""
    seen = (
        f"{percent(_num(last.get('gate_rejected_rate')))} of last-block tokens lie along ν (median |cos| "
        f"{_num(last.get('gate_rejected_cos_median')):.2f}; their mean direction over {plural(images, 'image')}: "
        f"|cos| {_num(last.get('gate_rejected_alignment')):.2f}{norm}) but fail the norm gate ({rule.get('norm_gate', 'the gate')}× median)"
    )
    if counted:
        return f"{seen}: low-norm artifacts, counted as defects from block {rule.get('low_norm_from', 0)} (--low-norm drop leaves them out)"
    return f"{seen}: artifacts may be low-norm here; rerun with --low-norm count (or auto) to count them"
