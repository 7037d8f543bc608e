"""KID: the unbiased MMD^2 against a brute-force U-statistic, and its unbiasedness."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgan.metrics import kid as kidlib

RNG = np.random.default_rng(1)


def _brute_mmd2_u(x, y, degree=3):
    """The U-statistic written out pair by pair, float64 (Gretton et al. 2012, Lemma 6)."""
    d = x.shape[1]
    k = lambda a, b: (a @ b / d + 1.0) ** degree
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_polynomial_kernel_formula():
    x, y = RNG.normal(size=(5, 3)), RNG.normal(size=(4, 3))
    got = np.asarray(kidlib.polynomial_kernel(jnp.asarray(x), jnp.asarray(y)))
    np.testing.assert_allclose(got, (x @ y.T / 3 + 1) ** 3, rtol=1e-5)


def test_mmd2_unbiased_matches_brute_force():
    x = RNG.normal(size=(20, 4))
    y = RNG.normal(0.3, 1.2, size=(15, 4))
    got = float(kidlib.mmd2_polynomial(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)))
    np.testing.assert_allclose(got, _brute_mmd2_u(x, y), rtol=1e-4, atol=1e-5)


def test_estimator_is_unbiased_where_the_plug_in_one_is_not():
    """Many independent small-sample estimates for one distribution: the unbiased estimator
    averages to 0 within its standard error; the biased (V-statistic) one is clearly positive."""
    d, m, reps = 8, 16, 400

    def both(key):
        kx, ky = jax.random.split(key)
        x = jax.random.normal(kx, (m, d))
        y = jax.random.normal(ky, (m, d))
        kxx, kyy, kxy = (kidlib.polynomial_kernel(a, b) for a, b in ((x, x), (y, y), (x, y)))
        biased = jnp.mean(kxx) + jnp.mean(kyy) - 2 * jnp.mean(kxy)
        return kidlib.mmd2_unbiased(kxx, kyy, kxy), biased

    keys = jax.random.split(jax.random.key(0), reps)
    unbiased, biased = (np.asarray(v, np.float64) for v in jax.jit(jax.vmap(both))(keys))
    se_u = unbiased.std() / np.sqrt(reps)
    se_b = biased.std() / np.sqrt(reps)
    assert abs(unbiased.mean()) < 3 * se_u
    assert biased.mean() > 10 * se_b


def test_kid_same_distribution_is_zero_within_its_std_and_positive_otherwise():
    x = RNG.normal(size=(1500, 16)).astype(np.float32)
    y = RNG.normal(size=(1500, 16)).astype(np.float32)
    z = RNG.normal(0.15, 1.0, size=(1500, 16)).astype(np.float32)
    fn = jax.jit(lambda a, b, k: kidlib.kid(a, b, k, num_subsets=50, subset_size=500))
    mean_same, std_same = (float(v) for v in fn(x, y, jax.random.key(0)))
    mean_diff, std_diff = (float(v) for v in fn(x, z, jax.random.key(0)))
    assert abs(mean_same) < std_same
    assert mean_diff > 5 * std_diff
    # The exact MMD^2 for a mean shift under this kernel is positive; the estimate sees it.
    assert mean_diff > 10 * abs(mean_same)


def test_kid_subset_size_is_capped_and_inputs_checked():
    x = jnp.asarray(RNG.normal(size=(30, 3)), jnp.float32)
    mean, std = kidlib.kid(x, x, jax.random.key(0), num_subsets=3, subset_size=1000)
    assert np.isfinite(float(mean)) and np.isfinite(float(std))
    with pytest.raises(ValueError, match="same D"):
        kidlib.kid(x, jnp.zeros((30, 4)), jax.random.key(0))
    with pytest.raises(ValueError, match="at least 2"):
        kidlib.kid(x, jnp.zeros((1, 3)), jax.random.key(0))
