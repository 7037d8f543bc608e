"""The DCGAN generator and discriminator (Radford, Metz & Chintala 2016), flax linen.

The layout follows the paper's guidelines (sec. 3: strided convolutions instead of pooling,
batch norm in both players, ReLU in G with tanh at the output, leaky ReLU in D, no fully
connected hidden layers) and the PyTorch example (pytorch/examples, ``dcgan/main.py``):
4x4 kernels with stride 2 and padding 1, no biases, weights drawn from N(0, 0.02) and batch
norm scales from N(1, 0.02), batch-norm momentum 0.1 (flax's ``momentum=0.9``), eps 1e-5.

For ``image_size = s0 * 2**n`` (s0 = 4 for 32 and 64, s0 = 7 for 28), G maps ``z`` to an
``s0 x s0 x width * 2**(n-1)`` map with one transposed convolution (kernel s0, VALID), then
doubles the size n times, halving the width, and ends with ``channels`` and tanh. D mirrors
it: n strided convolutions doubling the width from ``width``, then one s0 x s0 VALID
convolution to a logit. At 64 px with width 64 this is exactly the PyTorch example's
``netG``/``netD`` (ngf = ndf = 64), without D's final sigmoid (the losses take logits).

Options: dropout in D's hidden layers (a remedy for a dominating discriminator); D's
normalisation ``'batch'`` (DCGAN), ``'spectral'`` (spectral norm on every D layer instead of
batch norm, Miyato et al. 2018, sec. 2.1; its power-iteration vectors are model state, updated
only in D's own updates like batch statistics) or ``'none'``; and ``axis_name`` for
cross-device ("sync") batch norm: under ``pmap``/``shard_map`` each batch-norm layer then
normalises with the statistics of the global batch (``BatchNorm(axis_name=...)``), so n
devices with B/n examples each compute what one device computes with B.

``layers`` picks the convolution, transposed convolution and batch-norm layers: flax's
(``"flax"``), or the drop-ins of :mod:`jaxgan.cpu` made for XLA's CPU backend (``"cpu"``; with
oneDNN's convolutions, ``"onednn"``). All three have the same parameters and variables and
compute the same function; :func:`jaxgan.build.default_layers` picks one for the backend.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgan.nets.adapters import Network, from_linen
from jaxgan.nets.mbstd import MinibatchStd

Array = jax.Array

NORMS = ("batch", "spectral", "none")
LAYERS = ("flax", "cpu", "onednn")

# PyTorch example's weights_init: Conv* weights ~ N(0, 0.02), BatchNorm weights ~ N(1, 0.02).
conv_init = nn.initializers.normal(stddev=0.02)


def bn_scale_init(key: Array, shape: Sequence[int], dtype=jnp.float32) -> Array:
    """Batch-norm scales drawn from N(1, 0.02) (the PyTorch DCGAN example)."""
    return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


def layout(image_size: int) -> tuple[int, int]:
    """``(s0, n)`` with ``image_size = s0 * 2**n``, ``n >= 1`` as large as keeps ``s0 >= 4``."""
    s0, n = int(image_size), 0
    while s0 % 2 == 0 and s0 // 2 >= 4:
        s0, n = s0 // 2, n + 1
    if n < 1:
        raise ValueError(
            f"image_size={image_size} does not fit a DCGAN: it must be s0 * 2**n with s0 >= 4 and n >= 1 "
            "(e.g. 28, 32, 48, 64, 128)"
        )
    return s0, n


def _check_layers(layers: str) -> None:
    if layers not in LAYERS:
        raise ValueError(f"layers={layers!r}: choose one of {', '.join(LAYERS)}")


def _batch_norm(layers: str, train: bool, axis_name: str | None) -> nn.Module:
    if layers == "flax":
        cls = nn.BatchNorm
    else:
        from jaxgan.cpu.batch_norm import BatchNorm as cls
    return cls(use_running_average=not train, momentum=0.9, epsilon=1e-5, scale_init=bn_scale_init,
               axis_name=axis_name if train else None)


def _conv_transpose(layers: str, *args, **kwargs) -> nn.Module:
    if layers == "flax":
        return nn.ConvTranspose(*args, **kwargs)
    from jaxgan.cpu.conv_transpose import ConvTranspose

    return ConvTranspose(*args, onednn=layers == "onednn", **kwargs)


def _conv_function(layers: str):
    """``nn.Conv``'s ``conv_general_dilated`` for ``layers`` (None: lax's)."""
    if layers == "flax":
        return None
    from jaxgan.cpu.conv import conv_general_dilated

    return functools.partial(conv_general_dilated, onednn=layers == "onednn")


class DCGANGenerator(nn.Module):
    """``z: [B, latent] -> images: [B, image_size, image_size, channels]`` in [-1, 1]."""

    image_size: int = 64
    channels: int = 3
    width: int = 64
    axis_name: str | None = None
    layers: str = "flax"  # one of LAYERS (see the module docstring)

    @nn.compact
    def __call__(self, z: Array, train: bool = False) -> Array:
        s0, n = layout(self.image_size)
        _check_layers(self.layers)

        def conv_t(*args, **kwargs):
            return _conv_transpose(self.layers, *args, use_bias=False, kernel_init=conv_init, **kwargs)

        h = z.reshape(z.shape[0], 1, 1, -1)
        h = conv_t(self.width * 2 ** (n - 1), (s0, s0), padding="VALID")(h)
        h = nn.relu(_batch_norm(self.layers, train, self.axis_name)(h))
        for i in range(1, n):
            # k4 s2 'SAME' pads the dilated input by (2, 2): PyTorch's ConvTranspose2d(4, 2, 1).
            h = conv_t(self.width * 2 ** (n - 1 - i), (4, 4), (2, 2), padding="SAME")(h)
            h = nn.relu(_batch_norm(self.layers, train, self.axis_name)(h))
        h = conv_t(self.channels, (4, 4), (2, 2), padding="SAME")(h)
        return jnp.tanh(h)


class DCGANDiscriminator(nn.Module):
    """``images: [B, H, W, C] -> logits: [B]`` (H = W = ``image_size``)."""

    image_size: int = 64
    width: int = 64
    norm: str = "batch"
    dropout: float = 0.0
    axis_name: str | None = None
    layers: str = "flax"  # one of LAYERS (see the module docstring)
    mbstd: bool = False  # minibatch standard deviation as one more channel before the last layer

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        if self.norm not in NORMS:
            raise ValueError(f"norm={self.norm!r}: choose one of {', '.join(NORMS)}")
        _check_layers(self.layers)
        s0, n = layout(self.image_size)
        if x.shape[1:3] != (self.image_size, self.image_size):
            raise ValueError(
                f"the discriminator was built for {self.image_size}x{self.image_size} images, got {x.shape[1:3]}"
            )
        use_bias = self.norm != "batch"

        def conv(features, kernel, strides, padding):
            layer = nn.Conv(features, kernel, strides, padding=padding, use_bias=use_bias, kernel_init=conv_init,
                            conv_general_dilated=_conv_function(self.layers))
            if self.norm == "spectral":
                return lambda h: nn.SpectralNorm(layer)(h, update_stats=train)
            return layer

        h = x
        for i in range(n):
            h = conv(self.width * 2**i, (4, 4), (2, 2), ((1, 1), (1, 1)))(h)
            if i > 0 and self.norm == "batch":  # DCGAN: no batch norm on D's input layer
                h = _batch_norm(self.layers, train, self.axis_name)(h)
            h = nn.leaky_relu(h, 0.2)
            if self.dropout > 0.0:
                h = nn.Dropout(self.dropout, deterministic=not train)(h)
        if self.mbstd:
            h = MinibatchStd(self.axis_name if train else None)(h)
        h = conv(1, (s0, s0), (1, 1), "VALID")(h)
        return h.reshape(x.shape[0])


def dcgan_pair(
    image_shape: Sequence[int],
    latent_dim: int,
    *,
    g_width: int = 64,
    d_width: int = 64,
    d_norm: str = "batch",
    d_dropout: float = 0.0,
    d_mbstd: bool = False,
    axis_name: str | None = None,
    layers: str = "flax",
) -> tuple[Network, Network]:
    """The DCGAN generator and discriminator for images ``[H, W, C]`` (H = W) as Networks, with
    ``layers`` (one of :data:`LAYERS`; see the module docstring)."""
    if len(image_shape) != 3 or image_shape[0] != image_shape[1]:
        raise ValueError(
            f"DCGAN needs square images [size, size, channels], got example shape {tuple(image_shape)}: "
            "set image_size to resize/crop the data"
        )
    size, channels = int(image_shape[0]), int(image_shape[2])
    layout(size)
    if d_norm not in NORMS:
        raise ValueError(f"d_norm={d_norm!r}: choose one of {', '.join(NORMS)}")
    _check_layers(layers)
    g = DCGANGenerator(image_size=size, channels=channels, width=g_width, axis_name=axis_name, layers=layers)
    d = DCGANDiscriminator(image_size=size, width=d_width, norm=d_norm, dropout=d_dropout, axis_name=axis_name,
                           layers=layers, mbstd=d_mbstd)
    return from_linen(g, latent_dim=latent_dim), from_linen(d)
