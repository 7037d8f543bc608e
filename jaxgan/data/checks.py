"""Validation of real data at the boundary, on the host, before any compute is spent.

Each check raises :class:`DataError` (or warns with :class:`DataWarning`) with a message that
names the problem and the fix; any data source (arrays on disk, an image pipeline) can call them.

Range convention: *image-shaped* data (examples ``[H, W, C]``) is expected in [-1, 1], the range
of a generator ending in tanh, and a warning says so otherwise (most often raw 0..255 pixels).
Vector data (examples ``[D]``, e.g. the 2-D toy mixtures, whose modes sit at radius 2 or on a
grid out to +-4) has no expected range: the MLP generator's output is linear, so no warning.
"""

from __future__ import annotations

import warnings

import numpy as np

IMAGE_CHANNELS = (1, 3, 4)  # grey, RGB, RGBA


class DataError(ValueError):
    """Real data that the GAN cannot train on; the message says what is wrong and the fix."""


class DataWarning(UserWarning):
    """Real data that can train but probably not as intended (e.g. outside [-1, 1])."""


def check_batch(
    batch,
    example_shape: tuple[int, ...],
    *,
    what: str = "data batch",
    value_range: tuple[float, float] | None = None,
) -> None:
    """Raise :class:`DataError` unless ``batch`` is a finite float array ``[B, *example_shape]``
    (or ``[n, B, *example_shape]``). With ``value_range=(lo, hi)``, warn when values fall
    outside it (e.g. images not scaled to [-1, 1], the range of a tanh generator)."""
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
    if value_range is not None and len(example_shape) == 3:
        check_range(arr.reshape(-1, *example_shape), what=what, low=value_range[0], high=value_range[1])


def check_image_layout(example_shape: tuple[int, ...], *, what: str = "data",
                       channels: tuple[int, ...] = IMAGE_CHANNELS) -> None:
    """Raise :class:`DataError` for image examples ``[H, W, C]`` whose channel count is not one
    of ``channels``, saying when the array looks channels-first ``[C, H, W]``."""
    if len(example_shape) != 3:
        return
    h, _, c = example_shape
    if c in channels:
        return
    if h in channels:
        raise DataError(
            f"{what} has examples of shape {tuple(example_shape)}, which looks channels-first [C, H, W]: "
            f"jaxgan takes [N, H, W, C]; transpose with np.transpose(x, (0, 2, 3, 1))"
        )
    raise DataError(
        f"{what} has examples of shape {tuple(example_shape)} with {c} channels: images need "
        f"[H, W, C] with C in {channels}"
    )


def check_range(data, *, what: str = "data", low: float = -1.0, high: float = 1.0) -> str | None:
    """Warn (:class:`DataWarning`) when image-shaped ``data: [N, H, W, C]`` lies outside
    [low, high]; return the message (None when in range or not image-shaped)."""
    arr = np.asarray(data)
    if arr.ndim != 4 or arr.size == 0:
        return None
    lo, hi = float(np.min(arr)), float(np.max(arr))
    if lo >= low and hi <= high:
        return None
    hint = "x / 127.5 - 1" if hi > 2.0 and lo >= 0.0 else "(x - min) / (max - min) * 2 - 1"
    message = (
        f"{what} has values in [{lo:.4g}, {hi:.4g}], outside the [{low:g}, {high:g}] a tanh generator "
        f"produces; rescale it, e.g. with {hint}"
    )
    warnings.warn(message, DataWarning, stacklevel=2)
    return message
