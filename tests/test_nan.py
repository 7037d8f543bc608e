"""Non-finite updates: flagged inside the step, stopped or skipped by the loop, never saved."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgan import configs, loop, nonfinite, rundir, runner
from jaxgan.checkpoint import Checkpointer
from tests.cli_helpers import error_lines, jaxgan
from tests.helpers import TINY, host_leaves, tiny_run

# Adam at lr 1e5 on an unbounded (relu, wasserstein) critic overflows on the second round.
BLOW_UP = {"loss": "wasserstein", "activation": "relu", "g_lr": 1e5, "d_lr": 1e5}


def same(a, b) -> bool:
    return all(np.array_equal(x, y, equal_nan=True) for x, y in zip(host_leaves(a), host_leaves(b), strict=True))


def nan_batch() -> np.ndarray:
    batch = np.ones((16, 2), np.float32)
    batch[3, 1] = np.nan
    return batch


@pytest.mark.parametrize("skip", [False, True])
def test_a_nan_batch_flags_the_discriminator_update(skip):
    run = tiny_run(nan_policy="skip" if skip else "stop")
    state = run.init_state()
    new, metrics = jax.jit(run.gan.train_step)(state, nan_batch())
    assert float(metrics["d_nonfinite"]) == 1.0  # the D update saw the NaN
    assert not np.isfinite(float(metrics["d_loss"]))
    # G's update reads no real data: it is finite when D's broken update was discarded, and
    # poisoned by the NaN discriminator otherwise (the loop blames D, which updated first).
    assert float(metrics["g_nonfinite"]) == (0.0 if skip else 1.0)
    if skip:  # D's update is discarded whole; the round still counts, and G still trains
        assert same(new.d.params, state.d.params) and same(new.d.opt_state, state.d.opt_state)
        assert int(new.d.count) == 1 and int(new.step) == 1
        assert not same(new.g.params, state.g.params)
        assert all(np.all(np.isfinite(x)) for x in host_leaves(new))
    else:  # left as computed; the loop stops on the flag
        assert not all(np.all(np.isfinite(x)) for x in host_leaves(new.d.params))


def with_inf_adam_moment(state, player: str):
    """``state`` with an Inf in the first Adam moment of ``player``'s last bias: its next update
    leaves the loss and the gradient finite but makes that bias Inf."""
    p = getattr(state, player)
    adam, *rest = p.opt_state
    mu = jax.tree.map(lambda x: x, adam.mu)
    mu["Dense_2"]["bias"] = jnp.full_like(mu["Dense_2"]["bias"], jnp.inf)
    return state.replace(**{player: p.replace(opt_state=(adam._replace(mu=mu), *rest))})


def test_under_skip_the_update_reads_its_new_params():
    """Inf in an Adam moment: the loss and the gradient stay finite, the new params do not; the
    skip policy reads them, flags the update and keeps the old params."""
    run = tiny_run(nan_policy="skip")
    state = run.init_state()
    bad = with_inf_adam_moment(state, "d")
    new, metrics = jax.jit(run.gan.d_step)(bad, np.ones((16, 2), np.float32))
    assert np.isfinite(float(metrics["d_loss"])) and np.isfinite(float(metrics["d_grad_norm"]))
    assert float(metrics["d_nonfinite"]) == 1.0
    assert same(new.d.params, state.d.params)


def test_a_chunk_that_ends_in_non_finite_params_flags_its_last_round():
    """Without the skip policy the updates do not read their new params (a norm per update):
    G's update, last in the round, turns G's params Inf with a finite loss and gradient, so its
    own flag stays 0; the chunk reads the final params and flags its last round, so the loop
    sees the chunk as non-finite and saves nothing from it."""
    run = tiny_run()
    gan = run.gan
    bad = with_inf_adam_moment(run.init_state(), "g")
    new, metrics = jax.jit(gan.g_step)(bad, np.ones((16, 2), np.float32))
    assert np.isfinite(float(metrics["g_loss"])) and np.isfinite(float(metrics["g_grad_norm"]))
    assert np.isinf(np.asarray(new.g.params["Dense_2"]["bias"])).all()
    assert float(metrics["g_nonfinite"]) == 0.0  # the update alone does not see it
    assert [bool(ok) for ok in gan.params_finite(new)] == [True, False]

    chunk = jax.jit(lambda s: runner.train_chunk(gan, run.source, s, 16, 1))
    _, metrics = chunk(bad)
    assert np.asarray(metrics["g_nonfinite"]).tolist() == [1.0]
    assert np.asarray(metrics["d_nonfinite"]).tolist() == [0.0]
    assert nonfinite.first_nonfinite(jax.device_get(metrics), 0) == (1, "g")  # (step, player)
    # A healthy chunk is not flagged by the check.
    _, metrics = chunk(run.init_state())
    assert np.asarray(metrics["g_nonfinite"]).tolist() == [0.0]


def test_a_gradient_norm_beyond_float32_flags_the_update():
    """Data at 1e20 through an unbounded critic: every gradient element and the loss are
    finite, but the gradient norm is not (> 3.4e38 squared). That is a blow-up; it is flagged."""
    run = tiny_run(loss="wasserstein", activation="relu")
    gan, state = run.gan, run.init_state()
    batch = np.full((16, 2), 1e20, np.float32)
    ids = gan.example_ids(16)
    fake, _ = gan._generate(state.g.params, state.g.model_state, gan.latents(jax.random.key(0), ids),
                            jax.random.key(1), True)
    grads = jax.grad(lambda p: gan._d_loss(p, state.d.model_state, batch, fake, jax.random.key(2), ids, 0)[0])(
        state.d.params)
    assert all(np.all(np.isfinite(g)) for g in host_leaves(grads))
    assert max(np.abs(g).max() for g in host_leaves(grads)) > 1e19
    _, metrics = jax.jit(run.gan.d_step)(state, batch)
    assert np.isfinite(float(metrics["d_loss"])) and np.isinf(float(metrics["d_grad_norm"]))
    assert float(metrics["d_nonfinite"]) == 1.0
    _, metrics = jax.jit(run.gan.d_step)(state, batch * 1e-10)  # the same update at 1e10 is fine
    assert np.isfinite(float(metrics["d_grad_norm"])) and float(metrics["d_nonfinite"]) == 0.0


def test_squared_norm_equals_optax_and_overflows_to_inf():
    from jaxgan.gan import squared_norm

    rng = np.random.default_rng(0)
    tree = {"k": rng.normal(size=(4, 4, 8, 16)).astype(np.float32), "b": np.float32(3.0),
            "h": jnp.asarray(rng.normal(size=(33,)), jnp.bfloat16), "none": None}
    reference = sum(float(np.sum(np.square(np.asarray(x, np.float64)))) for x in jax.tree.leaves(tree))
    assert float(jax.jit(squared_norm)(tree)) == pytest.approx(reference, rel=1e-6)  # bfloat16 summed in float32
    assert float(squared_norm({})) == 0.0
    assert np.isinf(float(squared_norm([np.full(3, 2e19, np.float32)])))  # beyond float32: a blow-up
    assert np.isnan(float(squared_norm([np.array([1.0, np.nan], np.float32)])))
    # one definition on every platform: optax.tree.norm's reduction
    for platform in ("cpu", "cuda", "tpu"):
        text = jax.jit(squared_norm).trace(tree).lower(lowering_platforms=(platform,)).as_text()
        assert "stablehlo.dot_general" not in text and "stablehlo.reduce" in text


def test_devices_agree_on_skipping_when_only_one_sees_a_nan():
    """Under a device axis (here vmap with axis_name), NaN in one device's shard makes every
    device skip the update, so replicas never drift apart."""
    config = configs.apply_overrides(configs.preset("ring8"), {**TINY, "batch_size": 8, "nan_policy": "skip"})
    from jaxgan import build

    gan = build.gan(config, (2,), axis_name="dev")
    state = jax.jit(gan.init)(jax.random.key(0), np.zeros((8, 2), np.float32))
    shards = np.ones((2, 8, 2), np.float32)
    shards[1, 0, 0] = np.nan  # only device 1
    replicated = jax.tree.map(lambda x: jnp.stack([x, x]), state)
    new, metrics = jax.jit(jax.vmap(gan.train_step, axis_name="dev"))(replicated, shards)
    np.testing.assert_array_equal(np.asarray(metrics["d_nonfinite"]), [1.0, 1.0])
    for dev in (0, 1):
        one = jax.tree.map(lambda x, i=dev: x[i], new)
        assert same(one.d.params, state.d.params)  # both kept D as it was
    # The agreement is explicit, not only a side effect of averaging gradients: a value that is
    # non-finite on one device alone makes the check fail on every device.
    flags = jax.vmap(gan._all_finite, axis_name="dev")(jnp.array([1.0, jnp.nan]))
    np.testing.assert_array_equal(np.asarray(flags), [False, False])


def test_the_loop_stops_on_a_non_finite_update_and_keeps_the_last_good_checkpoint(tmp_path):
    out = str(tmp_path / "run")
    result = jaxgan("train", "--out", out, "--steps", "50", "--quiet", "--set", "batch_size=16",
                    "g_hidden=8,8", "d_hidden=8,8", "latent_dim=4", "loss=wasserstein", "activation=relu",
                    "g_lr=1e5", "d_lr=1e5", "log_every=1", "ckpt_every=1", "plot_every=1000")
    assert result.returncode == 3, result.stdout + result.stderr
    [line] = error_lines(result.stderr)
    assert line.startswith("jaxgan: error: step 2: the discriminator update produced NaN/Inf (d_loss=")
    assert "likely cause: d_lr=100000 is far above Adam's usual 1e-4..1e-3; the wasserstein critic is " \
           "unbounded without gp or weight_clip" in line
    assert f"the last good checkpoint (step 1) in {os.path.join(out, 'checkpoints')} is kept" in line
    assert f"jaxgan train --out {out} --set nan_policy=skip" in line
    assert "Traceback" not in result.stderr
    run = loop.Run.from_config(rundir.load_config(out))
    with Checkpointer(os.path.join(out, rundir.CHECKPOINTS), read_only=True) as ckpt:
        assert ckpt.all_steps() == [1]
        state, record = ckpt.restore(run.init_state())
    assert record["step"] == 1 and all(np.all(np.isfinite(x)) for x in host_leaves(state))
    events = rundir.read_jsonl(os.path.join(out, rundir.EVENTS))
    assert events[-1]["kind"] == "nan" and events[-1]["step"] == 2
    with open(os.path.join(out, rundir.SUMMARY)) as f:
        summary = json.load(f)
    assert summary["final_step"] == 1 and summary["stopped_by"].startswith("non-finite update: step 2: ")


def test_the_skip_policy_counts_skipped_updates_and_gives_up_on_a_run_that_cannot_move(tmp_path):
    out = str(tmp_path / "run")
    config = configs.apply_overrides(configs.preset("ring8"), {
        **TINY, **BLOW_UP, "nan_policy": "skip", "steps": 200, "log_every": 1, "ckpt_every": 20,
        "plot_every": 1000,
    })
    lines: list[str] = []
    with pytest.raises(loop.NonFiniteError) as err:
        loop.train(config, out, progress=False, echo=lines.append)
    limit = nonfinite.SKIP_STREAK_LIMIT
    rows = [r for r in rundir.read_jsonl(os.path.join(out, rundir.METRICS)) if "d_loss" in r]
    first_bad = next(r["step"] for r in rows if r["d_nonfinite"] == 1.0)
    assert str(err.value).startswith(
        f"step {first_bad + limit - 1}: every discriminator update of the last {limit} rounds was non-finite"
    )
    assert "nan_policy=skip --set" not in str(err.value)  # no advice to do what it already does
    # Every kept checkpoint is finite, and its skip count matches the logged flags.
    run = loop.Run.from_config(config)
    with Checkpointer(os.path.join(out, rundir.CHECKPOINTS), read_only=True) as ckpt:
        for step in ckpt.all_steps():
            state, record = ckpt.restore(run.init_state(), step)
            assert all(np.all(np.isfinite(x)) for x in host_leaves(state))
            flagged = sum(r["d_nonfinite"] + r["g_nonfinite"] for r in rows if r["step"] <= step)
            assert record["skipped_updates"] == flagged > 0
