"""The one factory of tiny test ViTs: timm's ``VisionTransformer`` (patch 14) seeded, wrapped as a
sinder backbone, and :func:`liven` for random-init models whose blocks are near identity."""

from __future__ import annotations

import torch

from sinder.backbones.timm_vit import TimmViTBackbone


def tiny_vit(
    *,
    img_size: int = 56,
    dim: int = 48,
    depth: int = 2,
    heads: int = 3,
    mlp_ratio: float = 4.0,
    init_values: float | None = None,
    seed: int = 0,
    spec: str = "test:tiny",
    **kwargs,
) -> TimmViTBackbone:
    """A seeded tiny ViT (``kwargs`` go to ``VisionTransformer``: act_layer, mlp_layer, …)."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    model = VisionTransformer(
        img_size=img_size,
        patch_size=14,
        embed_dim=dim,
        depth=depth,
        num_heads=heads,
        mlp_ratio=mlp_ratio,
        init_values=init_values,
        num_classes=0,
        dynamic_img_size=True,
        **kwargs,
    )
    return TimmViTBackbone(model.eval(), spec)


def liven(model: torch.nn.Module) -> torch.nn.Module:
    """Random init leaves blocks near identity (LayerScale 1e-5, zero biases): make every weight matter."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("gamma", "gamma_1", "gamma_2", "lambda1")):
                p.copy_(0.3 + 0.1 * torch.rand(p.shape, generator=g))
            elif name.endswith(("bias", "q_bias", "v_bias", "cls_token", "reg_token", "register_tokens")):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()
