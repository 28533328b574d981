"""``hf:ID_OR_DIR``: a transformers DINOv2 / DINOv2-with-registers / DINOv3 ViT, or the vision tower
of a CLIP, SigLIP or SigLIP2 model (``CLIPVisionModel``, ``CLIPModel``, ``SiglipVisionModel``,
``SiglipModel``, ``Siglip2VisionModel``, ``Siglip2Model``).

* a local directory (``save_pretrained`` layout) loads offline;
* a hub id downloads only when the hub answers (checked up front, so offline runs fail fast);
* ``--weights FILE`` loads a state dict (current or legacy key names) into a model built from
  the directory's or id's config;
* ``--random-init`` with a known id builds its config locally (no network).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from torch import nn

from ..errors import ModelSpecError, WeightsError
from .base import Backbone
from .weights import read_state_dict, require_hub

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_DINOV2_SIZES = {  # hidden, layers, heads, swiglu
    "small": (384, 12, 6, False),
    "base": (768, 12, 12, False),
    "large": (1024, 24, 16, False),
    "giant": (1536, 40, 24, True),
}
_DINOV3_SIZES = {  # hidden, layers, heads, intermediate, gated (SiLU) MLP, q/v bias
    "vits16": (384, 12, 6, 1536, False, True),
    "vits16plus": (384, 12, 6, 1536, True, True),
    "vitb16": (768, 12, 12, 3072, False, True),
    "vitl16": (1024, 24, 16, 4096, False, True),
    "vith16plus": (1280, 32, 20, 5120, True, True),
    "vit7b16": (4096, 40, 32, 8192, True, False),
}


def known_hf_ids() -> list[str]:
    ids = [f"facebook/dinov2-{s}" for s in _DINOV2_SIZES] + [f"facebook/dinov2-with-registers-{s}" for s in _DINOV2_SIZES]
    return ids + [f"facebook/dinov3-{s}-pretrain-lvd1689m" for s in _DINOV3_SIZES]


def known_config(model_id: str):
    """The architecture config of a known hub id, built without network (None when unknown)."""
    from transformers import Dinov2Config, Dinov2WithRegistersConfig, DINOv3ViTConfig

    org, _, name = model_id.partition("/")
    if org != "facebook":
        return None
    for prefix, cls, extra in (
        ("dinov2-with-registers-", Dinov2WithRegistersConfig, {"num_register_tokens": 4}),
        ("dinov2-", Dinov2Config, {}),
    ):
        if name.startswith(prefix) and name[len(prefix) :] in _DINOV2_SIZES:
            hidden, layers, heads, swiglu = _DINOV2_SIZES[name[len(prefix) :]]
            return cls(
                hidden_size=hidden,
                num_hidden_layers=layers,
                num_attention_heads=heads,
                mlp_ratio=4,
                use_swiglu_ffn=swiglu,
                image_size=518,
                patch_size=14,
                layerscale_value=1.0,
                layer_norm_eps=1e-6,
                **extra,
            )
    if name.startswith("dinov3-") and name.endswith("-pretrain-lvd1689m"):
        size = name[len("dinov3-") : -len("-pretrain-lvd1689m")]
        if size in _DINOV3_SIZES:
            hidden, layers, heads, inter, gated, qv_bias = _DINOV3_SIZES[size]
            return DINOv3ViTConfig(
                hidden_size=hidden,
                num_hidden_layers=layers,
                num_attention_heads=heads,
                intermediate_size=inter,
                use_gated_mlp=gated,
                hidden_act="silu" if gated else "gelu",
                query_bias=qv_bias,
                value_bias=qv_bias,
                key_bias=False,
                num_register_tokens=4,
                patch_size=16,
                image_size=224,
                layer_norm_eps=1e-5,
                rope_theta=100.0,
            )
    return None


MODEL_CLASSES = {  # config.model_type -> transformers class
    "dinov2": "Dinov2Model",
    "dinov2_with_registers": "Dinov2WithRegistersModel",
    "dinov3_vit": "DINOv3ViTModel",
    "clip_vision_model": "CLIPVisionModel",
    "clip": "CLIPModel",
    "siglip_vision_model": "SiglipVisionModel",
    "siglip": "SiglipModel",
    "siglip2_vision_model": "Siglip2VisionModel",
    "siglip2": "Siglip2Model",
}


def _model_class(config, spec: str):
    import transformers

    kind = getattr(config, "model_type", None)
    if kind not in MODEL_CLASSES:
        raise ModelSpecError(f"{spec}: model type {kind!r} is not supported; use one of {', '.join(MODEL_CLASSES)}")
    return getattr(transformers, MODEL_CLASSES[kind])


def hf_backbone(model: nn.Module, spec: str) -> Backbone:
    """The adapter for a transformers model: the CLIP/SigLIP tower one or the DINO one."""
    from .hf_tower import HFTowerBackbone, tower_kind
    from .hf_vit import HFViTBackbone

    return HFTowerBackbone(model, spec) if tower_kind(model) else HFViTBackbone(model, spec)


def _resolve_config(name: str, spec: str, local: bool):
    from transformers import AutoConfig

    if local:
        try:
            return AutoConfig.from_pretrained(name, local_files_only=True)
        except (OSError, ValueError) as err:
            raise ModelSpecError(f"{spec}: {name} has no readable config.json ({str(err).splitlines()[0]})") from None
    config = known_config(name)
    if config is not None:
        return config
    require_hub(spec)
    return AutoConfig.from_pretrained(name)


@contextmanager
def _quiet_transformers(local: bool) -> Iterator[None]:
    """No load-report table and, for local files, no progress bar: a misfit becomes our one-line error."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    if local:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if local and bars:
            hf_logging.enable_progress_bar()


def _checked_from_pretrained(cls, source: str, spec: str, what: str, **kwargs) -> nn.Module:
    """``from_pretrained`` that refuses weights which do not fit (transformers only warns and random-fills)."""
    try:
        with _quiet_transformers(bool(kwargs.get("local_files_only"))):
            # mismatched shapes are listed in ``info`` (and refused below) instead of a many-line RuntimeError
            model, info = cls.from_pretrained(source, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs)
    except (OSError, RuntimeError) as err:  # no weights file in the folder, a failed download, a bad conversion
        raise WeightsError(f"{spec}: cannot load {what} ({str(err).strip().splitlines()[0][:200]})") from None
    bad = {k: sorted(info.get(k) or []) for k in ("missing_keys", "unexpected_keys")}
    # (name, shape in the file, shape in the model) -> readable text
    bad["mismatched_keys"] = [
        f"{m[0]} {tuple(m[1])} vs {tuple(m[2])}" if isinstance(m, (tuple, list)) and len(m) == 3 else str(m)
        for m in sorted(info.get("mismatched_keys") or [], key=str)
    ]
    if any(bad.values()):
        summary = ", ".join(f"{k.split('_')[0]} {v[:3]}{'…' if len(v) > 3 else ''}" for k, v in bad.items() if v)
        raise WeightsError(f"{spec}: {what} does not fit the model config ({summary}); check the model id or directory")
    return model


def is_official_dinov2(state_dict: dict) -> bool:
    """The official DINOv2 key layout (``blocks.i.attn.qkv``, ``patch_embed.proj``), not transformers'."""
    return "patch_embed.proj.weight" in state_dict and "blocks.0.norm1.weight" in state_dict


def _load_state_dict_into(config, weights: Path, spec: str) -> nn.Module:
    """Through ``from_pretrained`` on a temporary folder, so transformers' own legacy-name conversions
    apply; an official DINOv2 checkpoint (``dinov2_vits14_pretrain.pth``) is converted first."""
    from safetensors.torch import save_file

    from .convert import official_dinov2_to_hf

    cls = _model_class(config, spec)
    state_dict = read_state_dict(weights)  # validates the file with our one-line errors
    with tempfile.TemporaryDirectory(prefix="sinder-hf-") as tmp:
        config.save_pretrained(tmp)
        target = Path(tmp) / "model.safetensors"
        if weights.suffix == ".safetensors" and not is_official_dinov2(state_dict):
            os.symlink(weights.resolve(), target)
        else:
            if is_official_dinov2(state_dict):
                state_dict = official_dinov2_to_hf(state_dict)
            save_file({k: v.contiguous() for k, v in state_dict.items()}, str(target))
        return _checked_from_pretrained(cls, tmp, spec, str(weights), local_files_only=True)


def _with_local_normalisation(backbone: Backbone, folder: Path) -> Backbone:
    """Use the folder's ``preprocessor_config.json`` mean/std when it has one (e.g. satellite DINOv3)."""
    pre = folder / "preprocessor_config.json"
    if pre.is_file():
        cfg = json.loads(pre.read_text())
        if len(cfg.get("image_mean") or ()) == 3 and len(cfg.get("image_std") or ()) == 3:
            backbone.mean, backbone.std = tuple(cfg["image_mean"]), tuple(cfg["image_std"])
    return backbone


def load_hf(name: str, spec: str, weights: str | Path | None = None, random_init: bool = False) -> Backbone:
    local = Path(name).expanduser().is_dir()
    if not local and not _HUB_ID.fullmatch(name):
        raise ModelSpecError(f"{spec}: directory {name} not found; pass a save_pretrained folder or a hub id like facebook/dinov2-small")
    source = str(Path(name).expanduser()) if local else name
    backbone = hf_backbone(_build_model(source, spec, local, weights, random_init), spec)
    return _with_local_normalisation(backbone, Path(source)) if local else backbone


def _build_model(source: str, spec: str, local: bool, weights: str | Path | None, random_init: bool) -> nn.Module:
    if weights is not None:
        weights = Path(weights)
        if not weights.is_file():
            raise WeightsError(f"weights file not found: {weights}")
        return _load_state_dict_into(_resolve_config(source, spec, local), weights, spec)
    if random_init:
        config = _resolve_config(source, spec, True) if local else known_config(source)
        if config is None:
            raise ModelSpecError(
                f"{spec}: no built-in config for {source!r}; --random-init works with a local folder or one of {', '.join(known_hf_ids()[:3])}, …"
            )
        return _model_class(config, spec)(config)
    if local:
        cls = _model_class(_resolve_config(source, spec, True), spec)
        return _checked_from_pretrained(cls, source, spec, f"the weights in {source}", local_files_only=True)
    require_hub(spec)
    cls = _model_class(_resolve_config(source, spec, False), spec)
    return _checked_from_pretrained(cls, source, spec, f"the hub weights of {source}")
