"""Each loss against an independent numpy computation of its published formula."""

import jax.numpy as jnp
import numpy as np
import pytest

import jaxgan as jg
from jaxgan import losses

RNG = np.random.default_rng(0)
REAL = RNG.normal(1.0, 2.0, size=64).astype(np.float32)
FAKE = RNG.normal(-1.0, 2.0, size=64).astype(np.float32)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x.astype(np.float64)))


def _numpy_losses(name, real, fake):
    """(D loss, G loss) written from the papers' formulas in float64."""
    dr, df = _sigmoid(real), _sigmoid(fake)
    if name == "minimax":
        return -np.mean(np.log(dr)) - np.mean(np.log(1 - df)), np.mean(np.log(1 - df))
    if name == "non_saturating":
        return -np.mean(np.log(dr)) - np.mean(np.log(1 - df)), -np.mean(np.log(df))
    if name == "wasserstein":
        return np.mean(fake) - np.mean(real), -np.mean(fake)
    if name == "hinge":
        return np.mean(np.maximum(0, 1 - real)) + np.mean(np.maximum(0, 1 + fake)), -np.mean(fake)
    if name == "least_squares":
        return 0.5 * np.mean((real - 1) ** 2) + 0.5 * np.mean(fake**2), 0.5 * np.mean((fake - 1) ** 2)
    raise AssertionError(name)


@pytest.mark.parametrize("name", sorted(losses.LOSSES))
def test_loss_values_match_numpy(name):
    loss = losses.get(name)
    d_ref, g_ref = _numpy_losses(name, REAL, FAKE)
    np.testing.assert_allclose(loss.discriminator_loss(jnp.asarray(REAL), jnp.asarray(FAKE)), d_ref, rtol=1e-5)
    np.testing.assert_allclose(loss.generator_loss(jnp.asarray(FAKE)), g_ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(losses.LOSSES))
def test_d_loss_is_sum_of_real_and_fake_terms(name):
    loss = losses.get(name)
    total = loss.discriminator_loss(jnp.asarray(REAL), jnp.asarray(FAKE))
    parts = jnp.mean(loss.real(jnp.asarray(REAL))) + jnp.mean(loss.fake(jnp.asarray(FAKE)))
    np.testing.assert_allclose(total, parts, rtol=1e-6)


def test_soft_real_targets_are_binary_cross_entropy():
    y = RNG.uniform(0.0, 1.0, size=64).astype(np.float32)
    got = jg.losses.NON_SATURATING.discriminator_loss(jnp.asarray(REAL), jnp.asarray(FAKE), jnp.asarray(y))
    dr, df = _sigmoid(REAL), _sigmoid(FAKE)
    ref = -np.mean(y * np.log(dr) + (1 - y) * np.log(1 - dr)) - np.mean(np.log(1 - df))
    np.testing.assert_allclose(got, ref, rtol=1e-5)


def test_minimax_saturates_where_non_saturating_does_not():
    # Goodfellow et al. 2014, sec. 3: when D confidently rejects a fake (logit -10), the
    # minimax generator loss is flat while the non-saturating one still pulls.
    import jax

    l0 = jnp.asarray([-10.0])
    g_mm = jax.grad(lambda logit: jg.losses.MINIMAX.generator_loss(logit))(l0)
    g_ns = jax.grad(lambda logit: jg.losses.NON_SATURATING.generator_loss(logit))(l0)
    assert abs(float(g_mm[0])) < 1e-4
    assert abs(float(g_ns[0])) > 0.99


def test_large_logits_stay_finite():
    big = jnp.asarray([-200.0, 200.0])
    for loss in losses.LOSSES.values():
        assert np.isfinite(float(loss.discriminator_loss(big, big)))
        assert np.isfinite(float(loss.generator_loss(big)))


def test_unknown_loss_lists_the_valid_names():
    with pytest.raises(ValueError, match="non_saturating"):
        losses.get("nonsaturating")
