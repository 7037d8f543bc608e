"""A transposed convolution whose gradients are ordinary (fast) convolutions.

``flax.linen.ConvTranspose`` calls ``lax.conv_transpose``: a convolution of the input dilated by
the stride. Its gradient with respect to the kernel is then a convolution with *both* operands
dilated, which XLA lowers to a very slow path on CPU (jax-ml/jax#23783, #31662,
openxla/xla#34273).

A transposed convolution is exactly the input-gradient (the adjoint) of a strided convolution
``C`` (Dumoulin & Visin 2016, "A guide to convolution arithmetic", sec. 4). With
``y = C^T x`` and a cotangent ``g`` on ``y``:

* ``dL/dx = C g``: an ordinary strided convolution of ``g``;
* ``dL/dK``: since ``<g, C^T x> = <C g, x>``, it is the *weight*-gradient of that strided
  convolution at input ``g`` and output-cotangent ``x``, which XLA computes on its fast path.

:func:`conv_transpose` is :func:`jaxgan.cpu.conv.conv_input_grad`, whose ``custom_vjp``
computes both gradients that way, in the canonical layout XLA's CPU backend needs (see
:mod:`jaxgan.cpu.conv`). Strided, the forward pass itself is stride-1 convolutions, one per
output phase (sub-pixel convolution; Shi et al. 2016, "Real-time single image and video
super-resolution using an efficient sub-pixel convolutional neural network"), not a convolution
of the stride-dilated input: the same sums, so the same values up to float rounding.

:class:`ConvTranspose` is a drop-in for ``flax.linen.ConvTranspose`` (same attributes, same
parameter names and shapes, same outputs; ``onednn`` runs it with oneDNN's convolutions).
Reverse-mode (any order) is supported; forward-mode (``jax.jvp``) is not, as for every
``custom_vjp``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.linen.dtypes import promote_dtype

from jaxgan.cpu.conv import conv_input_grad

Array = jax.Array
Padding = str | Sequence[tuple[int, int]]


def transpose_padding(kernel_size: int, stride: int, padding: str | tuple[int, int]) -> tuple[int, int]:
    """Padding of the stride-dilated input for one spatial dimension (``lax.conv_transpose``'s
    convention): ``'SAME'`` gives ``stride * n`` outputs, ``'VALID'`` gives
    ``stride * n + max(kernel_size - stride, 0)``; an explicit ``(lo, hi)`` is used as is.
    ``kernel_size`` is the dilated (effective) size."""
    if isinstance(padding, str):
        if padding == "SAME":
            total = kernel_size + stride - 2
            lo = kernel_size - 1 if stride > kernel_size - 1 else int(np.ceil(total / 2))
        elif padding == "VALID":
            total = kernel_size + stride - 2 + max(kernel_size - stride, 0)
            lo = kernel_size - 1
        else:
            raise ValueError(f"padding must be 'SAME', 'VALID' or (low, high) pairs, got {padding!r}")
        return lo, total - lo
    lo, hi = padding
    return int(lo), int(hi)


def _forward_conv_padding(n_in: int, n_out: int, k: int, s: int, d: int, lo: int) -> tuple[int, int]:
    """Padding of the strided convolution ``C`` (from the transposed conv's output space back to
    its input space) whose adjoint the transposed convolution is: ``n_out -> n_in`` positions."""
    span = d * (k - 1)
    p_lo = span - lo
    p_hi = s * (n_in - 1) + span + 1 - n_out - p_lo
    return p_lo, p_hi


def conv_transpose(
    x: Array,
    kernel: Array,
    strides: Sequence[int],
    padding: Padding,
    *,
    kernel_dilation: Sequence[int] | None = None,
    transpose_kernel: bool = False,
    precision: Any = None,
    onednn: bool = False,
) -> Array:
    """``lax.conv_transpose`` (channels-last: ``x: [N, *spatial, C_in]``, ``kernel: [*k, C_in,
    C_out]``, or ``[*k, C_out, C_in]`` with ``transpose_kernel``) with the same values and
    gradients computed as ordinary strided convolutions (see module docstring), oneDNN's with
    ``onednn``."""
    n_spatial = x.ndim - 2
    strides = tuple(int(s) for s in strides)
    dilation = tuple(int(d) for d in (kernel_dilation or (1,) * n_spatial))
    if len(strides) != n_spatial or len(dilation) != n_spatial:
        raise ValueError(
            f"strides {strides} and kernel_dilation {dilation} need one entry per spatial dimension ({n_spatial})"
        )
    if isinstance(padding, str):
        per_dim = [padding] * n_spatial
    else:
        per_dim = [tuple(p) for p in padding]
        if len(per_dim) != n_spatial:
            raise ValueError(f"padding {padding!r} needs one (low, high) pair per spatial dimension")
    pads = tuple(
        transpose_padding(d * (k - 1) + 1, s, p)
        for k, s, d, p in zip(kernel.shape[:n_spatial], strides, dilation, per_dim, strict=True)
    )
    out_spatial = tuple(
        (n - 1) * s + 1 + lo + hi - d * (k - 1)
        for n, s, d, k, (lo, hi) in zip(x.shape[1:-1], strides, dilation, kernel.shape[:n_spatial], pads, strict=True)
    )
    conv_pads = tuple(
        _forward_conv_padding(n, o, k, s, d, lo)
        for n, o, k, s, d, (lo, _) in zip(x.shape[1:-1], out_spatial, kernel.shape[:n_spatial], strides, dilation,
                                          pads, strict=True)
    )
    # flax's kernel is flip_swap(W) for the strided convolution's W (maps C_out channels to C_in),
    # or W itself with transpose_kernel.
    return conv_input_grad(x, kernel, out_spatial, strides, conv_pads, dilation, precision,
                           transposed_kernel=not transpose_kernel, onednn=onednn)


class ConvTranspose(nn.Module):
    """Drop-in for ``flax.linen.ConvTranspose`` (same attributes, parameters and outputs) whose
    backward pass avoids XLA's slow kernel-gradient path (see module docstring).

    ``padding='CIRCULAR'`` is not supported (use flax's layer for it).
    """

    features: int
    kernel_size: int | Sequence[int]
    strides: Sequence[int] | None = None
    padding: str | int | Sequence[int | tuple[int, int]] = "SAME"
    kernel_dilation: Sequence[int] | None = None
    use_bias: bool = True
    mask: Array | None = None
    dtype: Any = None
    param_dtype: Any = jnp.float32
    precision: Any = None
    kernel_init: Any = nn.initializers.lecun_normal()
    bias_init: Any = nn.initializers.zeros_init()
    transpose_kernel: bool = False
    onednn: bool = False  # oneDNN's convolutions (CPU programs only; jaxgan.cpu.onednn)

    @nn.compact
    def __call__(self, inputs: Array) -> Array:
        """``inputs: [*batch, *spatial, C_in]`` -> ``[*batch, *spatial', features]``."""
        kernel_size = (self.kernel_size,) if isinstance(self.kernel_size, int) else tuple(self.kernel_size)
        rank = len(kernel_size)

        def broadcast(v) -> tuple[int, ...]:
            v = 1 if v is None else v
            return (v,) * rank if isinstance(v, int) else tuple(v)

        batch_shape = inputs.shape[: inputs.ndim - rank - 1]
        squeeze = len(batch_shape) == 0
        x = inputs[None] if squeeze else inputs.reshape((-1, *inputs.shape[len(batch_shape):]))
        in_features = x.shape[-1]
        if self.transpose_kernel:
            kernel_shape = (*kernel_size, self.features, in_features)
        else:
            kernel_shape = (*kernel_size, in_features, self.features)
        if self.mask is not None and self.mask.shape != kernel_shape:
            raise ValueError(
                f"Mask needs to have the same shape as weights. Shapes are: {self.mask.shape}, {kernel_shape}"
            )
        kernel = self.param("kernel", self.kernel_init, kernel_shape, self.param_dtype)
        if self.mask is not None:
            kernel = kernel * self.mask
        padding = nn.linear.canonicalize_padding(self.padding, rank)
        if padding == "CIRCULAR":
            raise NotImplementedError(
                "jaxgan.nets.ConvTranspose does not implement padding='CIRCULAR'; use flax.linen.ConvTranspose"
            )
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
        x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
        y = conv_transpose(
            x, kernel, broadcast(self.strides), padding, kernel_dilation=broadcast(self.kernel_dilation),
            transpose_kernel=self.transpose_kernel, precision=self.precision, onednn=self.onednn,
        )
        if bias is not None:
            y = y + bias.reshape((1,) * (y.ndim - 1) + (-1,))
        if squeeze:
            return y[0]
        return y.reshape((*batch_shape, *y.shape[1:]))
