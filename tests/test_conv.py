"""jaxgan.cpu.conv: strided convolution with canonical gradients, against lax (values,
gradients of first and second order; with XLA's kernels and with oneDNN's), and as flax
nn.Conv's convolution function."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgan.cpu import conv as conv_lib

DN = {1: ("NHC", "HIO", "NHC"), 2: ("NHWC", "HWIO", "NHWC"), 3: ("NHWDC", "HWDIO", "NHWDC")}

# (input spatial, kernel spatial, strides, padding, rhs_dilation)
CASES = [
    ((16, 16), (4, 4), (2, 2), ((1, 1), (1, 1)), (1, 1)),  # DCGAN discriminator layer
    ((4, 4), (4, 4), (1, 1), "VALID", (1, 1)),  # DCGAN's last layer: to one logit
    ((9, 7), (3, 3), (2, 2), "SAME", (1, 1)),  # odd sizes: unused trailing input rows
    ((10, 10), (3, 2), (3, 2), ((2, 0), (1, 3)), (1, 1)),
    ((11, 9), (3, 3), (1, 2), "SAME", (2, 1)),  # dilated kernel
    ((8, 8), (3, 3), (2, 2), ((-1, 2), (0, 0)), (1, 1)),  # negative padding (a crop)
    ((12,), (4,), (2,), ((1, 1),), (1,)),  # 1-D
    ((6, 5, 4), (2, 3, 2), (2, 1, 2), "VALID", (1, 1, 1)),  # 3-D
]


@pytest.mark.parametrize("c_in", [3, conv_lib.SUBPIXEL_MIN_CHANNELS])  # both ways of the input gradient
@pytest.mark.parametrize("case", CASES, ids=[str(i) for i in range(len(CASES))])
def test_values_and_gradients_equal_lax(case, c_in, conv_backend):
    spatial, kernel, strides, padding, dilation = case
    n = len(spatial)
    if conv_backend == "onednn" and n != 2:
        pytest.skip("oneDNN takes 2-D convolutions; the others are XLA's either way")
    u = jax.random.normal(jax.random.key(0), (2, *spatial, c_in))
    w = jax.random.normal(jax.random.key(1), (*kernel, c_in, 4))

    def run(fn):
        def f(u_, w_):
            return fn(u_, w_, strides, padding, rhs_dilation=dilation, dimension_numbers=DN[n])

        z = f(u, w)
        cot = jax.random.normal(jax.random.key(2), z.shape)
        first = jax.grad(lambda a, b: jnp.sum(f(a, b) * cot), argnums=(0, 1))
        # Second order, as in a gradient penalty: d/dw of |d<z, cot>/du|^2.
        second = jax.grad(lambda b: jnp.sum(first(u, b)[0] ** 2))
        return z, first(u, w), second(w)

    ours = jax.jit(lambda: run(functools.partial(conv_lib.conv_general_dilated, onednn=conv_backend == "onednn")))()
    ref = jax.jit(lambda: run(jax.lax.conv_general_dilated))()
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), ours, ref)


def test_gradients_are_emitted_canonically():
    """Every convolution of the first- and second-order gradients is channels-last/HWIO, the
    layout XLA's CPU backend needs for its fast path inside loops; JAX's own rules are not."""
    u = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    w = jax.random.normal(jax.random.key(1), (4, 4, 3, 5))

    def labels(fn):
        def loss(u_, w_):
            z = fn(u_, w_, (2, 2), ((1, 1), (1, 1)), dimension_numbers=DN[2])
            return jnp.sum(jnp.tanh(z))

        def both(u_, w_):
            g = jax.grad(loss, argnums=(0, 1))(u_, w_)
            return g, jax.grad(lambda b: jnp.sum(jax.grad(loss)(u_, b) ** 2))(w_)

        out = set()
        for eqn in jax.make_jaxpr(both)(u, w).eqns:
            _collect(eqn, out)
        return out

    canonical = jax.lax.conv_dimension_numbers((1,) * 4, (1,) * 4, DN[2])
    assert labels(conv_lib.conv_general_dilated) == {canonical}
    assert canonical in labels(jax.lax.conv_general_dilated) and len(labels(jax.lax.conv_general_dilated)) > 1


def _collect(eqn, out):
    if eqn.primitive.name == "conv_general_dilated":
        out.add(eqn.params["dimension_numbers"])
    for v in eqn.params.values():
        for sub in (v if isinstance(v, tuple | list) else (v,)):
            jaxpr = getattr(sub, "jaxpr", sub)
            for e in getattr(jaxpr, "eqns", ()):
                _collect(e, out)


def test_as_flax_conv_function():
    kwargs = dict(features=6, kernel_size=(4, 4), strides=(2, 2), padding=((1, 1), (1, 1)))
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    ref_layer = nn.Conv(**kwargs)
    layer = nn.Conv(**kwargs, conv_general_dilated=conv_lib.conv_general_dilated)
    params = jax.jit(ref_layer.init)(jax.random.key(1), x)
    jax.tree.map(np.testing.assert_array_equal, jax.jit(layer.init)(jax.random.key(1), x), params)

    def grads(m):
        return jax.grad(lambda p, xx: jnp.sum(m.apply(p, xx) ** 2), argnums=(0, 1))(params, x)

    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4),
                 jax.jit(lambda: grads(layer))(), jax.jit(lambda: grads(ref_layer))())


def test_unsupported_options_fall_back_to_lax():
    u = jax.random.normal(jax.random.key(0), (2, 6, 6, 4))
    w = jax.random.normal(jax.random.key(1), (3, 3, 2, 4))
    for kw in ({"feature_group_count": 2}, {"lhs_dilation": (2, 2)}):
        ww = w if "feature_group_count" in kw else jnp.concatenate([w, w], axis=2)
        pads = ((1, 1), (1, 1))
        got = conv_lib.conv_general_dilated(u, ww, (1, 1), pads, dimension_numbers=DN[2], **kw)
        ref = jax.lax.conv_general_dilated(u, ww, (1, 1), pads, dimension_numbers=DN[2], **kw)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel, strides", [((4, 4), (2, 2)), ((3, 5), (2, 3)), ((5,), (2,)), ((2, 3, 4), (2, 1, 3))])
def test_phase_kernels_of_a_transposed_kernel_need_no_flip_or_swap(kernel, strides):
    """The sub-pixel kernels taken straight from a transposed convolution's kernel (strided
    slices) are those of ``flip_swap`` of it, the strided convolution's kernel."""
    taps = tuple(-(-k // s) for k, s in zip(kernel, strides, strict=True))
    k_t = jax.random.normal(jax.random.key(0), (*kernel, 6, 5))  # [*k, C_in, C_out] of the transposed conv
    direct = conv_lib._phase_kernels(k_t, strides, taps, transposed=True)
    via_w = conv_lib._phase_kernels(conv_lib.flip_swap(k_t), strides, taps, transposed=False)
    assert direct.shape == (int(np.prod(strides)), *taps, 6, 5)
    np.testing.assert_array_equal(direct, via_w)
    # Each tap of the kernel lands in exactly one phase; the rest are zero taps.
    np.testing.assert_allclose(np.sort(np.abs(np.asarray(direct)).ravel())[-k_t.size:], np.sort(np.abs(k_t).ravel()))
