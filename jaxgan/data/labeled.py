"""A TFDS image split read whole into memory, with its labels: what evaluation compares against.

Training streams its data; evaluation needs a fixed set of real images (for feature statistics)
and their labels (to fit the classifier behind "classifier FID" and mode counting). Images stay
uint8 ``[N, H, W, C]`` here; :func:`to_float` maps them to the GAN's [-1, 1].
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxgan.data.checks import DataError


@dataclasses.dataclass(frozen=True)
class LabeledImages:
    """``images: uint8 [N, H, W, C]``, ``labels: int32 [N]``, and the number of classes."""

    name: str
    split: str
    images: np.ndarray
    labels: np.ndarray
    num_classes: int


def to_float(images: np.ndarray) -> np.ndarray:
    """uint8 ``[0, 255]`` -> float32 ``[-1, 1]`` (``x / 127.5 - 1``)."""
    return images.astype(np.float32) / 127.5 - 1.0


def resize_uint8(images: np.ndarray, size: int) -> np.ndarray:
    """Square-resize uint8 images ``[N, H, W, C]`` to ``size`` (bilinear, antialiased)."""
    if images.shape[1:3] == (size, size):
        return images
    import jax
    import jax.numpy as jnp

    out = jax.image.resize(jnp.asarray(images, jnp.float32), (images.shape[0], size, size, images.shape[3]),
                           method="bilinear", antialias=True)
    return np.asarray(jnp.clip(jnp.round(out), 0, 255)).astype(np.uint8)


def not_prepared_message(name: str, data_dir: str | None) -> str:
    where = data_dir or "TFDS's default data_dir (~/tensorflow_datasets or $TFDS_DATA_DIR)"
    return (
        f"TFDS dataset {name!r} is not prepared in {where}: build it where there is a network with "
        f"`tfds build {name} --data_dir DIR` and pass data_dir=DIR, or use the offline digits "
        "(`python -m jaxgan.data.sklearn_digits DIR`, then dataset sklearn_digits)"
    )


def load(name: str, *, split: str = "train", data_dir: str | None = None, limit: int | None = None,
         image_size: int | None = None) -> LabeledImages:
    """The first ``limit`` examples (all when None) of TFDS split ``name/split`` with labels."""
    import tensorflow_datasets as tfds

    from jaxgan.data import sklearn_digits  # noqa: F401  (registers the offline builder)

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise DataError(f"there is no TFDS dataset named {name!r}: check the name (e.g. mnist, cifar10, "
                        "sklearn_digits)") from None
    features = builder.info.features
    if "image" not in features or "label" not in features:
        raise DataError(f"TFDS dataset {name!r} has no image and label features (it has "
                        f"{sorted(features.keys())}): evaluation's classifier needs labelled images")
    num_classes = int(features["label"].num_classes)
    part = split if limit is None else f"{split}[:{int(limit)}]"
    try:
        ds = builder.as_dataset(split=part, shuffle_files=False)
    except AssertionError as err:
        if "could not find data" in str(err):
            raise DataError(not_prepared_message(name, data_dir)) from None
        raise
    except ValueError as err:  # an unknown split
        raise DataError(f"TFDS dataset {name!r} has no split {split!r} ({err})") from None
    images, labels = [], []
    for batch in tfds.as_numpy(ds.batch(4096)):
        images.append(np.asarray(batch["image"]))
        labels.append(np.asarray(batch["label"]))
    if not images:
        raise DataError(f"TFDS split {name}/{part} is empty: evaluation needs real examples")
    out = np.concatenate(images)
    if out.ndim == 3:
        out = out[..., None]
    if image_size is not None:
        out = resize_uint8(out, image_size)
    return LabeledImages(name, split, out, np.concatenate(labels).astype(np.int32), num_classes)
