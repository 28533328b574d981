"""What the terminal table and the page share: one unit per number (rates as percentages) and the
two image counts of what each fix needed. No matplotlib here: the command prints without a page."""

from __future__ import annotations

from .. import units
from ..measure import summary_cosine

# downstream metrics that are fractions of images, pixels or classes (shown as %), besides the
# defect rates :func:`sinder.units.is_rate` knows; the others (max/median norm, cosines, degrees,
# counts, seconds) keep their own units
DOWNSTREAM_RATES = ("miou", "pixel_acc", "corloc")
IMAGE_COLUMNS = ("images needed (distinct)", "training images seen (with repeats)")
IMAGES_NOTE = (
    "images needed: the distinct images the fix read (training set, or register search images); "
    "training images seen: what SINDER's training processed, an image once per visit"
)


def is_rate(key: str) -> bool:
    return units.is_rate(key) or key in DOWNSTREAM_RATES or key.startswith(("top1@", "patch_top1@"))


pct = units.percent


def count(value) -> str:
    return "–" if value is None else str(int(value))


def downstream_keys(report: dict, task: str) -> list[str]:
    """The numeric metrics of ``task`` over every method, in first-seen order."""
    keys: list[str] = []
    for name in report["order"]:
        for k, v in (report["methods"][name].get("tasks", {}).get(task) or {}).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in keys:
                keys.append(k)
    return keys


def downstream_cell(key: str, value) -> str:
    if value is None:
        return "–"
    if is_rate(key):
        return pct(value)
    if key == "seconds":
        return f"{value:.1f} s"
    return str(value) if isinstance(value, int) else f"{value:.4g}"


def _grid(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]


def format_table(report: dict) -> str:
    """The summary as plain text: one row per method; then one table per downstream task."""
    planted = "energy_along_u" in report["methods"]["original"]["last_layer"]
    head = [
        "method",
        "energy ν",
        *(["energy u"] if planted else []),
        "max/med",
        "high-norm",
        "defects",
        "non-def cos",
        "CLS/pooled cos",
        "distinct imgs",
        "imgs seen",
        "prepare",
    ]
    rows = [head]
    num = lambda v: "–" if v is None else f"{v:.4f}"  # noqa: E731
    for name in report["order"]:
        m = report["methods"][name]
        last, feats, needs = m["last_layer"], m["features"] or {}, m["needs"]
        rows.append(
            [
                name,
                pct(last["energy_along_direction"]),
                *([pct(last.get("energy_along_u"))] if planted else []),
                f"{last['max_over_median']:.2f}",
                pct(last["high_norm_rate"]),
                pct(last["defect_rate"]),
                num(feats.get("non_defect_cosine")),
                num(summary_cosine(feats)),
                count(needs.get("images")),
                count(needs.get("training_images_seen")),
                f"{m['prepare_seconds']:.1f}s",
            ]
        )
    lines = _grid(rows) + [f"distinct imgs = {IMAGE_COLUMNS[0]}; imgs seen = {IMAGE_COLUMNS[1]}"]
    for task, folder in (report.get("tasks") or {}).items():
        keys = downstream_keys(report, task)
        table = [["method", *keys]]
        for name in report["order"]:
            got = report["methods"][name].get("tasks", {}).get(task) or {}
            table.append([name, *(downstream_cell(k, got.get(k)) for k in keys)])
        lines += ["", f"downstream {task} on {folder}:", *_grid(table)]
    return "\n".join(lines)
