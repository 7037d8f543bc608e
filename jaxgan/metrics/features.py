"""Feature extractors for FID/KID/precision-recall: any ``features(images) -> [N, D]`` works.

An extractor is a :class:`FeatureExtractor`: a name (it becomes the metric suffix, e.g.
``fid_inception``) and a pure function of images ``[B, H, W, C]`` in [-1, 1]. Two are built in:

* the FID Inception network, from weights the user supplies (none can be downloaded here), in
  the format documented at :func:`load_inception`;
* a small classifier trained on the run's real data (:mod:`jaxgan.metrics.classifier`), whose
  penultimate layer gives "classifier FID".

Wrap any other function with ``FeatureExtractor(name, fn)``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
PyTree = Any


@dataclasses.dataclass(frozen=True, eq=False)
class FeatureExtractor:
    """``fn(images [B, H, W, C] in [-1, 1]) -> features [B, D]``, pure (jit it at the edge)."""

    name: str
    fn: Callable[[Array], Array]

    def __call__(self, images: Array) -> Array:
        return self.fn(images)


# ----------------------------------------------------------------------------- Inception


class _BasicConv(nn.Module):
    """Convolution without bias, batch norm (eps 1e-3, running statistics), ReLU: torchvision's
    ``BasicConv2d``. ``padding`` is (rows, columns), symmetric, as in PyTorch."""

    features: int
    kernel: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)

    @nn.compact
    def __call__(self, x: Array) -> Array:
        ph, pw = self.padding
        x = nn.Conv(self.features, self.kernel, self.strides, padding=((ph, ph), (pw, pw)), use_bias=False,
                    name="conv")(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
        return nn.relu(x)


def _avg_pool_3x3(x: Array) -> Array:
    # TensorFlow's average pool (and so the FID network) leaves the zero padding out of the mean.
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


class _InceptionA(nn.Module):
    pool_features: int

    @nn.compact
    def __call__(self, x):
        b1 = _BasicConv(64, (1, 1), name="branch1x1")(x)
        b5 = _BasicConv(48, (1, 1), name="branch5x5_1")(x)
        b5 = _BasicConv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
        b3 = _BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
        b3 = _BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
        b3 = _BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
        bp = _BasicConv(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class _InceptionB(nn.Module):
    @nn.compact
    def __call__(self, x):
        b3 = _BasicConv(384, (3, 3), strides=(2, 2), name="branch3x3")(x)
        bd = _BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
        bd = _BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = _BasicConv(96, (3, 3), strides=(2, 2), name="branch3x3dbl_3")(bd)
        bp = nn.max_pool(x, (3, 3), strides=(2, 2))
        return jnp.concatenate([b3, bd, bp], axis=-1)


class _InceptionC(nn.Module):
    channels_7x7: int

    @nn.compact
    def __call__(self, x):
        c = self.channels_7x7
        b1 = _BasicConv(192, (1, 1), name="branch1x1")(x)
        b7 = _BasicConv(c, (1, 1), name="branch7x7_1")(x)
        b7 = _BasicConv(c, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
        b7 = _BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
        bd = _BasicConv(c, (1, 1), name="branch7x7dbl_1")(x)
        bd = _BasicConv(c, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
        bd = _BasicConv(c, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
        bd = _BasicConv(c, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
        bd = _BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
        bp = _BasicConv(192, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class _InceptionD(nn.Module):
    @nn.compact
    def __call__(self, x):
        b3 = _BasicConv(192, (1, 1), name="branch3x3_1")(x)
        b3 = _BasicConv(320, (3, 3), strides=(2, 2), name="branch3x3_2")(b3)
        b7 = _BasicConv(192, (1, 1), name="branch7x7x3_1")(x)
        b7 = _BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = _BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = _BasicConv(192, (3, 3), strides=(2, 2), name="branch7x7x3_4")(b7)
        bp = nn.max_pool(x, (3, 3), strides=(2, 2))
        return jnp.concatenate([b3, b7, bp], axis=-1)


class _InceptionE(nn.Module):
    max_pool: bool  # the FID network's last block max-pools where the paper average-pools

    @nn.compact
    def __call__(self, x):
        b1 = _BasicConv(320, (1, 1), name="branch1x1")(x)
        b3 = _BasicConv(384, (1, 1), name="branch3x3_1")(x)
        b3 = jnp.concatenate([
            _BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
            _BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3),
        ], axis=-1)
        bd = _BasicConv(448, (1, 1), name="branch3x3dbl_1")(x)
        bd = _BasicConv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate([
            _BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
            _BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd),
        ], axis=-1)
        if self.max_pool:
            pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
        else:
            pooled = _avg_pool_3x3(x)
        bp = _BasicConv(192, (1, 1), name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3FID(nn.Module):
    """The Inception-v3 of the FID reference (TensorFlow's 2015-12-05 graph, as ported by
    pytorch-fid's ``FIDInceptionA/C/E_1/E_2`` blocks): ``x [B, H, W, 3]`` in [-1, 1], H, W >= 75
    -> pool3 features ``[B, 2048]``. Submodule names are torchvision's, so PyTorch weights map
    onto it by name (:func:`load_inception`)."""

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = _BasicConv(32, (3, 3), strides=(2, 2), name="Conv2d_1a_3x3")(x)
        x = _BasicConv(32, (3, 3), name="Conv2d_2a_3x3")(x)
        x = _BasicConv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
        x = nn.max_pool(x, (3, 3), strides=(2, 2))
        x = _BasicConv(80, (1, 1), name="Conv2d_3b_1x1")(x)
        x = _BasicConv(192, (3, 3), name="Conv2d_4a_3x3")(x)
        x = nn.max_pool(x, (3, 3), strides=(2, 2))
        x = _InceptionA(32, name="Mixed_5b")(x)
        x = _InceptionA(64, name="Mixed_5c")(x)
        x = _InceptionA(64, name="Mixed_5d")(x)
        x = _InceptionB(name="Mixed_6a")(x)
        x = _InceptionC(128, name="Mixed_6b")(x)
        x = _InceptionC(160, name="Mixed_6c")(x)
        x = _InceptionC(160, name="Mixed_6d")(x)
        x = _InceptionC(192, name="Mixed_6e")(x)
        x = _InceptionD(name="Mixed_7a")(x)
        x = _InceptionE(max_pool=False, name="Mixed_7b")(x)
        x = _InceptionE(max_pool=True, name="Mixed_7c")(x)
        return jnp.mean(x, axis=(1, 2))


INCEPTION_SIZE = 299
_MIN_SIZE = 75


def inception_input(images: Array, size: int = INCEPTION_SIZE) -> Array:
    """``[B, H, W, C]`` in [-1, 1] with C = 1 or 3 -> ``[B, size, size, 3]``: grey repeated to
    three channels, bilinear resize with half-pixel centres and no antialiasing (PyTorch's
    ``interpolate(..., 'bilinear', align_corners=False)``, which pytorch-fid uses)."""
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"Inception takes images [B, H, W, 1 or 3]; got shape {images.shape}")
    x = images.astype(jnp.float32)
    if x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
    if x.shape[1:3] != (size, size):
        x = jax.image.resize(x, (x.shape[0], size, size, 3), method="bilinear", antialias=False)
    return x


def inception_extractor(variables: PyTree, *, size: int = INCEPTION_SIZE) -> FeatureExtractor:
    """The FID extractor from InceptionV3FID variables (``{"params", "batch_stats"}``)."""
    if size < _MIN_SIZE:
        raise ValueError(f"Inception needs images of at least {_MIN_SIZE}x{_MIN_SIZE}; got size={size}")
    model = InceptionV3FID()

    def fn(images: Array) -> Array:
        return model.apply(variables, inception_input(images, size))

    return FeatureExtractor("inception", fn)


# PyTorch state_dict <-> flax variables. A flax leaf (collection, *modules, leaf) maps to the
# PyTorch key "<modules joined by '.'>.<torch leaf>".
_TO_TORCH = {
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}


def _torch_name(path: tuple[str, ...]) -> str:
    collection, *modules, leaf = path
    return ".".join([*modules, _TO_TORCH[(collection, leaf)]])


def _abstract_inception() -> PyTree:
    x = jax.ShapeDtypeStruct((1, _MIN_SIZE, _MIN_SIZE, 3), jnp.float32)
    return jax.eval_shape(lambda: InceptionV3FID().init(jax.random.key(0), jnp.zeros(x.shape, x.dtype)))


def _path_names(path) -> tuple[str, ...]:
    return tuple(str(getattr(p, "key", p)) for p in path)


def inception_to_torch_state(variables: PyTree) -> dict[str, np.ndarray]:
    """InceptionV3FID variables as a PyTorch-layout state dict (conv kernels ``[O, I, kH, kW]``):
    the inverse of :func:`load_inception`'s mapping, e.g. to save weights in the accepted format."""
    out = {}
    for path, value in jax.tree_util.tree_leaves_with_path(variables):
        names = _path_names(path)
        value = np.asarray(value)
        if names[-1] == "kernel":
            value = value.transpose(3, 2, 0, 1)  # HWIO -> OIHW
        out[_torch_name(names)] = value
    return out


def load_inception(path: str, *, size: int = INCEPTION_SIZE) -> FeatureExtractor:
    """The FID Inception extractor from a ``.npz`` of PyTorch weights (format: see
    :func:`load_inception_variables`); images are resized to ``size`` (299 for comparable FIDs)."""
    return inception_extractor(load_inception_variables(path), size=size)


def load_inception_variables(path: str) -> PyTree:
    """:class:`InceptionV3FID` variables from a ``.npz`` of PyTorch weights.

    Format: the ``state_dict()`` of pytorch-fid's FID Inception (``pt_inception-2015-12-05``,
    the TensorFlow FID weights ported to PyTorch) saved with numpy, names and layouts as they are::

        from pytorch_fid.inception import fid_inception_v3   # downloads the weights once
        sd = fid_inception_v3().state_dict()
        numpy.savez("inception_fid.npz", **{k: v.numpy() for k, v in sd.items()})

    Conv weights are ``[out, in, kH, kW]``; batch norms give ``weight, bias, running_mean,
    running_var``. Keys the features do not use (``fc.*``, ``*.num_batches_tracked``, ``AuxLogits.*``)
    are ignored; a missing key or a wrong shape raises ``ValueError`` naming it.
    """
    if not os.path.isfile(path):
        raise ValueError(
            f"Inception weights {path!r} do not exist: pass a .npz of pytorch-fid's FID Inception "
            "state_dict (see jaxgan.metrics.features.load_inception_variables for the one-line conversion)"
        )
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read Inception weights {path!r} as a .npz archive ({err})") from None
    with archive:
        saved = {k: archive[k] for k in archive.files}
    abstract = _abstract_inception()
    missing, wrong = [], []

    def take(path_, leaf):
        names = _path_names(path_)
        key = _torch_name(names)
        if key not in saved:
            missing.append(key)
            return jnp.zeros(leaf.shape, leaf.dtype)
        value = saved[key]
        if names[-1] == "kernel":
            if value.ndim != 4:
                wrong.append(f"{key}: {value.shape}, expected [out, in, kH, kW]")
                return jnp.zeros(leaf.shape, leaf.dtype)
            value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
        if tuple(value.shape) != tuple(leaf.shape):
            wrong.append(f"{key}: {tuple(value.shape)}, expected {_torch_shape(names, leaf.shape)}")
        return jnp.asarray(value, jnp.float32)

    variables = jax.tree_util.tree_map_with_path(take, abstract)
    if missing or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s), e.g. {', '.join(missing[:4])}")
        if wrong:
            parts.append(f"wrong shapes: {'; '.join(wrong[:4])}")
        raise ValueError(
            f"{path!r} is not an FID Inception state_dict ({' and '.join(parts)}); save pytorch-fid's "
            "fid_inception_v3().state_dict() as described in jaxgan.metrics.features.load_inception_variables"
        )
    return variables


def _torch_shape(names: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    return (shape[3], shape[2], shape[0], shape[1]) if names[-1] == "kernel" else tuple(shape)
