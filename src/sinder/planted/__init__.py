"""The zoo of models with planted singular defects (``planted:NAME[@SIZE]``): test fixtures for
the whole pipeline, each built from a seed in seconds, each exposing its ground truth.

``config`` holds the typed config and the presets, ``circuits`` the planted neurons, ``model``
the builder and :class:`PlantedTruth`.
"""

from .config import ARCHITECTURES, PRESETS, PlantedConfig, preset
from .model import PlantedTruth, build_planted, load_planted

__all__ = ["ARCHITECTURES", "PRESETS", "PlantedConfig", "PlantedTruth", "build_planted", "load_planted", "preset"]
