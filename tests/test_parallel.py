"""jaxgan.parallel: device-count invariance, the three parallel modes, layouts, the CLI's devices.

The multi-device checks run ``tests/parallel_worker.py`` in a subprocess with simulated CPU
devices (the count is fixed when JAX starts) and compare what it saved here, with numpy. The
reference is always the plain one-device ``jax.jit`` run, which uses no parallel code.
"""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgan import configs, parallel, runner, scores
from jaxgan.loop import Run

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "parallel_worker.py")
TOL = 1e-4


def run_worker(tmp_path, devices: int, *jobs: str, timeout: float = 900) -> dict[str, np.ndarray]:
    """Run worker jobs in a fresh interpreter with ``devices`` simulated CPU devices."""
    out = str(tmp_path / "out.npz")
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, WORKER, out, *jobs], env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    with np.load(out) as data:
        result = {k: data[k] for k in data.files}
    assert int(result["devices"]) == devices
    return result


def assert_close(a, b, what: str, tol: float = TOL) -> None:
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, (what, a.shape, b.shape)
    err = float(np.max(np.abs(a - b))) if a.size else 0.0
    assert err <= tol, f"{what}: max |difference| {err:.3g} > {tol}"


def metric_names(result, prefix: str) -> list[str]:
    return sorted(k[len(prefix):] for k in result if k.startswith(prefix))


@pytest.fixture(scope="module")
def eight(tmp_path_factory):
    return run_worker(tmp_path_factory.mktemp("eight"), 8, "chunks", "api_pmap", "layouts")


def check_same_trajectory(result, prefix: str, reference: str, others: list[str]) -> None:
    ref_params = result[f"{prefix}/{reference}/params"]
    moved = float(np.max(np.abs(ref_params - result[f"{prefix}/init"])))
    assert moved > 1e-2, f"the reference run barely moved ({moved}); the comparison would be vacuous"
    names = metric_names(result, f"{prefix}/{reference}/m/")
    assert {"d_loss", "g_loss", "generator_score", "discriminator_score", "diversity", "d_grad_norm"} <= set(names)
    for other in others:
        assert int(result[f"{prefix}/{other}/step"]) == 30
        assert_close(result[f"{prefix}/{other}/params"], ref_params, f"{other} params")
        assert metric_names(result, f"{prefix}/{other}/m/") == names
        for name in names:
            ref = result[f"{prefix}/{reference}/m/{name}"]
            assert ref.shape == (30,)
            assert_close(result[f"{prefix}/{other}/m/{name}"], ref, f"{other} metric {name}")


def test_30_rounds_agree_on_1_2_and_8_devices_in_every_mode(eight):
    """pmap on 2 and 8 devices, jit+sharding and shard_map on 8: the same params and the same
    per-round metrics as one device with the whole batch (global example i keyed the same)."""
    check_same_trajectory(eight, "u0", "jit1", ["pmap2", "pmap8", "sharding8", "shard_map8"])


def test_ready_pmapped_step_matches_jit_on_host_batches(eight):
    """parallel.pmap_step + replicate/shard_batch/unreplicate vs jax.jit(gan.train_step) on the
    same 30 host batches [64, 2] (no on-device data drawing involved)."""
    ref = eight["api/jit/params"]
    assert_close(eight["api/pmap8/params"], ref, "pmap_step params")
    for name in metric_names(eight, "api/jit/m/"):
        assert_close(eight[f"api/pmap8/m/{name}"], eight[f"api/jit/m/{name}"], f"pmap_step {name}")


def test_host_fed_batches_are_split_by_example_index_in_every_mode(eight):
    """put_fed / put_batch along the batch axis (2) of [rounds, d_steps, B, ...]: under pmap
    device k holds examples k*B/n .. (k+1)*B/n - 1 on a leading device axis; on a mesh the global
    array is the batch itself, device k's shard starting at example k*B/n."""
    x = eight["layout/x"]
    for name, n in (("pmap8", 8), ("pmap2", 2)):
        per = x.shape[2] // n
        got = eight[f"layout/{name}"]
        assert got.shape == (n, 2, 3, per, 2), (name, got.shape)
        for k in range(n):
            np.testing.assert_array_equal(got[k], x[:, :, k * per : (k + 1) * per], err_msg=f"{name} device {k}")
    for mode in ("sharding", "shard_map"):
        np.testing.assert_array_equal(eight[f"layout/{mode}8"], x)
        np.testing.assert_array_equal(eight[f"layout/{mode}8/starts"], np.arange(0, 16, 2))


@pytest.mark.slow
def test_unrolled_step_agrees_on_1_2_and_8_devices(tmp_path):
    result = run_worker(tmp_path, 8, "chunks_unrolled")
    check_same_trajectory(result, "u2", "jit1", ["pmap2", "pmap8"])


@pytest.mark.slow
def test_packed_discriminator_with_mbstd_agrees_on_1_2_and_8_devices_in_every_mode(tmp_path):
    """pack=2 and D's minibatch std (taken over the global batch), unrolled one step: every mode
    follows the one-device trajectory (packs are built by global example index, and each
    device's 8 examples are 4 whole packs)."""
    result = run_worker(tmp_path, 8, "chunks_packed")
    check_same_trajectory(result, "pack", "jit1", ["pmap2", "pmap8", "sharding8", "shard_map8"])


@pytest.mark.slow
def test_sharded_and_shard_map_steps_match_jit(tmp_path):
    """The ready jit+sharding and shard_map steps (and pmap on 2 of the 8 devices) give the
    numbers of jax.jit(gan.train_step) on the same host batches."""
    result = run_worker(tmp_path, 8, "api_mesh")
    for name in ("pmap2", "sharding8", "shard_map8"):
        assert_close(result[f"api/{name}/params"], result["api/jit/params"], f"{name} params")
        for metric in metric_names(result, "api/jit/m/"):
            assert_close(result[f"api/{name}/m/{metric}"], result[f"api/jit/m/{metric}"], f"{name} {metric}")


@pytest.mark.slow
def test_batch_norm_statistics_are_averaged_over_devices(tmp_path):
    """sync_model_state=True: every device holds the average of the per-device statistics, and
    the running mean equals the one-device run's (a mean of equal-sized means is the mean)."""
    r = run_worker(tmp_path, 2, "batchnorm")
    for stat in ("mean", "var"):
        synced, local = r[f"bn/sync1/{stat}"], r[f"bn/sync0/{stat}"]
        assert_close(synced[0], synced[1], f"synced {stat} replicas", 1e-6)
        assert_close(synced[0], local.mean(axis=0), f"synced {stat} = average of per-device {stat}", 1e-6)
        assert float(np.max(np.abs(local[0] - local[1]))) > 1e-4, "unsynced replicas should differ"
    assert_close(r["bn/sync1/mean"][0], r["bn/jit/mean"], "synced running mean vs one device", 1e-6)


@pytest.mark.slow
def test_checkpoint_from_2_devices_resumes_on_1_and_back(tmp_path):
    """Checkpoints hold the unreplicated state: a run saved on 2 devices resumes on 1, one saved
    on 1 resumes on 2 (pmap or sharding), and each ends where an uninterrupted run ends."""
    r = run_worker(tmp_path, 2, f"resume:{tmp_path / 'runs'}")
    assert int(r["two_then_one/first_step"]) == 10 and int(r["two_then_one/start"]) == 10
    assert_close(r["two_then_one"], r["ref"], "saved on 2 devices, resumed on 1")
    for mode in ("pmap", "sharding"):
        assert int(r[f"one_then_two_{mode}/start"]) == 10
        assert_close(r[f"one_then_two_{mode}"], r["ref"], f"saved on 1 device, resumed on 2 ({mode})")


# ---------------------------------------------------------------------------- one device, in process


def test_pairwise_distance_over_devices_is_the_global_one():
    """mean_pairwise_distance with axis_name (vmap stands in for 4 devices) = all pairs of the
    whole batch, computed with numpy."""
    x = np.asarray(jax.random.normal(jax.random.key(1), (12, 3)))
    diff = x[:, None, :] - x[None, :, :]
    dist = np.sqrt(np.sum(diff**2, axis=-1))
    expected = dist.sum() / (12 * 11)
    shards = jnp.asarray(x).reshape(4, 3, 3)
    got = jax.vmap(lambda s: scores.mean_pairwise_distance(s, "d"), axis_name="d")(shards)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5)
    np.testing.assert_allclose(float(scores.mean_pairwise_distance(jnp.asarray(x))), expected, rtol=1e-5)


def test_split_batch_refuses_an_uneven_batch():
    assert parallel.split_batch(64, 8) == 8
    with pytest.raises(parallel.ParallelError, match=r"batch_size=66 does not divide over 4 devices.*64 or 68"):
        parallel.split_batch(66, 4)
    with pytest.raises(configs.ConfigError, match="batch_size=66"):
        configs.apply_overrides(configs.preset("ring8"), {"batch_size": 66, "devices": 4})
    with pytest.raises(configs.ConfigError, match="parallel='gpu'"):
        configs.apply_overrides(configs.preset("ring8"), {"parallel": "gpu"})


def test_asking_for_more_devices_than_there_are_says_how_to_simulate_them():
    with pytest.raises(parallel.ParallelError, match="xla_force_host_platform_device_count"):
        parallel.plan("pmap", jax.local_device_count() + 1)
    with pytest.raises(parallel.ParallelError, match="choose one of"):
        parallel.plan("nope", 1)


def test_plans_refuse_an_unknown_mode_and_a_mesh_without_the_data_axis():
    devices = jax.local_devices()[:1]
    with pytest.raises(parallel.ParallelError, match="mode='nope': choose jit or one of"):
        parallel.DataParallel("nope", tuple(devices), tuple(devices))
    with pytest.raises(parallel.ParallelError, match="a mesh runs sharding or shard_map"):
        parallel.mesh_plan(parallel.data_mesh(devices), "pmap")
    other = jax.sharding.Mesh(np.asarray(devices), ("batch",))
    with pytest.raises(parallel.ParallelError, match=r"mesh axes \('batch',\): use a 1-D mesh with the axis 'data'"):
        parallel.sharded_step(None, other)
    with pytest.raises(ValueError, match="method='sample': choose train_step, d_step, g_step"):
        parallel.plan("pmap", 1).step(None, "sample")


def test_one_device_is_plain_jit_and_layouts_round_trip():
    plan = parallel.plan("pmap", 0)
    if jax.device_count() == 1:
        assert plan.mode == "jit" and "plain jit" in plan.describe()
    config = configs.apply_overrides(configs.preset("ring8"), {"batch_size": 8, "latent_dim": 4})
    state = Run.from_config(config).init_state()
    devices = jax.local_devices()[:1]
    stacked = parallel.replicate(state, devices)
    assert stacked.g.count.shape == (1,) and stacked.rng.shape == (1,)
    back = parallel.unreplicate(stacked)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 jax.random.key_data(back.rng), jax.random.key_data(state.rng))
    for a, b in zip(jax.tree.leaves(back.g.params), jax.tree.leaves(state.g.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # The unreplicated copy owns its buffers: deleting the replicated state leaves it readable.
    jax.tree.map(lambda x: x.delete(), jax.tree.leaves(stacked, is_leaf=lambda x: isinstance(x, jax.Array)))
    assert np.isfinite(np.asarray(jax.tree.leaves(back.g.params)[0])).all()
    mesh = parallel.data_mesh(devices)
    placed = parallel.replicate_on(state, mesh)
    assert placed.g.count.sharding.is_fully_replicated
    back = parallel.mesh_plan(mesh).unplace(placed)
    np.testing.assert_array_equal(np.asarray(back.d.count), np.asarray(state.d.count))
    batch = np.arange(12.0).reshape(6, 2)
    assert parallel.shard_batch(batch, devices).shape == (1, 6, 2)
    with pytest.raises(parallel.ParallelError, match="does not divide"):
        parallel.shard_batch(batch[:5], [devices[0], devices[0]])


def test_chunks_pass_extra_keywords_to_the_runner(monkeypatch):
    """plan.train_chunk / train_chunk_fed hand the keywords they do not use (e.g. ``unroll``) to
    jaxgan.runner's chunk functions, with the batch one call sees."""
    seen = []

    def chunk(gan, source, state, **kwargs):
        seen.append(("chunk", gan, source, kwargs))
        return state, {}

    def chunk_fed(gan, state, batches, **kwargs):
        seen.append(("fed", gan, kwargs))
        return state, {}

    monkeypatch.setattr(runner, "train_chunk", chunk)
    monkeypatch.setattr(runner, "train_chunk_fed", chunk_fed)
    plan = parallel.plan("pmap", 1)
    plan.train_chunk("gan", "source", 8, 3, unroll=2, draw_in_round=False)(jnp.zeros(2))
    plan.train_chunk_fed("gan", "transform", 8, unroll=2)(jnp.zeros(2), jnp.ones(3))
    assert seen == [("chunk", "gan", "source", {"local_batch": 8, "rounds": 3, "unroll": 2, "draw_in_round": False}),
                    ("fed", "gan", {"transform": "transform", "unroll": 2})]


def test_distributed_settings_from_arguments_and_environment():
    assert parallel.distributed_settings(environ={}) is None
    env = {"JAXGAN_COORDINATOR": "10.0.0.1:1234", "JAXGAN_NUM_PROCESSES": "4", "JAXGAN_PROCESS_ID": "3"}
    assert parallel.distributed_settings(environ=env) == {
        "coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 3}
    jax_env = {"JAX_COORDINATOR_ADDRESS": "h:9", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}
    assert parallel.distributed_settings(environ=jax_env)["coordinator_address"] == "h:9"
    # Arguments win over the environment.
    assert parallel.distributed_settings("a:1", 2, 1, environ=env) == {
        "coordinator_address": "a:1", "num_processes": 2, "process_id": 1}
    with pytest.raises(parallel.ParallelError, match="missing process_id"):
        parallel.distributed_settings("a:1", 2, environ={})
    with pytest.raises(parallel.ParallelError, match="HOST:PORT"):
        parallel.distributed_settings("nohost", 2, 0, environ={})
    with pytest.raises(parallel.ParallelError, match="0 <= process_id < num_processes"):
        parallel.distributed_settings("a:1", 2, 2, environ={})


# ---------------------------------------------------------------------------- the CLI


def cli(tmp_path, devices: int, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", "jaxgan", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=tmp_path)


SMALL_RUN = ["--steps", "4", "--quiet", "--set", "batch_size=16", "latent_dim=4", "g_hidden=16", "d_hidden=16",
             "log_every=2", "plot_every=1000", "ckpt_every=1000"]


def test_cli_uses_every_local_device_by_default_and_refuses_an_uneven_batch(tmp_path):
    done = cli(tmp_path, 4, "train", "--out", "run", *SMALL_RUN)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "using 4 cpu device(s) (pmap)" in done.stdout
    bad = cli(tmp_path, 4, "train", "--out", "bad", *SMALL_RUN, "batch_size=18")
    assert bad.returncode == 2
    assert "batch_size=18 does not divide over 4 devices" in bad.stderr
    assert not (tmp_path / "bad").exists(), "nothing should be written before the batch is checked"


@pytest.mark.slow
def test_cli_devices_and_parallel_keys(tmp_path):
    one = cli(tmp_path, 4, "train", "--out", "one", *SMALL_RUN, "devices=1")
    assert one.returncode == 0, one.stderr[-3000:]
    assert "using 1 cpu device(s) (plain jit)" in one.stdout
    two = cli(tmp_path, 4, "train", "--out", "two", *SMALL_RUN, "devices=2", "parallel=sharding")
    assert two.returncode == 0, two.stderr[-3000:]
    assert "using 2 cpu device(s) (sharding)" in two.stdout
    bench = cli(tmp_path, 4, "bench", "--steps", "4", "--set", "batch_size=16", "latent_dim=4", "log_every=2",
                "parallel=shard_map")
    assert bench.returncode == 0, bench.stderr[-3000:]
    assert '"devices": 4' in bench.stdout and '"parallel": "shard_map"' in bench.stdout
