"""Build a planted-defect ViT from its config, and expose what was planted (its ground truth).

No DINOv2 weights can be downloaded offline, so sinder ships backbones whose defects arise the
way the paper describes: a few tokens are pushed along one direction u, and later blocks
amplify u, so G_i's top singular vector is u. Each zoo member plants them differently (see
:class:`~sinder.planted.config.PlantedConfig`), built from a seed in seconds with no files. All
are planted in timm's DINOv2 layout; ``hf_dinov2`` then becomes a transformers DINOv2, ``clip`` a
transformers CLIP tower, ``open_clip`` the same tower in an ``open_clip.CLIP``, ``siglip`` a timm
model in SigLIP's layout and ``hf_siglip`` the same as a transformers SigLIP tower, with the same
function, and ``dinov3`` timm's Eva with RoPE.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from ..backbones.base import Backbone
from ..backbones.hf_tower import HFTowerBackbone
from ..backbones.hf_vit import HFViTBackbone
from ..backbones.timm_loader import load_timm_state_dict, wrap_timm
from ..backbones.timm_vit import TimmViTBackbone
from ..backbones.weights import load_state_dict_checked, read_state_dict
from ..runtime import one_thread
from ..theory import defect_directions
from .circuits import (
    AMPLIFIER_UNITS,
    TEXTURE_FILTERS,
    Neurons,
    border_positions,
    clustered_positions,
    keep_quiet_,
    marker_positions,
    ordinary_linears,
    orthogonal_unit,
    place_markers,
    plant_amplifiers,
    plant_texture_detector,
    power_law_spectrum_,
)
from .config import ARCHITECTURES, PlantedConfig, preset

IGNITION_SHARPNESS = 4.0
TEXTURE_SCALE = 1.6  # patch-embedding gain of the texture filters: ⟨q_k, LN(x)⟩ ≈ the filter response
TEXTURE_GAIN = 1.0


@dataclass
class PlantedTruth:
    """What was planted: the defect direction ``u``, where and how it ignites."""

    config: PlantedConfig
    u: torch.Tensor  # the planted defect direction (unit)
    m: torch.Tensor  # the marker direction in the positional embedding
    positions: list[tuple[int, int]]  # marker (candidate) cells
    grid: int
    ignition_layer: int
    ignition_unit: int  # its fc1 row (the gate for SwiGLU); -1 when attention writes the defect

    ATTENTION_LEVEL = 0.5  # attention path: a token ignites where ⟨m, LN1(x)⟩ is above half a marker's

    @torch.no_grad()
    def ignition(self, backbone: Backbone, pixels: torch.Tensor) -> torch.Tensor:
        """(B, H, W) bool: the patch tokens whose ignition unit fires on ``pixels`` (attention path:
        whose marker reading at the ignition block is over half a full-strength marker's)."""
        if self.ignition_unit < 0:
            return self._marker_read(backbone, pixels)
        fc1 = backbone.block_view(self.ignition_layer).mlp_in[0].module  # the whole (fused) fc1: the unit is its row
        seen: list[torch.Tensor] = []
        hook = fc1.register_forward_hook(lambda mod, inp, out: seen.append(out[..., self.ignition_unit]))
        try:
            x, ctx = backbone.embed(pixels.to(backbone.device, backbone.dtype))
            for i in range(self.ignition_layer + 1):
                x = backbone.run_block(i, x, ctx)
        finally:
            hook.remove()
        pre = seen[-1][:, backbone.num_prefix_tokens :]
        return (pre > 0).reshape(pre.shape[0], *ctx.grid)

    @torch.no_grad()
    def _marker_read(self, backbone: Backbone, pixels: torch.Tensor) -> torch.Tensor:
        x, ctx = backbone.embed(pixels.to(backbone.device, backbone.dtype))
        for i in range(self.ignition_layer):
            x = backbone.run_block(i, x, ctx)
        read = backbone.block_view(self.ignition_layer).norm1(x)[:, backbone.num_prefix_tokens :] @ self.m.to(x)
        level = self.config.marker_norm / _token_std(self.config)
        return (read > self.ATTENTION_LEVEL * level).reshape(read.shape[0], *ctx.grid)


def build_planted(cfg: PlantedConfig) -> tuple[nn.Module, PlantedTruth]:
    """Return (timm model, ground truth). The seeded build runs in a forked RNG, so the caller's
    global torch RNG state is untouched. One thread: the build is hundreds of small ops, and the
    weights then do not depend on the machine's thread count."""
    with one_thread():
        return _build(cfg)


@torch.no_grad()
def _build(cfg: PlantedConfig) -> tuple[nn.Module, PlantedTruth]:
    import timm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = timm.create_model(
            cfg.build_name, pretrained=False, num_classes=0, img_size=cfg.img_size, dynamic_img_size=True, **cfg.build_kwargs
        )
    model.eval()
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    dim = model.embed_dim
    for blk in model.blocks:
        blk.ls1.gamma.fill_(cfg.layer_scale)
        blk.ls2.gamma.fill_(cfg.layer_scale)
    if cfg.spectrum_top:  # no random draws: the other members' weights stay bit-identical
        for weight in ordinary_linears(model):
            power_law_spectrum_(weight, cfg.spectrum_top, cfg.spectrum_decay)
    if model.cls_token is not None:
        model.cls_token.normal_(0.0, cfg.cls_std, generator=gen)
    model.pos_embed.normal_(0.0, cfg.pos_std, generator=gen)
    if getattr(model, "reg_token", None) is not None:
        model.reg_token.normal_(0.0, cfg.cls_std, generator=gen)
    u = orthogonal_unit(dim, torch.zeros(0, dim), gen)
    # A large component shared by all patch tokens, as real ViTs have: it keeps token norms (and
    # so LayerNorm's scaling) nearly content-independent.
    shared = orthogonal_unit(dim, u[None], gen)
    texture = orthogonal_unit(dim, torch.stack([u, shared]), gen)
    layer = cfg.ignition_layer
    keep_quiet_(model, torch.stack([u, texture]))
    stretched = _stretch(model, cfg.anisotropy, torch.stack([u, shared, texture]), gen)
    if cfg.early_feature and layer > 0:
        plant_amplifiers(model, 0, stretched[0], "pair", cfg.early_threshold, cfg.early_feature, stop=layer)
    model.patch_embed.proj.bias += cfg.shared_norm * shared
    if cfg.u_noise:  # a small, position- and content-dependent u component on every token
        noise = cfg.u_noise * _width_scale(cfg)  # the same size in LayerNorm units at every width
        model.pos_embed += noise * cfg.shared_norm * torch.randn(model.pos_embed.shape[:2], generator=gen)[..., None] * u
        model.patch_embed.proj.weight += torch.einsum(
            "d,chw->dchw", u, 0.3 * noise * torch.randn(model.patch_embed.proj.weight.shape[1:], generator=gen)
        )
    used = [u, shared, texture]
    if cfg.ignition == "content":
        q = plant_texture_detector(model, max(0, layer - 1), TEXTURE_SCALE, TEXTURE_GAIN, texture, gen)
        used += list(q)
    plant_amplifiers(model, layer + 1 if cfg.amplifier == "feedback" else layer, u, cfg.amplifier, cfg.amp_threshold, cfg.amp_gain)
    unit, m = _plant_ignition(model, cfg, u, texture, torch.stack(used), gen)
    if cfg.ignition_suppress:
        _suppress(model, cfg, unit, shared, m)
    grid = cfg.img_size // cfg.patch_size
    layout = {"interior": marker_positions, "border": border_positions, "clusters": clustered_positions}[cfg.marker_layout]
    positions = layout(grid, cfg.markers, gen)
    spread = 1.0 + cfg.strength_spread * (2 * torch.rand(len(positions), generator=gen) - 1)
    place_markers(model, m, positions, (cfg.marker_norm * spread).tolist())
    if cfg.layout == "dinov3":
        model = _to_dinov3_layout(model, cfg)
    elif cfg.layout == "hf_dinov2":
        model = _to_hf_dinov2(model, cfg)
    elif cfg.layout != "dinov2":
        model = _convert_layout(model, cfg)
    return model, PlantedTruth(cfg, u, m, positions, grid, layer, unit)


def _convert_layout(model: nn.Module, cfg: PlantedConfig) -> nn.Module:
    """The planted model in a layout without LayerScale: each γ folded into the projection it
    scales (the same function), and the layout's activation in place of GELU (QuickGELU for CLIP,
    tanh-GELU for SigLIP: each is h·s(h) with s(h) + s(−h) = 1, so the circuits' pairs
    act(h) − act(−h) = h stay exact). OpenAI CLIP's layout also moves the patch bias into the
    positional embedding (the same function) and puts a LayerNorm before the blocks whose scale is
    a patch token's LN divisor (so tokens enter at about their planted size). The ground truth is
    read from the converted model, so it stays exact; the circuits' levels move by the few percent
    the changes cost."""
    import timm

    state = model.state_dict()
    for i in range(len(model.blocks)):
        for ls, lin in (("ls1", "attn.proj"), ("ls2", "mlp.fc2")):
            gamma = state.pop(f"blocks.{i}.{ls}.gamma")
            state[f"blocks.{i}.{lin}.weight"] = gamma[:, None] * state[f"blocks.{i}.{lin}.weight"]
            state[f"blocks.{i}.{lin}.bias"] = gamma * state[f"blocks.{i}.{lin}.bias"]
    if cfg.layout in ("clip", "open_clip"):  # pre-norm ViTs have no patch-embedding bias: the same constant goes into every patch position
        state["pos_embed"][:, model.num_prefix_tokens :] += state.pop("patch_embed.proj.bias")
        state["norm_pre.weight"] = torch.full((model.embed_dim,), _token_std(cfg))
        state["norm_pre.bias"] = torch.zeros(model.embed_dim)
    converted = timm.create_model(
        cfg.timm_name, pretrained=False, num_classes=0, img_size=cfg.img_size, dynamic_img_size=True, **cfg.timm_kwargs
    )
    converted.load_state_dict(state, strict=True)
    if cfg.layout in ("clip", "hf_siglip", "hf_siglip2"):
        return _hf_tower(converted.eval(), cfg, cfg.layout.removeprefix("hf_"))
    return _to_open_clip(converted.eval(), cfg) if cfg.layout == "open_clip" else converted.eval()


def _to_dinov3_layout(model: nn.Module, cfg: PlantedConfig) -> nn.Module:
    """The planted 4-register model (patch 16) in DINOv3's layout: timm's Eva, whose attention
    rotates the patch tokens' queries and keys (RoPE), with the same weights under Eva's names
    (LayerScale γ as ``gamma_1``/``gamma_2``, the qkv bias as ``q_bias``/``v_bias``: the k bias is
    zero) and a learned absolute positional embedding for the markers (zero on CLS and registers).
    Not the same function: RoPE turns the random attention's mixing, and Eva's LayerNorm eps is
    1e-5; the circuits live in the MLPs, and the ground truth is read from the converted model."""
    import timm

    state = model.state_dict()
    dim, prefix = model.embed_dim, model.num_prefix_tokens
    out = {k: v for k, v in state.items() if not k.startswith("blocks.") and k != "pos_embed"}
    out["pos_embed"] = torch.cat([torch.zeros(1, prefix, dim), state["pos_embed"]], dim=1)  # DINOv2 reg4: patches only
    for k, v in state.items():
        if not k.startswith("blocks."):
            continue
        if k.endswith("attn.qkv.bias"):
            q, key_bias, v_bias = v.chunk(3)
            if key_bias.abs().max() > 0:
                raise ValueError("a k bias has no place in Eva's attention")
            out[k.replace("qkv.bias", "q_bias")], out[k.replace("qkv.bias", "v_bias")] = q, v_bias
        else:
            out[k.replace("ls1.gamma", "gamma_1").replace("ls2.gamma", "gamma_2")] = v
    eva = timm.create_model(cfg.timm_name, pretrained=False, num_classes=0, img_size=cfg.img_size, **cfg.timm_kwargs)
    eva.load_state_dict(out, strict=True)
    return eva.eval()


def _to_hf_dinov2(model: nn.Module, cfg: PlantedConfig) -> nn.Module:
    """The planted timm DINOv2 as a transformers ``Dinov2Model`` (``Dinov2WithRegistersModel`` with
    registers; SwiGLU for the giant layout): the same function, every tensor from the timm model
    through the official key layout (the maps ``dinov2:`` and ``hf:`` load checkpoints with)."""
    from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    from ..backbones.convert import official_dinov2_to_hf, timm_to_official_dinov2

    blk = model.blocks[0]
    kwargs = dict(
        hidden_size=model.embed_dim,
        num_hidden_layers=len(model.blocks),
        num_attention_heads=blk.attn.num_heads,
        mlp_ratio=4,  # with SwiGLU, HF takes 2/3 of it rounded up to 8: timm's giant hidden width
        image_size=cfg.img_size,
        patch_size=cfg.patch_size,
        layer_norm_eps=blk.norm1.eps,
        layerscale_value=cfg.layer_scale,
        use_swiglu_ffn=cfg.swiglu or cfg.size == "g",
    )
    config_cls, model_cls = (Dinov2WithRegistersConfig, Dinov2WithRegistersModel) if cfg.registers else (Dinov2Config, Dinov2Model)
    config = config_cls(**kwargs, **({"num_register_tokens": model.num_reg_tokens} if cfg.registers else {}))
    with torch.device("meta"):  # every tensor comes from the planted model
        hf = model_cls(config)
    hf.load_state_dict(official_dinov2_to_hf(timm_to_official_dinov2(model.state_dict())), strict=True, assign=True)
    return hf.eval()


def _renormalised_state(model: nn.Module, mean: tuple, std: tuple) -> dict[str, torch.Tensor]:
    """The timm model's state for a tower that normalises with ``mean``/``std`` (CLIP's, SigLIP's),
    not ImageNet's: the patch embedding is rescaled per input channel and the constant this leaves
    goes into the positional embedding of every patch (CLIP's patch embedding has no bias)."""
    from ..backbones.base import IMAGENET_MEAN, IMAGENET_STD

    state = {k: v.clone() for k, v in model.state_dict().items()}
    w = state["patch_embed.proj.weight"]
    m_in, s_in, m_new, s_new = (torch.tensor(t, dtype=w.dtype) for t in (IMAGENET_MEAN, IMAGENET_STD, mean, std))
    # W·(p − m)/s = (W·s_new/s)·(p − m_new)/s_new + W·(m_new − m)/s
    state["pos_embed"][0, model.num_prefix_tokens :] += torch.einsum("dchw,c->d", w, (m_new - m_in) / s_in)
    state["patch_embed.proj.weight"] = w * (s_new / s_in)[None, :, None, None]
    return state


def _hf_tower(model: nn.Module, cfg: PlantedConfig, kind: str) -> nn.Module:
    """The timm CLIP- or SigLIP-layout model as a transformers ``CLIPVisionModel``,
    ``SiglipVisionModel`` or ``Siglip2VisionModel`` (the SigLIP heads included): the same function
    of the raw pixels (:func:`_renormalised_state`)."""
    import transformers

    from ..backbones.convert import timm_clip_to_hf_clip, timm_siglip_to_hf_siglip
    from ..backbones.hf_tower import CLIP_MEAN, CLIP_STD, SIGLIP_MEAN, SIGLIP_STD, vision_tower

    clip, name = kind == "clip", {"clip": "CLIPVision", "siglip": "SiglipVision", "siglip2": "Siglip2Vision"}[kind]
    state = _renormalised_state(model, *((CLIP_MEAN, CLIP_STD) if clip else (SIGLIP_MEAN, SIGLIP_STD)))
    grid = cfg.img_size // cfg.patch_size
    size = {"num_patches": grid * grid} if kind == "siglip2" else {"image_size": cfg.img_size}  # SigLIP2: a patch budget
    config = getattr(transformers, f"{name}Config")(
        hidden_size=model.embed_dim,
        intermediate_size=model.blocks[0].mlp.fc1.out_features,
        num_hidden_layers=len(model.blocks),
        num_attention_heads=model.blocks[0].attn.num_heads,
        patch_size=cfg.patch_size,
        hidden_act="quick_gelu" if clip else "gelu_pytorch_tanh",
        layer_norm_eps=model.blocks[0].norm1.eps,
        **size,
    )
    with torch.random.fork_rng(devices=[]):  # its init is overwritten; the caller's RNG is left alone
        hf = getattr(transformers, f"{name}Model")(config)
    tower_state = timm_clip_to_hf_clip(state) if clip else timm_siglip_to_hf_siglip(state, siglip2=kind == "siglip2")
    vision_tower(hf).load_state_dict(tower_state, strict=True)
    return hf.eval()


def open_clip_config(cfg: PlantedConfig) -> dict:
    """The ``open_clip.CLIP(**config)`` arguments of an open_clip-layout member (JSON-able: its
    export records them). The image tower is the planted ViT's (timm's DINOv2 LayerNorm eps, 1e-6);
    the text tower is the smallest open_clip builds (a CLIP must have one), all zeros and never used."""
    arch = ARCHITECTURES[cfg.size][2]
    dim = arch["embed_dim"]
    vision = {
        "image_size": cfg.img_size,
        "patch_size": cfg.patch_size,
        "layers": arch["depth"],
        "width": dim,
        "head_width": dim // arch["num_heads"],
        "mlp_ratio": 4.0,
        "norm_kwargs": {"eps": 1e-6},
    }
    text = {"context_length": 4, "vocab_size": 8, "width": 8, "heads": 1, "layers": 1}
    return {"embed_dim": dim, "vision_cfg": vision, "text_cfg": text, "quick_gelu": True}


def _to_open_clip(model: nn.Module, cfg: PlantedConfig) -> nn.Module:
    """The timm CLIP-layout model as an ``open_clip.CLIP`` whose image tower (``nn.MultiheadAttention``
    blocks, ``ln_pre``, QuickGELU) is the same function of the raw pixels; ``proj`` is the identity,
    so the image embedding is the final-normed CLS token."""
    from ..backbones.convert import timm_clip_to_open_clip
    from ..backbones.openclip_vit import OPENAI_MEAN, OPENAI_STD
    from ..families.open_clip import import_open_clip

    open_clip = import_open_clip(f"planted:{cfg.layout}")
    with torch.random.fork_rng(devices=[]):
        clip = open_clip.CLIP(**open_clip_config(cfg)).eval()
    for p in clip.parameters():
        p.zero_()  # the text tower is never used (zero: no dependence on open_clip's init); the image tower is overwritten below
    state = timm_clip_to_open_clip(_renormalised_state(model, OPENAI_MEAN, OPENAI_STD))
    state["proj"] = torch.eye(model.embed_dim)
    clip.visual.load_state_dict(state, strict=True)
    return clip


def _plant_ignition(model, cfg: PlantedConfig, u, texture, used: torch.Tensor, gen: torch.Generator) -> tuple[int, torch.Tensor]:
    """``ignition_units`` units in each of the ``ignition_blocks`` blocks from the ignition block on:
    act(a(⟨m, LN⟩ − w·texture − t)) writes u. The first unit of the first block (the strongest) is
    the ground truth's ignition unit.

    Its threshold is so far above ordinary tokens that its Gaussian-expected slope (~1e-6 at the
    default margin) leaves the predicted directions alone; the marker m is chosen orthogonal to
    every predicted ν_i, so a repaired marker token does not look like a defect."""
    if cfg.ignition_path == "attention":
        return _plant_attention_ignition(model, cfg, u, used, gen)
    marker_level = cfg.marker_norm / _token_std(cfg)
    units_per_block = cfg.ignition_units
    margins = (
        [cfg.ignition_margin] if units_per_block == 1 else (cfg.ignition_margin * torch.linspace(1.25, 0.75, units_per_block)).tolist()
    )
    gain = cfg.ignition_gain / units_per_block if units_per_block > 1 else cfg.ignition_gain
    blocks = range(cfg.ignition_layer, min(cfg.depth, cfg.ignition_layer + cfg.ignition_blocks))
    # later blocks already hold their amplifier, so their unit comes after it; the first takes the
    # block's last unit as it always has (over a pair amplifier's + half: kept, for bit-identity;
    # a bounded amplifier, new, is not overwritten)
    first = AMPLIFIER_UNITS["bounded"] if cfg.amplifier == "bounded" else 0
    planted = [Neurons(model.blocks[b].mlp, taken=AMPLIFIER_UNITS[cfg.amplifier] if b > cfg.ignition_layer else first) for b in blocks]
    units = [
        [n.add(torch.zeros_like(u), IGNITION_SHARPNESS, -IGNITION_SHARPNESS * (marker_level - margin), u, gain) for margin in margins]
        for n in planted
    ]
    directions = defect_directions(TimmViTBackbone(model, "planted:build"))
    m = orthogonal_unit(model.embed_dim, torch.cat([used, directions]), gen)
    for margin, row in zip(margins, zip(*units)):
        read = m.clone()
        if cfg.ignition == "content":
            # a texture of ``texture_threshold`` cancels the margin: flatter patches ignite, harder the flatter
            read -= margin / _texture_level(cfg) * texture
        for b, unit in zip(blocks, row):
            model.blocks[b].mlp.fc1.weight[unit] = IGNITION_SHARPNESS * read
    return units[0][0], m


def _suppress(model, cfg: PlantedConfig, unit: int, shared: torch.Tensor, m: torch.Tensor) -> None:
    """Make the ignition unit also write −``ignition_suppress``·(shared_norm·shared + marker_norm·m)
    at a full-strength marker (activation ≈ a·margin): the defect token keeps little besides u."""
    fc2 = model.blocks[cfg.ignition_layer].mlp.fc2
    scaled = IGNITION_SHARPNESS * cfg.ignition_margin * cfg.layer_scale  # the unit's activation after LayerScale
    fc2.weight[:, unit] -= cfg.ignition_suppress * (cfg.shared_norm * shared + cfg.marker_norm * m) / scaled


SINK_LOGIT = 10.0  # every query's logit to the CLS sink; two marker tokens' logit is twice that


def _plant_attention_ignition(model, cfg: PlantedConfig, u, used: torch.Tensor, gen: torch.Generator) -> tuple[int, torch.Tensor]:
    """The last head of the ignition block writes u on the marker tokens; no MLP unit does.

    Its query and key read the marker m (dimension 0 of the head), so two marker tokens attend to
    each other with logit 2·SINK_LOGIT; its dimension 1 sends every query to a sink direction that
    only the CLS token carries (logit SINK_LOGIT), so ordinary tokens, with no m, look at CLS; the
    value reads m (zero on CLS) and the output writes u. m and the sink are kept out of every
    other writer. Returns (-1: no ignition unit, m)."""
    dim = model.embed_dim
    blk = model.blocks[cfg.ignition_layer]
    attn = blk.attn
    head = slice(dim - attn.head_dim, dim)
    for part in range(3):  # the head is ours alone
        attn.qkv.weight[part * dim :][head] = 0.0
        attn.qkv.bias[part * dim :][head] = 0.0
    attn.proj.weight[:, head] = 0.0
    directions = defect_directions(TimmViTBackbone(model, "planted:build"))
    m = orthogonal_unit(dim, torch.cat([used, directions]), gen)
    sink = orthogonal_unit(dim, torch.cat([used, directions, m[None]]), gen)
    keep_quiet_(model, torch.stack([m, sink]))
    model.cls_token[0, 0] += cfg.shared_norm * sink
    sink_level = _cls_level(model, cfg.ignition_layer, sink)
    marker_level = cfg.marker_norm / _token_std(cfg)
    scale = attn.head_dim**0.5  # timm scales q·k by head_dim^-1/2
    h0 = head.start  # the head's dimension 0 (rows of q, k, v: h0, dim + h0, 2·dim + h0; column h0 of proj)
    read = (2 * SINK_LOGIT * scale) ** 0.5 / marker_level
    attn.qkv.weight[h0] = read * m
    attn.qkv.weight[dim + h0] = read * m
    attn.qkv.bias[h0 + 1] = (SINK_LOGIT * scale / sink_level) ** 0.5
    attn.qkv.weight[dim + h0 + 1] = (SINK_LOGIT * scale / sink_level) ** 0.5 * sink
    # value · output = the u a full-strength marker gets, as an MLP ignition unit would write it
    written = (cfg.ignition_gain * torch.nn.functional.gelu(torch.tensor(IGNITION_SHARPNESS * cfg.ignition_margin)) / marker_level) ** 0.5
    attn.qkv.weight[2 * dim + h0] = written * m
    attn.proj.weight[:, h0] = written * u
    return -1, m


@torch.no_grad()
def _cls_level(model, layer: int, direction: torch.Tensor) -> float:
    """⟨direction, LN1(CLS)⟩ at the input of block ``layer`` on a mid-grey image."""
    backbone = TimmViTBackbone(model, "planted:build")
    x, ctx = backbone.embed(torch.zeros(1, 3, model.patch_embed.img_size[0], model.patch_embed.img_size[1]))
    for i in range(layer):
        x = backbone.run_block(i, x, ctx)
    return float(model.blocks[layer].norm1(x)[0, 0] @ direction)


STRETCHED = 16  # directions of the patch embedding that anisotropy stretches


def _stretch(model: nn.Module, factor: float, avoid: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Scale the patch embedding's output along a few random directions (orthogonal to ``avoid``); returns them."""
    w = model.patch_embed.proj.weight
    dirs = []
    for _ in range(STRETCHED if factor != 1 else 0):
        d = orthogonal_unit(w.shape[0], torch.cat([avoid, *[x[None] for x in dirs]]) if dirs else avoid, gen)
        dirs.append(d)
        comp = torch.einsum("d,dchw->chw", d, w)
        w += (factor - 1) * torch.einsum("d,chw->dchw", d, comp)
    return torch.stack(dirs) if dirs else torch.zeros(0, w.shape[0])


def _token_std(cfg: PlantedConfig) -> float:
    """LayerNorm's divisor for a patch token: the shared component dominates it."""
    dim = {"S": 384, "B": 768, "L": 1024, "g": 1536}[cfg.size]
    return (cfg.shared_norm**2 / dim + cfg.pos_std**2 + 0.35) ** 0.5


def _width_scale(cfg: PlantedConfig) -> float:
    """How much smaller a LayerNorm unit is at this width than at ViT-S's (1 at S): the planted
    levels are read through LayerNorm, so a component of fixed size reads larger in a wider model."""
    return _token_std(cfg) / _token_std(replace(cfg, size="S"))


def _texture_level(cfg: PlantedConfig) -> float:
    """⟨texture, LN(x)⟩ expected on a patch whose filter responses have std ``texture_threshold``."""
    z = torch.randn(200_000, generator=torch.Generator().manual_seed(0)) * 4.0 * cfg.texture_threshold
    pair = z * torch.erf(z / 2**0.5)  # gelu(z) + gelu(−z)
    return float(pair.mean()) * TEXTURE_FILTERS * cfg.layer_scale * TEXTURE_GAIN / _token_std(cfg)


def load_planted(name: str, spec: str, weights: str | Path | None = None) -> Backbone:
    """The ``planted:NAME[@SIZE]`` backbone; ``ground_truth`` is its :class:`PlantedTruth`."""
    cfg = preset(name, spec)
    model, truth = build_planted(cfg)
    if cfg.layout in ("clip", "hf_siglip", "hf_siglip2", "hf_dinov2"):  # a transformers model
        if weights is not None:
            load_state_dict_checked(model, read_state_dict(weights), spec)
        backbone: Backbone = (HFViTBackbone if cfg.layout == "hf_dinov2" else HFTowerBackbone)(model, spec, family="planted")
    elif cfg.layout == "open_clip":  # an open_clip CLIP: exported with the config that rebuilds it
        from ..backbones.openclip_vit import OpenCLIPBackbone

        if weights is not None:
            load_state_dict_checked(model, read_state_dict(weights), spec)
        backbone = OpenCLIPBackbone(model, spec, family="planted")
        backbone.timm_name, backbone.open_clip_config = None, open_clip_config(cfg)
    else:
        if weights is not None:
            load_timm_state_dict(model, read_state_dict(weights), spec)
        backbone = wrap_timm(model, spec, family="planted")
        backbone.timm_name, backbone.timm_kwargs = cfg.timm_name, cfg.timm_kwargs or None
    backbone.ground_truth = truth
    return backbone
