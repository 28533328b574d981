"""Adapters over transformers 5.x ViTs: ``Dinov2Model``, ``Dinov2WithRegistersModel``, ``DINOv3ViTModel``.

transformers 5 names (read from the installed source): ``attention.q_proj/k_proj/v_proj/o_proj``,
``layer_scale1.lambda1``/``layer_scale2.lambda1``, MLP ``fc1``/``fc2`` (DINOv2), ``up_proj``/
``down_proj`` (DINOv3) or SwiGLU ``gate_proj``/``up_proj``/``down_proj``. DINOv3 applies RoPE
(``rope_embeddings``) to the patch tokens only; cls + register tokens are prefix tokens.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ModelSpecError
from .base import Backbone, TokenContext
from .view import BlockView, LinearSlice

# transformers' ACT2FN names -> the canonical vocabulary (ungated MLPs)
HF_ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_python": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "quick_gelu": "quick_gelu",
}


def _square(size) -> int:
    if isinstance(size, (list, tuple)):
        if size[0] != size[1]:
            raise ModelSpecError(f"non-square image_size {tuple(size)} is not supported")
        return int(size[0])
    return int(size)


def _eval_rope(rope: nn.Module, pixels: torch.Tensor):
    """DINOv3 RoPE with eval-mode coordinates: in train mode transformers jitters/rescales them at random
    (``pos_embed_rescale``), and SINDER needs the same positions at every step."""
    if not rope.training:
        return rope(pixels)
    rope.eval()
    try:
        return rope(pixels)
    finally:
        rope.train()


class HFViTBackbone(Backbone):
    """One adapter for the three HF DINO families; they differ only in embedding and RoPE."""

    family = "hf"

    def __init__(self, model: nn.Module, spec: str, family: str = "hf") -> None:
        from transformers import Dinov2Model, Dinov2WithRegistersModel, DINOv3ViTModel

        if isinstance(model, DINOv3ViTModel):
            self.kind = "dinov3"
            self.layers = model.model.layer
            self.num_prefix_tokens = 1 + model.config.num_register_tokens
        elif isinstance(model, Dinov2WithRegistersModel):
            self.kind = "dinov2"
            self.layers = model.encoder.layer
            self.num_prefix_tokens = 1 + model.config.num_register_tokens
        elif isinstance(model, Dinov2Model):
            self.kind = "dinov2"
            self.layers = model.encoder.layer
            self.num_prefix_tokens = 1
        else:
            raise ModelSpecError(
                f"{spec}: {type(model).__name__} is not supported; use Dinov2Model, Dinov2WithRegistersModel or DINOv3ViTModel"
            )
        cfg = model.config
        self.model = model
        self.spec = spec
        self.family = family
        self.patch_size = _square(cfg.patch_size)
        self.embed_dim = cfg.hidden_size
        self.depth = cfg.num_hidden_layers
        self.image_size = _square(cfg.image_size)
        self.has_cls_token = True
        self._layer_prefix = "model.layer" if self.kind == "dinov3" else "encoder.layer"
        self._mlp_activation(0)  # fail at load time, not at the first theory call

    def _mlp_activation(self, index: int) -> str:
        cfg = self.model.config
        mlp = self.layers[index].mlp
        if hasattr(mlp, "gate_proj"):
            act = "silu" if self.kind == "dinov2" else cfg.hidden_act  # HF DINOv2 SwiGLU hard-codes SiLU
            if act not in ("silu", "swish"):
                raise ModelSpecError(f"{self.spec}: gated MLP with {act!r}; only SiLU gates (SwiGLU) are supported")
            return "swiglu"
        if cfg.hidden_act not in HF_ACTIVATIONS:
            raise ModelSpecError(f"{self.spec}: unsupported MLP activation {cfg.hidden_act!r}; sinder handles GELU, QuickGELU and SwiGLU")
        return HF_ACTIVATIONS[cfg.hidden_act]

    def blocks(self) -> list[nn.Module]:
        return list(self.layers)

    def block_view(self, index: int) -> BlockView:
        layer = self.layers[index]
        p = f"{self._layer_prefix}.{index}"
        attn, mlp = layer.attention, layer.mlp
        act = self._mlp_activation(index)
        if act == "swiglu":
            mlp_in = (LinearSlice(mlp.gate_proj, f"{p}.mlp.gate_proj"), LinearSlice(mlp.up_proj, f"{p}.mlp.up_proj"))
            mlp_out = LinearSlice(mlp.down_proj, f"{p}.mlp.down_proj")
        elif hasattr(mlp, "fc1"):
            mlp_in = (LinearSlice(mlp.fc1, f"{p}.mlp.fc1"),)
            mlp_out = LinearSlice(mlp.fc2, f"{p}.mlp.fc2")
        else:
            mlp_in = (LinearSlice(mlp.up_proj, f"{p}.mlp.up_proj"),)
            mlp_out = LinearSlice(mlp.down_proj, f"{p}.mlp.down_proj")
        return BlockView(
            norm1=layer.norm1,
            q=LinearSlice(attn.q_proj, f"{p}.attention.q_proj"),
            k=LinearSlice(attn.k_proj, f"{p}.attention.k_proj"),
            v=LinearSlice(attn.v_proj, f"{p}.attention.v_proj"),
            proj=LinearSlice(attn.o_proj, f"{p}.attention.o_proj"),
            ls1=layer.layer_scale1.lambda1,
            norm2=layer.norm2,
            mlp_in=mlp_in,
            activation=act,
            mlp_out=mlp_out,
            ls2=layer.layer_scale2.lambda1,
            num_heads=self.model.config.num_attention_heads,
        )

    def embed(self, pixels: torch.Tensor) -> tuple[torch.Tensor, TokenContext]:
        m = self.model
        grid = (pixels.shape[-2] // self.patch_size, pixels.shape[-1] // self.patch_size)
        if self.kind == "dinov3":
            pixels = pixels.to(m.embeddings.patch_embeddings.weight.dtype)
            x = m.embeddings(pixels)
            return x, TokenContext(grid=grid, extras={"position_embeddings": _eval_rope(m.rope_embeddings, pixels)})
        return m.embeddings(pixels), TokenContext(grid=grid)

    def run_block(self, index: int, x: torch.Tensor, ctx: TokenContext) -> torch.Tensor:
        if self.kind == "dinov3":
            return self.layers[index](x, position_embeddings=ctx.extras["position_embeddings"])
        return self.layers[index](x)

    def rotary(self, q: torch.Tensor, k: torch.Tensor, ctx: TokenContext) -> tuple[torch.Tensor, torch.Tensor]:
        """transformers' own DINOv3 ``apply_rotary_pos_emb`` (patch tokens only)."""
        if self.kind != "dinov3":
            return q, k
        from transformers.models.dinov3_vit.modeling_dinov3_vit import apply_rotary_pos_emb

        cos, sin = ctx.extras["position_embeddings"]
        return apply_rotary_pos_emb(q, k, cos, sin)

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.norm(x) if self.kind == "dinov3" else self.model.layernorm(x)

    def model_forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixels).last_hidden_state
