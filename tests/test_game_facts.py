"""The core learns the minimax game's facts (Goodfellow et al. 2014, Proposition 1)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxgan as jg
from jaxgan import build, configs, runner
from jaxgan.data import TOY


def _normal_pdf(x, mean, std):
    return np.exp(-0.5 * ((x - mean) / std) ** 2) / (std * np.sqrt(2 * np.pi))


def test_training_only_d_reaches_the_optimal_discriminator():
    # Fixed generator G(z) = z, so p_g = N(0, 1); data p_data = N(1, 0.5^2). For a fixed G the
    # best D is D*(x) = p_data(x) / (p_data(x) + p_g(x)).
    data = TOY["gaussian1d"]
    g = jg.nets.from_functions(lambda k, z: {}, lambda p, z: z, latent_dim=1)
    d = jg.nets.from_linen(jg.nets.MLPDiscriminator(hidden=(32, 32), activation="tanh"))
    gan = jg.GAN(g, d, g_optimizer=optax.sgd(0.0), d_optimizer=optax.adam(optax.cosine_decay_schedule(3e-3, 3000)))
    state = gan.init(jax.random.key(0), jnp.zeros((1024, 1)))

    def body(s, t):
        return gan.d_step(s, data.sample(jax.random.fold_in(jax.random.key(1), t), 1024))

    state, _ = jax.jit(lambda s: jax.lax.scan(body, s, jnp.arange(3000)))(state)

    xs = np.linspace(-0.5, 2.0, 51, dtype=np.float32)[:, None]  # where both densities have mass
    logits, _ = d.apply(state.d.params, state.d.model_state, jnp.asarray(xs), key=jax.random.key(0), train=False)
    got = np.asarray(jax.nn.sigmoid(logits))
    p_data, p_g = _normal_pdf(xs[:, 0], 1.0, 0.5), _normal_pdf(xs[:, 0], 0.0, 1.0)
    d_star = p_data / (p_data + p_g)
    assert np.max(np.abs(got - d_star)) < 0.03, np.max(np.abs(got - d_star))
    # D* crosses 1/2 where the densities are equal; a sanity check of the reference itself.
    assert d_star.min() < 0.2 and d_star.max() > 0.7


@pytest.mark.parametrize("preset", ["gaussian1d"])
def test_an_mlp_gan_moves_the_generator_to_the_data_moments(preset):
    config = configs.preset(preset)
    source = build.data_source(config)
    gan = build.gan(config, source.example_shape)
    state = gan.init(jax.random.key(config.seed), jnp.zeros((config.batch_size, *source.example_shape)))
    before = np.asarray(gan.sample(state, jax.random.key(9), 20_000))
    chunk = jax.jit(lambda s: runner.train_chunk(gan, source, s, config.batch_size, config.steps))
    state, metrics = chunk(state)
    x = np.asarray(gan.sample(state, jax.random.key(9), 20_000))
    mean, std = float(source.centers[0, 0]), source.std
    assert abs(before.mean() - mean) > 0.5  # it had to move
    assert abs(x.mean() - mean) < 0.05, x.mean()
    assert abs(x.std() - std) < 0.1, x.std()
    # Near the equilibrium both scores sit near 1/2.
    assert abs(float(metrics["generator_score"][-100:].mean()) - 0.5) < 0.1
    assert abs(float(metrics["discriminator_score"][-100:].mean()) - 0.5) < 0.1
