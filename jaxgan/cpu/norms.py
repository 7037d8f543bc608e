"""Squared norms as dot products: the CPU lowering of :func:`jaxgan.gan.squared_norm`.

XLA's CPU backend runs a float sum of squares as a reduction loop, slower there than one dot
product per leaf; other backends keep the reduction.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxgan import gan

Array = jax.Array


def dots(*leaves: Array) -> Array:
    """The float32 sum of squares of ``leaves``, one dot product per leaf."""
    return sum(
        (jnp.dot(x.reshape(-1), x.reshape(-1), precision=jax.lax.Precision.HIGHEST,
                 preferred_element_type=jnp.float32) for x in leaves),
        jnp.float32(0.0),
    )


def plug(on: bool = True) -> bool:
    """Lower :data:`jaxgan.gan.SQUARED_NORM` on the CPU as :func:`dots` (``on``) or as its own
    reduction. Affects programs compiled afterwards; returns ``on``."""
    gan.SQUARED_NORM.lower_on("cpu", gan.SQUARED_NORM.lowering(dots) if on else None)
    return on
