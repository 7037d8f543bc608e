"""Strided convolution and its two gradients as three mutually adjoint functions, each emitted
as a *canonical* convolution (channels-last input, ``HWIO`` kernel).

Why: XLA's CPU backend runs a convolution on its fast path only when the convolution is
canonical, and it canonicalises only the convolutions of the entry computation. JAX's transpose
rules emit the weight gradient with batch and feature swapped and the input gradient with an
``OI``-ordered kernel; inside a ``lax.scan`` / ``while`` body (every training chunk) those stay
non-canonical and fall to a naive loop nest.

With ``C`` the strided convolution ``z = C_W(u)``:

* :func:`conv` ``(u, W) -> z``
* :func:`conv_input_grad` ``(g, W) -> C_W^T g`` (a transposed convolution; strided, it is computed
  as stride-1 convolutions over the space-to-depth form, without the zeros lax inserts)
* :func:`conv_weight_grad` ``(u, g) -> d<g, C_W(u)>/dW``

With ``onednn=True`` the three are oneDNN's primitives (:mod:`jaxgan.cpu.onednn`) for 2-D float32
inputs, and a strided transposed convolution is oneDNN's in one call.

Each is linear in each argument and the derivatives of each are the others, so every
``custom_vjp`` below is closed under differentiation: gradients of any order (gradient penalties,
unrolled lookahead) stay canonical. Layouts are flax's: ``u: [N, *spatial, C_in]``,
``W: [*k, C_in, C_out]``. Only ``lhs_dilation = 1`` and one feature group are handled here;
:func:`conv_general_dilated` (a drop-in for ``lax.conv_general_dilated`` that flax's
``nn.Conv(conv_general_dilated=...)`` accepts) falls back to lax for anything else.
"""

from __future__ import annotations

import functools
import itertools
import math
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


def _forward(u, w, strides, pads, dilation, precision, onednn):
    def xla(u, w):
        return lax.conv_general_dilated(
            u, w, strides, pads, rhs_dilation=dilation, dimension_numbers=dimension_numbers(u.ndim - 2),
            precision=precision,
        )

    if onednn and _onednn().eligible(u, w, pads=pads):
        return _onednn().forward(u, w, strides, pads, dilation)
    return xla(u, w)


def _input_grad(g, w, in_spatial, strides, pads, dilation, precision, onednn):
    def xla(g, w):
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

    if onednn and _onednn().eligible(g, w, pads=pads):
        return _onednn().backward_data(g, w, in_spatial, strides, pads, dilation)
    return xla(g, w)


def _weight_grad(u, g, k_spatial, strides, pads, dilation, precision, onednn):
    def xla(u, g):
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

    if onednn and _onednn().eligible(u, g, pads=pads):
        return _onednn().backward_weights(u, g, k_spatial, strides, pads, dilation)
    return xla(u, g)


def _onednn():
    from jaxgan.cpu import onednn

    return onednn


# Static arguments: strides, pads, dilation, precision, onednn (and a spatial shape for the gradients).


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def conv(u: Array, w: Array, strides, pads, dilation, precision=None, onednn: bool = False) -> Array:
    """``z = C_W(u)``: strided convolution, explicit ``pads``."""
    return _forward(u, w, strides, pads, dilation, precision, onednn)


def _conv_fwd(u, w, strides, pads, dilation, precision, onednn):
    return conv(u, w, strides, pads, dilation, precision, onednn), (u, w)


def _conv_bwd(strides, pads, dilation, precision, onednn, res, g):
    u, w = res
    g = g.astype(u.dtype)
    du = conv_input_grad(g, w, u.shape[1:-1], strides, pads, dilation, precision, onednn=onednn)
    dw = conv_weight_grad(u, g, w.shape[:-2], strides, pads, dilation, precision, onednn)
    return du, dw.astype(w.dtype)


conv.defvjp(_conv_fwd, _conv_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6, 7))
def _conv_input_grad(g: Array, w: Array, in_spatial, strides, pads, dilation, precision=None,
                     onednn: bool = False) -> Array:
    """``C_W^T g``: the gradient of :func:`conv` with respect to its input (``in_spatial`` is
    the input's spatial shape). This is a transposed convolution."""
    return _input_grad(g, w, in_spatial, strides, pads, dilation, precision, onednn)


def _input_grad_fwd(g, w, in_spatial, strides, pads, dilation, precision, onednn):
    return _conv_input_grad(g, w, in_spatial, strides, pads, dilation, precision, onednn), (g, w)


def _input_grad_bwd(in_spatial, strides, pads, dilation, precision, onednn, res, c):
    g, w = res
    c = c.astype(g.dtype)
    # <c, C_W^T g> = <C_W c, g>: linear in g with adjoint C_W, and in W with the weight gradient.
    dg = conv(c, w, strides, pads, dilation, precision, onednn)
    dw = conv_weight_grad(c, g, w.shape[:-2], strides, pads, dilation, precision, onednn)
    return dg, dw.astype(w.dtype)


_conv_input_grad.defvjp(_input_grad_fwd, _input_grad_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6, 7))
def conv_weight_grad(u: Array, g: Array, k_spatial, strides, pads, dilation, precision=None,
                     onednn: bool = False) -> Array:
    """``d<g, C_W(u)>/dW`` ``[*k, C_in, C_out]``: the gradient of :func:`conv` with respect to
    its kernel, at input ``u`` and output cotangent ``g``."""
    return _weight_grad(u, g, k_spatial, strides, pads, dilation, precision, onednn)


def _weight_grad_fwd(u, g, k_spatial, strides, pads, dilation, precision, onednn):
    return conv_weight_grad(u, g, k_spatial, strides, pads, dilation, precision, onednn), (u, g)


def _weight_grad_bwd(k_spatial, strides, pads, dilation, precision, onednn, res, c):
    u, g = res
    c = c.astype(u.dtype)
    # <c, dW(u, g)> = <C_c(u), g> = <u, C_c^T g>.
    du = conv_input_grad(g, c, u.shape[1:-1], strides, pads, dilation, precision, onednn=onednn)
    dg = conv(u, c, strides, pads, dilation, precision, onednn)
    return du, dg


conv_weight_grad.defvjp(_weight_grad_fwd, _weight_grad_bwd)


# The transposed convolution through the space-to-depth ("phase") form of the strided one. With
# stride s and kernel k along a dimension, write a kernel tap t = s*q + r (phase r < s, q < K =
# ceil(k/s)) and split the padded input into blocks of s positions, u_pad[s*b + r]. Then
#     z[m] = sum_t u_pad[s*m + t] W[t] = sum_q sum_r u_pad[s*(m + q) + r] W[s*q + r]:
# a stride-1 convolution over blocks, with the phases in the channel axis and a K-tap kernel
# (taps beyond k are zero). Its transpose, C_W^T g, is then a stride-1 transposed convolution,
# which multiplies no inserted zeros; lax's form convolves the input dilated by the stride, s**d
# multiply-adds per useful one. (The forward strided convolution and its weight gradient stay in
# lax's form: their space-to-depth versions were no faster.)


def _phase_layout(in_spatial, k_spatial, strides, pads) -> tuple[tuple[int, ...], Pads]:
    """Kernel taps per phase ``K`` and the padding that makes the padded input exactly
    ``s * (m - 1 + K)`` long (the high side may be negative: unused trailing input is cut)."""
    taps, phase_pads = [], []
    for h, k, s, (lo, hi) in zip(in_spatial, k_spatial, strides, pads, strict=True):
        m = (h + lo + hi - k) // s + 1
        kq = -(-k // s)
        taps.append(kq)
        phase_pads.append((lo, s * (m - 1 + kq) - h - lo))
    return tuple(taps), tuple(phase_pads)


def _from_phases(y: Array, strides, phase_pads: Pads) -> Array:
    """``[N, *blocks, prod(s) * C]`` (phases major in the channels) -> ``[N, *positions, C]``,
    then the padding removed (a negative high padding becomes zeros)."""
    n = len(strides)
    blocks = y.shape[1:-1]
    c = y.shape[-1] // math.prod(strides)
    y = y.reshape(y.shape[0], *blocks, *strides, c)
    perm = (0, *(x for i in range(n) for x in (1 + i, 1 + n + i)), 2 * n + 1)
    y = y.transpose(perm).reshape(y.shape[0], *(b * s for b, s in zip(blocks, strides, strict=True)), c)
    return lax.pad(y, jnp.zeros((), y.dtype), ((0, 0, 0), *((-lo, -hi, 0) for lo, hi in phase_pads), (0, 0, 0)))


def _split_taps(w: Array, strides, taps, *, low: bool) -> Array:
    """``[*k, A, B] -> [K1, s1, ..., Kn, sn, A, B]``: each spatial axis zero-padded to ``s*K``
    taps (at the low end if ``low``, else the high end), padded tap ``s*q + r`` at ``[q, r]``."""
    n = len(strides)
    extra = [s * kq - k for k, s, kq in zip(w.shape[:n], strides, taps, strict=True)]
    side = [(e, 0, 0) if low else (0, e, 0) for e in extra]
    w = lax.pad(w, jnp.zeros((), w.dtype), (*side, (0, 0, 0), (0, 0, 0)))
    return w.reshape(*(x for kq, s in zip(taps, strides, strict=True) for x in (kq, s)), *w.shape[n:])


def _kernel_to_phases(w: Array, strides, taps) -> Array:
    """``[*k, C_in, C_out]`` -> ``[*K, prod(s) * C_in, C_out]`` (zero taps appended up to s*K)."""
    n = len(strides)
    w = _split_taps(w, strides, taps, low=False)
    perm = (*range(0, 2 * n, 2), *range(1, 2 * n, 2), 2 * n, 2 * n + 1)
    return w.transpose(perm).reshape(*taps, -1, w.shape[-1])


# Input channels from which one convolution per phase beats the blocks form (an image layer's few
# channels make per-phase convolutions that run far below the kernels' peak).
SUBPIXEL_MIN_CHANNELS = 16


def _phased(strides, dilation) -> bool:
    return any(s > 1 for s in strides) and all(d == 1 for d in dilation)


def _phase_kernels(w: Array, strides, taps, transposed: bool) -> Array:
    """The stride-1 kernels of the sub-pixel form, ``[prod(s), *K, C_out, C_in]`` (phase r's
    kernel ``flip_swap`` of W's taps ``s*q + r``), from ``w = W`` or, ``transposed``, from
    ``w = flip_swap(W)`` (a transposed convolution's kernel). From the latter they are plain
    strided spatial slices: with ``w`` zero-padded at the low end to ``s*K`` taps, phase r's
    taps are ``s*q + s - 1 - r``; no channel swap, so its gradient needs no transpose either."""
    n = len(strides)
    w = _split_taps(w, strides, taps, low=transposed)
    s_axes, k_axes = tuple(range(1, 2 * n, 2)), tuple(range(0, 2 * n, 2))
    if transposed:
        w = jnp.flip(w.transpose(*s_axes, *k_axes, 2 * n, 2 * n + 1), tuple(range(n)))
    else:
        w = jnp.flip(w.transpose(*s_axes, *k_axes, 2 * n + 1, 2 * n), tuple(range(n, 2 * n)))
    return w.reshape(-1, *w.shape[n:])


def conv_input_grad(g: Array, w: Array, in_spatial, strides, pads, dilation, precision=None, *,
                    transposed_kernel: bool = False, onednn: bool = False) -> Array:
    """``C_W^T g``: the gradient of :func:`conv` with respect to its input (``in_spatial`` is
    the input's spatial shape). This is a transposed convolution. With ``transposed_kernel``,
    ``w`` is ``flip_swap(W)``: the transposed convolution's own ``[*k, C_in, C_out]`` kernel
    (flax's ``ConvTranspose`` layout), which the sub-pixel form uses without a channel swap.

    Strided, it is computed from the space-to-depth form in one of two ways: with at least
    :data:`SUBPIXEL_MIN_CHANNELS` input channels, one stride-1 convolution per phase (sub-pixel
    convolution), each computing exactly its phase's input positions, interleaved; with fewer
    (an image layer), one stride-1 convolution for all phases' blocks, whose positions in the
    padding are then cut. The first wastes nothing; the second makes one wide convolution
    instead of several of a few channels each. With ``onednn`` and at least
    :data:`SUBPIXEL_MIN_CHANNELS` input channels, it is oneDNN's transposed convolution instead,
    one call (faster than the sub-pixel form there)."""
    in_spatial = tuple(in_spatial)
    c_in = w.shape[-1] if transposed_kernel else w.shape[-2]
    direct = not _phased(strides, dilation) or (
        onednn and c_in >= SUBPIXEL_MIN_CHANNELS and _onednn().eligible(g, w, pads=pads))
    if direct:
        w = flip_swap(w) if transposed_kernel else w
        return _conv_input_grad(g, w, in_spatial, strides, pads, dilation, precision, onednn)
    return _subpixel_input_grad(g, w, in_spatial, strides, pads, precision, transposed_kernel, onednn)


def _subpixel_input_grad(g, w, in_spatial, strides, pads, precision, transposed_kernel, onednn):
    """:func:`conv_input_grad` for strides > 1 without dilation, in the space-to-depth forms."""
    n = len(strides)
    one = (1,) * n
    c_in = w.shape[-1] if transposed_kernel else w.shape[-2]
    taps, phase_pads = _phase_layout(in_spatial, w.shape[:-2], strides, pads)
    if c_in < SUBPIXEL_MIN_CHANNELS:
        w = flip_swap(w) if transposed_kernel else w  # the blocks form takes W itself
        wp = _kernel_to_phases(w, strides, taps)  # [*K, prod(s) * C_in, C_out]
        blocks = tuple((h + lo + hi) // s for h, s, (lo, hi) in zip(in_spatial, strides, phase_pads, strict=True))
        y = _conv_input_grad(g, wp, blocks, one, ((0, 0),) * n, one, precision, onednn)
        return _from_phases(y, strides, phase_pads)
    pk = _phase_kernels(w, strides, taps, transposed_kernel)  # [prod(s), *K, C_out, C_in]
    # Along one dimension, input position x sits at padded position x + lo = s*b + r: phase r,
    # block b. Phase r's first position x0 = (r - lo) mod s; it has ceil((h - x0) / s) of them,
    # the first in block b0 = (x0 + lo) // s. Block b of the transposed stride-1 convolution is
    # sum_q g[b - q] W[q]: a correlation with the flipped kernel, padded so that it starts at b0.
    per_dim = []
    for h, s, kq, (lo, _), m in zip(in_spatial, strides, taps, phase_pads, g.shape[1:-1], strict=True):
        rows = []
        for x0 in range(s):
            r, count = (x0 + lo) % s, -(-(h - x0) // s)
            b0 = (x0 + lo) // s
            pad_lo = kq - 1 - b0
            rows.append((r, count, (pad_lo, count - m + kq - 1 - pad_lo)))
        per_dim.append(rows)
    size = tuple(-(-h // s) for h, s in zip(in_spatial, strides, strict=True))
    outs = []
    for combo in itertools.product(*per_dim):
        phase = 0
        for (r, _, _), s in zip(combo, strides, strict=True):
            phase = phase * s + r
        y = conv(g, pk[phase], one, tuple(p for _, _, p in combo), one, precision, onednn)
        outs.append(lax.pad(y, jnp.zeros((), y.dtype),
                            ((0, 0, 0), *((0, full - c, 0) for (_, c, _), full in zip(combo, size, strict=True)),
                             (0, 0, 0))))
    # Phases ordered by first position (x0 major to minor over dimensions): interleave them.
    y = jnp.stack(outs, axis=1).reshape(g.shape[0], *strides, *size, c_in)  # [N, *s, *size, C]
    perm = (0, *(x for i in range(n) for x in (1 + n + i, 1 + i)), 2 * n + 1)
    y = y.transpose(perm).reshape(g.shape[0], *(z * s for z, s in zip(size, strides, strict=True)), c_in)
    return y[(slice(None), *(slice(0, h) for h in in_spatial))]


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
    *,
    onednn: bool = False,
) -> Array:
    """``lax.conv_general_dilated`` with canonical gradients (see module docstring) for
    channels-last convolutions without input dilation or groups, oneDNN's with ``onednn``;
    anything else goes to lax. Pass it to flax:
    ``nn.Conv(..., conv_general_dilated=jaxgan.cpu.conv.conv_general_dilated)``."""
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
    return conv(lhs, rhs, strides, pads, dilation, precision, onednn)
