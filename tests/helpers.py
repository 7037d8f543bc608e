"""Small models and builders shared by the tests."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxgan as jg
from jaxgan import configs, loop
from jaxgan.checkpoint import to_saveable


class BNGenerator(nn.Module):
    """A generator with batch norm, so it has model state to hold constant."""

    out: int = 2

    @nn.compact
    def __call__(self, z, train: bool = False):
        h = nn.Dense(16)(z)
        h = nn.BatchNorm(use_running_average=not train, momentum=0.9)(h)
        return nn.Dense(self.out)(nn.relu(h))


class BNDiscriminator(nn.Module):
    """A discriminator with batch norm and dropout."""

    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        h = nn.Dense(16)(x)
        h = nn.BatchNorm(use_running_average=not train, momentum=0.9)(h)
        h = nn.relu(h)
        if self.dropout:
            h = nn.Dropout(self.dropout, deterministic=not train)(h)
        return nn.Dense(1)(h)[:, 0]


def mlp_gan(latent_dim: int = 8, dim: int = 2, **kwargs) -> jg.GAN:
    g, d = jg.nets.mlp_pair((dim,), latent_dim, g_hidden=(16,), d_hidden=(16,))
    kwargs.setdefault("g_optimizer", optax.adam(1e-3, b1=0.5))
    kwargs.setdefault("d_optimizer", optax.adam(1e-3, b1=0.5))
    return jg.GAN(generator=g, discriminator=d, **kwargs)


def bn_gan(**kwargs) -> jg.GAN:
    return jg.GAN(
        generator=jg.nets.from_linen(BNGenerator(), latent_dim=4),
        discriminator=jg.nets.from_linen(BNDiscriminator(dropout=kwargs.pop("dropout", 0.0))),
        g_optimizer=optax.adam(1e-2),
        d_optimizer=optax.adam(1e-2),
        **kwargs,
    )


def batch(key, n: int = 32, dim: int = 2, shift: float = 1.0):
    return jax.random.normal(key, (n, dim)) + shift


def trees_equal(a, b) -> bool:
    """Bitwise equality of two pytrees of arrays (same structure)."""
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(leaves_a) == len(leaves_b) and all(
        x.shape == y.shape and bool(jnp.all(x == y)) for x, y in zip(leaves_a, leaves_b, strict=True)
    )


# The ring8 toy GAN shrunk to run in a fraction of a second per round.
# A small tanh MLP pair, one sample per D input (the ring8 preset's maxout D and packs are
# tested on their own).
TINY = {"batch_size": 16, "g_hidden": (8, 8), "d_hidden": (8, 8), "latent_dim": 4, "d_activation": "", "pack": 1}


def tiny_run(**overrides) -> loop.Run:
    """A :class:`jaxgan.loop.Run` of the ``ring8`` preset with :data:`TINY` and ``overrides``."""
    return loop.Run.from_config(configs.apply_overrides(configs.preset("ring8"), {**TINY, **overrides}))


def host_leaves(tree) -> list[np.ndarray]:
    """The leaves of a state (PRNG keys as their data) as host arrays."""
    return [np.array(x) for x in jax.tree.leaves(to_saveable(tree))]
