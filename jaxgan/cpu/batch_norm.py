"""Batch normalisation whose per-channel sums are matrix-vector products.

A batch-norm layer sums over every axis but the channels: the mean and mean square going
forward, and going backward the sums of the cotangent and of the cotangent times the centred
input. ``flax.linen.BatchNorm`` writes them as reductions, which XLA's CPU backend emits element
by element, one channel at a time. Written as ``ones[M] @ x[M, C]`` the same sum is a
matrix-vector product, vectorised and threaded.

:func:`channel_sum` and :func:`broadcast_rows` are each other's transposes (``custom_vjp``), so
the backward pass's sums are products too, to any order of differentiation. :class:`BatchNorm`
is a drop-in for ``flax.linen.BatchNorm`` with features on the last axis (same attributes,
variables, statistics and outputs, up to float summation order), including the synchronised
statistics of ``axis_name`` under ``pmap``/``shard_map``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen import module

Array = jax.Array


@jax.custom_vjp
def channel_sum(x: Array) -> Array:
    """``[M, C] -> [C]``: the sum over rows, as ``ones[M] @ x``."""
    return jnp.ones((x.shape[0],), x.dtype) @ x


def _channel_sum_fwd(x):
    return channel_sum(x), jnp.zeros((x.shape[0], 0), x.dtype)  # the row count, as a shape


def _channel_sum_bwd(rows, g):
    return (broadcast_rows(g, rows),)


@jax.custom_vjp
def broadcast_rows(v: Array, like: Array) -> Array:
    """``[C] -> [M, C]`` (M = ``like.shape[0]``; ``like`` is only a shape, ``[M, 0]``)."""
    return jnp.broadcast_to(v, (like.shape[0], v.shape[0]))


def _broadcast_rows_fwd(v, like):
    return broadcast_rows(v, like), like


def _broadcast_rows_bwd(like, g):
    return channel_sum(g), jnp.zeros_like(like)


channel_sum.defvjp(_channel_sum_fwd, _channel_sum_bwd)
broadcast_rows.defvjp(_broadcast_rows_fwd, _broadcast_rows_bwd)


class BatchNorm(nn.Module):
    """Drop-in for ``flax.linen.BatchNorm`` (``axis=-1``; no ``mask``, no ``axis_index_groups``)
    whose per-channel sums are matrix-vector products (see the module docstring)."""

    use_running_average: bool | None = None
    momentum: float = 0.99
    epsilon: float = 1e-5
    dtype: Any = None
    param_dtype: Any = jnp.float32
    use_bias: bool = True
    use_scale: bool = True
    bias_init: Any = nn.initializers.zeros
    scale_init: Any = nn.initializers.ones
    axis_name: str | None = None
    use_fast_variance: bool = True

    @nn.compact
    def __call__(self, x: Array, use_running_average: bool | None = None) -> Array:
        use_running_average = module.merge_param("use_running_average", self.use_running_average,
                                                 use_running_average)
        c = x.shape[-1]
        ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32), (c,))
        ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), (c,))
        if self.axis_name is not None and not self.use_fast_variance:
            raise NotImplementedError("jaxgan.nets.BatchNorm: axis_name needs use_fast_variance=True")
        stat_dtype = jnp.promote_types(self.dtype or x.dtype, jnp.float32)
        x2 = x.reshape(-1, c)
        like = jnp.zeros((x2.shape[0], 0), stat_dtype)
        if use_running_average:
            mean, var = ra_mean.value, ra_var.value
        else:
            xs = x2.astype(stat_dtype)
            n = xs.shape[0]
            mean = channel_sum(xs) / n
            if self.use_fast_variance:
                second = channel_sum(xs * xs) / n
            else:
                second = channel_sum(jnp.square(xs - broadcast_rows(mean, like))) / n
            if self.axis_name is not None and not self.is_initializing():
                mean, second = jax.lax.pmean(jnp.stack([mean, second]), self.axis_name)
            var = jnp.maximum(0.0, second - mean * mean) if self.use_fast_variance else second
            if not self.is_initializing():
                ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
                ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        mul = jax.lax.rsqrt(var + self.epsilon)
        args = [x]
        if self.use_scale:
            scale = self.param("scale", self.scale_init, (c,), self.param_dtype)
            mul = mul * scale
            args.append(scale)
        y = (x2 - broadcast_rows(mean, like)) * broadcast_rows(mul, like)
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (c,), self.param_dtype)
            y = y + broadcast_rows(bias, like)
            args.append(bias)
        dtype = jnp.result_type(*args) if self.dtype is None else self.dtype
        return jnp.asarray(y.reshape(x.shape), dtype)
