"""Write a (repaired) backbone's weights in the format it came in, atomically, and read them back.

* ``timm`` / ``planted`` → ``model.safetensors`` + ``model_spec.json``; load with
  ``timm.create_model(timm_name, pretrained=False, img_size=img_size, num_classes=num_classes, **kwargs)``
  then ``load_state_dict(strict=True)`` (or ``sinder ... --model timm:NAME --weights model.safetensors``).
* ``hf`` → a ``save_pretrained`` folder (``config.json`` + ``model.safetensors``); ``hf:DIR`` loads it.
* ``dinov2`` → ``<name>_sinder.pth``, a plain state dict with the official keys (loads into the
  official torch.hub model with ``strict=True``, or ``dinov2:NAME --weights FILE.pth``).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from .backbones.base import Backbone
from .errors import ModelSpecError, OutputExistsError

log = logging.getLogger(__name__)

SPEC_FILE = "model_spec.json"
TIMM_WEIGHTS = "model.safetensors"
HF_FILES = ("config.json", "model.safetensors")


def _spec_name(backbone: Backbone) -> str:
    return backbone.spec.partition(":")[2]


def _timm_name(backbone: Backbone) -> str:
    name = getattr(backbone, "timm_name", None)
    if name:
        return name
    if backbone.spec.startswith("timm:"):
        return _spec_name(backbone)
    raise ModelSpecError(f"{backbone.spec}: cannot tell which timm model to record; set backbone.timm_name")


def _refuse_existing(paths: list[Path], overwrite: bool) -> None:
    if overwrite:
        return
    existing = [p for p in paths if p.exists()]
    if existing:
        raise OutputExistsError(f"{existing[0]} already exists; pass --overwrite to replace it")


def _atomic_write(target: Path, write) -> None:
    """``write(tmp_path)`` then ``os.replace`` onto ``target``: readers never see a partial file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _cpu_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def save_weights(backbone: Backbone, out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``backbone``'s weights under ``out_dir`` in its own family's format; returns the written path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    family = backbone.family
    if family in ("timm", "planted"):
        return _save_timm(backbone, out, overwrite)
    if family == "hf":
        return _save_hf(backbone, out, overwrite)
    if family == "dinov2":
        return _save_official(backbone, out, overwrite)
    raise ModelSpecError(f"{backbone.spec}: no export format for family {family!r}")


def _save_timm(backbone: Backbone, out: Path, overwrite: bool) -> Path:
    from safetensors.torch import save_file

    weights, spec_file = out / TIMM_WEIGHTS, out / SPEC_FILE
    _refuse_existing([weights, spec_file], overwrite)
    model = backbone.model
    meta = {
        "format": "timm",
        "timm_name": _timm_name(backbone),
        "img_size": int(backbone.image_size),
        "num_classes": int(getattr(model, "num_classes", 0)),
        "kwargs": dict(getattr(backbone, "timm_kwargs", None) or {}),
        "spec": backbone.spec,
        "family": backbone.family,
    }
    sd = _cpu_state_dict(model)
    _atomic_write(weights, lambda tmp: save_file(sd, tmp, metadata={"format": "pt"}))
    _atomic_write(spec_file, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2) + "\n"))
    log.info("wrote %s (timm %s, %d px)", weights, meta["timm_name"], meta["img_size"])
    return weights


def _save_hf(backbone: Backbone, out: Path, overwrite: bool) -> Path:
    _refuse_existing([out / f for f in HF_FILES], overwrite)
    tmp = Path(tempfile.mkdtemp(prefix=".sinder-hf-", dir=out))
    try:
        backbone.model.save_pretrained(tmp)
        # config first, weights last: a folder with new weights always has its matching config
        names = sorted(os.listdir(tmp), key=lambda n: n.endswith(".safetensors"))
        for name in names:
            os.replace(tmp / name, out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("wrote %s (transformers save_pretrained)", out)
    return out


def _save_official(backbone: Backbone, out: Path, overwrite: bool) -> Path:
    from .backbones.convert import timm_to_official_dinov2

    target = out / f"{_spec_name(backbone)}_sinder.pth"
    _refuse_existing([target], overwrite)
    sd = timm_to_official_dinov2(_cpu_state_dict(backbone.model))
    _atomic_write(target, lambda tmp: torch.save(sd, tmp))
    log.info("wrote %s (official DINOv2 state dict)", target)
    return target


def reload_exported(backbone: Backbone, path: str | os.PathLike) -> Backbone:
    """Load what :func:`save_weights` wrote for ``backbone`` as a fresh backbone (same device and dtype)."""
    path = Path(path)
    family = backbone.family
    if family in ("timm", "planted"):
        import timm
        from safetensors.torch import load_file

        from .backbones.timm_loader import wrap_timm

        folder = path.parent if path.is_file() else path
        meta = json.loads((folder / SPEC_FILE).read_text())
        model = timm.create_model(
            meta["timm_name"], pretrained=False, img_size=meta["img_size"], num_classes=meta["num_classes"],
            dynamic_img_size=True, **meta["kwargs"],
        )  # fmt: skip
        model.load_state_dict(load_file(str(folder / TIMM_WEIGHTS)), strict=True)
        new = wrap_timm(model, backbone.spec, family=family)
        new.timm_name, new.timm_kwargs = meta["timm_name"], meta["kwargs"]
    elif family == "hf":
        from .backbones.hf_loader import load_hf

        new = load_hf(str(path), backbone.spec)
    elif family == "dinov2":
        from .backbones.official_dinov2 import load_official_dinov2

        new = load_official_dinov2(_spec_name(backbone), backbone.spec, weights=path)
    else:
        raise ModelSpecError(f"{backbone.spec}: no export format for family {family!r}")
    new.model.eval().to(device=backbone.device, dtype=backbone.dtype)
    return new


@torch.no_grad()
def max_token_diff(a: Backbone, b: Backbone, pixels: torch.Tensor) -> float:
    """Largest absolute difference between the two models' final tokens on ``pixels``."""
    ta = a.model_forward(pixels.to(a.device, a.dtype))
    tb = b.model_forward(pixels.to(b.device, b.dtype))
    return (ta.float().cpu() - tb.float().cpu()).abs().max().item()
