"""``sinder demo``: the whole story offline, on the built-in planted-defect model.

analyse (held-out photos) -> repair (other photos) -> analyse again -> HTML report.
"""

from __future__ import annotations

import argparse
import logging
import time

from ..analyze import format_table, verdict_line
from ..backbones import load_backbone
from ..errors import Interrupted
from ..images import BUNDLED_EVAL, BUNDLED_TRAIN, bundled_photos
from ..interrupt import Terminated
from ..options import Overwrite, RunOptions, add_option
from ..runfolder import RunFolder
from ..runtime import resolve_device
from ..units import percent, plural

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    p.add_argument("--model", default="planted:small", help="model spec (default: planted:small)")
    p.add_argument("--max-steps", type=int, default=300, help="repair step budget (default 300)")
    for name in ("device", "progress"):
        add_option(p, RunOptions, name)
    add_option(p, Overwrite, "overwrite")


def residual_lines(residual: list[dict] | None) -> list[str]:
    """Which held-out photos keep high-norm tokens after repair, and the strongest one's norm."""
    if not residual:
        return []
    left = [r for r in residual if r["high_norm_tokens"]]
    lines = [f"held-out photos with high-norm tokens left: {len(left)} of {len(residual)}"]
    for r in left:
        top = r["strongest"][0] if r["strongest"] else None
        where = f", strongest at ({top['row']}, {top['col']}): {top['norm_over_median']:.1f}x median" if top else ""
        lines.append(f"  {r['image']}: {plural(r['high_norm_tokens'], 'token')}{where}")
    return lines


def comparison_table(before: dict, after: dict, features: dict | None) -> str:
    """Before/after on the held-out photos, last layer."""
    b, a = before["layers"][-1], after["layers"][-1]
    rows = [
        "held-out photos, last layer      before     after",
        f"energy along nu               {percent(b['energy_along_direction']):>9} {percent(a['energy_along_direction']):>9}",
        f"defect rate                   {percent(b['defect_rate']):>9} {percent(a['defect_rate']):>9}",
        f"high-norm rate (>3x median)   {percent(b['high_norm_rate']):>9} {percent(a['high_norm_rate']):>9}",
        f"max / median token norm       {b['max_over_median']:9.2f} {a['max_over_median']:9.2f}",
    ]
    if features:
        for key, label in (
            ("non_defect_cosine", "non-defect token cosine"),
            ("cls_cosine", "CLS token cosine"),
            ("pooled_cosine", "pooled output cosine"),
        ):
            if features.get(key) is not None:
                rows.append(f"{label:<29} {'':>9} {features[key]:9.3f}")
    return "\n".join(rows)


def run(args: argparse.Namespace) -> int:
    from ..repair import RepairConfig, repair
    from ..report import write_report

    out = RunFolder(args.out)
    start = time.perf_counter()
    config = RepairConfig(max_steps=args.max_steps, device=args.device, overwrite=args.overwrite, progress=args.progress)
    out.check(resume=False, overwrite=args.overwrite, resumable=False)  # refuse an unusable --out before any work
    log.info("loading %s", args.model)
    backbone = load_backbone(args.model, device=resolve_device(args.device))
    train, held_out = bundled_photos(BUNDLED_TRAIN), bundled_photos(BUNDLED_EVAL)
    log.info(
        "analysing %s on %d held-out photos, repairing it on %d others (at most %d steps), analysing again",
        args.model,
        len(held_out),
        len(train),
        args.max_steps,
    )

    try:
        result = repair(backbone, train, config, eval_images=held_out, out_dir=out.path)
    except (Interrupted, KeyboardInterrupt) as err:  # the demo takes no --resume: it starts over
        again = "rerun the same command" + ("" if args.overwrite else " with --overwrite")
        code = err.exit_code if isinstance(err, Interrupted) else 143 if isinstance(err, Terminated) else 130
        raise Interrupted(f"{'SIGTERM' if code == 143 else 'SIGINT'} during the demo, which starts over: {again}", code) from None
    before, after = result.analysis_before, result.analysis_after
    report = write_report([out.path], out.report, overwrite=True)

    print("\nBefore repair (held-out photos):")
    print(format_table(before.summary))
    print(verdict_line(before.summary))
    print("\nAfter repair:")
    print(format_table(after.summary))
    print(verdict_line(after.summary))
    print()
    s = result.summary
    metrics = s.get("metrics") or {}
    print(comparison_table(before.summary, after.summary, metrics.get("features")))
    print("\n".join(residual_lines(metrics.get("residual"))))
    print(
        f"\nrepair: {plural(s['steps'], 'step')}, {plural(s['images_seen'], 'image')} seen, {s['seconds']:.1f} s, stopped by {s['stop_reason']}"
        f"\nrepaired weights: {result.weights_path}"
        f"\nreport: {report.resolve()}"
        f"\ntotal {time.perf_counter() - start:.0f} s; all outputs in {out.path}/"
    )
    return 0
