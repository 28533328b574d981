"""Generated downstream-evaluation data: an ImageFolder k-NN layout of coloured images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = [(220, 40, 40), (40, 200, 60), (50, 60, 230)]  # one class each


def save(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def make_knn(root: Path, shuffle: bool = False, n_train: int = 8, n_val: int = 5, seed: int = 0) -> Path:
    """Class c = images of colour c (jittered, noisy). ``shuffle`` assigns train images to random classes."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for c, base in enumerate(COLOURS):
            for j in range(n):
                colour = np.clip(np.array(base) + rng.integers(-30, 31, 3), 0, 255)
                img = np.clip(colour + rng.normal(0, 8, (56, 56, 3)), 0, 255).astype(np.uint8)
                label = int(rng.integers(len(COLOURS))) if shuffle and split == "train" else c
                save(img, root / split / f"class{label}" / f"{c}_{j}.png")
    return root
