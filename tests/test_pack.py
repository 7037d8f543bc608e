"""Packing (PacGAN, GAN.pack) and D's minibatch standard deviation (nets.mbstd).

References are written out by hand: a pack of 2-D points is the reshape [n, 2] -> [n/m, 2m]
(consecutive rows side by side), an image pack puts example k's channels at k*C .. k*C+C-1;
losses and penalties are computed on those packs with numpy or jax.grad; the unrolled G step is
compared with jaxgan.unroll.lookahead over a user's own packed D update.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxgan as jg
from jaxgan import configs, losses, penalties
from jaxgan.nets.mbstd import MinibatchStd, minibatch_std
from jaxgan.unroll import lookahead

B, LATENT, M = 16, 3, 2


def linear_generator():
    def init(key, z):
        return {"w": 0.5 * jax.random.normal(key, (z.shape[1], 2)), "b": jnp.full((2,), 0.1)}

    return jg.nets.from_functions(init, lambda p, z: z @ p["w"] + p["b"][None], latent_dim=LATENT)


def tanh_discriminator(width=5):
    def init(key, x):
        k1, k2 = jax.random.split(key)
        return {"w1": jax.random.normal(k1, (x.shape[1], width)), "b1": jnp.zeros((width,)),
                "w2": jax.random.normal(k2, (width,)), "b2": jnp.zeros(())}

    return jg.nets.from_functions(init, lambda p, x: jnp.tanh(x @ p["w1"] + p["b1"][None]) @ p["w2"] + p["b2"])


def linear_critic():
    """logit = x . w over the whole (packed) input: its input gradient is w for every example."""
    return jg.nets.from_functions(lambda key, x: {"w": jax.random.normal(key, (x.shape[1],))}, lambda p, x: x @ p["w"])


G_NET, D_NET, CRITIC = linear_generator(), tanh_discriminator(), linear_critic()


def gan(pack=M, **kw):
    kw.setdefault("discriminator", D_NET)
    kw.setdefault("g_optimizer", optax.adam(1e-2))
    kw.setdefault("d_optimizer", optax.adam(1e-2, eps_root=1e-16))
    return jg.GAN(generator=G_NET, pack=pack, **kw)


def points(key, n=B):
    from jaxgan.data import toy

    return toy.TOY["ring8"].sample(key, n)


def test_packing_puts_consecutive_examples_side_by_side():
    g = gan(pack=3)
    x = jnp.arange(6 * 4 * 4 * 2, dtype=jnp.float32).reshape(6, 4, 4, 2)
    packed = np.asarray(g._pack(x))
    assert packed.shape == (2, 4, 4, 6)
    for j in range(2):
        for k in range(3):
            np.testing.assert_array_equal(packed[j, :, :, 2 * k:2 * k + 2], np.asarray(x[3 * j + k]))
    flat = jnp.arange(12.0).reshape(6, 2)
    np.testing.assert_array_equal(np.asarray(g._pack(flat)), np.arange(12.0).reshape(2, 6))
    np.testing.assert_array_equal(np.asarray(g._pack_ids(jnp.arange(6, 12, dtype=jnp.uint32))), [2, 3])
    assert gan(pack=1)._pack(x) is x


@pytest.mark.parametrize("loss", sorted(losses.LOSSES))
def test_every_loss_judges_packs(loss, key):
    """D's loss and the scores on packs: each equals the loss pair and scores of the hand-packed
    logits (D applied to [n/m, 2m] rows)."""
    g = gan(loss=losses.get(loss))
    real, fake = points(key), points(jax.random.fold_in(key, 1)) * 0.5
    state = g.init(jax.random.key(1), real)
    assert state.d.params["w1"].shape == (2 * M, 5)
    _, metrics = jax.jit(g.d_update_on)(state.d, real, fake, jax.random.key(2))
    r = D_NET.apply(state.d.params, {}, real.reshape(B // M, 2 * M), key=None, train=True)[0]
    f = D_NET.apply(state.d.params, {}, fake.reshape(B // M, 2 * M), key=None, train=True)[0]
    pair = losses.get(loss)
    np.testing.assert_allclose(float(metrics["d_loss"]), float(pair.discriminator_loss(r, f, jnp.ones(B // M))),
                               rtol=1e-6)
    want = jg.scores.game_scores(pair, r, f)
    for name, value in want.items():
        np.testing.assert_allclose(float(metrics[name]), float(value), rtol=1e-6, atol=1e-7, err_msg=name)


def test_gradient_penalties_are_taken_on_packs(key):
    """A linear critic on packs has input gradient w (all 2m dimensions) for every pack: GP =
    lambda (|w| - 1)^2 and R1 = R2 = gamma/2 |w|^2, where |w| is the norm over the whole pack."""
    g = gan(pack=4, discriminator=CRITIC, loss=losses.WASSERSTEIN,
            penalties=(penalties.GradientPenalty(weight=3.0), penalties.R1(gamma=2.0), penalties.R2(gamma=5.0)))
    real, fake = points(key), points(jax.random.fold_in(key, 1))
    state = g.init(jax.random.key(1), real)
    w = np.asarray(state.d.params["w"], np.float64)
    assert w.shape == (8,)
    _, m = jax.jit(g.d_update_on)(state.d, real, fake, jax.random.key(2))
    norm = np.linalg.norm(w)
    np.testing.assert_allclose(float(m["gp"]), 3.0 * (norm - 1.0) ** 2, rtol=1e-5)
    np.testing.assert_allclose(float(m["r1"]), 0.5 * 2.0 * norm**2, rtol=1e-5)
    np.testing.assert_allclose(float(m["r2"]), 0.5 * 5.0 * norm**2, rtol=1e-5)


def test_label_flipping_flips_whole_packs(key):
    """One flip per pack: the mean real label is a multiple of 1/(packs)."""
    g = gan(pack=4, penalties=(penalties.LabelFlip(rate=0.5),))
    real = points(key, 64)
    state = g.init(jax.random.key(1), real)
    _, m = jax.jit(g.d_update_on)(state.d, real, real, jax.random.key(3))
    packs = 64 // 4
    value = float(m["real_label_mean"]) * packs
    assert abs(value - round(value)) < 1e-5 and 0 < round(value) < packs


def test_unrolled_step_looks_ahead_with_a_packed_discriminator():
    """The unrolled G gradient with pack=2 equals jax.grad through jaxgan.unroll.lookahead of a
    user's D update that packs its inputs by hand (reshape [B, 2] -> [B/2, 4])."""
    k, lr = 3, 0.05
    d_opt = optax.adam(lr, b1=0.5, eps_root=1e-16)
    record = optax.GradientTransformation(lambda p: jax.tree.map(jnp.zeros_like, p),
                                          lambda gr, s, p=None: (jax.tree.map(jnp.zeros_like, gr), gr))
    g = gan(unroll_steps=k, g_optimizer=record, d_optimizer=d_opt)
    batch = points(jax.random.key(11))
    state = g.init(jax.random.key(0), batch)
    for t in range(3):  # D's Adam gets moments
        state, _ = jax.jit(g.d_step)(state, points(jax.random.key(100 + t)))
    want = jax.jit(g.g_step)(state, batch)[0].g.opt_state

    key = jax.random.fold_in(jax.random.fold_in(state.rng, 2), state.g.count)
    k_z, _, _, _, k_unroll = jax.random.split(key, 5)
    z = g.latents(k_z, jnp.arange(B, dtype=jnp.uint32))

    def disc(dp, x):
        return jnp.tanh(x.reshape(B // M, 2 * M) @ dp["w1"] + dp["b1"][None]) @ dp["w2"] + dp["b2"]

    def g_loss(gp):
        fake = z @ gp["w"] + gp["b"][None]

        def d_update(dp, opt_state, real, key):
            def d_loss(p):
                return jnp.mean(jax.nn.softplus(-disc(p, real))) + jnp.mean(jax.nn.softplus(disc(p, fake)))

            updates, opt_state = d_opt.update(jax.grad(d_loss)(dp), opt_state, dp)
            return optax.apply_updates(dp, updates), opt_state

        dp, _ = lookahead(d_update, state.d.params, state.d.opt_state, batch, k, key=k_unroll)
        return jnp.mean(jax.nn.softplus(-disc(dp, fake)))

    got = jax.jit(jax.grad(g_loss))(state.g.params)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
    assert float(jnp.max(jnp.abs(want["w"]))) > 1e-4


def test_a_batch_that_does_not_split_into_packs_is_refused(key):
    g = gan(pack=3)
    with pytest.raises(ValueError, match="packs of pack=3"):
        g.init(jax.random.key(0), points(key, 16))
    with pytest.raises(ValueError, match="pack must be an integer >= 1"):
        gan(pack=0)
    with pytest.raises(configs.ConfigError, match="multiple of pack=3"):
        configs.apply_overrides(configs.preset("ring8"), {"pack": 3})
    with pytest.raises(configs.ConfigError, match="multiple of 8"):
        configs.apply_overrides(configs.preset("ring8"), {"pack": 4, "devices": 2, "batch_size": 20})


# ---------------------------------------------------------------------- minibatch std


def test_minibatch_std_is_the_mean_feature_std_of_the_batch(key):
    x = jax.random.normal(key, (12, 3, 3, 4)) * jnp.arange(1.0, 5.0)[None, None, None, :]
    want = np.mean(np.sqrt(np.var(np.asarray(x, np.float64), axis=0) + 1e-8))
    np.testing.assert_allclose(float(minibatch_std(x)), want, rtol=1e-5)
    out = MinibatchStd().apply({}, x)
    assert out.shape == (12, 3, 3, 5)
    np.testing.assert_array_equal(np.asarray(out[..., :4]), np.asarray(x))
    np.testing.assert_allclose(np.asarray(out[..., 4]), want, rtol=1e-5)


def test_minibatch_std_over_a_device_axis_is_the_global_batch_value(key):
    """Four shares of a batch under a named axis (vmap stands in for pmap) each get the value of
    the whole batch, not of their share."""
    x = jax.random.normal(key, (16, 6)) + jnp.arange(16.0)[:, None]
    shares = jax.vmap(lambda s: minibatch_std(s, "d"), axis_name="d")(x.reshape(4, 4, 6))
    np.testing.assert_allclose(np.asarray(shares), float(minibatch_std(x)), rtol=1e-5)
    assert abs(float(minibatch_std(x[:4])) - float(minibatch_std(x))) > 1.0


def test_mbstd_lets_d_see_a_collapsed_batch(key):
    """With mbstd the reference MLP D gives a different logit to the same example inside a
    spread batch and inside a collapsed one; without it, the same logit."""
    _, d = jg.nets.mlp_pair((2,), 4, d_hidden=(8, 8), d_mbstd=True)
    _, plain = jg.nets.mlp_pair((2,), 4, d_hidden=(8, 8))
    spread = points(key, 32)
    collapsed = jnp.broadcast_to(spread[:1], spread.shape)
    for net, differs in ((d, True), (plain, False)):
        params, st = net.init(jax.random.key(1), spread)
        a = net.apply(params, st, spread, key=key, train=True)[0][0]
        b = net.apply(params, st, collapsed, key=key, train=True)[0][0]
        assert (abs(float(a - b)) > 1e-4) == differs
