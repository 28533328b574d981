"""``sinder report``: one self-contained before/after HTML page from repair runs and analyses.

Inputs are a repair run folder (every piece optional) and/or analysis folders, as
:mod:`sinder.runfolder` lays them out. Two analyses are shown side by side; one is shown alone.
Every image is an embedded PNG data URI, styles are inline and a Content-Security-Policy
forbids any network access, so the page opens from disk anywhere.

Modules: :mod:`.inputs` reads the folders, :mod:`.sections` builds the five sections,
:mod:`.html` the markup around them; every matplotlib figure is :mod:`sinder.plots`'s.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from ..errors import OutputExistsError
from ..io import write_text
from ..runfolder import REPORT
from .config import ReportConfig
from .html import page
from .inputs import AnalysisInput, ReportInputs, RunInput, SigmaEntry, read_inputs, read_sigma, split_part

__all__ = [
    "SECTION_IDS",
    "AnalysisInput",
    "ReportConfig",
    "ReportInputs",
    "RunInput",
    "SigmaEntry",
    "build_report",
    "read_inputs",
    "read_sigma",
    "render_report",
    "split_part",
    "write_report",
]

log = logging.getLogger(__name__)


def __getattr__(name: str):
    """The sections load matplotlib: only when a page is drawn (the command line reads ReportConfig
    without them)."""
    if name in ("SECTION_IDS", "SECTIONS"):
        from . import sections

        return getattr(sections, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def default_title(inputs: ReportInputs) -> str:
    """``SINDER report: MODEL``, naming every model on the page: the run's (its own analyses are of
    that model) and each analysis given on its own, repaired ones marked as such."""
    names = [inputs.run.model] if inputs.run is not None else []
    names += [a.model for a in inputs.analyses if inputs.run is None or a.path.parent != inputs.run.path]
    names = list(dict.fromkeys(str(n) for n in names if n))
    return f"SINDER report: {' vs '.join(names)}" if names else "SINDER report"


def sources(inputs: ReportInputs) -> list[str]:
    """The folders the page is made from: the run, and each analysis given on its own (a run's
    analyses live inside it; a label repeats its folder's name, so it is not shown again)."""
    out = [str(inputs.run.path)] if inputs.run else []
    out += [str(a.path) for a in inputs.analyses if inputs.run is None or a.path.parent != inputs.run.path]
    return out


def verdicts(inputs: ReportInputs) -> list[tuple[str, str]]:
    """(label, reason) of each analysis's verdict, as ``sinder analyze`` printed it (computed from
    the per-layer statistics for an analysis.json written before verdicts existed)."""
    from ..verdict import compute_verdict

    out = []
    for a in inputs.analyses:
        verdict = a.result.summary.get("verdict") or compute_verdict(a.result.summary)
        out.append((a.label if len(inputs.analyses) > 1 or inputs.run is not None else "verdict", str(verdict.get("reason", ""))))
    return out


def render_report(inputs: ReportInputs, config: ReportConfig | None = None) -> str:
    """The complete HTML page for ``inputs``."""
    from .sections import SECTIONS

    config = config or ReportConfig()
    sections = {}
    for sid, build in SECTIONS.items():
        log.info("report: rendering %s", sid)
        sections[sid] = build(inputs, config)
    return page(
        config.title or default_title(inputs), sources(inputs), inputs.notes, sections, inputs.unfinished, verdicts=verdicts(inputs)
    )


def build_report(paths: Sequence[str | Path], config: ReportConfig | None = None) -> str:
    """Read ``paths`` (run and/or analysis folders) and return the HTML page."""
    return render_report(read_inputs(paths), config)


def write_report(paths: Sequence[str | Path], out: str | Path, config: ReportConfig | None = None, overwrite: bool = False) -> Path:
    """Write the report to ``out`` atomically; refuse to replace an existing file unless ``overwrite``.
    An unfinished run is reported all the same, with a warning (the page shows it as a banner)."""
    out = Path(out)
    if out.is_dir():
        raise OutputExistsError(f"{out} is a folder; pass a file name such as {out / REPORT}")
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} already exists; pass --overwrite to replace it or choose another --out")
    inputs = read_inputs(paths)
    unfinished = inputs.unfinished
    if unfinished:
        log.warning("%s", unfinished)
    page_html = render_report(inputs, config)
    write_text(out, page_html)
    # the command line says where the page went; this is for -v and library callers
    log.debug("wrote %s (%.1f MB)", out, len(page_html) / 1e6)
    return out
