"""Arguments shared by several sub-commands."""
from __future__ import annotations

import argparse
import dataclasses

from ..backbones import Backbone, load_backbone
from ..runtime import resolve_device


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    from ..backbones import families

    p.add_argument("model", help="model spec: " + ", ".join(f.spec_help for f in families()))
    p.add_argument("--weights", help="checkpoint file (.safetensors, or a .pth state dict read with weights_only=True)")
    p.add_argument("--random-init", action="store_true", help="use untrained weights (for testing only)")
    p.add_argument("--device", default="auto", help="auto|cpu|cuda (default: auto)")


def load_model_from_args(args: argparse.Namespace) -> Backbone:
    return load_backbone(args.model, args.weights, random_init=args.random_init, device=resolve_device(args.device))


def add_rule_arguments(p: argparse.ArgumentParser, defaults=None) -> None:
    """The defect rule's options, the same for every command (``defaults``: a DefectRule)."""
    from ..detect import DefectRule

    d = defaults or DefectRule()
    p.add_argument("--mask-thr", type=float, default=d.mask_thr, help=f"defect if |cos(t, ν)| > mean + THR·std of the image (default {d.mask_thr:g})")
    p.add_argument("--norm-gate", type=float, default=d.norm_gate, help=f"a defect must also have norm > G × the image's median (0: off; default {d.norm_gate:g})")
    p.add_argument("--high-norm-factor", type=float, default=d.high_norm_factor, help=f"high-norm if norm > F × the image's median (default {d.high_norm_factor:g})")
    p.add_argument("--skip-less-than", type=int, default=d.skip_less_than, help=f"defects a layer needs before repair trains on it (default {d.skip_less_than})")


def rule_from_args(args: argparse.Namespace, border: int = 1):
    from ..detect import DefectRule

    return DefectRule(
        mask_thr=args.mask_thr, border=border, norm_gate=args.norm_gate,
        high_norm_factor=args.high_norm_factor, skip_less_than=args.skip_less_than,
    )  # fmt: skip


def config_from_args(cls, args: argparse.Namespace, **explicit):
    """``cls(...)`` from the options named like its fields, plus ``explicit`` for the renamed ones."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in vars(args).items() if k in names} | explicit)
