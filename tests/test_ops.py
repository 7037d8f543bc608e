"""jaxgan.ops.Op: the op is its function, eagerly, jitted and under (nested, partly batched) vmap,
with the same program; a lowering registered for one platform changes that platform's program
only, and the op's own lowering comes back with ``lower_on(platform)``."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxgan.ops import Op


def _mix(a, b, *, n: int):
    """A function of two integer arrays ``[2]``, ``[R]`` and a static ``n`` -> ``[R, n]`` float32."""
    cols = jnp.arange(n, dtype=jnp.uint32)
    return jnp.sin((a[0] * b[:, None] + a[1] * cols[None, :]).astype(jnp.float32))


MIX = Op("test_ops_mix", _mix)


def _args():
    a = np.array([3, 5], np.uint32)
    b = np.array([1, 4, 9], np.uint32)
    return a, b


def test_the_op_is_its_function_eagerly_and_jitted():
    a, b = _args()
    expected = np.asarray(jax.jit(lambda a, b: _mix(a, b, n=4))(a, b))
    np.testing.assert_array_equal(MIX(a, b, n=4), expected)
    np.testing.assert_array_equal(jax.jit(lambda a, b: MIX(a, b, n=4))(a, b), expected)
    # the same program as the function alone: the op's lowering is the function's, inlined
    assert (jax.jit(lambda a, b: MIX(a, b, n=4)).lower(a, b).as_text()
            == jax.jit(lambda a, b: _mix(a, b, n=4)).lower(a, b).as_text())


def test_vmap_over_either_argument_and_nested_equals_one_by_one():
    a, b = _args()
    aa = np.stack([a, a + 1, a * 7]).astype(np.uint32)  # [3, 2]
    bb = np.stack([b, b + 2]).astype(np.uint32)  # [2, 3]
    one = lambda x, y: np.asarray(_mix(x, y, n=5))
    got = jax.jit(jax.vmap(lambda x: MIX(x, b, n=5)))(aa)
    np.testing.assert_array_equal(got, np.stack([one(x, b) for x in aa]))
    got = jax.jit(jax.vmap(lambda y: MIX(a, y, n=5)))(bb)
    np.testing.assert_array_equal(got, np.stack([one(a, y) for y in bb]))
    got = jax.jit(jax.vmap(jax.vmap(lambda x, y: MIX(x, y, n=5), (None, 0)), (0, None)))(aa, bb)
    np.testing.assert_array_equal(got, np.stack([np.stack([one(x, y) for y in bb]) for x in aa]))


def test_a_platform_lowering_changes_that_platform_only():
    a, b = _args()
    doubled = Op("test_ops_doubled", _mix)
    rule = jax.interpreters.mlir.lower_fun(
        lambda a, b, *, n, batch_ndim: 2.0 * jax.vmap(lambda x, y: _mix(x, y, n=n))(a, b) if batch_ndim
        else 2.0 * _mix(a, b, n=n), multiple_results=False)

    def lowered(platform):
        return jax.jit(lambda a, b: doubled(a, b, n=3)).trace(a, b).lower(lowering_platforms=(platform,)).as_text()

    before = {p: lowered(p) for p in ("cpu", "cuda")}
    doubled.lower_on("cpu", rule)
    try:
        np.testing.assert_array_equal(jax.jit(lambda a, b: doubled(a, b, n=3))(a, b), 2 * np.asarray(_mix(a, b, n=3)))
        np.testing.assert_array_equal(jax.jit(jax.vmap(lambda x: doubled(x, b, n=3)))(a[None]),
                                      2 * np.asarray(_mix(a, b, n=3))[None])
        assert lowered("cuda") == before["cuda"] and lowered("cpu") != before["cpu"]
    finally:
        doubled.lower_on("cpu")
    assert lowered("cpu") == before["cpu"]
    np.testing.assert_array_equal(doubled(a, b, n=3), _mix(a, b, n=3))
