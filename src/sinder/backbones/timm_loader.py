"""``timm:NAME[.TAG]``: create the timm model, load weights (foreign layouts through timm's own
``checkpoint_filter_fn``), infer the native image size."""

from __future__ import annotations

import contextlib
import io
import logging
import sys
from pathlib import Path

import torch
from torch import nn

from ..errors import ModelSpecError
from .base import Backbone
from .weights import grid_from_pos_embed, load_state_dict_checked, read_state_dict, require_hub

log = logging.getLogger(__name__)

# What the adapters serve, named in every refusal (decided by class and block structure, not by name).
SUPPORTED_TIMM = (
    "sinder adapts timm VisionTransformer models with pre-norm Blocks (DINOv2, DeiT-III, CLIP, SigLIP) "
    "and Eva models with EvaBlocks (DINOv3, EVA-02)"
)


def check_timm_name(name: str, spec: str) -> str:
    """The architecture part of ``name``; an unknown one is a one-line error (offline: not a network problem)."""
    import timm

    arch = name.split(".")[0]
    if not timm.is_model(arch):
        raise ModelSpecError(f"{spec}: timm has no model {arch!r}; list them with timm.list_models('*dinov2*')")
    return arch


def probe_timm(name: str, spec: str, **kwargs) -> nn.Module:
    """The architecture on the meta device (no memory, no initialisation), checked against the
    adapters: a model they cannot serve (ResNet, Swin, BEiT, relpos or NaFlex ViTs, parallel
    blocks, ...) is refused here in one line, before anything is built or downloaded."""
    import timm

    arch = check_timm_name(name, spec)
    try:
        with torch.device("meta"):
            probe = timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)
    except Exception as err:  # noqa: BLE001 - any builder failure is this model's, said in one line
        first = (str(err).strip().splitlines() or [""])[0][:160]
        raise ModelSpecError(f"{spec}: timm cannot build {arch} ({type(err).__name__}: {first}); {SUPPORTED_TIMM}") from None
    wrap_timm(probe, spec)
    return probe


def create_timm(name: str, spec: str, pretrained: bool = False, **kwargs) -> nn.Module:
    """The model, once :func:`probe_timm` found that an adapter serves it."""
    import timm

    probe_timm(name, spec, **kwargs)
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=0, dynamic_img_size=True, **kwargs)
    except TypeError as err:  # a served class that cannot take variable image sizes
        raise ModelSpecError(f"{spec}: {str(err).strip().splitlines()[0][:160]}; {SUPPORTED_TIMM}") from None


def _adapter(model: nn.Module, spec: str, family: str) -> Backbone:
    from timm.models.eva import Eva
    from timm.models.vision_transformer import VisionTransformer

    if isinstance(model, VisionTransformer):
        from .timm_vit import TimmViTBackbone

        return TimmViTBackbone(model, spec, family=family)
    if isinstance(model, Eva):
        from .timm_eva import TimmEvaBackbone

        return TimmEvaBackbone(model, spec, family=family)
    raise ModelSpecError(f"{spec}: {type(model).__name__} is not a ViT that sinder can adapt")


def wrap_timm(model: nn.Module, spec: str, family: str = "timm") -> Backbone:
    """Pick the adapter for a timm model instance and check every block's structure now (not at
    the first analysis); a refusal is one line that names what is supported."""
    try:
        backbone = _adapter(model, spec, family)
        backbone.views()
    except ModelSpecError as err:
        text = str(err) if str(err).startswith(f"{spec}:") else f"{spec}: {err}"
        raise ModelSpecError(f"{text}; {SUPPORTED_TIMM}") from None
    return backbone


def native_img_size(model: nn.Module, state_dict: dict) -> int | None:
    """Image size implied by the checkpoint's positional-embedding grid (None when it has none)."""
    pos = state_dict.get("pos_embed")
    if pos is None:
        return None
    in_pos = 0 if getattr(model, "no_embed_class", False) else model.num_prefix_tokens
    side = grid_from_pos_embed(pos.shape[1], in_pos)
    return side * model.patch_embed.patch_size[0]


def timm_layout(model: nn.Module, state_dict: dict) -> dict:
    """``state_dict`` in timm's layout for ``model``: as it is when it already is (the classifier
    head aside), else through the ``checkpoint_filter_fn`` of the model's own timm module, the pure
    function timm itself loads foreign checkpoints with (official DINOv2 and DINOv3 ``.pth``,
    OpenAI CLIP and open_clip state dicts, ...). A checkpoint the filter cannot read is returned as
    it is, so the checked load names what does not fit."""
    own = model.state_dict().keys()
    if all(k in own for k in state_dict if not k.startswith("head")):
        return state_dict
    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if filter_fn is None:
        return state_dict
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # timm's converters print notes of their own
            return filter_fn(dict(state_dict), model)
    except Exception as err:  # noqa: BLE001 - any failure means "not a layout timm knows": report the misfit instead
        log.debug("timm's checkpoint_filter_fn could not read the checkpoint: %s", err)
        return state_dict


def load_timm_state_dict(model: nn.Module, state_dict: dict, spec: str) -> None:
    """Checked loading, foreign layouts adapted by timm (:func:`timm_layout`); a timm checkpoint's
    classifier head (``head.*``) may be missing or extra."""
    load_state_dict_checked(model, timm_layout(model, state_dict), spec, ignore=("head",))


def load_timm(name: str, spec: str, weights: str | Path | None = None, random_init: bool = False) -> Backbone:
    if weights is None and not random_init:
        probe_timm(name, spec)  # an unknown or unsupported model is refused before the hub check and any download
        require_hub(spec)
        return wrap_timm(create_timm(name, spec, pretrained=True), spec)
    if weights is None:
        return wrap_timm(create_timm(name, spec), spec)
    probe = probe_timm(name, spec)  # the architecture only, to read the native size: no second random init
    state_dict = read_state_dict(weights)
    size = native_img_size(probe, state_dict)
    extra = {"img_size": size} if size is not None and size != probe.patch_embed.img_size[0] else {}
    model = create_timm(name, spec, **extra)
    load_timm_state_dict(model, state_dict, spec)
    return wrap_timm(model, spec)
