"""Reference MLP generator and discriminator (flax linen), for 2-D toy data and quick tests.

Metz et al. (2016, appendix A) use two hidden layers of 128 units for both players on the
mixture-of-Gaussians task; those are the defaults.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgan.nets.adapters import Network, from_linen

ACTIVATIONS = {"relu": nn.relu, "tanh": jnp.tanh, "leaky_relu": nn.leaky_relu, "elu": nn.elu}


def _activation(name: str):
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}") from None


class MLPGenerator(nn.Module):
    """``z: [B, latent_dim] -> x: [B, *out_shape]``: hidden layers, then a linear output."""

    out_shape: Sequence[int]
    hidden: Sequence[int] = (128, 128)
    activation: str = "relu"

    @nn.compact
    def __call__(self, z: jax.Array, train: bool = False) -> jax.Array:
        act = _activation(self.activation)
        h = z
        for width in self.hidden:
            h = act(nn.Dense(width)(h))
        size = 1
        for s in self.out_shape:
            size *= s
        return nn.Dense(size)(h).reshape((z.shape[0], *self.out_shape))


class MLPDiscriminator(nn.Module):
    """``x: [B, ...] -> logits: [B]``: hidden layers with optional dropout (a remedy for a
    discriminator that dominates), then one linear output unit."""

    hidden: Sequence[int] = (128, 128)
    activation: str = "relu"
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        act = _activation(self.activation)
        h = x.reshape(x.shape[0], -1)
        for width in self.hidden:
            h = act(nn.Dense(width)(h))
            if self.dropout > 0.0:
                h = nn.Dropout(self.dropout, deterministic=not train)(h)
        return nn.Dense(1)(h)[:, 0]


def mlp_pair(
    data_shape: Sequence[int],
    latent_dim: int,
    *,
    g_hidden: Sequence[int] = (128, 128),
    d_hidden: Sequence[int] = (128, 128),
    activation: str = "relu",
    d_dropout: float = 0.0,
) -> tuple[Network, Network]:
    """The reference generator and discriminator as :class:`Network` s."""
    g = MLPGenerator(out_shape=tuple(data_shape), hidden=tuple(g_hidden), activation=activation)
    d = MLPDiscriminator(hidden=tuple(d_hidden), activation=activation, dropout=d_dropout)
    return from_linen(g, latent_dim=latent_dim), from_linen(d)
