"""The compiled chunk against the steps it is made of."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxgan.runner import round_batches, train_chunk, train_chunk_fed
from tests.helpers import host_leaves, tiny_run


def assert_same(a, b):
    for x, y in zip(host_leaves(a), host_leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("d_steps", [1, 2])
def test_a_chunk_is_its_rounds_one_by_one(d_steps):
    """Round t of a chunk trains on round t's batch (the chunk draws each round's batch one
    round ahead and carries it) and its metrics land under their own names (they travel as
    one packed vector per round)."""
    run = tiny_run(d_steps=d_steps)
    gan, source, rounds = run.gan, run.source, 4
    state = run.init_state()
    chunk_state, metrics = jax.jit(lambda s: train_chunk(gan, source, s, 16, rounds))(state)

    step = jax.jit(lambda s: gan.train_step(s, round_batches(gan, source, s, 16)))
    s, expected = state, []
    for _ in range(rounds):
        s, m = step(s)
        expected.append(m)
    assert_same(chunk_state, s)
    assert set(metrics) == set(expected[0]) and len(metrics) > 10
    for name, values in metrics.items():
        assert values.shape == (rounds,)
        np.testing.assert_array_equal(np.asarray(values), [float(m[name]) for m in expected], err_msg=name)
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
