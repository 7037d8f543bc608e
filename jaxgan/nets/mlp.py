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
from jaxgan.nets.mbstd import MinibatchStd

ACTIVATIONS = {"relu": nn.relu, "tanh": jnp.tanh, "leaky_relu": nn.leaky_relu, "elu": nn.elu}
MAXOUT = "maxout"  # a D-only layer: the max of `pieces` linear units (Goodfellow et al. 2013)


def _kernel_init(gain: float, std: float = 0.0):
    """Orthogonal kernels with ``gain`` when ``gain > 0`` (Metz et al. 2016, appendix A, use
    0.8); N(0, std^2) when ``std > 0`` (PacGAN's code: 0.02); else flax's default (LeCun normal)."""
    if gain > 0:
        return nn.initializers.orthogonal(gain)
    return nn.initializers.normal(std) if std > 0 else nn.linear.default_kernel_init


def _activation(name: str):
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}") from None


class MLPGenerator(nn.Module):
    """``z: [B, latent_dim] -> x: [B, *out_shape]``: hidden layers, then a linear output.
    ``norm="batch"``: batch norm before each hidden activation, without the dense biases (PacGAN's
    generator), its statistics reduced over ``axis_name`` in training under pmap/shard_map."""

    out_shape: Sequence[int]
    hidden: Sequence[int] = (128, 128)
    activation: str = "relu"
    init_gain: float = 0.0
    init_std: float = 0.0
    norm: str = "none"
    axis_name: str | None = None

    @nn.compact
    def __call__(self, z: jax.Array, train: bool = False) -> jax.Array:
        act = _activation(self.activation)
        init = _kernel_init(self.init_gain, self.init_std)
        h = z
        for width in self.hidden:
            if self.norm == "batch":
                h = nn.Dense(width, use_bias=False, kernel_init=init)(h)
                h = nn.BatchNorm(use_running_average=not train, momentum=0.95, axis_name=self.axis_name if train
                                 else None)(h)
            else:
                h = nn.Dense(width, kernel_init=init)(h)
            h = act(h)
        size = 1
        for s in self.out_shape:
            size *= s
        return nn.Dense(size, kernel_init=init)(h).reshape((z.shape[0], *self.out_shape))


class _Maxout(nn.Module):
    """The max over ``pieces`` linear units, for each of ``features`` outputs."""

    features: int
    pieces: int
    kernel_init: object

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        y = nn.Dense(self.features * self.pieces, kernel_init=self.kernel_init)(h)
        return jnp.max(y.reshape(*y.shape[:-1], self.features, self.pieces), axis=-1)


class MLPDiscriminator(nn.Module):
    """``x: [B, ...] -> logits: [B]``: the input times ``input_scale`` (Metz et al. scale 2-D
    inputs by 1/4, to about [-1, 1]), hidden layers with optional dropout (a remedy for a
    discriminator that dominates), then one linear output unit. ``mbstd`` appends the batch's
    spread (:class:`~jaxgan.nets.mbstd.MinibatchStd`) to the input of the last hidden layer,
    reduced over ``axis_name`` in training (the global batch under pmap/shard_map)."""

    hidden: Sequence[int] = (128, 128)
    activation: str = "relu"
    dropout: float = 0.0
    init_gain: float = 0.0
    init_std: float = 0.0
    input_scale: float = 1.0
    mbstd: bool = False
    axis_name: str | None = None
    maxout_pieces: int = 5

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        init = _kernel_init(self.init_gain, self.init_std)
        if self.activation == MAXOUT:
            def layer(width):
                return _Maxout(width, self.maxout_pieces, init)
        else:
            act = _activation(self.activation)

            def layer(width):
                return lambda h: act(nn.Dense(width, kernel_init=init)(h))
        h = x.reshape(x.shape[0], -1)
        if self.input_scale != 1.0:
            h = h * self.input_scale
        for i, width in enumerate(self.hidden):
            if self.mbstd and i == len(self.hidden) - 1:
                h = MinibatchStd(self.axis_name if train else None)(h)
            h = layer(width)(h)
            if self.dropout > 0.0:
                h = nn.Dropout(self.dropout, deterministic=not train)(h)
        return nn.Dense(1, kernel_init=init)(h)[:, 0]


def mlp_pair(
    data_shape: Sequence[int],
    latent_dim: int,
    *,
    g_hidden: Sequence[int] = (128, 128),
    d_hidden: Sequence[int] = (128, 128),
    activation: str = "relu",
    d_dropout: float = 0.0,
    init_gain: float = 0.0,
    init_std: float = 0.0,
    d_input_scale: float = 1.0,
    d_mbstd: bool = False,
    d_activation: str | None = None,
    g_norm: str = "none",
    axis_name: str | None = None,
) -> tuple[Network, Network]:
    """The reference generator and discriminator as :class:`Network` s. ``d_activation``: D's
    own (default ``activation``; ``"maxout"`` too); ``axis_name``: the device axis batch norm and
    D's minibatch standard deviation reduce over."""
    if g_norm not in ("none", "batch"):
        raise ValueError(f"g_norm={g_norm!r}: choose none or batch")
    if activation == MAXOUT:
        raise ValueError("maxout is a discriminator layer: set d_activation=maxout and a generator activation")
    d_act = d_activation or activation
    if d_act != MAXOUT:
        _activation(d_act)
    g = MLPGenerator(out_shape=tuple(data_shape), hidden=tuple(g_hidden), activation=activation, init_gain=init_gain,
                     init_std=init_std, norm=g_norm, axis_name=axis_name)
    d = MLPDiscriminator(hidden=tuple(d_hidden), activation=d_act, dropout=d_dropout, init_gain=init_gain,
                         init_std=init_std, input_scale=d_input_scale, mbstd=d_mbstd, axis_name=axis_name)
    return from_linen(g, latent_dim=latent_dim), from_linen(d)
