"""A real digit dataset that needs no network: scikit-learn's 1,797 handwritten digits as TFDS.

scikit-learn ships the UCI optical-recognition digits (8x8, 17 grey levels, 10 classes) inside
its wheel. This builder scales each digit to 20x20 (bilinear) and centres it in a 28x28 frame,
as MNIST centres its 20x20 digits, so code written for ``mnist`` (28x28x1 uint8, ``label``)
runs on it unchanged. Splits: ``test`` holds every 6th example (300), ``train`` the other 1,497.

Prepare it once into a ``data_dir`` (needs scikit-learn, installed with the ``test`` extra)::

    python -m jaxgan.data.sklearn_digits DATA_DIR

then ``tfds.load("sklearn_digits", data_dir=DATA_DIR)`` (or ``dataset=sklearn_digits``) reads it.
Importing this module registers the builder with TFDS.
"""

from __future__ import annotations

import sys
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds

NAME = "sklearn_digits"
IMAGE_SHAPE = (28, 28, 1)


def digit_images() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits as uint8 ``[N, 28, 28, 1]`` (MNIST's layout) and labels ``[N]``."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError(
            "the sklearn_digits dataset is built from scikit-learn's digits: pip install scikit-learn "
            "(it comes with jaxgan's test extra)"
        ) from None
    import jax
    import jax.numpy as jnp

    digits = load_digits()
    small = digits.images.astype(np.float32) / 16.0  # [N, 8, 8] in [0, 1]
    big = jax.image.resize(jnp.asarray(small), (small.shape[0], 20, 20), method="bilinear")
    framed = np.zeros((small.shape[0], 28, 28), np.float32)
    framed[:, 4:24, 4:24] = np.clip(np.asarray(big), 0.0, 1.0)
    images = np.round(framed * 255.0).astype(np.uint8)[..., None]
    return images, digits.target.astype(np.int64)


def split_indices(n: int) -> dict[str, np.ndarray]:
    test = np.arange(0, n, 6)
    return {"train": np.setdiff1d(np.arange(n), test), "test": test}


class SklearnDigits(tfds.core.GeneratorBasedBuilder):
    """scikit-learn's handwritten digits, framed like MNIST (28x28x1 uint8, 10 classes)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "8x8 digits scaled to 20x20 and centred in 28x28."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=IMAGE_SHAPE),
                "label": tfds.features.ClassLabel(num_classes=10),
            }),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        images, labels = digit_images()
        return {
            split: self._generate_examples(images[idx], labels[idx], idx)
            for split, idx in split_indices(len(images)).items()
        }

    def _generate_examples(self, images, labels, ids):
        for image, label, i in zip(images, labels, ids, strict=True):
            yield int(i), {"image": image, "label": int(label)}


def prepare(data_dir: str) -> str:
    """Build the dataset into ``data_dir`` (no network); returns the dataset's directory."""
    builder = SklearnDigits(data_dir=data_dir)
    builder.download_and_prepare()
    return builder.data_dir


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m jaxgan.data.sklearn_digits DATA_DIR")
    print(f"prepared {NAME} in {prepare(sys.argv[1])}")
