"""Precision/recall and density/coverage against a brute-force numpy reading of the papers."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgan.metrics import prdc as prdclib

RNG = np.random.default_rng(2)


def _brute(real, fake, k_pr=3, k_dc=5):
    """The definitions, point by point, float64 (Kynkäänniemi et al. 2019 eq. 1-2; Naeem et al.
    2020 eq. 3-4), closed balls, the k-th neighbour excluding the point itself."""
    real, fake = real.astype(np.float64), fake.astype(np.float64)

    def dist(a, b):
        return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))

    def radii(x, k):
        return np.sort(dist(x, x), axis=1)[:, k]  # column 0 is the point itself

    d_rf = dist(real, fake)  # [N, M]
    r_real, r_fake, r_real_dc = radii(real, k_pr), radii(fake, k_pr), radii(real, k_dc)
    precision = np.mean([np.any(d_rf[:, j] <= r_real) for j in range(len(fake))])
    recall = np.mean([np.any(d_rf[i, :] <= r_fake) for i in range(len(real))])
    density = np.mean([np.sum(d_rf[:, j] <= r_real_dc) for j in range(len(fake))]) / k_dc
    coverage = np.mean([d_rf[i, :].min() <= r_real_dc[i] for i in range(len(real))])
    return {"precision": precision, "recall": recall, "density": density, "coverage": coverage}


@functools.cache
def _prdc_fn(block):
    return jax.jit(functools.partial(prdclib.prdc, block=block))


def _run(real, fake, block=1024):
    out = _prdc_fn(block)(jnp.asarray(real), jnp.asarray(fake))
    return {k: float(v) for k, v in out.items()}


_PR = jax.jit(lambda a, b: prdclib.precision_recall(a, b, k=3, block=50))
_DC = jax.jit(lambda a, b: prdclib.density_coverage(a, b, k=5, block=1000))


@pytest.mark.parametrize("shift", [0.0, 0.5, 1.5])
def test_prdc_matches_brute_force(shift):
    real = RNG.normal(size=(240, 5)).astype(np.float32)
    fake = RNG.normal(shift, 1.0, size=(170, 5)).astype(np.float32)
    got, want = _run(real, fake, block=64), _brute(real, fake)
    for name in want:
        # one borderline point may flip under float32 distances: allow one example's worth
        tol = 1.0 / min(len(real), len(fake)) + 1e-6
        assert abs(got[name] - want[name]) <= tol, (name, got[name], want[name])
    p, r = _PR(jnp.asarray(real), jnp.asarray(fake))
    d, c = _DC(jnp.asarray(real), jnp.asarray(fake))
    for name, value in (("precision", p), ("recall", r), ("density", d), ("coverage", c)):
        assert abs(float(value) - got[name]) <= tol, name


def test_identical_sets_score_one():
    x = RNG.normal(size=(300, 8)).astype(np.float32)
    got = _run(x, x)
    assert got["precision"] == 1.0 and got["recall"] == 1.0 and got["coverage"] == 1.0
    np.testing.assert_allclose(got["density"], _brute(x, x)["density"], atol=1e-6)


def test_scores_fall_as_the_fake_distribution_moves_away():
    real = RNG.normal(size=(600, 2)).astype(np.float32)
    base = RNG.normal(size=(600, 2)).astype(np.float32)
    rows = [_run(real, base + np.float32(s)) for s in (0.0, 1.0, 2.0, 4.0, 12.0)]
    for name in ("precision", "recall", "density", "coverage"):
        values = [r[name] for r in rows]
        assert all(a > b for a, b in itertools.pairwise(values[:-1])), (name, values)
        assert values[-1] == 0.0, (name, values)
    assert rows[0]["precision"] > 0.9 and rows[0]["recall"] > 0.9 and rows[0]["coverage"] > 0.9


def test_a_dropped_mode_lowers_recall_and_coverage_but_not_precision():
    """Real: two far-apart clusters; fake: only one. Precision stays ~1, recall and coverage
    halve; density stays near 1 (fakes are as dense as the real data where they are)."""
    a = RNG.normal(size=(400, 3)).astype(np.float32)
    b = RNG.normal(size=(400, 3)).astype(np.float32) + np.float32(50.0)
    real = np.concatenate([a, b])
    fake = RNG.normal(size=(800, 3)).astype(np.float32)
    got = _run(real, fake)
    assert got["precision"] > 0.95
    assert 0.4 < got["recall"] < 0.55 and 0.4 < got["coverage"] < 0.55
    assert 0.8 < got["density"] < 1.25  # each fake sits in about k real balls, as for real data


def test_block_size_does_not_change_the_result():
    real = RNG.normal(size=(123, 4)).astype(np.float32)
    fake = RNG.normal(0.3, 1.0, size=(77, 4)).astype(np.float32)
    assert _run(real, fake, block=7) == _run(real, fake, block=4096)


def test_knn_radii_and_input_checks():
    x = RNG.normal(size=(50, 3)).astype(np.float32)
    d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    np.testing.assert_allclose(np.asarray(prdclib.knn_radii(jnp.asarray(x), 3)), np.sort(d, 1)[:, 3], rtol=1e-4)
    with pytest.raises(ValueError, match="same D"):
        prdclib.prdc(jnp.zeros((10, 2)), jnp.zeros((10, 3)))
    with pytest.raises(ValueError, match="at least 6"):
        prdclib.prdc(jnp.zeros((10, 2)), jnp.zeros((4, 2)))
