"""The O(B) in-step diversity estimate against the exact O(B^2) statistic."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxgan import scores


def test_neighbour_distance_is_unbiased_for_the_pairwise_mean():
    # Over many exchangeable batches, the mean of the B-pair estimate matches the all-pairs mean.
    keys = jax.random.split(jax.random.key(0), 400)
    centers = jnp.asarray([[0.0, 0.0], [3.0, 0.0], [0.0, 5.0]])

    def batch(k):
        kc, kn = jax.random.split(k)
        return centers[jax.random.randint(kc, (32,), 0, 3)] + 0.3 * jax.random.normal(kn, (32, 2))

    xs = jax.vmap(batch)(keys)
    est = np.asarray(jax.vmap(scores.mean_neighbour_distance)(xs))
    exact = np.asarray(jax.vmap(scores.mean_pairwise_distance)(xs))
    assert abs(est.mean() - exact.mean()) < 3 * est.std() / np.sqrt(len(est))
    assert abs(est.mean() / exact.mean() - 1.0) < 0.02


def test_two_rows_give_the_exact_distance():
    x = jnp.asarray([[1.0, 2.0, 3.0], [4.0, 6.0, 3.0]])
    np.testing.assert_allclose(scores.mean_neighbour_distance(x), 5.0, rtol=1e-6)
    np.testing.assert_allclose(scores.mean_neighbour_distance(x), scores.mean_pairwise_distance(x), rtol=1e-6)


def test_estimate_reads_collapse_and_matching_spread():
    rng = np.random.default_rng(0)
    real = rng.normal(0.0, 1.0, (256, 3, 4, 4)).astype(np.float32)
    other = rng.normal(0.0, 1.0, (256, 3, 4, 4)).astype(np.float32)
    collapsed = (100.0 + 1e-3 * rng.normal(size=(256, 3, 4, 4))).astype(np.float32)  # far from the origin
    assert abs(float(scores.diversity_estimate(jnp.asarray(real), jnp.asarray(other))) - 1.0) < 0.05
    assert float(scores.diversity_estimate(jnp.asarray(real), jnp.asarray(collapsed))) < 0.01


def test_estimate_over_devices_is_the_one_of_the_gathered_batch():
    """With axis_name (vmap stands in for 4 devices) the neighbour pairs run over the whole
    batch: the value equals numpy's on the unsplit batch, whatever the split."""
    rng = np.random.default_rng(1)
    real, fake = rng.normal(size=(12, 5)), 0.5 * rng.normal(size=(12, 5))

    def neighbours(x):
        return np.mean(np.sqrt(np.sum((x - np.roll(x, 1, axis=0)) ** 2, axis=1)))

    expected = neighbours(fake) / neighbours(real)
    for devices in (2, 4):
        r, f = (jnp.asarray(a, jnp.float32).reshape(devices, 12 // devices, 5) for a in (real, fake))
        got = jax.vmap(lambda a, b: scores.diversity_estimate(a, b, "d"), axis_name="d")(r, f)
        np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5)
    np.testing.assert_allclose(float(scores.diversity_estimate(jnp.asarray(real), jnp.asarray(fake))), expected,
                               rtol=1e-5)
