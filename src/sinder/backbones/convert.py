"""Lossless key maps between timm, transformers and the official DINOv2 state-dict layouts.

Official DINOv2 (``facebookresearch/dinov2`` hub checkpoints, ``block_chunks=0``):
``cls_token`` (1,1,D), ``pos_embed`` (1, 1+N, D) with a cls entry even for register models,
``register_tokens`` (1,R,D), ``mask_token`` (1,D), ``patch_embed.proj``, ``blocks.i.{norm1,
attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1|w12, mlp.fc2|w3, ls2.gamma}``, ``norm``.
``w12`` is the fused SwiGLU input ``[gate; value]`` (hidden = silu(gate) * value).

timm's own ``checkpoint_filter_fn`` maps official -> timm; :func:`timm_to_official_dinov2` is its
exact inverse. For register models timm folds the cls pos-embed entry into ``cls_token``; the
inverse writes a zero cls entry, so the round trip is exact. ``mask_token`` (unused at inference)
is written as zeros so the official hub model loads with ``strict=True``.
"""

from __future__ import annotations

import re

import torch

from ..errors import WeightsError

_SKIP_TIMM = ("head.", "fc_norm.")  # num_classes=0 heads / avg-pool norms carry no official counterpart


def _swiglu_blocks(sd: dict[str, torch.Tensor], fc1: str, fc2: str) -> bool:
    """Whether ``fc1`` is a packed [gate; value] projection (twice the hidden width ``fc2`` reads)."""
    return sd[fc1].shape[0] == 2 * sd[fc2].shape[1]


def timm_to_official_dinov2(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm ``vit_*_patch14[_reg4]_dinov2`` state dict -> official DINOv2 keys."""
    out: dict[str, torch.Tensor] = {}
    dim = sd["cls_token"].shape[-1]
    for k, v in sd.items():
        if k.startswith(_SKIP_TIMM):
            continue
        if k.startswith("norm_pre."):
            raise WeightsError("timm model has a pre-norm (norm_pre); it has no official DINOv2 counterpart")
        m = re.fullmatch(r"blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", k)
        if m:
            i, which, kind = m.groups()
            swiglu = _swiglu_blocks(sd, f"blocks.{i}.mlp.fc1.weight", f"blocks.{i}.mlp.fc2.weight")
            name = {"fc1": "w12", "fc2": "w3"}[which] if swiglu else which
            out[f"blocks.{i}.mlp.{name}.{kind}"] = v
            continue
        if k == "reg_token":
            out["register_tokens"] = v
            continue
        out[k] = v
    if "reg_token" in sd:
        # timm register models have no cls pos-embed entry (it is folded into cls_token)
        pos = sd["pos_embed"]
        out["pos_embed"] = torch.cat([torch.zeros_like(pos[:, :1]), pos], dim=1)
    out["mask_token"] = torch.zeros(1, dim, dtype=sd["cls_token"].dtype)
    return out


def _split3(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n = t.shape[0] // 3
    return t[:n], t[n : 2 * n], t[2 * n :]


# official DINOv2 <-> transformers, outside the blocks (one table, used both ways)
_OFFICIAL_TO_HF_TOP = {
    "cls_token": "embeddings.cls_token",
    "mask_token": "embeddings.mask_token",
    "pos_embed": "embeddings.position_embeddings",
    "register_tokens": "embeddings.register_tokens",
    "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
    "norm.weight": "layernorm.weight",
    "norm.bias": "layernorm.bias",
}


def official_dinov2_to_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official DINOv2 -> transformers 5 ``Dinov2Model`` / ``Dinov2WithRegistersModel`` keys."""
    top = _OFFICIAL_TO_HF_TOP
    direct = {
        "norm1": "norm1",
        "norm2": "norm2",
        "attn.proj": "attention.o_proj",
        "mlp.fc1": "mlp.fc1",
        "mlp.fc2": "mlp.fc2",
        "mlp.w3": "mlp.down_proj",
    }
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k in top:
            out[top[k]] = v
            continue
        m = re.fullmatch(r"blocks\.(\d+)\.(.+)\.(weight|bias|gamma)", k)
        if not m:
            raise WeightsError(f"official DINOv2 key {k!r} has no transformers counterpart; is this a DINOv2 checkpoint?")
        i, mod, kind = m.groups()
        p = f"encoder.layer.{i}"
        if mod in ("ls1", "ls2"):
            out[f"{p}.layer_scale{mod[-1]}.lambda1"] = v
        elif mod == "attn.qkv":
            for part, t in zip(("q_proj", "k_proj", "v_proj"), _split3(v)):
                out[f"{p}.attention.{part}.{kind}"] = t
        elif mod == "mlp.w12":
            gate, up = v.chunk(2, dim=0)
            out[f"{p}.mlp.gate_proj.{kind}"] = gate
            out[f"{p}.mlp.up_proj.{kind}"] = up
        elif mod in direct:
            out[f"{p}.{direct[mod]}.{kind}"] = v
        else:
            raise WeightsError(f"official DINOv2 key {k!r} has no transformers counterpart; is this a DINOv2 checkpoint?")
    return out


# transformers 4.x / save_pretrained names -> transformers 5 names, per layer
_HF_LEGACY = {
    "attention.attention.query": "attention.q_proj",
    "attention.attention.key": "attention.k_proj",
    "attention.attention.value": "attention.v_proj",
    "attention.output.dense": "attention.o_proj",
    "mlp.weights_out": "mlp.down_proj",
}


def hf_dinov2_to_official(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers DINOv2 (5.x names or the legacy ``save_pretrained`` names) -> official DINOv2 keys."""
    inv_top = {hf: official for official, hf in _OFFICIAL_TO_HF_TOP.items()}
    layers: dict[tuple[str, str, str], torch.Tensor] = {}
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        k = k.removeprefix("dinov2.")  # Dinov2For* task models
        if k in inv_top:
            out[inv_top[k]] = v
            continue
        m = re.fullmatch(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias|lambda1)", k)
        if not m:
            if k.startswith("classifier."):
                continue
            raise WeightsError(f"transformers key {k!r} is not a DINOv2 weight; is this a Dinov2Model checkpoint?")
        i, mod, kind = m.groups()
        layers[(i, _HF_LEGACY.get(mod, mod), kind)] = v
    for (i, mod, kind), v in layers.items():
        p = f"blocks.{i}"
        if mod in ("layer_scale1", "layer_scale2"):
            out[f"{p}.ls{mod[-1]}.gamma"] = v
        elif mod == "attention.q_proj":
            out[f"{p}.attn.qkv.{kind}"] = torch.cat([v, layers[(i, "attention.k_proj", kind)], layers[(i, "attention.v_proj", kind)]])
        elif mod in ("attention.k_proj", "attention.v_proj"):
            continue  # concatenated with q above
        elif mod == "attention.o_proj":
            out[f"{p}.attn.proj.{kind}"] = v
        elif mod == "mlp.gate_proj":
            out[f"{p}.mlp.w12.{kind}"] = torch.cat([v, layers[(i, "mlp.up_proj", kind)]])
        elif mod == "mlp.up_proj":
            continue
        elif mod == "mlp.weights_in":  # legacy fused [gate; up]
            out[f"{p}.mlp.w12.{kind}"] = v
        elif mod == "mlp.down_proj":
            out[f"{p}.mlp.w3.{kind}"] = v
        elif mod in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
            out[f"{p}.{mod}.{kind}"] = v
        else:
            raise WeightsError(f"transformers key encoder.layer.{i}.{mod}.{kind} has no official DINOv2 counterpart")
    if "mask_token" not in out and "cls_token" in out:
        out["mask_token"] = torch.zeros(1, out["cls_token"].shape[-1], dtype=out["cls_token"].dtype)
    return out


def _require_timm_clip_layout(sd: dict[str, torch.Tensor]) -> None:
    if "patch_embed.proj.bias" in sd or "norm_pre.weight" not in sd or any(k.endswith("gamma") for k in sd):
        raise WeightsError("not a timm CLIP-layout model (pre_norm=True, no patch bias, no LayerScale)")


def timm_clip_to_hf_clip(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm CLIP-layout ViT (``pre_norm=True``, no patch bias, CLS, no LayerScale) state dict ->
    the keys of transformers' CLIP vision tower (the module holding ``embeddings`` and ``encoder``:
    ``CLIPVisionModel`` itself or its ``vision_model``, by transformers version), fused qkv split.
    The same function on the same normalised pixels: both scale q·k by head_dim^-1/2, and timm's
    final ``norm`` is the tower's ``post_layernorm``."""
    _require_timm_clip_layout(sd)
    out = {
        "embeddings.class_embedding": sd["cls_token"].reshape(-1),
        "embeddings.patch_embedding.weight": sd["patch_embed.proj.weight"],
        "embeddings.position_embedding.weight": sd["pos_embed"][0],
    }
    names = {"norm_pre": "pre_layrnorm", "norm": "post_layernorm"}
    for k, v in sd.items():
        head, _, leaf = k.rpartition(".")
        if head in names:
            out[f"{names[head]}.{leaf}"] = v
        else:
            _timm_block_to_hf_encoder(k, v, out)
    return out


_TIMM_BLOCK_KEY = re.compile(r"blocks\.(\d+)\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias)")


def _timm_block_to_hf_encoder(key: str, value: torch.Tensor, out: dict[str, torch.Tensor]) -> None:
    """One timm block tensor under the names of transformers' CLIP/SigLIP encoder (fused qkv split); other keys are left."""
    m = _TIMM_BLOCK_KEY.fullmatch(key)
    if m is None:
        return
    layer, part, leaf = f"encoder.layers.{m[1]}.", m[2], m[3]
    if part == "attn.qkv":
        for name, t in zip(("q_proj", "k_proj", "v_proj"), _split3(value)):
            out[f"{layer}self_attn.{name}.{leaf}"] = t
    else:
        renamed = {"norm1": "layer_norm1", "norm2": "layer_norm2", "attn.proj": "self_attn.out_proj"}.get(part, part)
        out[f"{layer}{renamed}.{leaf}"] = value


def timm_clip_to_open_clip(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm CLIP-layout ViT state dict -> the keys of open_clip's ``VisionTransformer`` (the image
    tower, ``CLIP.visual``): the fused qkv is ``nn.MultiheadAttention``'s ``in_proj`` as it is (both
    order the rows q, k, v), timm's ``norm_pre``/``norm`` are ``ln_pre``/``ln_post``. ``proj`` (the
    embedding head) has no timm counterpart and is left to the caller."""
    _require_timm_clip_layout(sd)
    out = {
        "class_embedding": sd["cls_token"].reshape(-1),
        "conv1.weight": sd["patch_embed.proj.weight"],
        "positional_embedding": sd["pos_embed"][0],
    }
    parts = {
        "norm1": "ln_1",
        "norm2": "ln_2",
        "attn.qkv": "attn.in_proj",
        "attn.proj": "attn.out_proj",
        "mlp.fc1": "mlp.c_fc",
        "mlp.fc2": "mlp.c_proj",
    }
    for k, v in sd.items():
        head, _, leaf = k.rpartition(".")
        if head in ("norm_pre", "norm"):
            out[f"{'ln_pre' if head == 'norm_pre' else 'ln_post'}.{leaf}"] = v
            continue
        m = _TIMM_BLOCK_KEY.fullmatch(k)
        if m is None:
            continue
        name = parts[m[2]]
        # nn.MultiheadAttention names its fused projection in_proj_weight / in_proj_bias
        out[f"transformer.resblocks.{m[1]}.{name}{'_' if name == 'attn.in_proj' else '.'}{m[3]}"] = v
    return out


def timm_siglip_to_hf_siglip(sd: dict[str, torch.Tensor], siglip2: bool = False) -> dict[str, torch.Tensor]:
    """timm SigLIP-layout ViT (no CLS, no LayerScale, an attention-pool ``attn_pool`` head) state
    dict -> the keys of transformers' ``SiglipVisionModel`` tower (``vision_model``'s): fused qkv
    split, the head's ``q`` and ``kv`` fused into ``nn.MultiheadAttention``'s ``in_proj`` (rows q,
    k, v in both), ``latent`` -> ``probe``. The same function on the same normalised pixels: timm's
    ``norm`` is ``post_layernorm``, and both heads read the normed tokens. ``siglip2``: SigLIP2's
    patch embedding is a Linear over each patch flattened as (row, column, channel)."""
    if "cls_token" in sd or "attn_pool.latent" not in sd or any(k.endswith("gamma") for k in sd):
        raise WeightsError("not a timm SigLIP-layout model (no class token, an attention-pool head, no LayerScale)")
    patch = sd["patch_embed.proj.weight"]
    out = {
        "embeddings.patch_embedding.weight": patch.permute(0, 2, 3, 1).flatten(1) if siglip2 else patch,
        "embeddings.patch_embedding.bias": sd["patch_embed.proj.bias"],
        "embeddings.position_embedding.weight": sd["pos_embed"][0],
        "head.probe": sd["attn_pool.latent"],
        "head.attention.in_proj_weight": torch.cat([sd["attn_pool.q.weight"], sd["attn_pool.kv.weight"]]),
        "head.attention.in_proj_bias": torch.cat([sd["attn_pool.q.bias"], sd["attn_pool.kv.bias"]]),
    }
    head = {"attn_pool.proj": "head.attention.out_proj", "attn_pool.norm": "head.layernorm", "norm": "post_layernorm"}
    head |= {"attn_pool.mlp.fc1": "head.mlp.fc1", "attn_pool.mlp.fc2": "head.mlp.fc2"}
    for k, v in sd.items():
        module, _, leaf = k.rpartition(".")
        if module in head:
            out[f"{head[module]}.{leaf}"] = v
        else:
            _timm_block_to_hf_encoder(k, v, out)
    return out


def timm_to_official_dinov3(sd: dict[str, torch.Tensor], extras: dict[str, torch.Tensor], num_heads: int) -> dict[str, torch.Tensor]:
    """timm Eva DINOv3 state dict -> Meta's DINOv3 layout (``dinov3/models/vision_transformer.py``),
    the inverse of what timm's ``checkpoint_filter_fn`` does on load: ``storage_tokens``,
    ``ls1.gamma``, one ``qkv.bias`` with its k part masked by ``bias_mask``, SwiGLU as ``w1/w2/w3``.

    ``extras`` are the checkpoint's tensors that timm drops on load (``rope_embed.periods``,
    ``mask_token``, the ``bias_mask``s, the k part of each qkv bias, the 7B's ``local_cls_norm``):
    written back as they were. Without them (a model built untrained) they are made as Meta's code
    initialises them: RoPE periods 100^(2i/(D_head/2)), a zero mask token, k biases masked to 0."""
    swiglu = any(k.endswith("mlp.fc1_g.weight") for k in sd)
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k.endswith("attn.v_bias"):
            continue
        if k.endswith("attn.q_bias"):
            qkv = k.replace("q_bias", "qkv.bias")
            old = extras.get(qkv)
            k_part = old[v.shape[0] : 2 * v.shape[0]] if old is not None else torch.zeros_like(v)
            out[qkv] = torch.cat([v, k_part, sd[k.replace("q_bias", "v_bias")]])
            continue
        k = k.replace("gamma_1", "ls1.gamma").replace("gamma_2", "ls2.gamma").replace("reg_token", "storage_tokens")
        if swiglu:
            k = k.replace("mlp.fc1_g.", "mlp.w1.").replace("mlp.fc1_x.", "mlp.w2.").replace("mlp.fc2.", "mlp.w3.")
        out[k] = v
    out.update({k: v for k, v in extras.items() if k not in out})
    dim = sd["cls_token"].shape[-1]
    if "rope_embed.periods" not in out:
        quarter = dim // num_heads // 4
        out["rope_embed.periods"] = 100.0 ** (2 * torch.arange(quarter, dtype=torch.float32) / (2 * quarter))
    out.setdefault("mask_token", torch.zeros(1, dim, dtype=sd["cls_token"].dtype))
    for qkv in [k for k in out if k.endswith("attn.qkv.bias")]:
        if qkv.replace("bias", "bias_mask") not in out:
            mask = torch.ones(3 * dim, dtype=out[qkv].dtype)
            mask[dim : 2 * dim] = 0
            out[qkv.replace("bias", "bias_mask")] = mask
    return out
