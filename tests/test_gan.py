"""The GAN core: pure steps, the alternating schedule, the held-constant rule, transformations."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxgan as jg
from tests.helpers import batch, bn_gan, mlp_gan, trees_equal


def test_d_step_holds_generator_constant_and_moves_discriminator(key):
    gan = bn_gan()
    x = batch(key)
    state = gan.init(jax.random.key(1), x)
    new, _ = jax.jit(gan.d_step)(state, x)
    # G: params, batch statistics and optimizer state untouched (its BN ran in train mode).
    assert trees_equal(new.g, state.g)
    assert not trees_equal(new.d.params, state.d.params)
    assert not trees_equal(new.d.model_state, state.d.model_state)  # D's own BN stats do move
    assert int(new.d.count) == 1 and int(new.g.count) == 0


def test_g_step_holds_discriminator_constant_and_moves_generator(key):
    gan = bn_gan()
    x = batch(key)
    state = gan.init(jax.random.key(1), x)
    new, _ = jax.jit(gan.g_step)(state, x)
    assert trees_equal(new.d, state.d)
    assert not trees_equal(new.g.params, state.g.params)
    assert not trees_equal(new.g.model_state, state.g.model_state)
    assert int(new.g.count) == 1 and int(new.d.count) == 0


def test_unrolled_g_step_holds_discriminator_constant(key):
    gan = jg.GAN(
        generator=bn_gan().generator,
        discriminator=bn_gan().discriminator,
        g_optimizer=optax.adam(1e-2, eps_root=1e-16),
        d_optimizer=optax.adam(1e-2, eps_root=1e-16),
        unroll_steps=3,
    )
    x = batch(key)
    state = gan.init(jax.random.key(1), x)
    new, metrics = jax.jit(gan.g_step)(state, x)
    assert trees_equal(new.d, state.d)
    assert np.isfinite(float(metrics["g_grad_norm"]))


def test_round_is_d_steps_discriminator_then_g_steps_generator_updates(key):
    gan = mlp_gan(schedule=jg.Schedule(d_steps=3, g_steps=2))
    batches = jnp.stack([batch(jax.random.fold_in(key, j)) for j in range(3)])
    state = gan.init(jax.random.key(1), batches[0])
    got, metrics = jax.jit(gan.train_step)(state, batches)

    ref = state
    d_losses, g_losses = [], []
    for j in range(3):  # each D update on its own batch, G held constant
        ref, m = gan.d_step(ref, batches[j])
        d_losses.append(m["d_loss"])
    for _ in range(2):
        ref, m = gan.g_step(ref, batches)
        g_losses.append(m["g_loss"])
    ref = ref.replace(step=ref.step + 1)

    assert int(got.d.count) == 3 and int(got.g.count) == 2 and int(got.step) == 1
    chex_close = lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-7)
    jax.tree.map(chex_close, got.d.params, ref.d.params)
    jax.tree.map(chex_close, got.g.params, ref.g.params)
    chex_close(metrics["d_loss"], np.mean(d_losses))  # metrics: each player's mean over the round
    chex_close(metrics["g_loss"], np.mean(g_losses))


def test_one_batch_is_reused_by_every_d_update(key):
    gan = mlp_gan(schedule=jg.Schedule(d_steps=2, g_steps=1))
    x = batch(key)
    state = gan.init(jax.random.key(1), x)
    a, _ = gan.train_step(state, x)
    b, _ = gan.train_step(state, jnp.stack([x, x]))
    assert trees_equal(a, b)


def test_wrong_number_of_round_batches_is_refused(key):
    gan = mlp_gan(schedule=jg.Schedule(d_steps=3))
    x = batch(key)
    state = gan.init(jax.random.key(1), x)
    with pytest.raises(ValueError, match="d_steps=3"):
        gan.train_step(state, jnp.stack([x, x]))


def test_vmap_over_four_seeds_equals_four_single_runs(key):
    gan = mlp_gan()
    x = batch(key, n=64)
    seeds = jax.random.split(jax.random.key(7), 4)
    step = jax.jit(gan.train_step)
    vstep = jax.jit(jax.vmap(gan.train_step, in_axes=(0, None)))

    states = jax.vmap(gan.init, in_axes=(0, None))(seeds, x)
    for _ in range(5):
        states, vmetrics = vstep(states, x)
    for i in range(4):
        single = gan.init(seeds[i], x)
        for _ in range(5):
            single, metrics = step(single, x)
        mine = jax.tree.map(lambda leaf, i=i: leaf[i], states)
        close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        jax.tree.map(close, mine.g.params, single.g.params)
        jax.tree.map(close, mine.d.params, single.d.params)
        np.testing.assert_allclose(vmetrics["d_loss"][i], metrics["d_loss"], rtol=1e-5)
    # The seeds really differ.
    assert not np.allclose(vmetrics["g_loss"][0], vmetrics["g_loss"][1])


def test_scan_of_steps_equals_a_python_loop_of_jitted_steps(key):
    gan = mlp_gan(schedule=jg.Schedule(d_steps=2, g_steps=1))
    xs = jax.random.normal(key, (6, 32, 2))
    state = gan.init(jax.random.key(1), xs[0])

    scanned, mseq = jax.jit(lambda s: jax.lax.scan(gan.train_step, s, xs))(state)
    looped = state
    step = jax.jit(gan.train_step)
    for t in range(6):
        looped, m = step(looped, xs[t])
    for a, b in ((scanned.g, looped.g), (scanned.d, looped.d)):
        jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6), a, b)
    np.testing.assert_allclose(mseq["g_loss"][-1], m["g_loss"], rtol=1e-5)


def test_step_compiles_once_for_new_data_of_the_same_shape(key):
    gan = mlp_gan(penalties=(jg.penalties.r1(1.0), jg.penalties.instance_noise(0.1, 10)))
    step = jax.jit(gan.train_step)
    state = gan.init(jax.random.key(1), batch(key))
    for i in range(4):
        state, _ = step(state, batch(jax.random.fold_in(key, i)))
    assert step._cache_size() == 1


def test_same_state_and_batch_give_the_same_result(key):
    gan = bn_gan(dropout=0.5)
    x = batch(key)
    state = gan.init(jax.random.key(1), x)
    a, ma = gan.train_step(state, x)
    b, mb = gan.train_step(state, x)
    assert trees_equal(a, b) and trees_equal(ma, mb)


def test_randomness_is_keyed_by_update_count_not_call_order(key):
    # Two D updates in a row draw different latents: the key comes from d.count.
    gan = mlp_gan()
    x = batch(key)
    state = gan.init(jax.random.key(1), x)
    _, m1 = gan.d_step(state, x)
    s2 = state.replace(d=state.d.replace(count=state.d.count + 1))
    _, m2 = gan.d_step(s2, x)
    assert float(m1["generator_score"]) != float(m2["generator_score"])


def test_ema_is_the_decayed_average_of_generator_params(key):
    decay = 0.9
    gan = mlp_gan(ema_decay=decay)
    x = batch(key)
    state = gan.init(jax.random.key(1), x)
    ema = state.g.params
    for _ in range(3):
        state, _ = gan.train_step(state, x)
        ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, ema, state.g.params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), state.ema_params, ema)
    # sample() uses the EMA params unless asked not to.
    k = jax.random.key(3)
    with_ema = gan.sample(state, k, 16)
    without = gan.sample(state, k, 16, use_ema=False)
    assert not np.allclose(with_ema, without)
    manual = gan.sample(state.replace(g=state.g.replace(params=state.ema_params)), k, 16, use_ema=False)
    np.testing.assert_allclose(with_ema, manual)


def test_metrics_are_a_flat_dict_of_finite_scalars(key):
    gan = mlp_gan(
        loss=jg.losses.WASSERSTEIN,
        penalties=(jg.penalties.gradient_penalty(10.0), jg.penalties.weight_penalty(1e-3)),
    )
    x = batch(key)
    state = gan.init(jax.random.key(1), x)
    _, metrics = jax.jit(gan.train_step)(state, x)
    expected = {
        "d_loss", "g_loss", "generator_score", "discriminator_score", "d_accuracy_real",
        "d_accuracy_fake", "d_grad_norm", "g_grad_norm", "gp", "d_weight_l2", "diversity",
        "wasserstein_estimate", "d_nonfinite", "g_nonfinite",
    }
    assert expected <= set(metrics)
    for name, value in metrics.items():
        assert value.shape == (), name
        assert np.isfinite(float(value)), name
    # The D loss is the adversarial part plus every penalty term.
    np.testing.assert_allclose(
        metrics["d_loss"], metrics["d_loss_adversarial"] + metrics["gp"] + metrics["d_weight_l2"], rtol=1e-5
    )


def test_skip_nonfinite_discards_a_nan_update(key):
    gan = mlp_gan(skip_nonfinite=True)
    x = batch(key)
    state = gan.init(jax.random.key(1), x)
    bad = x.at[0, 0].set(jnp.nan)
    new, metrics = gan.d_step(state, bad)
    assert float(metrics["d_nonfinite"]) == 1.0
    assert trees_equal(new.d.params, state.d.params)
    assert int(new.d.count) == 1  # the update was spent (and counted), not applied
    # Without the flag, the NaN reaches the params and the flag still says so.
    plain = mlp_gan()
    new, metrics = plain.d_step(plain.init(jax.random.key(1), x), bad)
    assert float(metrics["d_nonfinite"]) == 1.0
    assert not all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(new.d.params))


def test_init_checks_generator_output_against_the_data(key):
    gan = mlp_gan(dim=3)
    with pytest.raises(ValueError, match=r"generator makes samples of shape \(3,\) but the data has shape \(2,\)"):
        gan.init(key, batch(key))


def test_init_checks_discriminator_outputs_one_logit_per_example(key):
    g, _ = jg.nets.mlp_pair((2,), 4)
    d = jg.nets.from_functions(lambda k, x: {"w": jnp.ones((2, 3))}, lambda p, x: x @ p["w"])
    gan = jg.GAN(g, d, optax.adam(1e-3), optax.adam(1e-3))
    with pytest.raises(ValueError, match="one logit per example"):
        gan.init(key, batch(key))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"unroll_steps": -1}, "unroll_steps must be an integer >= 0"),
        ({"ema_decay": 1.0}, "ema_decay"),
        ({"penalties": ("gp",)}, "penalties must be jaxgan.penalties"),
    ],
)
def test_bad_definitions_are_refused(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        mlp_gan(**kwargs)


def test_schedule_needs_at_least_one_update_per_player():
    with pytest.raises(ValueError, match="d_steps must be an integer >= 1"):
        jg.Schedule(d_steps=0)
    with pytest.raises(ValueError, match="g_steps"):
        jg.Schedule(g_steps=-1)


def test_generator_without_latent_dim_is_refused():
    g, d = jg.nets.mlp_pair((2,), 4)
    g = jg.nets.Network(g.init, g.apply, latent_dim=None)
    with pytest.raises(ValueError, match="latent_dim"):
        jg.GAN(g, d, optax.adam(1e-3), optax.adam(1e-3))


# ---------------------------------------------------------------------------- argument checks


def test_steps_name_the_batch_and_generator_shapes_at_trace_time(key):
    """A batch whose examples are not what G makes (flax failed deep inside D before): each
    step says both shapes, under jit at lowering (nothing runs), and for stacked batches."""
    gan = mlp_gan(unroll_steps=1)  # g_step reads the batch in its lookahead
    state = gan.init(jax.random.key(1), batch(key))
    bad = batch(key, dim=3)
    shapes = (r"the batch has shape \(32, 3\) \(examples of shape \(3,\)\) but the generator makes samples of "
              r"shape \(2,\)")
    for name in ("train_step", "d_step", "g_step"):
        step = getattr(gan, name)
        with pytest.raises(ValueError, match=f"^{name}: {shapes}: pass batches \\[B, 2\\]"):
            step(state, bad)
        with pytest.raises(ValueError, match=shapes):  # at trace time: shapes only, no data
            jax.jit(step).lower(state, jax.ShapeDtypeStruct(bad.shape, bad.dtype))
    stacked = jnp.stack([bad, bad])
    with pytest.raises(ValueError, match=r"shape \(2, 32, 3\) \(examples of shape \(3,\)\).*or \[n, B, 2\]"):
        gan.train_step(state, stacked)
    # d_step takes one batch [B, ...]; train_step and g_step also take [n, B, ...].
    with pytest.raises(ValueError, match=r"^d_step: the batch has shape \(2, 32, 2\) \(3 axes\)"):
        gan.d_step(state, jnp.stack([batch(key)] * 2))
    with pytest.raises(ValueError, match=r"^train_step: the batch has shape \(32,\) \(1 axes\)"):
        gan.train_step(state, batch(key)[:, 0])


def test_steps_and_init_refuse_data_of_another_dtype(key):
    """uint8 images where G makes float32 ones: refused by name (before, init and the steps took
    them and D silently compared uint8 reals with float fakes)."""
    g, d = jg.nets.mlp_pair((4, 4, 1), 8, g_hidden=(16,), d_hidden=(16,))
    gan = jg.GAN(g, d, optax.adam(1e-3), optax.adam(1e-3))
    images = jax.random.uniform(key, (8, 4, 4, 1))
    pixels = (images * 255).astype(jnp.uint8)
    message = r"the batch has dtype uint8 \(shape \(8, 4, 4, 1\)\) but the generator makes float32 samples"
    with pytest.raises(ValueError, match=f"^init: {message}"):
        gan.init(key, pixels)
    state = gan.init(key, images)
    for name in ("train_step", "d_step", "g_step"):
        with pytest.raises(ValueError, match=f"^{name}: {message}"):
            jax.jit(getattr(gan, name)).lower(state, pixels)
    # A float64 host array is what jit would make of it anyway (float32 without x64): accepted.
    new, _ = gan.d_step(state, np.asarray(images, np.float64))
    assert int(new.d.count) == 1


def test_sample_refuses_a_state_of_another_generator_and_a_bad_count(key):
    gan = mlp_gan()
    state = gan.init(jax.random.key(1), batch(key))
    other = mlp_gan(dim=3).init(jax.random.key(1), batch(key, dim=3))
    with pytest.raises(ValueError, match=r"^sample: the state's generator params do not fit this GAN's generator "
                                         r"\(\['Dense_1'\]\['bias'\] has shape \(3,\) in the state, \(2,\) here\)"):
        jax.jit(lambda s: gan.sample(s, key, 4)).lower(other)
    with pytest.raises(ValueError, match=r"^train_step: the state's generator params do not fit"):
        gan.train_step(other, batch(key))
    g, d = jg.nets.mlp_pair((2,), 8, g_hidden=(16, 16), d_hidden=(16,))
    deeper = jg.GAN(g, d, optax.adam(1e-3), optax.adam(1e-3)).init(jax.random.key(1), batch(key))
    with pytest.raises(ValueError, match=r"^sample: the state's generator params are not this GAN's generator's"):
        gan.sample(deeper, key, 4)
    replicated = jax.tree.map(lambda x: jnp.stack([x, x]), state)
    with pytest.raises(ValueError, match=r"leading device axis \[2, \.\.\.\]: pass jaxgan.parallel.unreplicate"):
        gan.sample(replicated, key, 4)
    for n in (0, -1, 2.0):
        with pytest.raises(ValueError, match=f"^sample: n={n!r}: ask for a Python int n >= 1"):
            gan.sample(state, key, n)
    assert gan.sample(state, key, 3).shape == (3, 2)


@pytest.mark.parametrize("loss, slope", [
    ("minimax", lambda p: p),               # d/dl log(1 - sigmoid(l)) = -sigmoid(l)
    ("non_saturating", lambda p: 1.0 - p),  # d/dl -log sigmoid(l) = -(1 - sigmoid(l))
    ("wasserstein", lambda p: 1.0),          # d/dl -l
])
def test_g_signal_is_the_slope_of_the_generator_loss_at_d(loss, slope, key):
    """A constant critic (logit c for every input): the slope of G's loss per fake has a closed
    form; the saturating loss's vanishes with D(G(z)) = sigmoid(c)."""
    c = -3.0
    const = jg.nets.from_functions(lambda k, x: {"c": jnp.asarray(c)}, lambda p, x: jnp.full((x.shape[0],), p["c"]))
    gan = jg.GAN(generator=mlp_gan().generator, discriminator=const, g_optimizer=optax.adam(1e-3),
                 d_optimizer=optax.adam(1e-3), loss=jg.losses.get(loss))
    x = batch(key)
    state = gan.init(jax.random.key(1), x)
    _, m = jax.jit(gan.g_step)(state, x)
    np.testing.assert_allclose(float(m["g_signal"]), slope(1.0 / (1.0 + np.exp(-c))), rtol=1e-5)


def test_a_simultaneous_round_updates_both_players_from_the_same_state(key):
    gan = mlp_gan(schedule=jg.Schedule(simultaneous=True))
    x = batch(key)
    state = gan.init(jax.random.key(1), x)
    got, _ = jax.jit(gan.train_step)(state, x)
    d_only, _ = jax.jit(gan.d_step)(state, x)
    g_only, _ = jax.jit(gan.g_step)(state, x)  # G against the round's starting D, not the updated one
    for a, b in ((got.d, d_only.d), (got.g, g_only.g)):
        for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
            np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-6, atol=1e-7)
    assert int(got.step) == 1
    alternating, _ = jax.jit(mlp_gan().train_step)(state, x)
    assert not trees_equal(got.g.params, alternating.g.params)
    with pytest.raises(ValueError, match="set both to 1"):
        jg.Schedule(d_steps=2, simultaneous=True)
