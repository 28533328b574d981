"""Bundled scikit-image photos written as files, for the tests that read folders."""

from __future__ import annotations

from pathlib import Path

from sinder.images import bundled_photos


def write_photos(folder: Path, names: tuple[str, ...], suffix: str = ".jpg") -> Path:
    """``folder`` (created) holding the named ``skimage.data`` photos as ``NAME{suffix}``."""
    folder.mkdir(parents=True, exist_ok=True)
    for src in bundled_photos(names):
        path = folder / f"{src.name.split(':')[1]}{suffix}"
        src.image.save(path, **({"quality": 92} if suffix == ".jpg" else {}))
    return folder
