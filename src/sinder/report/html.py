"""HTML building blocks of the report: escaping, value formatting, tables, notes, figures and
the page skeleton. The page is self-contained: inline styles, images as data URIs, and a
Content-Security-Policy that forbids any network access."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from html import escape

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

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
.banner{color:#7a0b0b;background:#fde7e7;border:2px solid #d93025;border-radius:4px;padding:10px 14px;margin:14px 0 4px;font-weight:600;font-size:16px}
.verdict{font-size:16px;margin:8px 0;padding:8px 12px;background:#f3f6fb;border-left:4px solid #3b6fb6}.verdict p{margin:2px 0}
.note{color:#8a5a00;background:#fff7e0;border-left:3px solid #f0b400;padding:4px 10px;margin:6px 0}
code{font-size:12.5px}
.row{display:flex;flex-wrap:wrap;gap:0 28px}.row figure{flex:1 1 560px;max-width:900px}
details{margin:6px 0 12px}summary{cursor:pointer;font-weight:600}
"""


def esc(value: object) -> str:
    return escape(str(value), quote=True)


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


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
        return "0" if value == 0 else f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return _fmt_list(value)
    if isinstance(value, dict):
        return f"{{{len(value)} keys}}"
    return str(value)


def _fmt_list(value: list | tuple) -> str:
    if any(isinstance(v, (dict, list)) for v in value):
        return f"[{len(value)} items]"
    shown = ", ".join(fmt(v) for v in value[:8])
    if len(value) > 8:
        return f"[{shown}, …] ({len(value)} items)"
    return f"[{shown}]"


def flatten(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    """Nested dicts as (dotted key, leaf value) pairs."""
    out: list[tuple[str, object]] = []
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.extend(flatten(value, f"{name}."))
        else:
            out.append((name, value))
    return out


def table(header: Sequence[str], rows: Iterable[Sequence[object]], cls: str = "") -> str:
    """``header`` is escaped here; the cells of ``rows`` are HTML already."""
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


def banner(text: str) -> str:
    """A warning that must not be missed (an unfinished run): first on the page, red, an ARIA alert."""
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", esc(text))  # `a command` as in the CLI's warning
    return f'<div class="banner" role="alert">{text}</div>'


def provenance(sources: Sequence[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``: the folders, escaped, each named once."""
    names = [f"<code>{esc(s)}</code>" for s in sources] or ["nothing"]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def verdict_box(verdicts: Sequence[tuple[str, str]]) -> str:
    """Each analysis's verdict (label, reason), one line each, right under the title."""
    if not verdicts:
        return ""
    lines = "".join(f"<p><b>{esc(label)}</b>: {esc(reason)}</p>" if label else f"<p>{esc(reason)}</p>" for label, reason in verdicts)
    return f'<div class="verdict" id="verdict">{lines}</div>'


def page(
    title: str,
    sources: Sequence[str],
    notes: Sequence[str],
    sections: dict[str, str],
    warning: str | None = None,
    tool: str = "sinder report",
    verdicts: Sequence[tuple[str, str]] = (),
) -> str:
    """The whole document: header (``warning`` as a banner, title, the verdicts, provenance with
    the time it was made, navigation, notes) and one <section> per entry."""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    nav = "".join(f'<a href="#{sid}">{sid.replace("-", " ")}</a>' for sid in sections)
    body = "".join(f'<section id="{sid}">{content}</section>' for sid, content in sections.items())
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>"
        f"<header>{banner(warning) if warning else ''}<h1>{esc(title)}</h1>{verdict_box(verdicts)}<p>Generated {stamp} by <code>{esc(tool)}</code> from "
        f"{provenance(sources)}.</p><nav>{nav}</nav>{''.join(note(n) for n in notes)}</header>"
        f"{body}</body></html>\n"
    )
