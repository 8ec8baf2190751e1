"""Small real datasets bundled with jneuron (no download at run time).

>>> d = load_digits()
>>> d.images.shape, d.labels.shape, int(d.labels.max())
((1797, 64), (1797,), 9)
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import numpy as np


@dataclass(frozen=True)
class Dataset:
    """Inputs ``images`` (samples, features) scaled to [0, 1] and integer ``labels``."""

    images: np.ndarray
    labels: np.ndarray

    def split(self, test_fraction: float = 0.25, seed: int = 0) -> tuple[Dataset, Dataset]:
        """A seeded random train/test split."""
        order = np.random.default_rng(seed).permutation(len(self.labels))
        cut = int(round(len(order) * (1 - test_fraction)))
        train, test = order[:cut], order[cut:]
        return Dataset(self.images[train], self.labels[train]), Dataset(self.images[test], self.labels[test])


def load_digits() -> Dataset:
    """The UCI 8x8 handwritten digits (1,797 images, 10 classes; E. Alpaydin, 1998; via scikit-learn)."""
    with resources.files("jneuron.data").joinpath("digits.npz").open("rb") as stream:
        data = np.load(stream)
        images, labels = data["images"], data["labels"]
    return Dataset(images.astype(np.float32) / 16.0, labels.astype(np.int32))
