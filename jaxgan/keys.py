"""Per-example randomness: row ``i`` of a draw depends only on the key and ``ids[i]``.

Every source of per-example randomness (latents, on-device data, instance noise, label
flipping, penalty interpolation) goes through this module, so a batch's rows depend only on
the key and their global example ids, on any number of devices.

* :func:`per_example`: any ``jax.random`` draw per row, from ``fold_in(key, i)``.
* :func:`bits`, :func:`uniform`, :func:`normal`: arrays of values per row, hashed straight from
  ``(key, (i, j))``: with threefry keys (JAX's default) element ``j`` of row ``i`` comes from the
  Threefry-2x32 hash of the counter ``(ids[i], j)`` under the key, the counter-based use the hash
  was designed for (Salmon et al. 2011). They replace ``per_example`` for multi-value rows, whose
  per-row key derivation XLA would recompute for every element of the row.

The row hash and the normal draw are :class:`jaxgan.ops.Op` primitives: the XLA computation here
on every platform, until a plug-in lowers them otherwise (:func:`jaxgan.cpu.tune`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.random import threefry2x32_p

from jaxgan.ops import Op

Array = jax.Array


def per_example(key: Array, ids: Array, draw: Callable[[Array], Array]) -> Array:
    """``draw(fold_in(key, i))`` for each id, stacked on a leading axis."""
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(ids)
    return jax.vmap(draw)(keys)


def bits(key: Array, ids: Array, shape: Sequence[int]) -> Array:
    """Random ``uint32`` of shape ``[len(ids), *shape]``; row ``r`` depends only on ``(key, ids[r])``.

    For a threefry key with data ``(k1, k2)`` and ``n = prod(shape)``, ``h = ceil(n / 2)``: the
    hash ``threefry2x32((k1, k2), (ids[r], j)) = (a_j, b_j)`` for ``j < h`` gives row ``r`` =
    ``(a_0 .. a_{h-1}, b_0 .. b_{h-1})[:n]``, reshaped to ``shape`` (the halves as in JAX's own
    ``random_bits``). A key of another implementation (``rbg``, ...) supplies ``(k1, k2)`` as
    ``jax.random.bits(key, (2,), uint32)``."""
    shape = tuple(int(s) for s in shape)
    ids = jnp.asarray(ids).astype(jnp.uint32)
    return HASH_ROWS(_hash_key(key), ids, n=math.prod(shape)).reshape(ids.shape[0], *shape)


def _hash_key(key: Array) -> Array:
    """The Threefry key ``[2]`` uint32 the row hash uses: a threefry key's own data, else drawn."""
    if str(jax.random.key_impl(key)) == "threefry2x32":
        return jax.random.key_data(key)
    return jax.random.bits(key, (2,), jnp.uint32)


def _hash_rows(data: Array, ids: Array, *, n: int) -> Array:
    """:func:`bits`' ``[len(ids), n]`` words from the hash key ``data`` ``[2]`` and ``ids`` ``[R]``."""
    half = (n + 1) // 2
    rows, cols = jnp.broadcast_arrays(ids[:, None], jnp.arange(half, dtype=jnp.uint32)[None, :])
    k1, k2 = (jnp.broadcast_to(data[..., i], rows.shape) for i in range(2))
    a, b = threefry2x32_p.bind(k1, k2, rows, cols)
    return jnp.concatenate([a, b], axis=1)[:, :n]


def _normal_rows(data: Array, ids: Array, *, n: int) -> Array:
    """:func:`normal`'s ``[len(ids), n]`` float32 values: ``sqrt(2) erfinv(u)`` of the uniforms
    in (-1, 1) that :func:`_hash_rows`' words make, as ``jax.random.normal`` computes them."""
    lo = np.nextafter(np.float32(-1.0), np.float32(0.0))
    u = jnp.maximum(lo, _unit_interval(_hash_rows(data, ids, n=n)) * (np.float32(1.0) - lo) + lo)
    return np.float32(np.sqrt(2.0)) * jax.lax.erf_inv(u)


HASH_ROWS = Op("jaxgan_hash_rows", _hash_rows)
NORMAL_ROWS = Op("jaxgan_normal_rows", _normal_rows)


def _unit_interval(b: Array) -> Array:
    """float32 in [0, 1) from the 23 high bits of ``b`` (as ``jax.random.uniform`` makes them)."""
    mantissa = jax.lax.shift_right_logical(b, np.uint32(32 - 23)) | np.array(1.0, np.float32).view(np.uint32)
    return jax.lax.bitcast_convert_type(mantissa, jnp.float32) - np.float32(1.0)


def _float_dtype(dtype) -> np.dtype:
    """``dtype``, or JAX's default float (float64 under ``jax_enable_x64``) when None."""
    return np.dtype(jnp.result_type(float) if dtype is None else dtype)


def uniform(key: Array, ids: Array, shape: Sequence[int], minval: float = 0.0, maxval: float = 1.0,
            dtype=None) -> Array:
    """Uniform in ``[minval, maxval)``, ``[len(ids), *shape]``, from :func:`bits`: computed in
    float32 and cast to ``dtype`` (default: JAX's default float); float64 draws use
    :func:`per_example` with ``jax.random.uniform``."""
    dtype = _float_dtype(dtype)
    if dtype == np.float64:
        return per_example(key, ids, lambda k: jax.random.uniform(k, tuple(shape), dtype, minval, maxval))
    lo, hi = np.float32(minval), np.float32(maxval)
    return jnp.maximum(lo, _unit_interval(bits(key, ids, shape)) * (hi - lo) + lo).astype(dtype)


def normal(key: Array, ids: Array, shape: Sequence[int], dtype=None) -> Array:
    """Standard normal ``[len(ids), *shape]`` from :func:`bits`: ``sqrt(2) erfinv(u)`` of ``u``
    uniform in (-1, 1), as ``jax.random.normal`` computes it. Computed in float32 and cast to
    ``dtype`` (default: JAX's default float); float64 draws use :func:`per_example` with
    ``jax.random.normal``."""
    dtype = _float_dtype(dtype)
    if dtype == np.float64:
        return per_example(key, ids, lambda k: jax.random.normal(k, tuple(shape), dtype))
    shape = tuple(int(s) for s in shape)
    ids = jnp.asarray(ids).astype(jnp.uint32)
    z = NORMAL_ROWS(_hash_key(key), ids, n=math.prod(shape))
    return z.reshape(ids.shape[0], *shape).astype(dtype)
