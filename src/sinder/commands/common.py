"""Arguments shared by several sub-commands."""
from __future__ import annotations

import argparse

from ..backbones import Backbone, load_backbone
from ..runtime import resolve_device


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model spec: timm:NAME[.TAG], hf:ID_OR_DIR, dinov2:vits14|vitb14|vitl14|vitg14[_reg], planted:small")
    p.add_argument("--weights", help="checkpoint file (.safetensors, or a .pth state dict read with weights_only=True)")
    p.add_argument("--random-init", action="store_true", help="use untrained weights (for testing only)")
    p.add_argument("--device", default="auto", help="auto|cpu|cuda (default: auto)")


def load_model_from_args(args: argparse.Namespace) -> Backbone:
    return load_backbone(args.model, args.weights, random_init=args.random_init, device=resolve_device(args.device))
