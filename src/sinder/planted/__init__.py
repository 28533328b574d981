"""The zoo of models with planted singular defects (``planted:NAME[@SIZE]``): test fixtures for
the whole pipeline, each built from a seed in seconds, each exposing its ground truth.

``config`` holds the typed config and the presets, ``circuits`` the planted neurons, ``model``
the builder and :class:`PlantedTruth`.
"""

from .config import ARCHITECTURES, PRESETS, PlantedConfig, preset

_MODEL = ("PlantedTruth", "build_planted", "load_planted")


def __getattr__(name: str):
    """The builder on first use: naming the zoo (a spec parse, ``--help``) does not import it."""
    if name in _MODEL:
        from . import model

        return getattr(model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ARCHITECTURES", "PRESETS", "PlantedConfig", "PlantedTruth", "build_planted", "load_planted", "preset"]
