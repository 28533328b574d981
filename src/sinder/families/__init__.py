"""One module per model family; each calls :func:`sinder.backbones.registry.register_family` at import.

:mod:`sinder.backbones` imports this package when it loads (as timm's ``models/__init__.py``
imports every model module), so every family below is registered before any spec is parsed. To
add a family, add a module that registers a :class:`~sinder.backbones.registry.Family` and list it
here; import transformers/timm only inside its functions, so loading the families stays cheap.
"""

from . import dinov2, dinov3, hf, open_clip, planted, timm

__all__ = ["dinov2", "dinov3", "hf", "open_clip", "planted", "timm"]
