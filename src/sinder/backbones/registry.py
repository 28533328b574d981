"""Model families by name, in the style of timm's ``register_model``.

A family knows how to load a spec ``<name>:<rest>``, write a backbone's weights in its own format
and load them back. Each lives in one module of :mod:`sinder.families` that calls
:func:`register_family` at import; :mod:`sinder.backbones` imports them all when it loads, so
adding a family means adding one module there (and its name to that package's import list).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

from ..errors import ModelSpecError

if TYPE_CHECKING:
    from .base import Backbone


@dataclass(frozen=True)
class Family:
    """One model family.

    name: the spec prefix (``timm`` in ``timm:NAME``) and the value of ``Backbone.family``.
    spec_help: how to write its specs, shown in errors and help (``timm:NAME[.TAG]``).
    load(name, spec, weights=..., random_init=...): build the backbone for ``<family>:<name>``;
        ``weights`` is a checkpoint path or None, ``random_init`` asks for untrained weights.
    save(backbone, folder, overwrite): write the weights in this family's own format under the
        existing ``folder``, atomically, refusing existing files unless ``overwrite``; returns
        the path to pass to ``reload``.
    reload(backbone, path): what ``save`` wrote, loaded as a fresh backbone (CPU, float32).
    key_maps: state-dict key conversions from this family's layout to others, by target name
        (e.g. ``{"official": timm_to_official_dinov2}``).
    order: position in listings (lower first); ties go by name.
    """

    name: str
    spec_help: str
    load: Callable[..., Backbone]
    save: Callable[[Backbone, Path, bool], Path]
    reload: Callable[[Backbone, Path], Backbone]
    key_maps: Mapping[str, Callable[[dict], dict]] = field(default_factory=dict)
    order: int = 100

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"family name must be an identifier (it prefixes specs as NAME:...), got {self.name!r}")
        object.__setattr__(self, "key_maps", MappingProxyType(dict(self.key_maps)))


_FAMILIES: dict[str, Family] = {}


def register_family(family: Family, *, replace: bool = False) -> Family:
    """Make ``family`` known; a second family under the same name is refused unless ``replace``."""
    old = _FAMILIES.get(family.name)
    if old is not None and old is not family and not replace:
        raise ValueError(f"model family {family.name!r} is already registered; pass replace=True to override it")
    _FAMILIES[family.name] = family
    return family


def families() -> list[Family]:
    """Every registered family, in listing order."""
    return sorted(_FAMILIES.values(), key=lambda f: (f.order, f.name))


def get_family(name: str) -> Family:
    """The family registered as ``name``; a one-line :class:`ModelSpecError` naming the known ones otherwise."""
    found = _FAMILIES.get(name)
    if found is None:
        known = ", ".join(f.name for f in families())
        raise ModelSpecError(f"unknown model family {name!r}; known families: {known}")
    return found
