"""jaxgan.cpu.onednn: oneDNN's convolution primitives behind jaxgan.cpu.conv (``onednn=True``).

Values against XLA's own convolutions over the geometries DCGAN and other models use, the
transposed convolution as one call, what is not sent to oneDNN, vmap, repeatability, a DCGAN
training step either way, and the FLOP count the benchmarks report. The flax comparisons of
tests/test_conv.py and tests/test_conv_transpose.py also run with oneDNN (their ``conv_backend``
parameter)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgan.cpu import conv as conv_lib
from jaxgan.cpu import onednn
from tests.conftest import require_onednn


@pytest.fixture
def on():
    require_onednn()


# (N, input spatial, C_in, C_out, kernel, strides, pads, dilation)
GEOMETRIES = [
    (4, (16, 16), 64, 32, (4, 4), (2, 2), ((1, 1), (1, 1)), (1, 1)),  # DCGAN's discriminator
    (4, (32, 32), 3, 16, (4, 4), (2, 2), ((1, 1), (1, 1)), (1, 1)),  # its image layer
    (4, (4, 4), 32, 1, (4, 4), (1, 1), ((0, 0), (0, 0)), (1, 1)),  # to one logit
    (3, (9, 7), 5, 6, (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1)),  # SAME, odd sizes
    (2, (11, 10), 8, 4, (5, 3), (2, 3), ((1, 2), (0, 3)), (1, 1)),  # uneven strides and pads
    (2, (13, 9), 4, 7, (3, 3), (1, 2), ((2, 2), (1, 1)), (2, 1)),  # dilated kernel
    (2, (10, 10), 6, 3, (3, 3), (2, 2), ((0, 0), (0, 0)), (1, 1)),  # unused trailing rows
    (2, (6, 6), 16, 16, (1, 1), (1, 1), ((0, 0), (0, 0)), (1, 1)),  # 1x1
]


def _three(u, w, g, strides, pads, dilation, on):
    spatial, k = u.shape[1:3], w.shape[:2]
    return (
        conv_lib.conv(u, w, strides, pads, dilation, None, on),
        conv_lib._conv_input_grad(g, w, spatial, strides, pads, dilation, None, on),
        conv_lib.conv_weight_grad(u, g, k, strides, pads, dilation, None, on),
    )


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=[str(i) for i in range(len(GEOMETRIES))])
def test_three_products_equal_xla(geometry):
    require_onednn()
    n, spatial, c_in, c_out, kernel, strides, pads, dilation = geometry
    u = jax.random.normal(jax.random.key(0), (n, *spatial, c_in))
    w = jax.random.normal(jax.random.key(1), (*kernel, c_in, c_out))
    z = jax.eval_shape(lambda: conv_lib.conv(u, w, strides, pads, dilation))
    g = jax.random.normal(jax.random.key(2), z.shape)
    ref = jax.jit(lambda: _three(u, w, g, strides, pads, dilation, False))()
    f = jax.jit(lambda: _three(u, w, g, strides, pads, dilation, True))
    assert f.lower().as_text().count("jaxgan_conv_") == 3  # all three went to oneDNN
    got = f()
    for a, b in zip(got, ref, strict=True):
        assert a.shape == b.shape
        scale = float(jnp.max(jnp.abs(b)))
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-6 * scale)


def test_transposed_convolution_is_one_call_with_onednn_subpixel_without(on):
    """With oneDNN, a strided transposed convolution is oneDNN's backward-data primitive, one
    call, with the sub-pixel form's values; without, the sub-pixel form of XLA convolutions."""
    g = jax.random.normal(jax.random.key(0), (2, 8, 8, 32))
    w = jax.random.normal(jax.random.key(1), (4, 4, 32, 16))  # a ConvTranspose kernel: 32 -> 16 channels
    outs, texts = {}, {}
    for use in (True, False):
        f = jax.jit(lambda g, w, use=use: conv_lib.conv_input_grad(g, w, (16, 16), (2, 2), ((1, 1), (1, 1)), (1, 1),
                                                                   transposed_kernel=True, onednn=use))
        texts[use], outs[use] = f.lower(g, w).as_text(), f(g, w)
    assert texts[True].count("jaxgan_conv_backward_data") == 1 and "stablehlo.convolution" not in texts[True]
    assert "jaxgan_conv" not in texts[False]
    assert texts[False].count("stablehlo.convolution") == 4  # one per output phase
    np.testing.assert_allclose(outs[True], outs[False], rtol=0, atol=2e-6 * float(jnp.max(jnp.abs(outs[False]))))


@pytest.mark.parametrize(
    "what",
    ["bfloat16", "3-D", "1-D", "negative padding", "not asked"],
)
def test_what_is_not_sent_to_onednn(on, what):
    u = jnp.ones((2, 8, 8, 4))
    w = jnp.ones((3, 3, 4, 5))
    strides, pads, dilation = (1, 1), ((1, 1), (1, 1)), (1, 1)
    if what == "bfloat16":
        u, w = u.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
    elif what == "3-D":
        u, w = jnp.ones((2, 4, 4, 4, 4)), jnp.ones((2, 2, 2, 4, 5))
        strides, pads, dilation = (1, 1, 1), ((0, 0),) * 3, (1, 1, 1)
    elif what == "1-D":
        u, w = jnp.ones((2, 8, 4)), jnp.ones((3, 4, 5))
        strides, pads, dilation = (1,), ((1, 1),), (1,)
    elif what == "negative padding":
        pads = ((-1, 1), (1, 1))
    use = what != "not asked"
    f = jax.jit(jax.grad(lambda u, w: jnp.sum(conv_lib.conv(u, w, strides, pads, dilation, None, use)),
                         argnums=(0, 1)))
    text = f.lower(u, w).as_text()
    assert "jaxgan_conv" not in text
    f(u, w)  # and it runs


def test_vmap_over_a_leading_axis_equals_one_by_one(on):
    u = jax.random.normal(jax.random.key(0), (3, 2, 8, 8, 16))
    w = jax.random.normal(jax.random.key(1), (3, 4, 4, 16, 8))
    strides, pads, dilation = (2, 2), ((1, 1), (1, 1)), (1, 1)

    def loss(u_, w_):
        return jnp.sum(jnp.sin(conv_lib.conv(u_, w_, strides, pads, dilation, None, True)))

    grad = jax.grad(loss, argnums=(0, 1))
    batched = jax.jit(jax.vmap(grad))(u, w)
    one = [jax.jit(grad)(u[i], w[i]) for i in range(3)]
    for i in range(3):
        for a, b in zip(batched, one[i], strict=True):
            np.testing.assert_allclose(a[i], b, rtol=1e-5, atol=1e-5)


def test_repeatable_bit_for_bit(on):
    """Exact resume (tests/test_resume.py) needs the same inputs to give the same bits."""
    u = jax.random.normal(jax.random.key(0), (8, 16, 16, 64))
    w = jax.random.normal(jax.random.key(1), (4, 4, 64, 128))
    f = jax.jit(jax.grad(lambda u, w: jnp.sum(jnp.tanh(conv_lib.conv(u, w, (2, 2), ((1, 1), (1, 1)), (1, 1), None,
                                                                      True))), argnums=(0, 1)))
    first = f(u, w)
    for _ in range(3):
        jax.tree.map(np.testing.assert_array_equal, f(u, w), first)


def _dcgan_config():
    from jaxgan import configs

    return dataclasses.replace(configs.preset("dcgan32"), batch_size=8)


def test_a_dcgan_training_chunk_is_the_same_either_way(on):
    from jaxgan import bench

    config = _dcgan_config()

    def chunk(layers):
        _run, fn, args, _plan = bench.library_chunk(config, 2, layers=layers)
        return fn.lower(*args), args

    lowered, args = chunk("onednn")
    assert "jaxgan_conv_" in lowered.as_text()
    state, metrics = lowered.compile()(*args)
    lowered_xla, args_xla = chunk("cpu")
    assert "jaxgan_conv_" not in lowered_xla.as_text()
    state_xla, metrics_xla = lowered_xla.compile()(*args_xla)
    # Two D and two G updates. Adam's first steps move a weight by about the learning rate
    # whatever its gradient's size, so a weight whose gradient is near zero may move by a
    # visibly different amount either way (float sums associate differently); a wrong
    # convolution would move most weights by up to twice the learning rate in the wrong
    # direction. So: all but 3 in 10^3 weights within a quarter of the rate, and none further
    # apart than two updates in opposite directions. (Seeds 0-3, with XLA's latent draws and with
    # the native ones: at most 7.3e-4 of G's weights past a quarter, 0.00014 of D's; G's weights
    # reach 1.97 lr apart.)
    lr = config.d_lr
    for ours, xla in ((state.g.params, state_xla.g.params), (state.d.params, state_xla.d.params)):
        diff = np.concatenate([np.abs(np.asarray(a) - np.asarray(b)).ravel()
                               for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(xla), strict=True)])
        assert np.mean(diff > lr / 4) <= 3e-3, np.sort(diff)[-10:]
        assert diff.max() <= 4 * lr
    for name in ("d_loss", "g_loss", "generator_score", "discriminator_score"):
        np.testing.assert_allclose(metrics[name], metrics_xla[name], rtol=2e-4, err_msg=name)


def test_benchmark_flops_count_the_convolutions(on):
    """XLA's cost analysis does not see into the oneDNN calls; bench.chunk_flops counts the
    same chunk with XLA's convolutions."""
    from jaxgan import bench

    config = _dcgan_config()
    _run, fn, args, _plan = bench.library_chunk(config, 1, layers="onednn")
    compiled = fn.lower(*args).compile()
    blind = bench.compiled_flops(compiled)
    counted = bench.chunk_flops(config, 1, compiled, layers="onednn")
    _run, fn_xla, args_xla, _plan = bench.library_chunk(config, 1, layers="cpu")
    xla = bench.compiled_flops(fn_xla.lower(*args_xla).compile())
    assert counted == xla
    assert blind < 0.1 * counted  # the convolutions are nearly all of a DCGAN step's FLOPs


def test_unavailable_onednn_is_reported_and_not_chosen(monkeypatch, tmp_path):
    """Without oneDNN (here: a root holding nothing), use_onednn() says no and why, the layers
    chosen for a CPU program are XLA's, and asking for oneDNN explicitly raises with the reason."""
    from jaxgan import cpu

    monkeypatch.setenv("JAXGAN_ONEDNN_ROOT", str(tmp_path))
    monkeypatch.setattr(onednn, "_state", {"loaded": False, "error": None})
    assert not cpu.use_onednn(True)
    assert not cpu.onednn_in_use() and cpu.layers() == "cpu"
    assert "not found under" in onednn.unavailable_reason()
    assert "jaxgan[onednn]" in onednn.unavailable_reason()
    u, w = jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 2))
    with pytest.raises(onednn.OneDNNUnavailable, match="not found under"):
        jax.jit(lambda u, w: conv_lib.conv(u, w, (1, 1), ((1, 1), (1, 1)), (1, 1), None, True)).lower(u, w)
