"""Tiny transformers CLIP / SigLIP models (random init) shared by the backbone, export and API tests."""

from __future__ import annotations


def tower_config(kind: str, **kw):
    """A tiny vision config: ``clip`` (QuickGELU, CLS, pre-norm), ``siglip`` (no CLS, attention-pool
    head, tanh-GELU), ``siglip2`` (SigLIP on patch sequences), or ``clip_model`` (a whole CLIPModel
    with a tiny text tower)."""
    from transformers import CLIPConfig, CLIPTextConfig, CLIPVisionConfig, Siglip2VisionConfig, SiglipVisionConfig

    common = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, image_size=64, patch_size=16) | kw
    if kind == "siglip":
        return SiglipVisionConfig(**common)
    if kind == "siglip2":  # a patch budget instead of an image size: 16 patches = a 4×4 grid
        side = common.pop("image_size") // common["patch_size"]
        return Siglip2VisionConfig(num_patches=side * side, **common)
    vision = CLIPVisionConfig(hidden_act="quick_gelu", **common)
    if kind == "clip":
        return vision
    text = CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    return CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict())


def tower_model(kind: str, **kw):
    """The transformers model of :func:`tower_config` (``CLIPVisionModel``, ``SiglipVisionModel``, ``CLIPModel``)."""
    import transformers

    cfg = tower_config(kind, **kw)
    return getattr(transformers, type(cfg).__name__.replace("Config", "Model"))(cfg)
