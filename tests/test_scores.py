"""The 0-to-1 scores and the diversity statistic against numpy/scipy."""

import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.distance import pdist

import jaxgan as jg
from jaxgan import scores

RNG = np.random.default_rng(1)
REAL = RNG.normal(1.0, 1.5, size=256).astype(np.float32)
FAKE = RNG.normal(-0.5, 1.5, size=256).astype(np.float32)


def _sig(x):
    return 1 / (1 + np.exp(-x.astype(np.float64)))


@pytest.mark.parametrize("loss", [jg.losses.NON_SATURATING, jg.losses.MINIMAX, jg.losses.HINGE])
def test_scores_from_sigmoid_of_d(loss):
    s = scores.game_scores(loss, jnp.asarray(REAL), jnp.asarray(FAKE))
    pr, pf = _sig(REAL), _sig(FAKE)
    np.testing.assert_allclose(s["generator_score"], pf.mean(), rtol=1e-5)
    np.testing.assert_allclose(s["discriminator_score"], 0.5 * pr.mean() + 0.5 * (1 - pf).mean(), rtol=1e-5)
    np.testing.assert_allclose(s["d_accuracy_real"], (REAL > 0).mean())
    np.testing.assert_allclose(s["d_accuracy_fake"], (FAKE < 0).mean())


def test_least_squares_scores_read_d_as_a_regression_on_labels():
    s = scores.game_scores(jg.losses.LEAST_SQUARES, jnp.asarray(REAL), jnp.asarray(FAKE))
    pr, pf = np.clip(REAL, 0, 1), np.clip(FAKE, 0, 1)
    np.testing.assert_allclose(s["generator_score"], pf.mean(), rtol=1e-5)
    np.testing.assert_allclose(s["d_accuracy_real"], (pr > 0.5).mean())


def test_critic_scores_are_invariant_to_a_constant_shift():
    # A Wasserstein critic is defined up to a constant: the readout must not depend on it.
    a = scores.game_scores(jg.losses.WASSERSTEIN, jnp.asarray(REAL), jnp.asarray(FAKE))
    b = scores.game_scores(jg.losses.WASSERSTEIN, jnp.asarray(REAL + 100.0), jnp.asarray(FAKE + 100.0))
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(a["wasserstein_estimate"], REAL.mean() - FAKE.mean(), rtol=1e-5)


def test_equilibrium_gives_one_half():
    same = jnp.zeros(64)
    s = scores.game_scores(jg.losses.NON_SATURATING, same, same)
    assert float(s["generator_score"]) == 0.5 and float(s["discriminator_score"]) == 0.5


def test_mean_pairwise_distance_matches_scipy():
    x = RNG.normal(size=(50, 3, 2)).astype(np.float32)
    np.testing.assert_allclose(
        scores.mean_pairwise_distance(jnp.asarray(x)), pdist(x.reshape(50, -1)).mean(), rtol=1e-4
    )


def test_diversity_is_one_for_matching_spread_and_small_for_collapse():
    real = RNG.normal(size=(400, 2)).astype(np.float32)
    other = RNG.normal(size=(400, 2)).astype(np.float32)
    collapsed = np.repeat(real[:1], 400, axis=0) + 1e-3 * other
    assert abs(float(scores.diversity(jnp.asarray(real), jnp.asarray(other))) - 1.0) < 0.05
    assert float(scores.diversity(jnp.asarray(real), jnp.asarray(collapsed))) < 0.01
