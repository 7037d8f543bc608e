"""Linen, nnx and plain-function networks give the same GAN steps for the same weights."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import jaxgan as jg
from tests.helpers import batch, trees_equal


class LinenMLP(nn.Module):
    out: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        h = jnp.tanh(nn.Dense(8)(x))  # Dense_0
        return nn.Dense(self.out)(h)  # Dense_1


class NnxMLP(nnx.Module):
    def __init__(self, din, out, rngs):
        self.hidden = nnx.Linear(din, 8, rngs=rngs)
        self.out = nnx.Linear(8, out, rngs=rngs)

    def __call__(self, x):
        return self.out(jnp.tanh(self.hidden(x)))


def _gan(g, d):
    return jg.GAN(g, d, optax.adam(1e-2), optax.adam(1e-2))


def _as_nnx_params(linen_params, module):
    """Copy linen Dense weights into an nnx module with the same layers."""
    module.hidden.kernel[...] = linen_params["Dense_0"]["kernel"]
    module.hidden.bias[...] = linen_params["Dense_0"]["bias"]
    module.out.kernel[...] = linen_params["Dense_1"]["kernel"]
    module.out.bias[...] = linen_params["Dense_1"]["bias"]
    return module


def test_plain_functions_and_linen_give_identical_steps(key):
    g_mod, d_mod = LinenMLP(2), LinenMLP(1)
    linen = _gan(jg.nets.from_linen(g_mod, latent_dim=3), jg.nets.from_linen(d_mod))
    plain = _gan(
        jg.nets.from_functions(lambda k, x: g_mod.init(k, x)["params"], lambda p, x: g_mod.apply({"params": p}, x),
                               latent_dim=3),
        jg.nets.from_functions(lambda k, x: d_mod.init(k, x)["params"], lambda p, x: d_mod.apply({"params": p}, x)),
    )
    x = batch(key)
    state = linen.init(jax.random.key(1), x)
    a, ma = linen.train_step(state, x)
    b, mb = plain.train_step(state, x)
    assert trees_equal(a, b) and trees_equal(ma, mb)


def test_nnx_with_the_same_weights_matches_linen(key):
    g_mod, d_mod = LinenMLP(2), LinenMLP(1)
    linen = _gan(jg.nets.from_linen(g_mod, latent_dim=3), jg.nets.from_linen(d_mod))
    x = batch(key)
    state = linen.init(jax.random.key(1), x)
    g_nnx = _as_nnx_params(state.g.params, NnxMLP(3, 2, nnx.Rngs(0)))
    d_nnx = _as_nnx_params(state.d.params, NnxMLP(2, 1, nnx.Rngs(0)))
    nnx_gan = _gan(jg.nets.from_nnx(g_nnx, latent_dim=3), jg.nets.from_nnx(d_nnx))
    nstate = nnx_gan.init(jax.random.key(1), x)
    nstate, nm = jax.jit(nnx_gan.train_step)(nstate, x)
    lstate, lm = jax.jit(linen.train_step)(state, x)
    for k in ("d_loss", "g_loss", "generator_score"):
        np.testing.assert_allclose(nm[k], lm[k], rtol=1e-5)
    np.testing.assert_allclose(nstate.d.params["out"]["kernel"][...], lstate.d.params["Dense_1"]["kernel"],
                               rtol=1e-5, atol=1e-7)


class NnxBNDropout(nnx.Module):
    def __init__(self, rngs):
        self.lin = nnx.Linear(2, 16, rngs=rngs)
        self.bn = nnx.BatchNorm(16, momentum=0.5, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)
        self.out = nnx.Linear(16, 1, rngs=rngs)

    def __call__(self, x):
        return self.out(self.drop(nnx.relu(self.bn(self.lin(x)))))[:, 0]


def test_nnx_batch_stats_are_threaded_not_mutated(key):
    net = jg.nets.from_nnx(lambda rngs: NnxBNDropout(rngs))
    x = batch(key)
    params, state = net.init(jax.random.key(0), x)
    before = jax.tree.map(jnp.copy, state)
    for apply in (net.apply, jax.jit(net.apply, static_argnames="train")):  # eager and compiled
        _, new_state = apply(params, state, x, key=jax.random.key(1), train=True)
        assert trees_equal(state, before)  # the input state is untouched
        assert not trees_equal(new_state, state)  # training mode produced new running statistics
    # Evaluation mode uses the running statistics and returns them unchanged.
    y_eval, same = net.apply(params, state, x, key=jax.random.key(1), train=False)
    assert trees_equal(same, state)
    y_eval2, _ = net.apply(params, state, x, key=jax.random.key(2), train=False)
    np.testing.assert_array_equal(y_eval, y_eval2)  # no dropout at evaluation


def test_nnx_dropout_follows_the_given_key(key):
    net = jg.nets.from_nnx(lambda rngs: NnxBNDropout(rngs))
    x = batch(key)
    params, state = net.init(jax.random.key(0), x)
    f = lambda k: net.apply(params, state, x, key=k, train=True)[0]
    np.testing.assert_array_equal(f(jax.random.key(1)), f(jax.random.key(1)))
    assert not np.allclose(f(jax.random.key(1)), f(jax.random.key(2)))


def test_nnx_factory_init_honours_the_key_and_vmaps_over_seeds(key):
    g = jg.nets.from_nnx(lambda rngs: NnxMLP(3, 2, rngs), latent_dim=3)
    d = jg.nets.from_nnx(lambda rngs: NnxBNDropout(rngs))
    gan = _gan(g, d)
    x = batch(key)
    states = jax.vmap(gan.init, in_axes=(0, None))(jax.random.split(jax.random.key(0), 3), x)
    kernels = states.g.params["hidden"]["kernel"][...]
    assert not np.allclose(kernels[0], kernels[1])
    states, m = jax.jit(jax.vmap(gan.train_step, in_axes=(0, None)))(states, x)
    assert m["d_loss"].shape == (3,) and np.all(np.isfinite(m["d_loss"]))


def test_plain_function_with_a_key_receives_fresh_randomness(key):
    def apply(params, x, key):
        return x @ params["w"] + 0.1 * jax.random.normal(key, (x.shape[0], 2))

    net = jg.nets.from_functions(lambda k, x: {"w": jnp.eye(2)}, apply, latent_dim=2)
    p, s = net.init(key, jnp.zeros((4, 2)))
    a, _ = net.apply(p, s, jnp.ones((4, 2)), key=jax.random.key(1), train=True)
    b, _ = net.apply(p, s, jnp.ones((4, 2)), key=jax.random.key(2), train=True)
    assert not np.allclose(a, b)
