"""Exact resume, preemption by signal, and recovery after SIGKILL, through ``python -m jaxgan``.

The reference for "exact" is the same run done in one process: a run interrupted and resumed
in a fresh process must log the same metrics and end with the same state, to the bit.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxgan import loop, rundir
from jaxgan.checkpoint import Checkpointer, to_saveable
from tests.cli_helpers import FAST, jaxgan, metric_rows, python, start, training_rows, wait_for


def _toy(tmp_path) -> list[str]:
    return ["--set", *FAST, "dataset=ring8"]


def _npy(tmp_path) -> list[str]:
    """An on-disk array source: 300 points of a 3-D Gaussian mixture."""
    rng = np.random.default_rng(1)
    data = rng.normal(size=(300, 3)).astype(np.float32) + rng.integers(0, 3, size=(300, 1))
    path = tmp_path / "points.npy"
    np.save(path, data)
    return ["--set", *FAST, f"dataset={path}"]


# Each data pipeline as the `jaxgan train` arguments that select it (preset, --set values); a
# 40-round run of it should take seconds. The image pipeline adds itself here.
PIPELINES = {"toy": _toy, "npy": _npy}


def restore_run(out: str, step: int | None = None):
    """(state, record) of checkpoint ``step`` (default latest) of run directory ``out``."""
    run = loop.Run.from_config(rundir.load_config(out))
    with Checkpointer(os.path.join(out, rundir.CHECKPOINTS), read_only=True) as ckpt:
        return ckpt.restore(run.init_state(), step)


def assert_same_bits(a, b) -> None:
    la, lb = jax.tree.leaves(to_saveable(a)), jax.tree.leaves(to_saveable(b))
    assert len(la) == len(lb)
    for x, y in zip(la, lb, strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert np.array_equal(x.reshape(-1).view(np.uint8), y.reshape(-1).view(np.uint8))  # bitwise


@pytest.mark.parametrize("pipeline", [p if p == "toy" else pytest.param(p, marks=pytest.mark.slow)
                                      for p in sorted(PIPELINES)])
def test_resume_in_a_fresh_process_is_bitwise_exact(tmp_path, pipeline):
    args = PIPELINES[pipeline](tmp_path)
    whole, split = str(tmp_path / "whole"), str(tmp_path / "split")
    procs = [
        start("train", "--out", whole, "--steps", "40", "--quiet", *args),
        start("train", "--out", split, "--steps", "20", "--quiet", *args),
    ]
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, out + err
    resumed = jaxgan("train", "--out", split, "--steps", "40", "--quiet")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "from step 20 (its latest checkpoint), training to step 40" in resumed.stdout
    assert f"jaxgan: resuming {split} (" in resumed.stdout

    rows_whole, rows_split = metric_rows(whole), metric_rows(split)
    steps = [r["step"] for r in training_rows(whole)]
    assert 20 in steps and steps[-1] == 40 and any(s > 20 for s in steps[:-1])
    assert rows_split == rows_whole  # every logged metric, to the bit (JSON floats round-trip)
    state_whole, record_whole = restore_run(whole, 40)
    state_split, record_split = restore_run(split, 40)
    assert int(state_whole.step) == int(state_split.step) == 40
    assert_same_bits(state_whole, state_split)
    assert record_whole["metrics"] == record_split["metrics"]
    assert rundir.load_config(split).steps == 40  # the raised target is recorded


def _signal_run(tmp_path, sig: signal.Signals):
    out = str(tmp_path / "run")
    proc = start("train", "--out", out, "--steps", "100000", "--quiet", "--set", *FAST)
    wait_for(lambda: len(training_rows(out)) >= 2, proc)  # compiled and training
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=300)
    return out, proc.returncode, stdout, stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)])
def test_signal_saves_a_checkpoint_and_says_how_to_resume(tmp_path, sig):
    out, code, stdout, stderr = _signal_run(tmp_path, sig)
    assert code == 75, stdout + stderr  # EX_TEMPFAIL: interrupted, resumable
    assert "Traceback" not in stderr
    with Checkpointer(os.path.join(out, rundir.CHECKPOINTS), read_only=True) as ckpt:
        stopped = ckpt.latest_step()
    assert stopped is not None and stopped % 10 == 0  # at a chunk boundary, not necessarily ckpt_every
    assert f"received {sig.name}; saved a checkpoint at step {stopped} of 100000. " \
           f"Resume with: jaxgan train --out {out}" in stdout
    state, record = restore_run(out)
    assert int(state.step) == record["step"] == stopped
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state.g.params))
    assert training_rows(out)[-1]["step"] == stopped

    if sig == signal.SIGTERM:  # the printed command resumes it (with a new target)
        resumed = jaxgan("train", "--out", out, "--steps", str(stopped + 10), "--quiet")
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        assert f"from step {stopped} (its latest checkpoint), training to step {stopped + 10}" in resumed.stdout
        assert [r["step"] for r in training_rows(out)][-2:] == [stopped, stopped + 10]


SAVER = """
import sys, jax.numpy as jnp
from jaxgan.checkpoint import Checkpointer
ck = Checkpointer(sys.argv[1], keep=2)
step = (ck.latest_step() or 0) + 1
n = 2**20  # 4 leaves x 4 MiB: a save takes long enough to be killed in the middle
while True:
    ck.save(step, {f"w{i}": jnp.full((n,), float(step)) for i in range(4)}, {"step": step})
    print("saved", step, flush=True)
    step += 1
"""


def test_sigkill_at_random_moments_leaves_the_latest_complete_checkpoint(tmp_path):
    """Kill a process that saves back to back (so most kills land mid-write or mid-delete),
    then restore; repeat, each time continuing from what was restored."""
    directory = str(tmp_path / "ckpts")
    rng = random.Random(0)
    killed_mid_save = 0
    last = 0
    for _ in range(5):
        proc = subprocess.Popen([sys.executable, "-c", SAVER, directory], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        assert proc.stdout.readline().startswith("saved")
        time.sleep(rng.uniform(0.0, 1.5))
        proc.kill()
        proc.wait()
        proc.stdout.close()
        leftovers = [n for n in os.listdir(directory) if "tmp" in n]
        killed_mid_save += bool(leftovers)
        with Checkpointer(directory, keep=2) as ckpt:  # writable: cleans the leftovers up
            step = ckpt.latest_step()
            assert step is not None and step > last
            state, record = ckpt.restore({f"w{i}": np.zeros(2**20, np.float32) for i in range(4)})
            assert record == {"step": step}
            assert all(np.all(v == float(step)) for v in state.values())
        assert not [n for n in os.listdir(directory) if "tmp" in n]
        last = step
    assert killed_mid_save >= 1  # the test did kill a save in flight


@pytest.mark.slow
def test_a_killed_training_run_resumes_from_its_last_complete_checkpoint(tmp_path):
    out = str(tmp_path / "run")
    every_step = [*FAST, "log_every=1", "ckpt_every=1"]
    proc = start("train", "--out", out, "--steps", "100000", "--quiet", "--set", *every_step)
    wait_for(lambda: len(training_rows(out)) >= 3, proc)
    time.sleep(random.Random(1).uniform(0.0, 0.5))
    proc.kill()
    proc.communicate()
    logged = training_rows(out)[-1]["step"]
    with Checkpointer(os.path.join(out, rundir.CHECKPOINTS), read_only=True) as ckpt:
        latest = ckpt.latest_step()
    assert latest is not None and latest <= logged
    resumed = jaxgan("train", "--out", out, "--steps", str(latest + 3), "--quiet")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"from step {latest} (its latest checkpoint), training to step {latest + 3}" in resumed.stdout
    steps = [r["step"] for r in training_rows(out)]
    assert steps == list(range(1, latest + 4))  # rows logged after the checkpoint were dropped, then redone


@pytest.mark.slow
def test_device_count_can_change_between_save_and_restore(tmp_path):
    """Saved from 1 device, restored onto a 4-device mesh (replicated); saved from that mesh,
    restored on 1 device: the values survive both ways."""
    directory = str(tmp_path / "ckpts")
    config_set = ["batch_size=8", "g_hidden=8", "d_hidden=8", "latent_dim=4", "ema_decay=0.9"]
    from jaxgan import configs

    config = configs.apply_overrides(configs.preset("ring8"), configs.parse_overrides(config_set))
    run = loop.Run.from_config(config)
    state = run.init_state()
    state, _ = jax.jit(run.gan.train_step)(state, np.ones((8, 2), np.float32))
    with Checkpointer(directory) as ckpt:
        ckpt.save(1, state, {"step": 1})
    script = f"""
import sys, jax, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from jaxgan import configs, loop
from jaxgan.checkpoint import Checkpointer
assert jax.device_count() == 4
config = configs.apply_overrides(configs.preset("ring8"), configs.parse_overrides({config_set!r}))
run = loop.Run.from_config(config)
mesh = jax.make_mesh((4,), ("d",), axis_types=(jax.sharding.AxisType.Auto,))
like = jax.device_put(run.init_state(), NamedSharding(mesh, P()))
with Checkpointer(sys.argv[1]) as ckpt:
    state, record = ckpt.restore(like, 1)
    leaf = state.g.params["Dense_0"]["kernel"]
    assert leaf.sharding == NamedSharding(mesh, P()), leaf.sharding
    batch = jax.device_put(np.ones((8, 2), np.float32), NamedSharding(mesh, P("d")))
    state, _ = jax.jit(run.gan.train_step)(state, batch)
    ckpt.save(2, state, {{"step": 2}})
print("ok", float(np.asarray(state.d.params["Dense_0"]["kernel"]).sum()))
"""
    result = python(script, directory, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    assert result.returncode == 0 and result.stdout.startswith("ok"), result.stdout + result.stderr
    with Checkpointer(directory, read_only=True) as ckpt:
        one, _ = ckpt.restore(run.init_state(), 1)
        two, record = ckpt.restore(run.init_state(), 2)
    assert_same_bits(one, state)
    assert int(two.step) == 2 and record == {"step": 2}
    np.testing.assert_allclose(float(np.asarray(two.d.params["Dense_0"]["kernel"]).sum()),
                               float(result.stdout.split()[1]), rtol=1e-6)
    # and the 4-device round continued the same trajectory as one more round here (to float order)
    here, _ = jax.jit(run.gan.train_step)(state, np.ones((8, 2), np.float32))
    for a, b in zip(jax.tree.leaves(here.g.params), jax.tree.leaves(two.g.params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


class _StopAt(loop.Observer):
    """Asks the loop to stop once it has passed ``step`` (as a preemption would)."""

    def __init__(self, step: int):
        self.step, self.now = step, 0

    def on_start(self, ctx):
        self.now = ctx.start

    def on_row(self, step, row, stream):
        self.now = step
        return []

    def on_boundary(self, boundary):
        self.now = boundary.step

    def should_stop(self):
        return "test stop" if self.now >= self.step else None


def test_a_stop_between_logged_rows_resumes_with_the_same_row_means(tmp_path):
    """Rows are means over log_every=10 rounds; with ckpt_every=5 the run stops (and saves) at
    step 15, mid-window. The resumed run must still log the step-20 mean over rounds 11-20."""
    from jaxgan import configs

    config = configs.apply_overrides(configs.preset("ring8"), {
        "batch_size": 16, "g_hidden": (8,), "d_hidden": (8,), "latent_dim": 4, "steps": 30, "log_every": 10,
        "ckpt_every": 5, "plot_every": 1000,
    })
    quiet = {"progress": False, "echo": lambda _: None}
    whole, split = str(tmp_path / "whole"), str(tmp_path / "split")
    loop.train(config, whole, observers=(), **quiet)
    stopped = loop.train(config, split, observers=(_StopAt(10),), **quiet)  # asked during 11-15
    assert stopped.final_step == 15 and stopped.stopped_by == "test stop"
    assert [r["step"] for r in metric_rows(split)] == [10]  # no row at 15: mid-window
    loop.train(config, split, observers=(), **quiet)
    assert metric_rows(split) == metric_rows(whole)
    assert [r["step"] for r in metric_rows(whole)] == [10, 20, 30]
    assert_same_bits(restore_run(split)[0], restore_run(whole)[0])
