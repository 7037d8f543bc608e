"""The MLP options that Metz et al.'s toy networks need: orthogonal init gain, D input scale."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgan import configs
from jaxgan.nets import mlp


def test_orthogonal_init_gain():
    g = mlp.MLPGenerator(out_shape=(2,), hidden=(16, 16), init_gain=0.8)
    params = g.init(jax.random.key(0), jnp.zeros((1, 32)))["params"]
    for name in ("Dense_0", "Dense_1"):  # [32, 16] and [16, 16]: orthonormal columns times the gain
        k = np.asarray(params[name]["kernel"], np.float64)
        np.testing.assert_allclose(k.T @ k, 0.64 * np.eye(16), atol=1e-5)
    default = mlp.MLPGenerator(out_shape=(2,), hidden=(16, 16)).init(jax.random.key(0), jnp.zeros((1, 32)))["params"]
    k = np.asarray(default["Dense_1"]["kernel"], np.float64)
    assert not np.allclose(k.T @ k, (k.T @ k)[0, 0] * np.eye(16), atol=1e-2)  # LeCun normal is not orthogonal


def test_discriminator_input_scale_multiplies_the_input():
    x = jax.random.normal(jax.random.key(1), (5, 2))
    scaled = mlp.MLPDiscriminator(hidden=(8,), activation="relu", input_scale=0.25)
    plain = mlp.MLPDiscriminator(hidden=(8,), activation="relu")
    params = plain.init(jax.random.key(2), x)
    np.testing.assert_allclose(scaled.apply(params, x), plain.apply(params, 0.25 * x), rtol=1e-6)


@pytest.mark.parametrize("item", ["init_gain=-1", "d_input_scale=0"])
def test_bad_values_are_rejected(item):
    with pytest.raises(configs.ConfigError, match=item.split("=")[0]):
        configs.apply_overrides(configs.preset("ring8"), configs.parse_overrides([item]))


@pytest.mark.parametrize("name, num_modes", [("metz-ring8", 8), ("metz-grid25", 25)])
def test_metz_presets_build_the_papers_networks(name, num_modes):
    """Metz et al. 2016 appendix A: G 256 -> 128 -> 128 -> 2 (ReLU), D 2 -> 128 -> 1 (ReLU)."""
    from jaxgan import loop

    run = loop.Run.from_config(configs.preset(name))
    state = run.init_state()
    count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
    assert count(state.g.params) == (256 * 128 + 128) + (128 * 128 + 128) + (128 * 2 + 2)
    assert count(state.d.params) == (2 * 128 + 128) + (128 * 1 + 1)
    assert run.source.num_modes == num_modes
    c = configs.preset(name)
    assert (c.loss, c.g_lr, c.d_lr, c.b1, c.steps, c.unroll_steps) == ("minimax", 1e-4, 1e-4, 0.5, 12500, 0)
