"""jaxgan.nets.BatchNorm against flax.linen.BatchNorm (variables, outputs, statistics, gradients
of first and second order, synchronised statistics), and its sums as matrix-vector products."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgan.cpu.batch_norm import broadcast_rows, channel_sum
from jaxgan.nets import BatchNorm

KW = dict(momentum=0.9, epsilon=1e-5, scale_init=nn.initializers.normal(0.5), bias_init=nn.initializers.normal(0.5))


def _x(shape=(6, 5, 4, 8), seed=1):
    # Offset and scaled per channel, so that the statistics matter.
    x = jax.random.normal(jax.random.key(seed), shape)
    per_channel = (1,) * (len(shape) - 1) + (shape[-1],)
    return x * jnp.linspace(0.5, 3.0, shape[-1]).reshape(per_channel) + jnp.linspace(-2.0, 2.0, shape[-1]).reshape(
        per_channel)


def test_channel_sum_and_broadcast_rows_are_sums_and_transposes():
    x = _x((7, 5))
    like = jnp.zeros((7, 0))
    np.testing.assert_allclose(channel_sum(x), jnp.sum(x, 0), rtol=1e-6)
    np.testing.assert_array_equal(broadcast_rows(x[0], like), jnp.broadcast_to(x[0], (7, 5)))
    c, big = x[1], _x((7, 5), seed=2)
    np.testing.assert_array_equal(jax.vjp(channel_sum, x)[1](c)[0], jnp.broadcast_to(c, (7, 5)))
    np.testing.assert_allclose(jax.vjp(lambda v: broadcast_rows(v, like), c)[1](big)[0], jnp.sum(big, 0), rtol=1e-6)

    # Second order (reverse over reverse, through a nonlinearity): the same Hessian-vector
    # products as jnp's sums.
    def hvp(sum_rows, bcast):
        f = lambda a: jnp.sum(jnp.tanh(sum_rows(a * bcast(a[0]))) ** 2)
        return jax.grad(lambda a: jnp.vdot(jax.grad(f)(a), big))(x)

    ours = hvp(channel_sum, lambda v: broadcast_rows(v, like))
    ref = hvp(lambda a: jnp.sum(a, 0), lambda v: jnp.broadcast_to(v, (7, 5)))
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("use_bias, use_scale", [(True, True), (False, True), (True, False)])
@pytest.mark.parametrize("shape", [(6, 5, 4, 8), (16, 3)])
def test_same_variables_outputs_and_statistics_as_flax(shape, use_bias, use_scale):
    x = _x(shape)
    ours = BatchNorm(use_running_average=False, use_bias=use_bias, use_scale=use_scale, **KW)
    theirs = nn.BatchNorm(use_running_average=False, use_bias=use_bias, use_scale=use_scale, **KW)
    v = theirs.init(jax.random.key(0), x)
    jax.tree.map(np.testing.assert_array_equal, ours.init(jax.random.key(0), x), v)
    y, new = ours.apply(v, x, mutable=["batch_stats"])
    y_ref, new_ref = theirs.apply(v, x, mutable=["batch_stats"])
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), new, new_ref)
    # The running statistics moved towards the batch's (not a no-op).
    assert not np.allclose(new["batch_stats"]["mean"], v["batch_stats"]["mean"])
    # Evaluation mode normalises with the running statistics.
    v2 = {**v, **new}
    y_eval = ours.clone(use_running_average=True).apply(v2, x)
    np.testing.assert_allclose(y_eval, theirs.clone(use_running_average=True).apply(v2, x), rtol=1e-5, atol=1e-5)
    assert not np.allclose(y_eval, y, atol=1e-3)


def test_first_and_second_order_gradients_match_flax():
    x = _x()
    ours, theirs = BatchNorm(use_running_average=False, **KW), nn.BatchNorm(use_running_average=False, **KW)
    v = theirs.init(jax.random.key(0), x)
    cot = jax.random.normal(jax.random.key(3), x.shape)

    def grads(m):
        def loss(p, xx):
            y, _ = m.apply({"params": p, "batch_stats": v["batch_stats"]}, xx, mutable=["batch_stats"])
            return jnp.sum(jnp.tanh(y) * cot)

        first = jax.grad(loss, argnums=(0, 1))(v["params"], x)
        # As in a gradient penalty: d/dparams of |dloss/dx|^2.
        second = jax.grad(lambda p: jnp.sum(jax.grad(loss, argnums=1)(p, x) ** 2))(v["params"])
        return first, second

    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-4),
                 jax.jit(lambda: grads(ours))(), jax.jit(lambda: grads(theirs))())


def test_synchronised_statistics_equal_flax_and_the_whole_batch():
    """With axis_name (here a vmap over 4 shards; pmap/shard_map name axes the same way), every
    shard normalises with the statistics of the whole batch, as flax's layer does."""
    x = _x((4, 3, 5, 8))  # 4 shards of 3 examples
    kw = dict(use_running_average=False, axis_name="shards", **KW)
    ours, theirs = BatchNorm(**kw), nn.BatchNorm(**kw)
    v = nn.BatchNorm(use_running_average=False, **KW).init(jax.random.key(0), x[0])

    def run(m):
        return jax.vmap(lambda xs: m.apply(v, xs, mutable=["batch_stats"]), axis_name="shards")(x)

    (y, new), (y_ref, new_ref) = run(ours), run(theirs)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), new, new_ref)
    whole = nn.BatchNorm(use_running_average=False, **KW).apply(v, x.reshape(12, 5, 8), mutable=["batch_stats"])[0]
    np.testing.assert_allclose(y.reshape(12, 5, 8), whole, rtol=1e-5, atol=1e-5)


def test_forward_and_backward_sums_compile_to_dots_not_reductions():
    """The point of the layer: XLA's program for its forward and backward pass has no reduction
    over the activation (flax's has, as reduce or reduce-window); the sums are dots."""
    x = _x((16, 8, 8, 32))

    def hlo(m):
        v = m.init(jax.random.key(0), x)

        def loss(xx):
            y, _ = m.apply(v, xx, mutable=["batch_stats"])
            return jnp.vdot(y, y)

        return jax.jit(jax.grad(loss)).lower(x).compile().as_text()

    big = f"f32[{16 * 8 * 8},32]"
    ours = hlo(BatchNorm(use_running_average=False, **KW))
    theirs = hlo(nn.BatchNorm(use_running_average=False, **KW))
    assert "reduce-window(" in theirs or " reduce(" in theirs
    assert "reduce-window(" not in ours
    assert ours.count(" dot(") >= 4  # mean, mean square; sum of the cotangent and of its product
    assert big in ours


def test_unsupported_combination_is_refused():
    x = _x()
    m = BatchNorm(use_running_average=False, axis_name="i", use_fast_variance=False)
    with pytest.raises(NotImplementedError, match="use_fast_variance"):
        jax.vmap(lambda xs: m.init(jax.random.key(0), xs), axis_name="i")(x[None])
