"""Per-example randomness: row ``i`` of a draw depends only on the key and ``ids[i]``.

Every source of per-example randomness (latents, on-device data, instance noise, label
flipping, penalty interpolation) goes through this module, so a batch's rows depend only on
the key and their global example ids, on any number of devices.

* :func:`per_example`: any ``jax.random`` draw per row, from ``fold_in(key, i)``.
* :func:`bits`, :func:`uniform`, :func:`normal`: arrays of values per row, hashed straight from
  ``(key, (i, j))``. With threefry keys (JAX's default) element ``j`` of row ``i`` comes from
  the Threefry-2x32 hash of the counter ``(ids[i], j)`` under the key, the counter-based use
  the hash was designed for (Salmon et al. 2011). They replace ``per_example`` for multi-value
  rows because XLA fuses a per-row key derivation (a ``fold_in`` hash, and the splits above it)
  into the loop that makes the values and recomputes it for every element: measured (2-core
  CPU, toy GAN, 512 x 256 latents per update) 312 -> 321 training steps/s, the speed with a
  single ``jax.random.normal(key, (512, 256))`` draw instead (320).

On the CPU, after :func:`jaxgan.cpu.use_native_random` (``jaxgan.cpu.tune`` calls it),
:func:`bits` and :func:`normal` are computed by C++ FFI handlers that evaluate each hash once for
both its output words (XLA's loop fusion evaluates it once per word): the same bits (0.043
instead of 0.13 ms for those of a 512 x 256 latent draw), and normals equal to XLA's to a few
float32 ulps (the handler's own logarithm in the inverse CDF; 0.15 instead of 0.30 ms).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.random import threefry2x32_p

from jaxgan import cpu

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
    n = math.prod(shape)
    return _draw("jaxgan_threefry_rows", jnp.uint32, key, ids, n, lambda d, i: _hash_rows(d, i, n)).reshape(
        ids.shape[0], *shape)


def _hash_rows(data: Array, ids: Array, n: int) -> Array:
    """:func:`bits`' ``[len(ids), n]`` words from the hash key's ``data`` (``[2]`` uint32), by XLA."""
    half = (n + 1) // 2
    rows, cols = jnp.broadcast_arrays(ids[:, None], jnp.arange(half, dtype=jnp.uint32)[None, :])
    k1, k2 = (jnp.broadcast_to(data[..., i], rows.shape) for i in range(2))
    a, b = threefry2x32_p.bind(k1, k2, rows, cols)
    return jnp.concatenate([a, b], axis=1)[:, :n]


def _draw(target: str, dtype, key: Array, ids: Array, n: int, xla: Callable[[Array, Array], Array]) -> Array:
    """``[len(ids), n]`` values of ``dtype`` from the hash key's data and the ids: the native
    handler ``target`` on the CPU when :func:`jaxgan.cpu.native_random` is on, else ``xla(data, ids)``."""
    if str(jax.random.key_impl(key)) == "threefry2x32":
        data = jax.random.key_data(key)
    else:
        data = jax.random.bits(key, (2,), jnp.uint32)
    if not (cpu.native_random() and ids.ndim == 1 and ids.shape[0] * n > 0):
        return xla(data, ids)
    native = jax.ffi.ffi_call(target, jax.ShapeDtypeStruct((ids.shape[0], n), dtype), vmap_method="broadcast_all")
    return jax.lax.platform_dependent(data, ids, cpu=native, default=xla)


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
    n = math.prod(shape)
    lo = np.nextafter(np.float32(-1.0), np.float32(0.0))

    def xla(data, ids):
        u = jnp.maximum(lo, _unit_interval(_hash_rows(data, ids, n)) * (np.float32(1.0) - lo) + lo)
        return np.float32(np.sqrt(2.0)) * jax.lax.erf_inv(u)

    z = _draw("jaxgan_threefry_normal", jnp.float32, key, ids, n, xla)
    return z.reshape(ids.shape[0], *shape).astype(dtype)
