"""Adapters over transformers' contrastive vision towers: CLIP (``CLIPVisionModel``, the vision tower
of ``CLIPModel`` / ``CLIPVisionModelWithProjection``), SigLIP (``SiglipVisionModel``, the vision
tower of ``SiglipModel``) and SigLIP2 (``Siglip2VisionModel``, ``Siglip2Model``) at a fixed
resolution.

What sets them apart from the DINO families (``hf_vit.py``), read from the installed source:

* no LayerScale (γ = 1 in the view); blocks ``layer_norm1/self_attn(q,k,v,out_proj)/layer_norm2/
  mlp(fc1,fc2)``, QuickGELU (OpenAI CLIP), GELU or tanh-GELU (SigLIP);
* CLIP has a CLS token and a norm *before* the blocks (``pre_layrnorm``, part of :meth:`embed`);
  its ``post_layernorm`` is sinder's final norm (transformers applies it to the pooled CLS only);
* SigLIP has no CLS token (an attention-pooling head reads the final-normed patch tokens), so
  every token is a patch token and the pooled output takes the CLS token's place in the metrics.

* SigLIP2 is SigLIP fed patch sequences (NaFlex): :meth:`embed` cuts the image into patches as
  its image processor does (row-major, channel-last within a patch) and gives the grid as its
  ``spatial_shapes``; every image of a batch has the same grid, so no padding mask is needed.

CLIP and SigLIP resample their positional embeddings for other grids (``interpolate_pos_encoding``),
SigLIP2 for every grid. Older
transformers 5.x releases nest the transformer one level deeper (``CLIPVisionModel.vision_model``);
:func:`vision_tower` finds it either way. A repair edits the user's module; export saves the
whole of it (``save_pretrained``), so a ``CLIPModel`` folder keeps its text tower.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ModelSpecError
from .base import Backbone, TokenContext
from .hf_vit import HF_ACTIVATIONS, _square
from .view import BlockView, LinearSlice

CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)


def vision_tower(model: nn.Module) -> nn.Module:
    """The module holding ``embeddings`` and ``encoder`` (the model itself, or its ``vision_model``)."""
    tower = model
    while not hasattr(tower, "encoder") and hasattr(tower, "vision_model"):
        tower = tower.vision_model
    return tower


def tower_kind(model: nn.Module) -> str | None:
    """``clip`` or ``siglip`` for the models this adapter serves, None for others."""
    import transformers

    clip = tuple(
        getattr(transformers, n) for n in ("CLIPModel", "CLIPVisionModel", "CLIPVisionModelWithProjection") if hasattr(transformers, n)
    )
    siglip = tuple(getattr(transformers, n) for n in ("SiglipModel", "SiglipVisionModel") if hasattr(transformers, n))
    siglip2 = tuple(getattr(transformers, n) for n in ("Siglip2Model", "Siglip2VisionModel") if hasattr(transformers, n))
    for kind, classes in (("clip", clip), ("siglip2", siglip2), ("siglip", siglip)):
        if isinstance(model, classes):
            return kind
    return None


def to_patches(pixels: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, h·w, p·p·C): SigLIP2's patch sequence (``convert_image_to_patches``)."""
    b, c, h, w = pixels.shape
    x = pixels[:, :, : h // patch * patch, : w // patch * patch].reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), patch * patch * c)


class HFTowerBackbone(Backbone):
    """CLIP, SigLIP and SigLIP2 vision towers of transformers (module doc)."""

    family = "hf"

    def __init__(self, model: nn.Module, spec: str, family: str = "hf") -> None:
        kind = tower_kind(model)
        if kind is None:
            raise ModelSpecError(f"{spec}: {type(model).__name__} is not a CLIP, SigLIP or SigLIP2 model")
        self.kind, self.model, self.spec, self.family = kind, model, spec, family
        self.tower = vision_tower(model)
        cfg = self.tower.config
        cfg = getattr(cfg, "vision_config", cfg)
        self.layers = self.tower.encoder.layers
        self.patch_size = _square(cfg.patch_size)
        self.embed_dim = cfg.hidden_size
        self.depth = cfg.num_hidden_layers
        if kind == "siglip2":  # no image size, a patch budget: its square grid is the native one
            self.image_size = int(round(cfg.num_patches**0.5)) * self.patch_size
        else:
            self.image_size = _square(cfg.image_size)
        self.num_heads = cfg.num_attention_heads
        self.has_cls_token = kind == "clip"
        self.num_prefix_tokens = 1 if self.has_cls_token else 0
        self.mean, self.std = (CLIP_MEAN, CLIP_STD) if kind == "clip" else (SIGLIP_MEAN, SIGLIP_STD)  # SigLIP2: SigLIP's
        if cfg.hidden_act not in HF_ACTIVATIONS:
            raise ModelSpecError(f"{spec}: unsupported MLP activation {cfg.hidden_act!r}; sinder handles GELU, tanh-GELU and QuickGELU")
        self.activation = HF_ACTIVATIONS[cfg.hidden_act]
        prefix = next(n for n, m in model.named_modules() if m is self.layers)
        self._layer_prefix = prefix

    def blocks(self) -> list[nn.Module]:
        return list(self.layers)

    def block_view(self, index: int) -> BlockView:
        layer = self.layers[index]
        p = f"{self._layer_prefix}.{index}"
        attn, mlp = layer.self_attn, layer.mlp
        return BlockView(
            norm1=layer.layer_norm1,
            q=LinearSlice(attn.q_proj, f"{p}.self_attn.q_proj"),
            k=LinearSlice(attn.k_proj, f"{p}.self_attn.k_proj"),
            v=LinearSlice(attn.v_proj, f"{p}.self_attn.v_proj"),
            proj=LinearSlice(attn.out_proj, f"{p}.self_attn.out_proj"),
            ls1=None,
            norm2=layer.layer_norm2,
            mlp_in=(LinearSlice(mlp.fc1, f"{p}.mlp.fc1"),),
            activation=self.activation,
            mlp_out=LinearSlice(mlp.fc2, f"{p}.mlp.fc2"),
            ls2=None,
            num_heads=self.num_heads,
        )

    def embed(self, pixels: torch.Tensor) -> tuple[torch.Tensor, TokenContext]:
        grid = (pixels.shape[-2] // self.patch_size, pixels.shape[-1] // self.patch_size)
        if self.kind == "siglip2":
            x = self.tower.embeddings(to_patches(pixels, self.patch_size), self._shapes(pixels, grid))
            return x, TokenContext(grid=grid)
        x = self.tower.embeddings(pixels, interpolate_pos_encoding=True)
        if self.kind == "clip":
            x = self.tower.pre_layrnorm(x)
        return x, TokenContext(grid=grid)

    @staticmethod
    def _shapes(pixels: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        return torch.tensor([grid] * pixels.shape[0], dtype=torch.long, device=pixels.device)

    def run_block(self, index: int, x: torch.Tensor, ctx: TokenContext) -> torch.Tensor:
        out = self.layers[index](x, attention_mask=None)
        return out[0] if isinstance(out, tuple) else out  # older releases return a tuple

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.tower.post_layernorm(x)

    def pooled(self, final: torch.Tensor, ctx: TokenContext) -> torch.Tensor:
        """SigLIP's attention-pooling head when it has one (``vision_use_head``); CLS for CLIP."""
        head = getattr(self.tower, "head", None) if self.kind != "clip" else None
        return head(final) if head is not None else super().pooled(final, ctx)

    def model_forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.kind == "siglip2":
            patches = to_patches(pixels, self.patch_size)
            grid = (pixels.shape[-2] // self.patch_size, pixels.shape[-1] // self.patch_size)
            mask = torch.ones(patches.shape[:2], dtype=torch.long, device=pixels.device)
            return self.tower(pixel_values=patches, pixel_attention_mask=mask, spatial_shapes=self._shapes(pixels, grid)).last_hidden_state
        out = self.tower(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state
        # CLIP's last_hidden_state is not normed (its post_layernorm goes to the pooled CLS only); SigLIP's is
        return self.tower.post_layernorm(out) if self.kind == "clip" else out
