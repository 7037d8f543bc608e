"""Minibatch standard deviation (Karras et al. 2018, "Progressive growing of GANs", sec. 3).

A discriminator layer that lets D see how spread out its batch is: the standard deviation of
every feature over the batch, averaged into one number and appended to each example as one more
feature (a constant channel for feature maps). A collapsed generator's batch has a small spread,
which a per-example D cannot see.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


def minibatch_std(x: Array, axis_name: str | None = None, eps: float = 1e-8) -> Array:
    """The mean over features of the per-feature batch standard deviation of ``x: [B, ...]``: a
    scalar. Under ``pmap``/``shard_map`` with ``axis_name`` the moments are those of the global
    batch (every device holding an equal share), so the value does not depend on the split."""
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=0, keepdims=True)
    if axis_name is not None:
        mean = jax.lax.pmean(mean, axis_name)
    var = jnp.mean(jnp.square(x - mean), axis=0, keepdims=True)
    if axis_name is not None:
        var = jax.lax.pmean(var, axis_name)
    return jnp.mean(jnp.sqrt(var + eps))


class MinibatchStd(nn.Module):
    """``x: [B, ..., F] -> [B, ..., F + 1]``: :func:`minibatch_std` appended as a last feature
    (or channel) of every example. ``axis_name``: the device axis to take the moments over."""

    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        s = minibatch_std(x, self.axis_name).astype(x.dtype)
        return jnp.concatenate([x, jnp.broadcast_to(s, (*x.shape[:-1], 1))], axis=-1)
