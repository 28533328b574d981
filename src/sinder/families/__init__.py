"""One module per model family; each calls :func:`sinder.backbones.registry.register_family` at import.

The registry imports every module here (names starting with ``_`` excepted) the first time it is
asked. To add a family, add a module that registers a :class:`~sinder.backbones.registry.Family`;
import transformers/timm only inside its functions, so listing the families stays cheap.
"""
