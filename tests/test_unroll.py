"""The unrolled-GAN lookahead (jaxgan.unroll and GAN.g_update with unroll_steps > 0).

References are independent of the code under test where possible: a hand-written plain
generator step, a float64 numpy surrogate loss differentiated by finite differences, a
Python loop of D updates, a user-written optax D update, and a single-device run for pmap.
Generator gradients are read exactly with a "record" optimizer whose state is the last
gradient it saw (and whose update is zero).
"""

import dataclasses
import functools
import json
import os
import re
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxgan as jg
from jaxgan import build, configs
from jaxgan.unroll import lookahead, scan_updates

B, LATENT = 16, 3
# fold_in tag of the generator's key stream in gan.py (its module docstring: update n of G draws
# from fold_in(fold_in(rng, G), n)); the G update then splits its key into 5 (z, g, d, noise,
# unroll) and D update j of the lookahead gets fold_in(unroll key, j) (with unroll_resample,
# GAN.d_update splits it into 3: latents, generator, loss).
G_TAG = 2


def record() -> optax.GradientTransformation:
    """An optimizer that leaves params alone and keeps the gradient it was given as its state."""
    return optax.GradientTransformation(
        init=lambda p: jax.tree.map(jnp.zeros_like, p),
        update=lambda g, s, p=None: (jax.tree.map(jnp.zeros_like, g), g),
    )


def g_keys(state):
    key = jax.random.fold_in(jax.random.fold_in(state.rng, G_TAG), state.g.count)
    return jax.random.split(key, 5)  # k_z, k_g, k_d, k_noise, k_unroll


# ---------------------------------------------------------------------- tiny networks

def linear_generator(dtype=jnp.float32):
    def init(key, z):
        kw, kb = jax.random.split(key)
        return {"w": 0.5 * jax.random.normal(kw, (z.shape[1], 2), dtype), "b": 0.1 * jax.random.normal(kb, (2,), dtype)}

    def apply(p, z):
        return z @ p["w"] + p["b"][None]

    return jg.nets.from_functions(init, apply, latent_dim=LATENT)


def tanh_discriminator(width=5, dtype=jnp.float32):
    def init(key, x):
        k1, k2, k3 = jax.random.split(key, 3)
        return {
            "w1": jax.random.normal(k1, (x.shape[1], width), dtype),
            "b1": 0.1 * jax.random.normal(k2, (width,), dtype),
            "w2": jax.random.normal(k3, (width,), dtype),
            "b2": jnp.zeros((), dtype),
        }

    def apply(p, x):
        return jnp.tanh(x @ p["w1"] + p["b1"][None]) @ p["w2"] + p["b2"]

    return jg.nets.from_functions(init, apply)


class BatchNormD(nn.Module):
    """A discriminator with batch statistics and dropout (model state and randomness)."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        h = nn.Dense(8)(x)
        h = nn.BatchNorm(use_running_average=not train, momentum=0.5)(h)
        h = nn.Dropout(0.2, deterministic=not train)(jnp.tanh(h))
        return nn.Dense(1)(h)[:, 0]


# One instance of each network and optimizer, so that equal GAN definitions hash equal and
# share compiled steps across tests.
D_LR = 0.05
NETS = {dtype: (linear_generator(dtype), tanh_discriminator(dtype=dtype)) for dtype in (jnp.float32, jnp.float64)}
RECORD = record()
D_ADAM = optax.adam(D_LR, b1=0.5, eps_root=1e-16)
WARM_G = optax.sgd(0.05)


def tiny_gan(k, *, dtype=jnp.float32, **kw):
    g, d = NETS[dtype]
    defaults = dict(generator=g, discriminator=d, g_optimizer=RECORD, d_optimizer=D_ADAM,
                    loss=jg.losses.NON_SATURATING, unroll_steps=k)
    defaults.update(kw)
    return jg.GAN(**defaults)


def ring_batch(key, n=B, dtype=jnp.float32):
    return jg_toy().sample(key, n).astype(dtype)


def jg_toy():
    from jaxgan.data import toy

    return toy.TOY["ring8"]


@functools.cache
def _warm(dtype, d_optimizer, rounds=3):
    warm = tiny_gan(0, dtype=dtype, g_optimizer=WARM_G, d_optimizer=d_optimizer)
    state = warm.init(jax.random.key(0), jnp.zeros((B, 2), dtype))
    step = jax.jit(warm.train_step)
    for t in range(rounds):
        state, _ = step(state, ring_batch(jax.random.key(100 + t), dtype=dtype))
    return state


def trained_state(gan, dtype=jnp.float32):
    """A state for ``gan`` whose players have taken 3 plain rounds (so D's Adam has moments
    and a count); G's optimizer state is fresh from ``gan``'s own optimizer."""
    warm = _warm(dtype, gan.d_optimizer)
    g = warm.g.replace(opt_state=gan.g_optimizer.init(warm.g.params))
    return warm.replace(g=g)


def assert_trees_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def assert_trees_close(a, b, rtol, atol=0.0):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


# ---------------------------------------------------------------------- k = 0

def test_zero_steps_is_the_plain_generator_step_bitwise():
    """unroll_steps=0 gives exactly (bitwise) a hand-written plain G step with the same Adam."""
    gan = tiny_gan(0, g_optimizer=optax.adam(1e-2, b1=0.5))
    state = trained_state(gan)
    batch = ring_batch(jax.random.key(7))

    k_z, k_g, k_d, _, _ = g_keys(state)
    z = gan.latents(k_z, jnp.arange(B, dtype=jnp.uint32))

    def g_loss(gp):
        fake, _ = gan.generator.apply(gp, state.g.model_state, z, key=k_g, train=True)
        logits, _ = gan.discriminator.apply(state.d.params, state.d.model_state, fake, key=k_d, train=True)
        return jnp.mean(jax.nn.softplus(-logits))

    grads = jax.grad(g_loss)(state.g.params)
    updates, opt_state = gan.g_optimizer.update(grads, state.g.opt_state, state.g.params)
    params = optax.apply_updates(state.g.params, updates)

    new, _ = gan.g_step(state, batch)  # eager, op by op, like the reference
    assert_trees_equal(new.g.params, params)
    assert_trees_equal(new.g.opt_state, opt_state)
    assert_trees_equal(new.d, state.d)


# ---------------------------------------------------------------------- k = 1 in float64

def _np_softplus(x):
    return np.logaddexp(0.0, x)


def _np_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _np_surrogate(g, d, m, v, count, real, z_d, z_g, lr, b1, b2, eps, eps_root):
    """f_1(theta_G): the G loss against D after one Adam step on D's loss (numpy, float64).

    D(x) = tanh(x W1 + b1) . w2 + b2; G(z) = z W + b; non-saturating losses. The D gradient
    is derived by hand (backprop written out), then one Adam step (Kingma & Ba, Algorithm 1,
    with eps_root inside the square root as optax does).
    """
    fake_d = z_d @ g["w"] + g["b"]

    def d_forward(p, x):
        h = np.tanh(x @ p["w1"] + p["b1"])
        return h, h @ p["w2"] + p["b2"]

    n = real.shape[0]
    grads = {k: np.zeros_like(val) for k, val in d.items()}
    # L_D = mean softplus(-D(real)) + mean softplus(D(fake)).
    for x, dl_fn in ((real, lambda lg: -_np_sigmoid(-lg) / n), (fake_d, lambda lg: _np_sigmoid(lg) / n)):
        h, logit = d_forward(d, x)
        dl = dl_fn(logit)  # [n]
        grads["w2"] += h.T @ dl
        grads["b2"] += np.sum(dl)
        da = np.outer(dl, d["w2"]) * (1.0 - h * h)
        grads["w1"] += x.T @ da
        grads["b1"] += np.sum(da, axis=0)
    t = count + 1
    d1 = {}
    for k in d:
        mk = b1 * m[k] + (1 - b1) * grads[k]
        vk = b2 * v[k] + (1 - b2) * grads[k] ** 2
        m_hat, v_hat = mk / (1 - b1**t), vk / (1 - b2**t)
        d1[k] = d[k] - lr * m_hat / (np.sqrt(v_hat + eps_root) + eps)
    fake_g = z_g @ g["w"] + g["b"]
    _, logit = d_forward(d1, fake_g)
    return np.mean(_np_softplus(-logit))


def test_one_step_gradient_matches_finite_differences_float64():
    """The k=1 unrolled G gradient (through D's Adam step) equals central finite differences
    of an independent float64 numpy surrogate loss, to about 1e-7."""
    lr, b1, b2, eps, eps_root = 0.1, 0.5, 0.999, 1e-8, 1e-16
    with jax.enable_x64(True):
        gan = tiny_gan(1, dtype=jnp.float64, d_optimizer=optax.adam(lr, b1=b1, b2=b2, eps=eps, eps_root=eps_root))
        assert gan.d_optimizer is not D_ADAM
        state = trained_state(gan, dtype=jnp.float64)
        batch = ring_batch(jax.random.key(3), dtype=jnp.float64)
        new, metrics = jax.jit(gan.g_step)(state, batch)
        k_z = g_keys(state)[0]
        z_g = np.asarray(gan.latents(k_z, jnp.arange(B, dtype=jnp.uint32)))
        z_d = z_g  # the lookahead update trains on the G step's own fakes (Metz et al.'s notebook)
        adam_state = state.d.opt_state[0]
        got = jax.tree.map(np.asarray, new.g.opt_state)  # the recorded gradient
        first = dataclasses.replace(gan, unroll_first_order=True)
        first_grad = jax.tree.map(np.asarray, jax.jit(first.g_step)(state, batch)[0].g.opt_state)
    assert z_g.dtype == np.float64
    to_np = lambda tree: {k: np.asarray(v, np.float64) for k, v in tree.items()}
    g0, d0 = to_np(state.g.params), to_np(state.d.params)
    m, v, count = to_np(adam_state.mu), to_np(adam_state.nu), int(adam_state.count)
    assert count == 3  # D's Adam has history: bias corrections and moments are exercised
    real = np.asarray(batch, np.float64)

    def f(g):
        return _np_surrogate(g, d0, m, v, count, real, z_d, z_g, lr, b1, b2, eps, eps_root)

    np.testing.assert_allclose(float(metrics["g_loss"]), f(g0), rtol=1e-12)
    h = 1e-6
    for name in g0:
        fd = np.zeros_like(g0[name])
        for idx in np.ndindex(g0[name].shape):
            plus, minus = {k: a.copy() for k, a in g0.items()}, {k: a.copy() for k, a in g0.items()}
            plus[name][idx] += h
            minus[name][idx] -= h
            fd[idx] = (f(plus) - f(minus)) / (2 * h)
        np.testing.assert_allclose(got[name], fd, rtol=1e-6, atol=1e-9, err_msg=name)
        # The term through D's update is large here: dropping it (first order) changes the answer.
        assert np.max(np.abs(first_grad[name] - fd)) > 1e-3 * np.max(np.abs(fd))


# ---------------------------------------------------------------------- held constant

def test_lookahead_leaves_the_real_discriminator_untouched():
    """After an unrolled G step, D's params, optimizer state, batch statistics and count are
    bitwise what they were, although the lookahead's own D copy moved all of them."""
    g, d = jg.nets.mlp_pair((2,), LATENT, g_hidden=(8,), d_hidden=(8,), activation="tanh")
    d = jg.nets.from_linen(BatchNormD())
    gan = jg.GAN(generator=g, discriminator=d, g_optimizer=optax.adam(1e-2),
                 d_optimizer=optax.adam(0.05, eps_root=1e-16), unroll_steps=3)
    state = gan.init(jax.random.key(0), jnp.zeros((B, 2)))
    batch = ring_batch(jax.random.key(1))
    new, _ = jax.jit(gan.g_step)(state, batch)
    assert_trees_equal(new.d, state.d)
    kernel = lambda s: np.asarray(s.g.params["Dense_0"]["kernel"])
    assert not np.allclose(kernel(new), kernel(state))
    # What the lookahead would have done to D if it were not a copy: a real D update moves
    # the params, both Adam moments and the batch statistics.
    moved, _ = jax.jit(gan.d_step)(state, batch)
    for a, b in zip(jax.tree.leaves(moved.d), jax.tree.leaves(state.d), strict=True):
        assert not np.array_equal(np.asarray(a), np.asarray(b))


# ---------------------------------------------------------------------- first order, remat

@pytest.mark.parametrize("resample", [False, True])
def test_first_order_is_the_gradient_at_the_advanced_discriminator_held_constant(resample):
    """first_order=True equals the plain (k=0) G gradient against D advanced k steps by a
    Python loop of GAN.d_update / d_update_on (the second computation)."""
    k = 3
    gan = tiny_gan(k, unroll_first_order=True, unroll_resample=resample)
    state = trained_state(gan)
    batch = ring_batch(jax.random.key(5))
    k_z, k_g, _, _, k_unroll = g_keys(state)
    fake, _ = gan.generator.apply(state.g.params, state.g.model_state,
                                  gan.latents(k_z, jnp.arange(B, dtype=jnp.uint32)), key=k_g, train=True)
    if resample:
        update = jax.jit(functools.partial(gan.d_update, g_params=state.g.params, g_model_state=state.g.model_state,
                                           real=batch, with_metrics=False))
    else:
        update = jax.jit(functools.partial(gan.d_update_on, real=batch, fake=fake, with_metrics=False))
    d_k = state.d
    for j in range(k):  # the second computation: a Python loop of the one D update
        d_k, _ = update(d_k, key=jax.random.fold_in(k_unroll, j))
    want = jax.jit(dataclasses.replace(gan, unroll_steps=0).g_step)(state.replace(d=d_k), batch)[0].g.opt_state
    got = jax.jit(gan.g_step)(state, batch)[0].g.opt_state
    assert_trees_close(got, want, rtol=2e-5, atol=1e-7)
    full = jax.jit(dataclasses.replace(gan, unroll_first_order=False).g_step)(state, batch)[0].g.opt_state
    assert not np.allclose(np.asarray(full["w"]), np.asarray(want["w"]), rtol=1e-2)


def test_remat_gives_the_same_gradient():
    gan = tiny_gan(4)
    state = trained_state(gan)
    batch = ring_batch(jax.random.key(5))
    want = jax.jit(gan.g_step)(state, batch)[0].g.opt_state
    got = jax.jit(dataclasses.replace(gan, unroll_remat=True).g_step)(state, batch)[0].g.opt_state
    assert_trees_close(got, want, rtol=1e-6, atol=1e-9)


# ---------------------------------------------------------------------- jit, vmap

def test_vmap_over_seeds_matches_each_seed_under_jit():
    gan = tiny_gan(2)
    seeds = 3
    batches = jnp.stack([ring_batch(jax.random.key(9 + i)) for i in range(seeds)])
    init = jax.jit(jax.vmap(gan.init, in_axes=(0, None)))
    states = init(jax.random.split(jax.random.key(0), seeds), jnp.zeros((B, 2)))
    step = jax.jit(gan.g_step)
    vstates, vmetrics = jax.jit(jax.vmap(gan.g_step))(states, batches)
    for i in range(seeds):
        s, m = step(jax.tree.map(lambda x, i=i: x[i], states), batches[i])
        assert_trees_close(jax.tree.map(lambda x, i=i: x[i], vstates.g.opt_state), s.g.opt_state, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(vmetrics["g_loss"][i], m["g_loss"], rtol=1e-5)
    # Different seeds really are different GANs (their recorded G gradients differ).
    assert not np.allclose(np.asarray(vstates.g.opt_state["w"][0]), np.asarray(vstates.g.opt_state["w"][1]))


# ---------------------------------------------------------------------- pmap

PMAP_SCRIPT = textwrap.dedent(
    """
    import json, jax, jax.numpy as jnp, numpy as np, optax
    import jaxgan as jg
    from jaxgan.data import toy

    assert jax.local_device_count() == 2, jax.devices()
    B = 16
    record = optax.GradientTransformation(
        init=lambda p: jax.tree.map(jnp.zeros_like, p),
        update=lambda g, s, p=None: (jax.tree.map(jnp.zeros_like, g), g))
    g, d = jg.nets.mlp_pair((2,), 3, g_hidden=(8,), d_hidden=(8,), activation="tanh")

    def make(axis_name):
        return jg.GAN(generator=g, discriminator=d, g_optimizer=record,
                      d_optimizer=optax.adam(0.05, b1=0.5, eps_root=1e-16), unroll_steps=3,
                      axis_name=axis_name)

    single, multi = make(None), make("d")
    state = single.init(jax.random.key(0), jnp.zeros((B, 2)))
    state = jax.jit(single.d_step)(state, toy.TOY["ring8"].sample(jax.random.key(2), B))[0]
    batch = toy.TOY["ring8"].sample(jax.random.key(1), B)
    s1, m1 = jax.jit(single.g_step)(state, batch)
    rep = jax.tree.map(lambda x: jnp.stack([x, x]), state)
    s2, m2 = jax.pmap(multi.g_step, axis_name="d")(rep, batch.reshape(2, B // 2, 2))
    pairs = list(zip(jax.tree.leaves(s1.g.opt_state), jax.tree.leaves(s2.g.opt_state)))
    print(json.dumps({
        "err": max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)[0]))) for a, b in pairs),
        "scale": max(float(np.max(np.abs(np.asarray(a)))) for a, _ in pairs),
        "replicas_differ": max(float(np.max(np.abs(np.asarray(b)[0] - np.asarray(b)[1]))) for _, b in pairs),
        "g_loss": [float(m1["g_loss"]), float(m2["g_loss"][0])],
    }))
    """
)


def test_pmap_with_axis_name_matches_one_device():
    """An unrolled G step on 2 devices (batch split; G's and the lookahead D updates'
    gradients averaged over the axis) gives the G gradient of one device with the whole batch."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", PMAP_SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["scale"] > 1e-3  # a real gradient
    assert res["replicas_differ"] == 0.0  # both devices hold the same averaged gradient
    assert res["err"] < 1e-5 * res["scale"], res
    np.testing.assert_allclose(res["g_loss"][0], res["g_loss"][1], rtol=1e-5)


# ---------------------------------------------------------------------- the public function

@pytest.mark.parametrize("resample", [False, True])
def test_public_lookahead_on_a_user_optax_update_matches_the_gan(resample):
    """A user's own D update (plain functions + optax.adam) advanced by jaxgan.unroll.lookahead,
    differentiated with jax.grad, gives the G gradient the GAN's internal unroll computes: on
    the G step's fakes (default) or on fresh fakes for every update (resample)."""
    k, lr = 4, D_LR
    gan = tiny_gan(k, unroll_resample=resample)
    state = trained_state(gan)
    batch = ring_batch(jax.random.key(11))
    want = jax.jit(gan.g_step)(state, batch)[0].g.opt_state

    k_z, _, _, _, k_unroll = g_keys(state)
    ids = jnp.arange(B, dtype=jnp.uint32)
    opt = optax.adam(lr, b1=0.5, eps_root=1e-16)

    def gen(gp, z):
        return z @ gp["w"] + gp["b"][None]

    def disc(dp, x):
        return jnp.tanh(x @ dp["w1"] + dp["b1"][None]) @ dp["w2"] + dp["b2"]

    def g_loss(gp):
        fake = gen(gp, gan.latents(k_z, ids))

        def d_update(dp, opt_state, real, key):
            # Fresh fakes from the GAN's latents for this update, or the G step's own fakes.
            f = gen(gp, gan.latents(jax.random.split(key, 3)[0], ids)) if resample else fake

            def d_loss(p):
                return jnp.mean(jax.nn.softplus(-disc(p, real))) + jnp.mean(jax.nn.softplus(disc(p, f)))

            updates, opt_state = opt.update(jax.grad(d_loss)(dp), opt_state, dp)
            return optax.apply_updates(dp, updates), opt_state

        dp, _ = lookahead(d_update, state.d.params, state.d.opt_state, batch, k, key=k_unroll)
        return jnp.mean(jax.nn.softplus(-disc(dp, fake)))

    got = jax.jit(jax.grad(g_loss))(state.g.params)
    assert_trees_close(got, want, rtol=1e-5, atol=1e-7)


def test_lookahead_with_zero_steps_and_bad_steps():
    def d_update(p, s, batch, key):
        return p + batch, s + 1

    p, s = lookahead(d_update, jnp.ones(2), jnp.zeros(()), jnp.full(2, 0.5), 0)
    np.testing.assert_array_equal(p, jnp.ones(2))
    p, s = lookahead(d_update, jnp.ones(2), jnp.zeros(()), jnp.full(2, 0.5), 3)
    np.testing.assert_array_equal(p, jnp.full(2, 2.5))
    assert float(s) == 3.0
    with pytest.raises(ValueError, match="unroll steps must be >= 0"):
        scan_updates(lambda c, j: c, 0.0, -1)
    with pytest.raises(TypeError, match="must be a Python int"):
        scan_updates(lambda c, j: c, 0.0, jnp.asarray(2))


# ---------------------------------------------------------------------- program size

@pytest.mark.parametrize("remat", [False, True])
def test_compiled_program_does_not_grow_with_k(remat):
    """The lowered unrolled train step is the same program at k=2 and k=20 (one scan body)."""
    sizes = {}
    for k in (2, 20):
        gan = tiny_gan(k, unroll_remat=remat)
        state = gan.init(jax.random.key(0), jnp.zeros((B, 2)))
        sizes[k] = jax.jit(gan.train_step).lower(state, jnp.zeros((B, 2))).as_text()
    # Identical programs up to the numbers in them (the trip count and the [k, ...] buffers of
    # per-step residuals): one scan body, whatever k.
    assert re.sub(r"\d+", "N", sizes[2]) == re.sub(r"\d+", "N", sizes[20])
    assert len(sizes[20]) - len(sizes[2]) < 0.01 * len(sizes[2])


# ---------------------------------------------------------------------- Adam's eps_root

def test_differentiating_through_adam_needs_eps_root_with_dead_relu_units():
    """A ReLU unit that never fires gets an exactly-zero gradient, so Adam's v is 0 and the
    derivative of sqrt(v) is infinite: stock optax.adam gives a NaN generator gradient, the
    optimizer build.gan makes for unrolled runs (eps_root=1e-16, as optax documents for
    meta-gradients) gives a finite one."""
    config = configs.apply_overrides(configs.preset("ring8"), {
        "unroll_steps": 2, "activation": "relu", "latent_dim": 4, "g_hidden": (8,), "d_hidden": (8,),
        "batch_size": B,
    })
    gan = build.gan(config, (2,))
    state = gan.init(jax.random.key(0), jnp.zeros((B, 2)))
    layer = dict(state.d.params["Dense_0"])
    layer["bias"] = layer["bias"].at[0].set(-1e3)  # hidden unit 0 never fires
    state = state.replace(d=state.d.replace(params={**state.d.params, "Dense_0": layer}))
    batch = ring_batch(jax.random.key(1))
    _, m = jax.jit(gan.g_step)(state, batch)
    assert float(m["g_nonfinite"]) == 0.0 and np.isfinite(float(m["g_grad_norm"]))
    stock = dataclasses.replace(gan, d_optimizer=optax.adam(config.d_lr, b1=config.b1))
    _, m = jax.jit(stock.g_step)(state, batch)
    assert float(m["g_nonfinite"]) == 1.0
