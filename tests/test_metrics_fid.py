"""Fréchet distance against closed forms and scipy's matrix square root."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from jaxgan.metrics import fid as fidlib

RNG = np.random.default_rng(0)


def _spd(d, rng, scale=1.0, rank=None):
    a = rng.normal(size=(d, rank or d))
    return scale * a @ a.T / (rank or d) + (0.0 if rank else 0.1) * np.eye(d)


def _reference_fd(mu1, s1, mu2, s2):
    """The TTUR reference formula in float64 with scipy's (Schur-based) sqrtm."""
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_sqrtm_psd_matches_scipy():
    a = _spd(6, RNG)
    root = np.asarray(fidlib.sqrtm_psd(jnp.asarray(a, jnp.float32)))
    np.testing.assert_allclose(root, scipy.linalg.sqrtm(a).real, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(root @ root, a, rtol=1e-4, atol=1e-5)


def test_sqrtm_psd_of_a_singular_matrix():
    a = _spd(5, RNG, rank=2)  # rank 2: three zero eigenvalues, some slightly negative in float32
    root = np.asarray(fidlib.sqrtm_psd(jnp.asarray(a, jnp.float32)))
    assert np.all(np.isfinite(root))
    np.testing.assert_allclose(root @ root, a, atol=1e-4)


def test_trace_sqrt_product_matches_scipy_on_non_commuting_matrices():
    a, b = _spd(7, RNG), _spd(7, RNG, scale=3.0)
    assert not np.allclose(a @ b, b @ a)
    got = float(fidlib.trace_sqrt_product(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)))
    want = float(np.trace(scipy.linalg.sqrtm(a @ b)).real)
    np.testing.assert_allclose(got, want, rtol=1e-4)


def test_frechet_distance_commuting_closed_form():
    """Same eigenbasis: d^2 = |mu1 - mu2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2."""
    q, _ = np.linalg.qr(RNG.normal(size=(5, 5)))
    ea, eb = RNG.uniform(0.2, 3.0, 5), RNG.uniform(0.2, 3.0, 5)
    s1, s2 = q @ np.diag(ea) @ q.T, q @ np.diag(eb) @ q.T
    mu1, mu2 = RNG.normal(size=5), RNG.normal(size=5)
    want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(ea) - np.sqrt(eb)) ** 2)
    got = fidlib.frechet_distance(*(jnp.asarray(x, jnp.float32) for x in (mu1, s1, mu2, s2)))
    np.testing.assert_allclose(float(got), want, rtol=1e-4)


def test_frechet_distance_general_matches_reference_formula():
    mu1, mu2 = RNG.normal(size=8), RNG.normal(size=8)
    s1, s2 = _spd(8, RNG), _spd(8, RNG, scale=2.0)
    got = fidlib.frechet_distance(*(jnp.asarray(x, jnp.float32) for x in (mu1, s1, mu2, s2)))
    np.testing.assert_allclose(float(got), _reference_fd(mu1, s1, mu2, s2), rtol=1e-4)
    same = fidlib.frechet_distance(*(jnp.asarray(x, jnp.float32) for x in (mu1, s1, mu1, s1)))
    assert abs(float(same)) < 1e-4


def test_fid_from_samples_approaches_the_closed_form():
    """Samples of two Gaussians: the estimate is near the exact distance (bias O(D/N))."""
    d, n = 4, 40_000
    mu1, mu2 = np.zeros(d), np.array([1.0, -0.5, 0.0, 0.25])
    s1, s2 = _spd(d, RNG), _spd(d, RNG, scale=2.0)
    x = RNG.multivariate_normal(mu1, s1, size=n).astype(np.float32)
    y = RNG.multivariate_normal(mu2, s2, size=n).astype(np.float32)
    exact = _reference_fd(mu1, s1, mu2, s2)
    got = float(jax.jit(fidlib.fid)(jnp.asarray(x), jnp.asarray(y)))
    np.testing.assert_allclose(got, exact, rtol=0.03)


def test_moments_match_numpy_and_merge_exactly():
    x = RNG.normal(3.0, 2.0, size=(301, 6)).astype(np.float32)
    m = fidlib.moments(jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(m.mean), x.mean(0), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(m.cov), np.cov(x, rowvar=False), rtol=1e-4, atol=1e-5)
    merged = fidlib.merge_moments(fidlib.moments(jnp.asarray(x[:100])), fidlib.moments(jnp.asarray(x[100:])))
    np.testing.assert_allclose(np.asarray(merged.mean), x.mean(0), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(merged.cov), np.cov(x, rowvar=False), rtol=1e-4, atol=1e-5)
    assert float(merged.count) == 301


def test_fid_rejects_mismatched_features():
    with pytest.raises(ValueError, match="same D"):
        fidlib.fid(jnp.zeros((10, 3)), jnp.zeros((10, 4)))
    with pytest.raises(ValueError, match="at least 2"):
        fidlib.fid(jnp.zeros((1, 3)), jnp.zeros((10, 3)))
