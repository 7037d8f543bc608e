"""The compiled chunk against the steps it is made of."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxgan import cpu, runner
from jaxgan.runner import round_batches, train_chunk, train_chunk_fed
from tests.conftest import require_onednn
from tests.helpers import host_leaves, tiny_run


def assert_values(actual, expected, unroll=1, name=""):
    """Bitwise equal for a chunk of one round per loop iteration; unrolled, XLA fuses across
    rounds, which may move a float by an ulp or two."""
    if unroll == 1 or not np.issubdtype(np.asarray(actual).dtype, np.floating):
        np.testing.assert_array_equal(actual, expected, err_msg=name)
    else:
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-7, err_msg=name)


def assert_same(a, b, unroll=1):
    for x, y in zip(host_leaves(a), host_leaves(b), strict=True):
        assert_values(x, y, unroll)


@pytest.mark.parametrize("d_steps,unroll,images", [(1, 1, False), (2, 2, False), (1, 1, True)])
def test_a_chunk_is_its_rounds_one_by_one(d_steps, unroll, images):
    """Round t of a chunk trains on round t's batch (the chunk draws each round's batch one
    round ahead and carries it, or, as jaxgan.cpu.draw_in_round says for images with the native
    draws and oneDNN in use, in its round) and its metrics land under their own names (they
    travel as one packed vector per round), however many rounds one loop iteration runs (5
    rounds at 2 per iteration leave one outside the loop)."""
    run = tiny_run(d_steps=d_steps, **({"dataset": "random:4x4x1"} if images else {}))
    gan, source, rounds = run.gan, run.source, 5
    state = run.init_state()
    assert not cpu.draw_in_round(source)
    if images:
        require_onednn()
        assert cpu.use_native_random(True), cpu.native_random_unavailable_reason()
        assert cpu.use_onednn(True)
    draw_in_round = cpu.draw_in_round(source)
    assert draw_in_round == images
    chunk = jax.jit(lambda s: train_chunk(gan, source, s, 16, rounds, unroll=unroll, draw_in_round=draw_in_round))
    chunk_state, metrics = chunk(state)

    step = jax.jit(lambda s: gan.train_step(s, round_batches(gan, source, s, 16)))
    s, expected = state, []
    for _ in range(rounds):
        s, m = step(s)
        expected.append(m)
    assert_same(chunk_state, s, unroll)
    assert set(metrics) == set(expected[0]) and len(metrics) > 10
    for name, values in metrics.items():
        assert values.shape == (rounds,)
        assert_values(np.asarray(values), [float(m[name]) for m in expected], unroll, name)
    assert len({float(metrics["d_loss"][0]), float(metrics["g_loss"][0]), float(metrics["generator_score"][0])}) == 3


def test_a_fed_chunk_is_its_rounds_one_by_one():
    run = tiny_run()
    gan, state = run.gan, run.init_state()
    batches = np.random.default_rng(0).normal(size=(3, 1, 16, 2)).astype(np.float32)
    chunk_state, metrics = jax.jit(lambda s, b: train_chunk_fed(gan, s, b))(state, batches)
    s = state
    for t in range(3):
        s, m = jax.jit(gan.train_step)(s, batches[t])
        for name in m:
            assert float(metrics[name][t]) == float(m[name]), name
    assert_same(chunk_state, s)


def test_the_benchmark_counts_the_flops_of_one_round(monkeypatch):
    """XLA's count for a chunk is its loop body's (``UNROLL`` rounds) plus what runs outside the
    loop, not one round's; ``bench.chunk_flops`` counts one round whatever the chunk. A
    two-round chunk at two rounds per iteration is straight-line code: XLA counts both rounds,
    twice the one-round chunk's count."""
    from jaxgan import bench, configs
    from tests.helpers import TINY

    monkeypatch.setattr(runner, "UNROLL", 2)  # as `benchmarks/throughput.py --unroll 2` sets it
    config = configs.apply_overrides(configs.preset("ring8"), TINY)

    def compiled(rounds):
        _run, fn, args, _plan = bench.library_chunk(config, rounds)
        return fn.lower(*args).compile()

    first = compiled(1)
    one = bench.compiled_flops(first)
    assert one and bench.chunk_flops(config, 1, first) == one
    two = compiled(2)
    assert 1.8 * one < bench.compiled_flops(two) < 2.2 * one
    assert bench.chunk_flops(config, 2, two) == one
