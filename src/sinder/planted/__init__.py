"""The built-in model with planted singular defects (``planted:small``): a test fixture for the
whole pipeline, built with the theory from a seed. See :mod:`sinder.planted.model`."""
from .model import PRESETS, TIMM_NAME, PlantedConfig, build_planted, load_planted

__all__ = ["PRESETS", "TIMM_NAME", "PlantedConfig", "build_planted", "load_planted"]
