"""jaxgan.keys: per-example draws whose rows depend only on (key, id).

The counter-based draws are checked against the Threefry-2x32 hash evaluated in numpy
(``jaxgan.cpu.threefry2x32``, itself checked against the Random123 known answers in
test_cpu.py) and against scipy's normal quantile function. Tests taking ``draw_backend`` run
with XLA computing the draws and with the native handlers (``jaxgan.cpu.use_native_random``)."""

import contextlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import scipy.stats

from jaxgan import cpu, keys


@contextlib.contextmanager
def native_random(on: bool):
    """``jaxgan.cpu.use_native_random(on)`` for what is traced inside. Skips without a C++ compiler;
    fails when there is one but the handler cannot be built."""
    if on and not (shutil.which("c++") or shutil.which("g++")):
        pytest.skip("no C++ compiler to build the native random draws")
    was = cpu.native_random()
    assert cpu.use_native_random(on) == on, cpu.native_random_unavailable_reason()
    try:
        yield
    finally:
        cpu.use_native_random(was)


@pytest.fixture(params=["xla", "native"])
def draw_backend(request):
    with native_random(request.param == "native"):
        yield request.param


def _draw(k):
    return jax.random.uniform(k, (5, 3))


def test_per_example_rows_are_draws_from_folded_keys():
    key = jax.random.key(7)
    ids = np.array([4, 0, 9, 2], np.uint32)
    expected = np.stack([np.asarray(_draw(jax.random.fold_in(key, int(i)))) for i in ids])
    got = jax.jit(lambda k, i: keys.per_example(k, i, _draw))(key, ids)
    np.testing.assert_array_equal(got, expected)


def _threefry_rows(key, ids, n):
    """keys.bits' definition, in numpy: row r = (a_0..a_{h-1}, b_0..b_{h-1})[:n]."""
    k1, k2 = (np.uint32(w) for w in np.asarray(jax.random.key_data(key)))
    h = (n + 1) // 2
    rows = []
    for i in ids:
        a, b = cpu.threefry2x32(k1, k2, np.full(h, i, np.uint32), np.arange(h, dtype=np.uint32))
        rows.append(np.concatenate([a, b])[:n])
    return np.stack(rows)


def _signed_uniforms(b: np.ndarray) -> np.ndarray:
    """The float32 uniforms in (-1, 1) that jax.random.normal (and keys.normal) make from bits."""
    f = ((b >> 9) | np.uint32(0x3F800000)).view(np.float32) - np.float32(1)
    lo = np.nextafter(np.float32(-1), np.float32(0))
    return np.maximum(lo, f * (np.float32(1) - lo) + lo)


@pytest.mark.parametrize("shape", [(6,), (5,), (2, 3, 3), (1,)])
def test_bits_are_the_threefry_hash_of_id_and_position(shape, draw_backend):
    key = jax.random.key(11)
    ids = np.array([3, 0, 1000, 7], np.uint32)
    got = np.asarray(jax.jit(lambda k, i: keys.bits(k, i, shape))(key, ids))
    n = int(np.prod(shape))
    assert got.shape == (4, *shape) and got.dtype == np.uint32
    np.testing.assert_array_equal(got.reshape(4, n), _threefry_rows(key, ids, n))


def test_a_row_depends_only_on_key_and_id(draw_backend):
    key = jax.random.key(3)
    whole = np.asarray(keys.normal(key, np.arange(8, dtype=np.uint32), (4, 4)))
    # a device holding examples 4..7 (as under pmap) and a reordered subset
    np.testing.assert_array_equal(keys.normal(key, np.arange(4, 8, dtype=np.uint32), (4, 4)), whole[4:])
    np.testing.assert_array_equal(keys.normal(key, np.array([6, 1], np.uint32), (4, 4)), whole[[6, 1]])
    assert not np.array_equal(keys.normal(jax.random.key(4), np.arange(8, dtype=np.uint32), (4, 4)), whole)


def test_native_bits_split_over_threads_are_the_hash_too():
    """Enough rows that the handler splits them into chunks (one per thread and more)."""
    key = jax.random.key(12)
    ids = np.arange(3, 3 * 700, 3, dtype=np.uint32)
    with native_random(True):
        got = np.asarray(jax.jit(lambda k, i: keys.bits(k, i, (97,)))(key, ids))
    np.testing.assert_array_equal(got, _threefry_rows(key, ids, 97))


def test_native_draws_under_nested_vmap_and_grad_equal_xla_draws():
    # XLA's side with the unrolled hash, as jaxgan.cpu.tune() sets it: JAX 0.10's own rolled
    # lowering fails under this nested vmap (its operands arrive with different batch shapes).
    cpu.unroll_threefry()
    ks = jax.random.split(jax.random.key(1), 3)
    ids = np.arange(256, dtype=np.uint32).reshape(4, 64)

    def nested(draw):
        return jax.jit(jax.vmap(jax.vmap(lambda k, i: draw(k, i, (5,)), (None, 0)), (0, None)))(ks, ids)

    def grad(s):  # a loss through a draw: bits are not differentiated, the draw is a constant
        return jnp.sum(jnp.sin(s * keys.normal(ks[0], ids[0], (5,))))

    outs = {}
    for on in (False, True):
        with native_random(on):
            outs[on] = (np.asarray(nested(keys.bits)), np.asarray(nested(keys.normal)),
                        float(jax.jit(jax.grad(grad))(0.5)))
    np.testing.assert_array_equal(outs[True][0], outs[False][0])
    np.testing.assert_allclose(outs[True][1], outs[False][1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(outs[True][2], outs[False][2], rtol=1e-5)


def test_native_normals_are_the_quantiles_of_the_same_bits():
    """512 x 256 values (the tails past erfinv's second polynomial, |u| > 0.9966, included):
    within 1e-6 relative of the float64 quantile of the uniforms the bits make, and within a few
    float32 ulps of XLA's draw (whose own error is larger: 5.8e-6 relative at most here)."""
    key, ids = jax.random.key(5), np.arange(512, dtype=np.uint32)
    u = _signed_uniforms(np.asarray(keys.bits(key, ids, (256,)))).astype(np.float64)
    assert np.sum(np.abs(u) > 0.9966) > 100
    expected = np.sqrt(2.0) * scipy.special.erfinv(u)
    with native_random(True):
        got = np.asarray(jax.jit(lambda k: keys.normal(k, ids, (256,)))(key))
    assert np.max(np.abs(got - expected) / np.abs(expected)) < 1e-6
    xla = np.asarray(jax.jit(lambda k: keys.normal(k, ids, (256,)))(key))
    np.testing.assert_allclose(got, xla, rtol=1e-5, atol=1e-6)


def test_vmapped_over_keys_equals_each_key_alone(draw_backend):
    ks = jax.random.split(jax.random.key(1), 3)
    ids = np.arange(4, dtype=np.uint32)
    for draw in (lambda k: keys.per_example(k, ids, _draw), lambda k: keys.normal(k, ids, (7,)),
                 lambda k: keys.uniform(k, ids, (2, 3), -1.0, 1.0)):
        batched = jax.jit(jax.vmap(draw))(ks)
        for j in range(3):
            np.testing.assert_array_equal(batched[j], draw(ks[j]))


def test_normal_is_the_normal_quantile_of_the_bits(draw_backend):
    key, ids = jax.random.key(5), np.arange(16, dtype=np.uint32)
    u = _signed_uniforms(np.asarray(keys.bits(key, ids, (33,))))
    expected = scipy.special.ndtri((u.astype(np.float64) + 1) / 2)  # scipy's quantile
    np.testing.assert_allclose(np.asarray(keys.normal(key, ids, (33,))), expected, rtol=1e-5, atol=2e-6)


@pytest.mark.slow
def test_normal_and_uniform_have_the_right_distributions(draw_backend):
    key, ids = jax.random.key(0), np.arange(4096, dtype=np.uint32)
    z = np.asarray(keys.normal(key, ids, (64,)))
    assert scipy.stats.kstest(z.ravel(), "norm").pvalue > 1e-3
    assert abs(z.mean()) < 5 / np.sqrt(z.size) and abs(z.std() - 1) < 5 / np.sqrt(2 * z.size)
    # neither neighbouring rows nor neighbouring columns are correlated
    for a, b in ((z[:-1], z[1:]), (z[:, :-1], z[:, 1:])):
        r = np.corrcoef(a.ravel(), b.ravel())[0, 1]
        assert abs(r) < 5 / np.sqrt(a.size)
    u = np.asarray(keys.uniform(jax.random.key(1), ids, (8, 8), -1.0, 1.0))
    assert u.min() >= -1.0 and u.max() < 1.0
    assert scipy.stats.kstest(u.ravel(), "uniform", args=(-1, 2)).pvalue > 1e-3


def test_other_key_implementations_supply_the_hash_key(draw_backend):
    key = jax.random.key(2, impl="rbg")
    ids = np.array([5, 1, 8], np.uint32)
    k1, k2 = np.asarray(jax.random.bits(key, (2,), jnp.uint32))
    a, b = cpu.threefry2x32(k1, k2, np.array([1, 1], np.uint32), np.arange(2, dtype=np.uint32))
    got = np.asarray(keys.bits(key, ids, (3,)))
    np.testing.assert_array_equal(got[1], np.concatenate([a, b])[:3])
    whole = np.asarray(keys.normal(key, ids, (3,)))
    np.testing.assert_array_equal(np.asarray(keys.normal(key, ids[1:], (3,))), whole[1:])


def test_normal_casts_to_the_asked_dtype():
    z = keys.normal(jax.random.key(0), np.arange(3, dtype=np.uint32), (4,), jnp.bfloat16)
    assert z.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(z, np.float32),
                               np.asarray(keys.normal(jax.random.key(0), np.arange(3, dtype=np.uint32), (4,))),
                               rtol=1e-2, atol=1e-2)


def test_float64_draws_are_jax_random_draws_from_folded_keys():
    ids = np.array([2, 0], np.uint32)
    with jax.enable_x64(True):
        key = jax.random.key(9)
        z = keys.normal(key, ids, (3,))
        u = keys.uniform(key, ids, (3,), -1.0, 1.0)
        assert z.dtype == u.dtype == np.float64
        for r, i in enumerate(ids):
            k = jax.random.fold_in(key, int(i))
            np.testing.assert_array_equal(z[r], jax.random.normal(k, (3,), jnp.float64))
            np.testing.assert_array_equal(u[r], jax.random.uniform(k, (3,), jnp.float64, -1.0, 1.0))


def test_a_training_chunk_is_the_same_with_native_draws():
    """The toy run's chunk (latents and instance noise drawn on device with keys.normal): the
    same trajectory with XLA's draws and with the native ones, to float32 rounding."""
    from jaxgan import runner
    from tests.helpers import tiny_run

    run = tiny_run(instance_noise=0.1)
    out = {}
    for on in (False, True):
        with native_random(on):
            chunk = jax.jit(lambda s: runner.train_chunk(run.gan, run.source, s, run.config.batch_size, 3))
            out[on] = jax.block_until_ready(chunk(run.init_state()))
    leaves = [jax.tree.leaves(out[on][0]) for on in (True, False)]
    for a, b in zip(*leaves, strict=True):
        if jnp.issubdtype(a.dtype, jnp.floating):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out[True][1]["d_loss"], out[False][1]["d_loss"], rtol=1e-4)
