"""Small TFDS datasets built offline for the tests (GeneratorBasedBuilders, prepared through
TFDS itself into a temporary data_dir; a later process reads them back with
``tfds.builder(name, data_dir=...)`` without this module).

* ``jaxgan_test_digits``: scikit-learn's 1,797 handwritten digits (8x8, 0..16 scaled to uint8),
  real images that need no download.
* ``jaxgan_test_rects``: 40 non-square 12x8x3 images whose red channel is the example's index
  (to follow examples through shuffling) and whose other channels encode row and column (to
  check the central crop).
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

RECTS = 40


def digits_images() -> tuple[np.ndarray, np.ndarray]:
    """The digits as uint8 ``[1797, 8, 8, 1]`` and their labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None], d.target


def rect_image(i: int) -> np.ndarray:
    rows, cols = np.meshgrid(np.arange(12), np.arange(8), indexing="ij")
    return np.stack([np.full((12, 8), i), rows * 20, cols * 30], -1).astype(np.uint8)


class JaxganTestDigits(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {"image": tfds.features.Image(shape=(8, 8, 1)), "label": tfds.features.ClassLabel(num_classes=10)}
            ),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        images, labels = digits_images()
        for i, (img, y) in enumerate(zip(images, labels, strict=True)):
            yield i, {"image": img, "label": int(y)}


class JaxganTestRects(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self, features=tfds.features.FeaturesDict({"picture": tfds.features.Image(shape=(12, 8, 3))})
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i in range(RECTS):
            yield i, {"picture": rect_image(i)}


def prepare(data_dir: str) -> str:
    """Build both datasets into ``data_dir`` (no network)."""
    for cls in (JaxganTestDigits, JaxganTestRects):
        cls(data_dir=data_dir).download_and_prepare()
    return data_dir
