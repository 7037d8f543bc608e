"""jaxgan.nets.ConvTranspose against flax.linen.ConvTranspose: parameters, values, gradients
(with XLA's convolution kernels and with oneDNN's)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgan.cpu.conv import SUBPIXEL_MIN_CHANNELS
from jaxgan.cpu.conv_transpose import conv_transpose
from jaxgan.nets import ConvTranspose

# (input spatial shape, kernel, strides, padding, kernel_dilation, transpose_kernel)
CASES = [
    ((1, 1), (4, 4), (1, 1), "VALID", None, False),  # DCGAN: latent -> 4x4
    ((1, 1), (7, 7), (1, 1), "VALID", None, False),  # DCGAN-28: latent -> 7x7
    ((4, 4), (4, 4), (2, 2), "SAME", None, False),  # DCGAN upsampling (PyTorch k4 s2 p1)
    ((7, 7), (4, 4), (2, 2), "SAME", None, False),  # DCGAN-28: 7 -> 14
    ((4, 4), (4, 4), (2, 2), ((2, 2), (2, 2)), None, False),  # the same as explicit padding
    ((5, 6), (3, 3), (2, 2), "SAME", None, False),  # kernel not a multiple of the stride
    ((5, 5), (3, 3), (2, 2), "VALID", None, False),
    ((4, 5), (4, 3), (3, 2), ((1, 2), (0, 3)), None, False),  # uneven strides and paddings
    ((6, 6), (5, 5), (2, 2), ((4, 4), (4, 4)), None, False),  # padding larger than the kernel span
    ((5, 5), (3, 3), (2, 1), "SAME", (2, 1), False),  # dilated kernel
    ((4, 4), (4, 4), (2, 2), "SAME", None, True),  # PyTorch-style kernel layout
    ((9,), (4,), (2,), "SAME", None, False),  # 1-D
    ((3, 3, 3), (2, 3, 2), (2, 1, 2), "VALID", None, False),  # 3-D
]


def _pair(spatial, kernel, strides, padding, dilation, transpose_kernel, features=5, c_in=3, backend="xla"):
    kwargs = dict(features=features, kernel_size=kernel, strides=strides, padding=padding,
                  kernel_dilation=dilation, transpose_kernel=transpose_kernel)
    x = jax.random.normal(jax.random.key(1), (2, *spatial, c_in))
    return ConvTranspose(**kwargs, onednn=backend == "onednn"), nn.ConvTranspose(**kwargs), x


@pytest.mark.parametrize("features", [5, SUBPIXEL_MIN_CHANNELS])  # both ways of computing the layer
@pytest.mark.parametrize("case", CASES, ids=[str(i) for i in range(len(CASES))])
def test_same_params_values_and_gradients_as_flax(case, features, conv_backend):
    if conv_backend == "onednn" and len(case[0]) != 2:
        pytest.skip("oneDNN takes 2-D convolutions; the others are XLA's either way")
    ours, theirs, x = _pair(*case, features=features, backend=conv_backend)
    params = jax.jit(theirs.init)(jax.random.key(0), x)
    ours_params = jax.jit(ours.init)(jax.random.key(0), x)
    # Same parameter names, shapes and initial values (same initialisers, same key).
    jax.tree.map(np.testing.assert_array_equal, ours_params, params)

    @jax.jit
    def both(p, xx):
        out = []
        for module in (ours, theirs):
            y = module.apply(p, xx)
            cot = jax.random.normal(jax.random.key(2), y.shape)
            loss = lambda p_, x_, m=module, c=cot: jnp.sum(m.apply(p_, x_) * c)
            out.append((y, jax.grad(loss, argnums=(0, 1))(p, xx)))
        return out

    (y, g), (y_ref, g_ref) = both(params, x)
    assert y.shape == y_ref.shape
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), g, g_ref)


@pytest.mark.parametrize("features", [5, SUBPIXEL_MIN_CHANNELS])
def test_second_order_gradient_matches_flax(features, conv_backend):
    """Reverse-over-reverse (as in a gradient penalty through the generator) agrees."""
    ours, theirs, x = _pair((4, 4), (4, 4), (2, 2), "SAME", None, False, features=features, backend=conv_backend)
    params = theirs.init(jax.random.key(0), x)

    def penalty(module):
        def inner(p, xx):
            return jnp.sum(jnp.tanh(module.apply(p, xx)))

        return lambda p: jnp.sum(jax.grad(inner, argnums=1)(p, x) ** 2)

    h_ref = jax.jit(jax.grad(penalty(theirs)))(params)
    h = jax.jit(jax.grad(penalty(ours)))(params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), h, h_ref)


def test_batch_dims_and_mask_like_flax():
    mask = (jax.random.uniform(jax.random.key(3), (3, 3, 2, 4)) > 0.5).astype(jnp.float32)
    kwargs = dict(features=4, kernel_size=(3, 3), strides=(2, 2), mask=mask)
    x = jax.random.normal(jax.random.key(1), (2, 3, 5, 5, 2))  # two batch dimensions
    params = jax.jit(nn.ConvTranspose(**kwargs).init)(jax.random.key(0), x)
    for xx in (x, x[0, 0]):  # several batch dims, and none
        np.testing.assert_allclose(
            jax.jit(ConvTranspose(**kwargs).apply)(params, xx), jax.jit(nn.ConvTranspose(**kwargs).apply)(params, xx),
            rtol=1e-5, atol=1e-5,
        )


def _conv_kinds(fn, *args) -> dict[str, int]:
    """Convolutions in ``fn``'s jaxpr that dilate their input, dilate their kernel, or stride
    (XLA's CPU backend runs each of these far slower than a stride-1 convolution)."""
    count = {"lhs_dilated": 0, "rhs_dilated": 0, "strided": 0, "all": 0}

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "conv_general_dilated":
                p = eqn.params
                count["all"] += 1
                count["lhs_dilated"] += any(d > 1 for d in p["lhs_dilation"])
                count["rhs_dilated"] += any(d > 1 for d in p["rhs_dilation"])
                count["strided"] += any(s > 1 for s in p["window_strides"])
            for v in eqn.params.values():
                if hasattr(v, "jaxpr") and hasattr(v.jaxpr, "eqns"):
                    walk(v.jaxpr)
                elif hasattr(v, "eqns"):
                    walk(v)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return count


@pytest.mark.parametrize("features", [5, SUBPIXEL_MIN_CHANNELS])
def test_forward_and_gradients_are_stride_1_convolutions(features):
    """flax's layer is an input-dilated convolution and its kernel gradient a second one (the
    slow path); ours computes the layer and both gradients, to second order, as stride-1
    convolutions without any dilation (the space-to-depth form in jaxgan.cpu.conv)."""
    x = jax.random.normal(jax.random.key(1), (2, 4, 4, 3))
    k = jax.random.normal(jax.random.key(0), (4, 4, 3, features))

    def ours(kk, xx):
        return jnp.sum(conv_transpose(xx, kk, (2, 2), "SAME") ** 2)

    def theirs(kk, xx):
        return jnp.sum(jax.lax.conv_transpose(xx, kk, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")) ** 2)

    def first_and_second(loss):
        grads = jax.grad(loss, argnums=(0, 1))
        return lambda kk, xx: (grads(kk, xx), jax.grad(lambda a: jnp.sum(grads(a, xx)[1] ** 2))(kk))

    assert _conv_kinds(jax.grad(theirs), k, x)["lhs_dilated"] == 2
    kinds = _conv_kinds(first_and_second(ours), k, x)
    assert kinds["all"] >= 5
    assert kinds["lhs_dilated"] == kinds["rhs_dilated"] == kinds["strided"] == 0


def test_circular_padding_is_refused_with_the_alternative():
    layer = ConvTranspose(features=2, kernel_size=(3, 3), padding="CIRCULAR")
    with pytest.raises(NotImplementedError, match=r"flax\.linen\.ConvTranspose"):
        layer.init(jax.random.key(0), jnp.zeros((1, 4, 4, 1)))
