"""Each penalty and remedy does what it must, checked against closed forms and numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxgan as jg
from jaxgan.penalties import PenaltyInputs
from tests.helpers import batch, mlp_gan

RNG = np.random.default_rng(0)
REAL = RNG.normal(size=(128, 3)).astype(np.float32)
FAKE = RNG.normal(loc=2.0, size=(128, 3)).astype(np.float32)
IDS = jnp.arange(128, dtype=jnp.uint32)


def _inputs(d, real=REAL, fake=FAKE, params=None):
    return PenaltyInputs(d, jnp.asarray(real), jnp.asarray(fake), params, jax.random.key(0), IDS)


def _linear_critic(norm):
    w = RNG.normal(size=3)
    w = jnp.asarray(norm * w / np.linalg.norm(w), jnp.float32)
    return lambda x: x @ w


def test_gradient_penalty_is_zero_for_a_unit_norm_linear_critic():
    gp = jg.penalties.GradientPenalty(weight=10.0)
    np.testing.assert_allclose(gp.loss(_inputs(_linear_critic(1.0))), 0.0, atol=1e-10)


def test_gradient_penalty_of_a_linear_critic_is_weight_times_squared_excess_norm():
    gp = jg.penalties.GradientPenalty(weight=10.0)
    np.testing.assert_allclose(gp.loss(_inputs(_linear_critic(3.0))), 10.0 * (3.0 - 1.0) ** 2, rtol=1e-5)


def test_gradient_penalty_of_a_quadratic_critic_matches_numpy():
    # D(x) = ||x||^2 / 2 has gradient x; with real == fake every interpolate is that point.
    d = lambda x: 0.5 * jnp.sum(x * x, axis=1)
    got = jg.penalties.GradientPenalty(weight=2.0).loss(_inputs(d, real=REAL, fake=REAL))
    ref = 2.0 * np.mean((np.linalg.norm(REAL.astype(np.float64), axis=1) - 1.0) ** 2)
    np.testing.assert_allclose(got, ref, rtol=1e-5)


def test_gradient_penalty_interpolates_between_real_and_fake():
    # D(x) = ||x||^2 / 2: grad at x_hat is x_hat, whose norm lies between the endpoints' (on a
    # segment from the origin-free pair the norm is convex): check the penalty differs from
    # both endpoint-only penalties, i.e. the interpolates are not the endpoints.
    d = lambda x: 0.5 * jnp.sum(x * x, axis=1)
    gp = jg.penalties.GradientPenalty(weight=1.0)
    mid = float(gp.loss(_inputs(d)))
    at_real = float(gp.loss(_inputs(d, real=REAL, fake=REAL)))
    at_fake = float(gp.loss(_inputs(d, real=FAKE, fake=FAKE)))
    assert min(at_real, at_fake) < mid < max(at_real, at_fake)


def test_r1_and_r2_of_a_linear_critic_are_half_gamma_squared_norm():
    d = _linear_critic(2.0)
    np.testing.assert_allclose(jg.penalties.R1(gamma=5.0).loss(_inputs(d)), 0.5 * 5.0 * 4.0, rtol=1e-5)
    np.testing.assert_allclose(jg.penalties.R2(gamma=5.0).loss(_inputs(d)), 0.5 * 5.0 * 4.0, rtol=1e-5)


def test_r1_looks_at_real_data_and_r2_at_generated_data():
    d = lambda x: 0.5 * jnp.sum(x * x, axis=1)  # ||grad||^2 = ||x||^2
    r1 = jg.penalties.R1(gamma=2.0).loss(_inputs(d))
    r2 = jg.penalties.R2(gamma=2.0).loss(_inputs(d))
    np.testing.assert_allclose(r1, np.mean(np.sum(REAL.astype(np.float64) ** 2, axis=1)), rtol=1e-5)
    np.testing.assert_allclose(r2, np.mean(np.sum(FAKE.astype(np.float64) ** 2, axis=1)), rtol=1e-5)


def test_weight_penalty_sums_squared_kernels_only():
    params = {
        "dense": {"kernel": jnp.asarray(REAL[:4]), "bias": jnp.ones(3) * 100.0},
        "out": {"kernel": jnp.ones((3, 1))},
    }
    got = jg.penalties.WeightPenalty(weight=0.1).loss(_inputs(None, params=params))
    ref = 0.1 * (np.sum(REAL[:4].astype(np.float64) ** 2) + 3.0)
    np.testing.assert_allclose(got, ref, rtol=1e-5)


def test_weight_clipping_bounds_every_discriminator_weight(key):
    c = 0.01
    gan = mlp_gan(d_optimizer=optax.sgd(10.0), loss=jg.losses.WASSERSTEIN, penalties=(jg.penalties.WeightClip(c),))
    x = batch(key)
    state = gan.init(jax.random.key(1), x)
    assert max(float(jnp.max(jnp.abs(w))) for w in jax.tree.leaves(state.d.params)) > c  # init exceeds c
    for _ in range(3):
        state, _ = gan.train_step(state, x)
    leaves = jax.tree.leaves(state.d.params)
    assert all(float(jnp.max(jnp.abs(w))) <= c for w in leaves)
    assert any(float(jnp.max(jnp.abs(w))) == pytest.approx(c) for w in leaves)  # it did bind


def test_instance_noise_anneals_linearly_to_zero():
    noise = jg.penalties.InstanceNoise(std=0.4, anneal_steps=100)
    levels = [float(noise.level(jnp.asarray(t))) for t in (0, 25, 50, 100, 150)]
    np.testing.assert_allclose(levels, [0.4, 0.3, 0.2, 0.0, 0.0], atol=1e-7)
    assert float(jg.penalties.InstanceNoise(std=0.4).level(jnp.asarray(10_000))) == pytest.approx(0.4)


def test_instance_noise_has_the_stated_std_and_is_keyed_by_example():
    noise = jg.penalties.InstanceNoise(std=0.5)
    x = jnp.zeros((4000, 2))
    ids = jnp.arange(4000, dtype=jnp.uint32)
    out = noise.perturb(x, jax.random.key(3), ids, jnp.asarray(0))
    assert abs(float(jnp.std(out)) - 0.5) < 0.02 and abs(float(jnp.mean(out))) < 0.02
    # The second half drawn alone (as a second device would) equals the second half of the whole.
    half = noise.perturb(x[2000:], jax.random.key(3), ids[2000:], jnp.asarray(0))
    np.testing.assert_array_equal(half, out[2000:])


def test_instance_noise_reaches_d_in_both_players_updates(key):
    # With huge noise D cannot tell real from fake: its accuracy is near a coin flip even on
    # data far from the generator's output.
    gan = mlp_gan(penalties=(jg.penalties.InstanceNoise(std=100.0),))
    x = batch(key, n=512, shift=50.0)
    state = gan.init(jax.random.key(1), x)
    step = jax.jit(gan.train_step)
    accs = []
    for _ in range(20):
        state, m = step(state, x)
        accs.append(0.5 * (float(m["d_accuracy_real"]) + float(m["d_accuracy_fake"])))
    assert abs(np.mean(accs[-10:]) - 0.5) < 0.1


def test_one_sided_label_smoothing_caps_the_optimal_discriminator():
    # On perfectly separable data the best D under targets 0.9 (real) / 0 (fake) outputs 0.9 on
    # real data, not 1 (Salimans et al. 2016, sec. 3.4).
    y = jg.penalties.LabelSmoothing(real_target=0.9).targets(jnp.ones(8), jax.random.key(0), jnp.arange(8))
    np.testing.assert_allclose(y, 0.9)
    logit = jnp.zeros(())
    opt = optax.adam(0.1)
    st = opt.init(logit)

    def loss(logit):
        return jg.losses.NON_SATURATING.discriminator_loss(logit[None], jnp.asarray([-20.0]), jnp.asarray([0.9]))

    for _ in range(500):
        g = jax.grad(loss)(logit)
        u, st = opt.update(g, st)
        logit = optax.apply_updates(logit, u)
    assert float(jax.nn.sigmoid(logit)) == pytest.approx(0.9, abs=1e-3)


def test_label_flipping_labels_the_stated_fraction_of_reals_fake():
    flip = jg.penalties.LabelFlip(rate=0.2)
    n = 20_000
    y = flip.targets(jnp.ones(n), jax.random.key(5), jnp.arange(n, dtype=jnp.uint32))
    assert set(np.unique(np.asarray(y))) == {0.0, 1.0}
    frac = 1.0 - float(jnp.mean(y))
    assert abs(frac - 0.2) < 4 * np.sqrt(0.2 * 0.8 / n)


def test_label_flipping_shows_in_the_step_metrics(key):
    gan = mlp_gan(penalties=(jg.penalties.LabelFlip(rate=0.5),))
    x = batch(key, n=1024)
    _, m = gan.d_step(gan.init(jax.random.key(1), x), x)
    assert abs(float(m["real_label_mean"]) - 0.5) < 0.06


def test_dropout_in_the_reference_discriminator(key):
    d = jg.nets.MLPDiscriminator(hidden=(64,), dropout=0.5)
    net = jg.nets.from_linen(d)
    x = batch(key, n=16)
    params, state = net.init(jax.random.key(0), x)
    train_a, _ = net.apply(params, state, x, key=jax.random.key(1), train=True)
    train_b, _ = net.apply(params, state, x, key=jax.random.key(2), train=True)
    eval_a, _ = net.apply(params, state, x, key=jax.random.key(1), train=False)
    eval_b, _ = net.apply(params, state, x, key=jax.random.key(2), train=False)
    assert not np.allclose(train_a, train_b)  # a mask per key in training
    np.testing.assert_array_equal(eval_a, eval_b)  # no dropout at evaluation
    # Without dropout, training and evaluation agree.
    plain = jg.nets.from_linen(jg.nets.MLPDiscriminator(hidden=(64,), dropout=0.0))
    p2, s2 = plain.init(jax.random.key(0), x)
    np.testing.assert_array_equal(
        plain.apply(p2, s2, x, key=jax.random.key(1), train=True)[0],
        plain.apply(p2, s2, x, key=jax.random.key(1), train=False)[0],
    )


@pytest.mark.parametrize(
    "remedy",
    [
        jg.penalties.gradient_penalty(10.0),
        jg.penalties.r1(1.0),
        jg.penalties.r2(1.0),
        jg.penalties.weight_penalty(1e-3),
        jg.penalties.weight_clip(0.05),
        jg.penalties.instance_noise(0.1, 50),
        jg.penalties.label_smoothing(0.9),
        jg.penalties.label_flip(0.1),
    ],
    ids=lambda r: type(r).__name__,
)
def test_every_remedy_runs_inside_a_jitted_round(remedy, key):
    gan = mlp_gan(penalties=(remedy,))
    x = batch(key)
    state = gan.init(jax.random.key(1), x)
    state, m = jax.jit(gan.train_step)(state, x)
    assert all(np.isfinite(float(v)) for v in m.values())
    if remedy.name in m:  # loss terms are reported under the remedy's name
        assert float(m[remedy.name]) >= 0.0
