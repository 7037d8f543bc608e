"""Mode coverage (VEEGAN/PacGAN protocol) against constructed samples with known answers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgan.data import toy
from jaxgan.metrics import coverage

RING, GRID = toy.TOY["ring8"], toy.TOY["grid25"]


@pytest.mark.parametrize("mixture", [RING, GRID], ids=["ring8", "grid25"])
@pytest.mark.parametrize("k", [1, 3, 8])
def test_samples_at_k_modes_capture_k(mixture, k):
    rng = np.random.default_rng(k)
    chosen = rng.choice(mixture.num_modes, size=k, replace=False)
    per_mode = rng.integers(1, 50, size=k)
    samples = np.repeat(mixture.centers[chosen], per_mode, axis=0)
    c = coverage.of_mixture(samples, mixture)
    assert int(c.modes) == k
    assert float(c.high_quality) == 1.0
    want = np.zeros(mixture.num_modes, int)
    want[chosen] = per_mode
    np.testing.assert_array_equal(c.counts, want)


def test_far_samples_are_not_high_quality_and_the_threshold_is_three_std():
    std = RING.std
    center = RING.centers[0]
    radial = center / np.linalg.norm(center)
    # Just inside / just outside 3 std of mode 0 (still nearest to it), and far from every mode.
    inside = center + 2.99 * std * radial
    outside = center + 3.01 * std * radial
    far = np.array([0.0, 0.0])
    c = coverage.of_mixture(np.stack([inside, outside, far, far]), RING)
    assert int(c.modes) == 1
    np.testing.assert_allclose(c.high_quality, 0.25)
    np.testing.assert_array_equal(c.counts, [1, 0, 0, 0, 0, 0, 0, 0])
    only_far = coverage.of_mixture(np.stack([far, far + 10.0]), RING)
    assert int(only_far.modes) == 0 and float(only_far.high_quality) == 0.0
    assert np.isnan(float(only_far.reverse_kl))  # empty histogram: KL undefined


def test_reverse_kl_against_closed_form_histogram():
    """Counts (n_k) at the modes plus some low-quality samples: KL(p || U) with p = n / sum(n)
    over high-quality samples only, in nats."""
    counts = np.array([10, 0, 30, 5, 5, 0, 0, 50])
    samples = np.concatenate([np.repeat(RING.centers, counts, axis=0), np.zeros((17, 2), np.float32)])
    c = coverage.of_mixture(samples, RING)
    p = counts / counts.sum()
    nz = p > 0
    want = float(np.sum(p[nz] * np.log(p[nz] * 8)))
    np.testing.assert_allclose(float(c.reverse_kl), want, rtol=1e-6)
    np.testing.assert_allclose(float(c.reverse_kl), np.log(8) - (-np.sum(p[nz] * np.log(p[nz]))), rtol=1e-6)
    np.testing.assert_allclose(float(c.high_quality), counts.sum() / (counts.sum() + 17), rtol=1e-6)
    assert int(c.modes) == 5
    uniform = coverage.of_mixture(np.repeat(RING.centers, 3, axis=0), RING)
    assert abs(float(uniform.reverse_kl)) < 1e-6
    single = coverage.of_mixture(np.repeat(RING.centers[:1], 3, axis=0), RING)
    np.testing.assert_allclose(float(single.reverse_kl), np.log(8), rtol=1e-6)


def test_data_itself_scores_like_a_gaussian_and_jits_and_vmaps():
    """2,500 draws from the mixture: every mode, and the 2-D chi probability of lying within 3
    std, 1 - exp(-9/2) = 0.9889 (binomial s.d. 0.002); runs under jit(vmap) over seeds."""
    rng = np.random.default_rng(0)
    which = rng.integers(0, GRID.num_modes, size=(4, 2500))
    samples = GRID.centers[which] + GRID.std * rng.normal(size=(4, 2500, 2))
    c = jax.jit(jax.vmap(lambda s: coverage.of_mixture(s, GRID)))(samples.astype(np.float32))
    np.testing.assert_array_equal(c.modes, [25] * 4)
    np.testing.assert_allclose(c.high_quality, 1 - np.exp(-4.5), atol=0.008)
    assert np.all(np.asarray(c.reverse_kl) < 0.02)


def test_any_dimension_and_per_mode_std():
    centers = np.eye(5, 7, dtype=np.float32) * 10.0  # 5 modes in 7-D
    std = np.array([0.1, 0.1, 1.0, 0.1, 0.1], np.float32)
    samples = np.stack([centers[2] + 2.0, centers[2] + 0.5, centers[4] + 0.05])  # offsets on all 7 axes
    c = coverage.mode_coverage(samples, centers, std)
    # |2.0 * ones(7)| = 5.29 > 3 * 1.0; |0.5 * ones(7)| = 1.32 < 3; |0.05 * ones(7)| = 0.13 < 0.3.
    np.testing.assert_array_equal(c.counts, [0, 0, 1, 0, 1])
    assert int(c.modes) == 2


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match=r"samples must be \[N, D\]"):
        coverage.mode_coverage(np.zeros(5), RING.centers, 0.1)
    with pytest.raises(ValueError, match="dimensions but the centers have"):
        coverage.mode_coverage(np.zeros((5, 3)), RING.centers, 0.1)
    with pytest.raises(ValueError, match="std must be > 0"):
        coverage.mode_coverage(np.zeros((5, 2)), RING.centers, 0.0)
    with pytest.raises(ValueError, match="one value per mode"):
        coverage.mode_coverage(np.zeros((5, 2)), RING.centers, jnp.ones(3))
