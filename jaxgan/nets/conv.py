"""Strided convolution and its two gradients as three mutually adjoint functions, each emitted
as a *canonical* convolution (channels-last input, ``HWIO`` kernel).

Why: XLA's CPU backend runs a convolution on its fast (Eigen/YNNPACK) path only when the
convolution is canonical, and it canonicalises only the convolutions of the entry computation
(``ConvCanonicalization`` walks ``module->entry_computation()``). JAX's transpose rules emit
the weight gradient with batch and feature swapped (``f01b_i01o->01bf``) and the input gradient
with an ``OI``-ordered kernel; inside a ``lax.scan`` / ``while`` body (every jaxgan training
chunk, and ``GAN.train_step`` itself) those stay non-canonical and fall to a naive loop nest.
Measured here (64x16x16x128 -> 8x8x256, k=4, s=2): the weight gradient took 42 s inside a
scan vs 0.43 s outside; written canonically it is as fast inside as outside.

With ``C`` the strided convolution ``z = C_W(u)``:

* :func:`conv` ``(u, W) -> z``
* :func:`conv_input_grad` ``(g, W) -> C_W^T g`` (a transposed convolution: input dilated by the
  stride, kernel flipped with its channel axes swapped)
* :func:`conv_weight_grad` ``(u, g) -> d<g, C_W(u)>/dW``

Each is linear in each argument and the derivatives of each are the others, so every
``custom_vjp`` below is closed under differentiation: gradients of any order (gradient penalties,
unrolled lookahead) stay canonical. Layouts are flax's: ``u: [N, *spatial, C_in]``,
``W: [*k, C_in, C_out]``. Only ``lhs_dilation = 1`` and one feature group are handled here;
:func:`conv_general_dilated` (a drop-in for ``lax.conv_general_dilated`` that flax's
``nn.Conv(conv_general_dilated=...)`` accepts) falls back to lax for anything else.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array
Pads = tuple[tuple[int, int], ...]

_SPATIAL = "HWD"


def dimension_numbers(n_spatial: int) -> tuple[str, str, str]:
    """Channels-last layouts (flax's) for 1 to 3 spatial dimensions."""
    if not 1 <= n_spatial <= 3:
        raise ValueError(f"convolutions with 1 to 3 spatial dimensions are supported, got {n_spatial}")
    s = _SPATIAL[:n_spatial]
    return f"N{s}C", f"{s}IO", f"N{s}C"


def flip_swap(w: Array) -> Array:
    """Flip a kernel's spatial axes and swap its channel axes (an involution)."""
    return jnp.flip(w, tuple(range(w.ndim - 2))).swapaxes(-1, -2)


def _forward(u, w, strides, pads, dilation, precision):
    return lax.conv_general_dilated(
        u, w, strides, pads, rhs_dilation=dilation, dimension_numbers=dimension_numbers(u.ndim - 2),
        precision=precision,
    )


def _input_grad(g, w, in_spatial, strides, pads, dilation, precision):
    span = [d * (k - 1) for k, d in zip(w.shape[:-2], dilation, strict=True)]
    grad_pads = []
    for i, (h, s, (lo, _)) in enumerate(zip(in_spatial, strides, pads, strict=True)):
        m = g.shape[1 + i]
        plo = span[i] - lo
        grad_pads.append((plo, h - (m - 1) * s - 1 - plo + span[i]))
    return lax.conv_general_dilated(
        g, flip_swap(w), (1,) * len(strides), tuple(grad_pads), lhs_dilation=strides, rhs_dilation=dilation,
        dimension_numbers=dimension_numbers(g.ndim - 2), precision=precision,
    )


def _weight_grad(u, g, k_spatial, strides, pads, dilation, precision):
    n = u.ndim - 2
    grad_pads = []
    for i, (k, s, d, (lo, _)) in enumerate(zip(k_spatial, strides, dilation, pads, strict=True)):
        h, m = u.shape[1 + i], g.shape[1 + i]
        grad_pads.append((lo, d * (k - 1) + s * (m - 1) + 1 - h - lo))
    # Batch becomes the contracted "feature" axis: lhs [C_in, *spatial, N], rhs [*m, N, C_out].
    lhs = jnp.moveaxis(u, (0, n + 1), (n + 1, 0))
    rhs = jnp.moveaxis(g, 0, n)
    out = lax.conv_general_dilated(
        lhs, rhs, dilation, tuple(grad_pads), rhs_dilation=strides, dimension_numbers=dimension_numbers(n),
        precision=precision,
    )  # [C_in, *k, C_out]
    return jnp.moveaxis(out, 0, n)


# Static arguments: strides, pads, dilation, precision (and a spatial shape for the gradients).


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def conv(u: Array, w: Array, strides, pads, dilation, precision=None) -> Array:
    """``z = C_W(u)``: strided convolution, explicit ``pads``."""
    return _forward(u, w, strides, pads, dilation, precision)


def _conv_fwd(u, w, strides, pads, dilation, precision):
    return conv(u, w, strides, pads, dilation, precision), (u, w)


def _conv_bwd(strides, pads, dilation, precision, res, g):
    u, w = res
    g = g.astype(u.dtype)
    du = conv_input_grad(g, w, u.shape[1:-1], strides, pads, dilation, precision)
    dw = conv_weight_grad(u, g, w.shape[:-2], strides, pads, dilation, precision)
    return du, dw.astype(w.dtype)


conv.defvjp(_conv_fwd, _conv_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def conv_input_grad(g: Array, w: Array, in_spatial, strides, pads, dilation, precision=None) -> Array:
    """``C_W^T g``: the gradient of :func:`conv` with respect to its input (``in_spatial`` is
    the input's spatial shape). This is a transposed convolution."""
    return _input_grad(g, w, in_spatial, strides, pads, dilation, precision)


def _input_grad_fwd(g, w, in_spatial, strides, pads, dilation, precision):
    return conv_input_grad(g, w, in_spatial, strides, pads, dilation, precision), (g, w)


def _input_grad_bwd(in_spatial, strides, pads, dilation, precision, res, c):
    g, w = res
    c = c.astype(g.dtype)
    # <c, C_W^T g> = <C_W c, g>: linear in g with adjoint C_W, and in W with the weight gradient.
    dg = conv(c, w, strides, pads, dilation, precision)
    dw = conv_weight_grad(c, g, w.shape[:-2], strides, pads, dilation, precision)
    return dg, dw.astype(w.dtype)


conv_input_grad.defvjp(_input_grad_fwd, _input_grad_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def conv_weight_grad(u: Array, g: Array, k_spatial, strides, pads, dilation, precision=None) -> Array:
    """``d<g, C_W(u)>/dW`` ``[*k, C_in, C_out]``: the gradient of :func:`conv` with respect to
    its kernel, at input ``u`` and output cotangent ``g``."""
    return _weight_grad(u, g, k_spatial, strides, pads, dilation, precision)


def _weight_grad_fwd(u, g, k_spatial, strides, pads, dilation, precision):
    return conv_weight_grad(u, g, k_spatial, strides, pads, dilation, precision), (u, g)


def _weight_grad_bwd(k_spatial, strides, pads, dilation, precision, res, c):
    u, g = res
    c = c.astype(u.dtype)
    # <c, dW(u, g)> = <C_c(u), g> = <u, C_c^T g>.
    du = conv_input_grad(g, c, u.shape[1:-1], strides, pads, dilation, precision)
    dg = conv(u, c, strides, pads, dilation, precision)
    return du, dg


conv_weight_grad.defvjp(_weight_grad_fwd, _weight_grad_bwd)


def _canonical_channels_last(dn: Any, ndim: int) -> bool:
    """Whether ``dimension_numbers`` is flax's channels-last (N, *spatial, C) / (*k, I, O)."""
    if dn is None:
        return False
    want = lax.conv_dimension_numbers((1,) * ndim, (1,) * ndim, dimension_numbers(ndim - 2))
    if isinstance(dn, tuple) and len(dn) == 3 and all(isinstance(s, str) for s in dn):
        dn = lax.conv_dimension_numbers((1,) * ndim, (1,) * ndim, dn)
    return tuple(map(tuple, dn)) == tuple(map(tuple, want))


def conv_general_dilated(
    lhs: Array,
    rhs: Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
) -> Array:
    """``lax.conv_general_dilated`` with canonical gradients (see module docstring) for
    channels-last convolutions without input dilation or groups; anything else goes to lax.
    Pass it to flax: ``nn.Conv(..., conv_general_dilated=jaxgan.nets.conv.conv_general_dilated)``."""
    n = lhs.ndim - 2
    one = (1,) * n
    fast = (
        tuple(lhs_dilation or one) == one
        and feature_group_count == 1
        and batch_group_count == 1
        and preferred_element_type is None
        and 1 <= n <= 3
        and _canonical_channels_last(dimension_numbers, lhs.ndim)
    )
    if not fast:
        return lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
            feature_group_count, batch_group_count, precision, preferred_element_type,
        )
    strides = tuple(int(s) for s in window_strides)
    dilation = tuple(int(d) for d in (rhs_dilation or one))
    if isinstance(padding, str):
        k_eff = [d * (k - 1) + 1 for k, d in zip(rhs.shape[:n], dilation, strict=True)]
        pads = tuple(lax.padtype_to_pads(lhs.shape[1:-1], k_eff, strides, padding))
    else:
        pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    return conv(lhs, rhs, strides, pads, dilation, precision)
