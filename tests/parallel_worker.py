"""Runs in a subprocess with several simulated CPU devices (the device count is fixed when JAX
starts, so the tests cannot change it in their own process). Writes what it computed to an
``.npz`` file; the tests compare the arrays.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/parallel_worker.py OUT.npz chunks api_pmap layouts
    XLA_FLAGS=--xla_force_host_platform_device_count=2 python tests/parallel_worker.py OUT.npz resume:DIR
"""

from __future__ import annotations

import dataclasses
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxgan as jg
from jaxgan import configs, loop, parallel

GLOBAL_BATCH = 64
ROUNDS, CHUNK = 30, 10
SMALL = {"batch_size": GLOBAL_BATCH, "latent_dim": 8, "g_hidden": (32, 32), "d_hidden": (32, 32)}


def flat(tree) -> np.ndarray:
    return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


def player_params(state) -> np.ndarray:
    return np.concatenate([flat(state.g.params), flat(state.d.params)])


MODES = (("jit", 1), ("pmap", 2), ("pmap", 8), ("sharding", 8), ("shard_map", 8))


def chunk_runs(out: dict, unroll: int, modes, prefix: str | None = None, **overrides) -> None:
    """30 rounds of the loop's compiled chunk in each ``(mode, devices)`` of ``modes``: 1 device
    (plain jit), 2 and 8 devices (pmap), 8 with jit + sharding and with shard_map. Results are
    saved under ``prefix`` (default ``u<unroll>``)."""
    config = configs.apply_overrides(configs.preset("ring8"), {**SMALL, "unroll_steps": unroll, **overrides})
    run = loop.Run.from_config(config)
    prefix = prefix or f"u{unroll}"
    out[f"{prefix}/init"] = player_params(run.init_state())
    for mode, n in modes:
        plan = parallel.plan("pmap" if mode == "jit" else mode, n)
        assert plan.mode == mode and plan.num_devices == n, (plan, mode, n)
        run = loop.Run.from_config(config, sync_axis=plan.sync_axis)  # as the loop builds it for this mode
        state = plan.place(run.init_state())
        fn = plan.train_chunk(run.gan, run.source, GLOBAL_BATCH, CHUNK)
        history = []
        for _ in range(ROUNDS // CHUNK):
            state, metrics = fn(state)
            history.append(jax.device_get(metrics))
        final = plan.unplace(state)
        out[f"{prefix}/{mode}{n}/params"] = player_params(final)
        out[f"{prefix}/{mode}{n}/step"] = np.asarray(final.step)
        for key in history[0]:
            out[f"{prefix}/{mode}{n}/m/{key}"] = np.concatenate([np.asarray(h[key]) for h in history])


def step_api_runs(out: dict, which) -> None:
    """The ready steps on host batches: jax.jit(gan.train_step) as the reference, the pmapped
    step on 2 (a plan's methods) and 8 devices (the free functions), the sharded jit step (the
    free functions) and the shard_map step (a plan's methods) on 8."""
    config = configs.apply_overrides(configs.preset("ring8"), SMALL)
    run = loop.Run.from_config(config)
    gan = run.gan
    batches = [np.asarray(run.source.sample(jax.random.key(100 + t), GLOBAL_BATCH)) for t in range(ROUNDS)]
    devices = jax.local_devices()
    mesh = parallel.data_mesh(devices)

    def drive(step, state, put, take):
        metrics = []
        for b in batches:
            state, m = step(state, put(b))
            metrics.append(jax.device_get(m))
        return player_params(take(state)), {k: np.stack([np.asarray(m[k]) for m in metrics]) for k in metrics[0]}

    def plan_drive(plan):
        return drive(plan.step(gan), plan.place(run.init_state()), plan.put_batch, plan.unplace)

    runs = {
        "jit": lambda: drive(jax.jit(gan.train_step), run.init_state(), jnp.asarray, lambda s: s),
        # The plan's methods and their free-function shorthands (README), in turn.
        "pmap2": lambda: plan_drive(parallel.pmap_plan(devices[:2])),
        "pmap8": lambda: drive(parallel.pmap_step(gan), parallel.replicate(run.init_state()), parallel.shard_batch,
                               parallel.unreplicate),
        "sharding8": lambda: drive(
            parallel.sharded_step(gan, mesh), parallel.replicate_on(run.init_state(), mesh),
            lambda b: parallel.shard_global_batch(b, mesh), parallel.mesh_plan(mesh).unplace),
        "shard_map8": lambda: plan_drive(parallel.mesh_plan(mesh, "shard_map")),
    }
    results = {name: runs[name]() for name in which}
    for name, (params, metrics) in results.items():
        out[f"api/{name}/params"] = params
        for key, value in metrics.items():
            out[f"api/{name}/m/{key}"] = value


def layout_runs(out: dict) -> None:
    """Host-fed batches ``[rounds, d_steps, B, ...]`` laid out by each mode's plan: what every
    device holds (pmap) and which examples each device's shard starts at (sharding)."""
    x = np.arange(2 * 3 * 16 * 2, dtype=np.float32).reshape(2, 3, 16, 2)
    devices = jax.local_devices()
    out["layout/x"] = x
    out["layout/pmap8"] = np.asarray(parallel.plan("pmap", 8).put_fed(x))
    out["layout/pmap2"] = np.asarray(parallel.pmap_plan(devices[:2]).put_batch(x, batch_axis=2))
    for mode in ("sharding", "shard_map"):
        plan = parallel.plan(mode, 8)
        placed = plan.put_fed(x)
        out[f"layout/{mode}8"] = np.asarray(placed)
        by_device = sorted(placed.addressable_shards, key=lambda s: plan.devices.index(s.device))
        out[f"layout/{mode}8/starts"] = np.asarray([s.index[2].start for s in by_device])


class _BatchNormD(nn.Module):
    """A discriminator with batch norm, to check that its statistics are averaged over devices."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        h = nn.Dense(16)(x)
        h = nn.BatchNorm(use_running_average=not train, momentum=0.9)(h)
        return nn.Dense(1)(jnp.tanh(h))[:, 0]


def batch_norm_runs(out: dict) -> None:
    """One D update with a batch-norm D: 1 device (jit) and 2 devices (pmap, statistics synced or not)."""
    config = configs.apply_overrides(configs.preset("ring8"), SMALL)
    run = loop.Run.from_config(config)
    gan = jg.GAN(
        generator=run.gan.generator, discriminator=jg.nets.from_linen(_BatchNormD()),
        g_optimizer=optax.adam(1e-3), d_optimizer=optax.adam(1e-3),
    )
    batch = np.asarray(run.source.sample(jax.random.key(7), GLOBAL_BATCH))
    state = gan.init(jax.random.key(0), batch)
    ref, _ = jax.jit(gan.d_step)(state, batch)
    for stat in ("mean", "var"):
        out[f"bn/jit/{stat}"] = flat(_stat(ref.d.model_state, stat))
    devices = jax.local_devices()[:2]
    for sync in (True, False):
        step = parallel.pmap_step(dataclasses.replace(gan, sync_model_state=sync), "d_step", devices)
        new, _ = step(parallel.replicate(state, devices), parallel.shard_batch(batch, devices))
        stats = jax.device_get(new.d.model_state)  # leaves [2, ...]: one copy per device
        for stat in ("mean", "var"):
            per_device = [flat(jax.tree.map(lambda x, k=k: x[k], _stat(stats, stat))) for k in range(2)]
            out[f"bn/sync{int(sync)}/{stat}"] = np.stack(per_device)


def _stat(tree, name: str):
    """The batch-norm leaves called ``name`` (mean or var) of a model state."""
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return [x for path, x in leaves if jax.tree_util.keystr(path).endswith(f"'{name}']")]


def resume_runs(out: dict, root: str) -> None:
    """A run saved on 2 devices resumes on 1 and one saved on 1 resumes on 2 (pmap) or on 2 with
    sharding; each ends where an uninterrupted 1-device run ends."""
    base = configs.apply_overrides(
        configs.preset("ring8"), {**SMALL, "steps": 20, "log_every": 10, "ckpt_every": 10, "plot_every": 1000}
    )

    def train(name, steps, devices, mode="pmap"):
        config = configs.apply_overrides(base, {"steps": steps, "devices": devices, "parallel": mode})
        return loop.train(config, f"{root}/{name}", progress=False, echo=lambda _m: None)

    ref = train("ref", 20, 1)
    out["ref"] = player_params(ref.state)
    first = train("two_then_one", 10, 2)
    out["two_then_one/first_step"] = np.asarray(first.final_step)
    second = train("two_then_one", 20, 1)
    out["two_then_one/start"] = np.asarray(second.start_step)
    out["two_then_one"] = player_params(second.state)
    for mode in ("pmap", "sharding"):
        train(f"one_then_two_{mode}", 10, 1)
        resumed = train(f"one_then_two_{mode}", 20, 2, mode)
        out[f"one_then_two_{mode}/start"] = np.asarray(resumed.start_step)
        out[f"one_then_two_{mode}"] = player_params(resumed.state)


JOBS = {
    "chunks": lambda out, arg: chunk_runs(out, unroll=0, modes=MODES),
    "chunks_unrolled": lambda out, arg: chunk_runs(out, unroll=2, modes=MODES[:3]),
    "chunks_packed": lambda out, arg: chunk_runs(out, unroll=1, modes=MODES, prefix="pack", pack=2, d_mbstd=True),
    "api_pmap": lambda out, arg: step_api_runs(out, ("jit", "pmap8")),
    "layouts": lambda out, arg: layout_runs(out),
    "api_mesh": lambda out, arg: step_api_runs(out, ("jit", "pmap2", "sharding8", "shard_map8")),
    "batchnorm": lambda out, arg: batch_norm_runs(out),
    "resume": lambda out, arg: resume_runs(out, arg),
}


def main(argv: list[str]) -> None:
    """``OUT.npz JOB[:ARG] ...``: run the jobs, save everything they computed to OUT.npz."""
    path, jobs = argv[0], argv[1:]
    out: dict[str, np.ndarray] = {"devices": np.asarray(jax.device_count())}
    for job in jobs:
        name, _, arg = job.partition(":")
        JOBS[name](out, arg)
    np.savez(path, **out)


if __name__ == "__main__":
    main(sys.argv[1:])
