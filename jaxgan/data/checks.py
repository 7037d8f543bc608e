"""Validation of real data at the boundary, on the host, before any compute is spent."""

from __future__ import annotations

import numpy as np


class DataError(ValueError):
    """Real data that the GAN cannot train on; the message says what is wrong and the fix."""


def check_batch(batch, example_shape: tuple[int, ...], *, what: str = "data batch") -> None:
    """Raise :class:`DataError` unless ``batch`` is a finite float array ``[B, *example_shape]``
    (or ``[n, B, *example_shape]``)."""
    arr = np.asarray(batch)
    if not np.issubdtype(arr.dtype, np.floating):
        raise DataError(
            f"{what} has dtype {arr.dtype}, but the GAN needs floating-point data: convert it, "
            "e.g. images as float32 scaled to [-1, 1] with x / 127.5 - 1"
        )
    tail = tuple(arr.shape[arr.ndim - len(example_shape):]) if arr.ndim >= len(example_shape) else ()
    if arr.ndim not in (len(example_shape) + 1, len(example_shape) + 2) or tail != tuple(example_shape):
        raise DataError(
            f"{what} has shape {arr.shape}, but the model makes examples of shape "
            f"{tuple(example_shape)}: pass [batch, {', '.join(map(str, example_shape))}]"
        )
    if not np.all(np.isfinite(arr)):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise DataError(
            f"{what} contains {bad} NaN/Inf value(s): clean or drop those examples before training"
        )
