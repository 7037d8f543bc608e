"""TFDS image datasets as a host-fed, position-keyed source (:mod:`jaxgan.data.host`).

``load_images(name, data_dir=..., image_size=N)`` reads one split of any TFDS dataset with an
``Image`` feature (mnist, fashion_mnist, cifar10, celeb_a, ...) through TFDS itself, decodes
it, crops it to the central square and resizes it to ``N x N`` (bilinear with antialiasing,
as torchvision's ``Resize`` + ``CenterCrop`` in the PyTorch DCGAN example), and keeps the
result as uint8 ``[num_examples, N, N, C]``. That array is written once to
``<data_dir>/jaxgan_cache/`` and memory-mapped by later runs, so a run starts in seconds and
needs no more RAM than the pages it touches (CelebA at 64 px is 2.5 GB on disk).

Batches are then a pure function of (seed, round) (shuffled epochs, repeated forever, sharded
per host by slot; see :mod:`jaxgan.data.host`), made on a background thread and prefetched to
the device; pixels become float32 in [-1, 1] inside the compiled step.

Nothing is downloaded unless asked (``download=True``): a dataset that is not prepared in
``data_dir`` raises :class:`~jaxgan.data.checks.DataError` naming the directory searched and
the commands that prepare it.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
import threading
import uuid
from typing import Any

import numpy as np

from jaxgan.data.checks import DataError
from jaxgan.data.host import IndexedImages, pixels_to_unit_range

CACHE_DIR = "jaxgan_cache"
_CACHE_FORMAT = 1  # bump when the preprocessing changes, so stale caches are not reused


def default_data_dir() -> str:
    """TFDS's default: ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``."""
    return os.environ.get("TFDS_DATA_DIR") or os.path.join(os.path.expanduser("~"), "tensorflow_datasets")


def _tf():
    """TensorFlow for tf.data only: it must not take an accelerator from JAX."""
    import tensorflow as tf

    try:
        tf.config.set_visible_devices([], "GPU")
        tf.config.set_visible_devices([], "TPU")
    except (RuntimeError, ValueError):  # already initialised, or no such device type
        pass
    return tf


def _builder(name: str, data_dir: str):
    import tensorflow_datasets as tfds

    try:
        return tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        base = name.split(":")[0].split("/")[0]
        close = difflib.get_close_matches(base, tfds.list_builders(), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise DataError(
            f"dataset={name!r} is neither a built-in dataset (ring8, grid25, gaussian1d, gaussian2d, random:HxWxC, "
            f"a .npy file) nor a TFDS dataset.{hint} See https://www.tensorflow.org/datasets/catalog"
        ) from None


def image_feature(builder) -> str:
    """The name of the dataset's image feature (``'image'`` when there is one)."""
    import tensorflow_datasets as tfds

    features = builder.info.features
    images = [k for k, f in features.items() if isinstance(f, tfds.features.Image)]
    if "image" in images:
        return "image"
    if len(images) == 1:
        return images[0]
    if not images:
        raise DataError(
            f"TFDS dataset {builder.name!r} has no image feature (features: {', '.join(features)}): "
            "jaxgan's image pipeline needs images"
        )
    raise DataError(f"TFDS dataset {builder.name!r} has several image features ({', '.join(images)}); "
                    "jaxgan uses a dataset with one")


def example_shape(builder, image_size: int) -> tuple[int, int, int]:
    """``(size, size, channels)`` after preprocessing, from the dataset's metadata alone."""
    shape = builder.info.features[image_feature(builder)].shape
    h, w, c = shape
    if c is None:
        raise DataError(f"TFDS dataset {builder.name!r} has images with an unknown channel count; not supported")
    channels = 3 if c == 4 else int(c)  # an alpha channel is dropped
    if image_size > 0:
        return (image_size, image_size, channels)
    if h is None or w is None or h != w:
        raise DataError(
            f"TFDS dataset {builder.name!r} has images of shape {shape}: set image_size=N to crop and resize "
            "them to N x N (e.g. image_size=64)"
        )
    return (int(h), int(w), channels)


def _not_prepared(name: str, data_dir: str, builder, why: str) -> DataError:
    return DataError(
        f"TFDS dataset {name!r} is not prepared in data_dir={data_dir!r} (looked for {builder.data_dir}; {why}). "
        f"Prepare it once with network access: `jaxgan train ... --set download=true data_dir={data_dir}`, or "
        f"`tfds build {builder.name} --data_dir={data_dir}`; or point data_dir= at a directory that holds it "
        "(manual-download datasets: see their TFDS catalog page)"
    )


def _read_split(builder, split: str, image_key: str, size: int, channels: int) -> np.ndarray:
    """The whole split through tf.data: decode, drop alpha, central square crop, resize."""
    tf = _tf()
    native = builder.info.features[image_key].shape
    identity = native[0] == native[1] == size and native[0] is not None

    def prep(example):
        img = example[image_key]
        if channels == 3 and native[2] == 4:
            img = img[..., :3]
        if identity:
            return img
        shape = tf.shape(img)
        h, w = shape[0], shape[1]
        side = tf.minimum(h, w)
        img = tf.image.crop_to_bounding_box(img, (h - side) // 2, (w - side) // 2, side, side)
        img = tf.image.resize(img, (size, size), method="bilinear", antialias=True)
        return tf.cast(tf.clip_by_value(tf.round(img), 0.0, 255.0), tf.uint8)

    ds = builder.as_dataset(split=split, shuffle_files=False)
    ds = ds.map(prep, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(1024).prefetch(2)
    parts = [np.asarray(b) for b in ds.as_numpy_iterator()]
    if not parts:
        raise DataError(f"split {split!r} of TFDS dataset {builder.name!r} is empty")
    return np.concatenate(parts).astype(np.uint8, copy=False)


def _cache_path(data_dir: str, full_name: str, split: str, size: int, channels: int) -> str:
    safe_split = re.sub(r"[^A-Za-z0-9_.+-]", "_", split)
    stem = f"{full_name.replace('/', '-')}-{safe_split}-{size}x{size}x{channels}-v{_CACHE_FORMAT}.npy"
    return os.path.join(data_dir, CACHE_DIR, stem)


def load_images(
    name: str,
    *,
    data_dir: str = "",
    split: str = "train",
    image_size: int = 0,
    seed: int = 0,
    download: bool = False,
    cache: bool = True,
    echo=None,
) -> IndexedImages:
    """One split of the TFDS dataset ``name`` as a position-keyed :class:`IndexedImages`."""
    echo = echo or (lambda msg: print(msg, file=sys.stderr))
    data_dir = os.path.abspath(os.path.expanduser(data_dir or default_data_dir()))
    builder = _builder(name, data_dir)
    key = image_feature(builder)
    size, _, channels = example_shape(builder, image_size)
    path = _cache_path(data_dir, builder.info.full_name, split, size, channels)
    info = {"tfds": builder.info.full_name, "split": split, "data_dir": data_dir}
    if cache and os.path.isfile(path):
        images = np.load(path, mmap_mode="r")
        return IndexedImages(images, seed=seed, name=name, info=info)

    def read():
        return _read_split(builder, split, key, size, channels)

    try:
        images = read()
    except AssertionError as err:  # TFDS: "Dataset ... could not find data in ..."
        if not download:
            raise _not_prepared(name, data_dir, builder, "download=false") from None
        echo(f"jaxgan: downloading and preparing TFDS dataset {name!r} into {data_dir}")
        try:
            builder.download_and_prepare()
        except Exception as dl_err:  # network, manual-download or disk errors: all end the same way
            why = f"download failed: {type(dl_err).__name__}: {str(dl_err).splitlines()[0][:200]}"
            raise _not_prepared(name, data_dir, builder, why) from None
        del err
        images = read()
    except ValueError as err:
        if "split" in str(err).lower():
            splits = ", ".join(builder.info.splits) or "see the catalog"
            raise DataError(f"data_split={split!r} is not a split of {name!r} ({splits}): {err}") from None
        raise
    if cache:
        _write_cache(path, images, echo)
    return IndexedImages(images, seed=seed, name=name, info=info)


def _write_cache(path: str, images: np.ndarray, echo) -> None:
    """Write atomically (temporary name, then rename); a read-only data_dir is not an error."""
    tmp = f"{path}.{uuid.uuid4().hex}.tmp.npy"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        np.save(tmp, images)
        os.replace(tmp, path)
    except OSError as err:
        echo(f"jaxgan: could not cache the preprocessed images in {os.path.dirname(path)} ({err}); "
             "keeping them in memory")
        if os.path.exists(tmp):
            os.remove(tmp)


class TFDSImages:
    """A TFDS image split as a :class:`~jaxgan.data.host.HostSource`, read lazily: building it
    reads only the dataset's metadata (the example shape); the images are loaded (or read from
    the cache) by :meth:`load`, or by the first batch asked for."""

    def __init__(self, name: str, *, data_dir: str = "", split: str = "train", image_size: int = 0,
                 seed: int = 0, download: bool = False, cache: bool = True):
        self.name, self.split, self.image_size, self.seed = name, split, int(image_size), int(seed)
        self.download, self.cache = bool(download), bool(cache)
        self.data_dir = os.path.abspath(os.path.expanduser(data_dir or default_data_dir()))
        builder = _builder(name, self.data_dir)
        self.example_shape = example_shape(builder, self.image_size)
        self._loaded: IndexedImages | None = None
        self._lock = threading.Lock()

    def load(self) -> IndexedImages:
        with self._lock:
            if self._loaded is None:
                self._loaded = load_images(
                    self.name, data_dir=self.data_dir, split=self.split, image_size=self.image_size,
                    seed=self.seed, download=self.download, cache=self.cache,
                )
            return self._loaded

    @property
    def num_examples(self) -> int:
        return self.load().num_examples

    def host_batches(self, first_round: int, rounds: int, d_steps: int, global_batch: int) -> np.ndarray:
        return self.load().host_batches(first_round, rounds, d_steps, global_batch)

    def device_transform(self, x):
        return pixels_to_unit_range(x)

    def describe(self) -> dict[str, Any]:
        return self.load().describe()
