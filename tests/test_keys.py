"""jaxgan.keys.per_example: row i is a function of fold_in(key, i) only, with or without the
keys materialised first."""

import jax
import numpy as np

from jaxgan.keys import per_example


def _draw(k):
    return jax.random.uniform(k, (5, 3))


def test_rows_are_draws_from_folded_keys_with_or_without_materialised_keys():
    key = jax.random.key(7)
    ids = np.array([4, 0, 9, 2], np.uint32)
    expected = np.stack([np.asarray(_draw(jax.random.fold_in(key, int(i)))) for i in ids])
    for materialize in (False, True):
        got = jax.jit(lambda k, i, m=materialize: per_example(k, i, _draw, materialize_keys=m))(key, ids)
        np.testing.assert_array_equal(got, expected)


def test_vmapped_over_keys_equals_each_key_alone():
    keys = jax.random.split(jax.random.key(1), 3)
    ids = np.arange(4, dtype=np.uint32)
    batched = jax.jit(jax.vmap(lambda k: per_example(k, ids, _draw, materialize_keys=True)))(keys)
    for j in range(3):
        np.testing.assert_array_equal(batched[j], per_example(keys[j], ids, _draw))
