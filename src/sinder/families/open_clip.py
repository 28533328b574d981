"""``open_clip:ARCH``: an ``open_clip.CLIP`` model (OpenAI CLIP, LAION OpenCLIP) with a
``VisionTransformer`` image tower; ``open-clip-torch`` is an optional extra, imported here only.

Weights: ``--weights FILE`` (the state dict of the whole model, ``.safetensors`` or an open_clip
``.pt`` checkpoint, ``module.`` prefixes of DDP checkpoints removed); ``--random-init`` builds it
untrained. Export format: ``open_clip_model.safetensors`` (the whole model's state dict, text
tower included) + ``model_spec.json`` (``arch``: null for a model built in Python; ``config``: the
``open_clip.CLIP(**config)`` arguments where sinder built the model from one, as for
``planted:open_clip``); ``open_clip.create_model(ARCH)`` (or ``open_clip.CLIP(**config)``) then
``load_state_dict(strict=True)`` loads it, and so does ``open_clip:ARCH --weights FILE``.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

from ..backbones.base import Backbone
from ..backbones.registry import Family, register_family
from ..backbones.saving import write_weights_and_spec
from ..backbones.weights import load_state_dict_checked, read_state_dict
from ..errors import ModelSpecError, WeightsError

log = logging.getLogger(__name__)

SPEC_FILE = "model_spec.json"
WEIGHTS_FILE = "open_clip_model.safetensors"


def import_open_clip(spec: str):
    try:
        import open_clip
    except ImportError:
        raise ModelSpecError(f"{spec}: open_clip is not installed; pip install open-clip-torch") from None
    return open_clip


def create(arch: str, spec: str):
    """``open_clip.create_model(arch)`` untrained, on the CPU, in eval mode; unknown names in one line."""
    open_clip = import_open_clip(spec)
    if arch not in open_clip.list_models():
        raise ModelSpecError(f"{spec}: open_clip has no model {arch!r}; list them with open_clip.list_models()")
    return open_clip.create_model(arch, pretrained=None).eval()


def load_weights(model, weights: str | Path, spec: str) -> None:
    """The checkpoint into ``model``, strictly (``module.`` prefixes of DDP checkpoints removed)."""
    state = {k.removeprefix("module."): v for k, v in read_state_dict(weights).items()}
    load_state_dict_checked(model, state, spec)


def load(name: str, spec: str, weights: str | Path | None = None, random_init: bool = False) -> Backbone:
    from ..backbones.openclip_vit import OpenCLIPBackbone

    model = create(name, spec)
    if weights is not None:
        load_weights(model, weights, spec)
    elif not random_init:
        raise WeightsError(f"{spec}: pass --weights FILE (an open_clip checkpoint or state dict), or --random-init to test")
    backbone = OpenCLIPBackbone(model, spec)
    backbone.timm_name = name  # the architecture name the export records
    return backbone


def save_open_clip_format(backbone: Backbone, folder: Path, overwrite: bool) -> Path:
    """The whole model's state dict + the architecture name, atomically."""
    arch = backbone.timm_name  # None for a module the user built in Python: they rebuild it themselves
    # the open_clip.CLIP(**config) arguments, where sinder built the model from a config (the planted member)
    meta = {"format": "open_clip", "arch": arch, "config": getattr(backbone, "open_clip_config", None), "spec": backbone.spec}
    weights = write_weights_and_spec(backbone.model, folder / WEIGHTS_FILE, folder / SPEC_FILE, meta, overwrite)
    how = arch or (
        "open_clip.CLIP(**config) with the recorded config" if meta["config"] else "a model built in Python: rebuild it, then load"
    )
    log.info("wrote %s (open_clip: %s)", weights, how)
    return weights


def reload_open_clip_format(backbone: Backbone, path: Path) -> Backbone:
    from ..backbones.openclip_vit import OpenCLIPBackbone

    folder = path.parent if path.is_file() else path
    meta = json.loads((folder / SPEC_FILE).read_text())
    arch, config = meta["arch"], meta.get("config")
    # a named architecture or a recorded config is rebuilt by open_clip; a module built in Python, from a copy of itself
    if arch:
        model = create(arch, backbone.spec)
    elif config:
        model = import_open_clip(backbone.spec).CLIP(**config).eval()
    else:
        model = copy.deepcopy(backbone.model).cpu().float()
    load_weights(model, folder / WEIGHTS_FILE, backbone.spec)
    new = OpenCLIPBackbone(model, backbone.spec, family=backbone.family)
    new.timm_name, new.open_clip_config = arch, config
    return new


register_family(
    Family(
        name="open_clip",
        spec_help="open_clip:ARCH",
        load=load,
        save=save_open_clip_format,
        reload=reload_open_clip_format,
        order=25,
    )
)
