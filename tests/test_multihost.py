"""Multi-process training on this machine: two `jaxgan train` processes over localhost (JAX's
distributed runtime, gloo CPU collectives), two simulated CPU devices each.

* they follow the trajectory of one process with four devices (metrics and checkpoint);
* process 0 alone writes the run directory's logs, and the checkpoint is one checkpoint;
* a SIGTERM to one process stops both at the same step with a checkpoint, and the run resumes;
* a process that dies makes the other exit with an error within seconds instead of hanging.

Every process is started in its own session, bounded by a timeout and killed on the way out.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxgan import loop, rundir
from jaxgan.checkpoint import Checkpointer

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

RUN = ["--quiet", "--set", "batch_size=32", "latent_dim=8", "g_hidden=32,32", "d_hidden=32,32", "log_every=10",
       "plot_every=100000"]
TIMEOUT = 600  # seconds any one process may live


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_for(devices: int) -> dict[str, str]:
    return {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
            "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}


@contextlib.contextmanager
def processes(cwd, out: str, args: list[str], n: int = 2, heartbeat: int = 10):
    """``n`` `jaxgan train` processes of one run (2 devices each); all killed on exit."""
    port = free_port()
    procs = []
    try:
        for i in range(n):
            cmd = [sys.executable, "-m", "jaxgan", "train", "--out", out, *args,
                   "--coordinator", f"127.0.0.1:{port}", "--num-processes", str(n), "--process-id", str(i),
                   "--heartbeat-timeout", str(heartbeat)]
            log = open(os.path.join(cwd, f"{os.path.basename(out)}.{i}.log"), "w+")
            procs.append((subprocess.Popen(cmd, cwd=cwd, env=env_for(2), stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True), log))
        yield procs
    finally:
        for p, log in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            log.close()


def wait_all(procs, timeout: float = TIMEOUT) -> list[tuple[int, str]]:
    deadline = time.monotonic() + timeout
    results = []
    for p, log in procs:
        p.wait(timeout=max(1.0, deadline - time.monotonic()))
        log.seek(0)
        results.append((p.returncode, log.read()))
    return results


def wait_for_rows(path: str, rows: int, procs, timeout: float = TIMEOUT) -> None:
    """Until ``path`` (a metrics.jsonl) has ``rows`` rows: both processes are then training."""
    deadline = time.monotonic() + timeout
    while len(rundir.read_jsonl(path)) < rows:
        dead = [p.returncode for p, _ in procs if p.poll() is not None]
        assert not dead, f"a process exited early with {dead}"
        assert time.monotonic() < deadline, f"no training progress in {path} after {timeout} s"
        time.sleep(0.5)


def single_process(cwd, out: str, args: list[str]) -> str:
    done = subprocess.run([sys.executable, "-m", "jaxgan", "train", "--out", out, *args], cwd=cwd, env=env_for(4),
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def restored_params(run_dir: str) -> tuple[np.ndarray, int]:
    run = loop.Run.from_config(rundir.load_config(run_dir))
    ckpt = Checkpointer(os.path.join(run_dir, rundir.CHECKPOINTS))
    state, record = ckpt.restore(run.init_state())
    ckpt.close()
    leaves = [*jax.tree.leaves((state.g, state.d)), jax.random.key_data(state.rng)]
    return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in leaves]), int(record["step"])


@pytest.fixture(scope="module")
def four_devices(tmp_path_factory):
    """The reference: one process, four devices, 20 rounds, checkpoints at 10 and 20."""
    cwd = tmp_path_factory.mktemp("single")
    single_process(cwd, "run", ["--steps", "20", *RUN, "ckpt_every=10"])
    return str(cwd / "run")


@pytest.mark.parametrize("mode", ["pmap", "sharding"])
def test_two_processes_of_two_devices_match_one_process_of_four(tmp_path, four_devices, mode):
    with processes(tmp_path, "run", ["--steps", "20", *RUN, "ckpt_every=10", f"parallel={mode}"]) as procs:
        (rc0, log0), (rc1, log1) = wait_all(procs)
    assert rc0 == 0 and rc1 == 0, (log0[-3000:], log1[-3000:])
    assert f"using 4 cpu device(s) over 2 processes ({mode})" in log0
    assert "jaxgan:" not in log1, "only process 0 reports"
    run = str(tmp_path / "run")
    rows, ref_rows = rundir.read_jsonl(f"{run}/metrics.jsonl"), rundir.read_jsonl(f"{four_devices}/metrics.jsonl")
    # Every row once (a process writing too would double them); observers add rows at checkpoints.
    assert [(r["step"], sorted(r)) for r in rows] == [(r["step"], sorted(r)) for r in ref_rows]
    rows, ref_rows = ([r for r in rs if "d_loss" in r] for rs in (rows, ref_rows))
    assert [r["step"] for r in ref_rows] == [10, 20]
    for row, ref in zip(rows, ref_rows, strict=True):
        assert row.keys() == ref.keys()
        for key, value in ref.items():
            assert abs(row[key] - value) <= 1e-4, (key, row[key], value)
    # One checkpoint per step, holding the unreplicated state, restorable by a single process.
    assert sorted(os.listdir(f"{run}/checkpoints")) == ["10", "20"]
    params, step = restored_params(run)
    ref_params, ref_step = restored_params(four_devices)
    assert step == ref_step == 20
    assert float(np.max(np.abs(params - ref_params))) <= 1e-4


def test_a_stop_is_agreed_and_a_dead_process_fails_the_other(tmp_path):
    run = str(tmp_path / "run")
    long = ["--steps", "100000", *RUN, "ckpt_every=100000"]
    # SIGTERM to process 1 only: both stop at the same round and save one checkpoint there.
    with processes(tmp_path, "run", long) as procs:
        wait_for_rows(f"{run}/metrics.jsonl", 1, procs)
        procs[1][0].send_signal(signal.SIGTERM)
        (rc0, log0), (rc1, log1) = wait_all(procs, timeout=120)
    # The signalled process exits 75 (interrupted after saving: resume); the other stopped cleanly.
    assert rc0 == 0 and rc1 == 75, (rc0, rc1, log0[-3000:], log1[-3000:])
    stopped = re.search(r"stopped at step (\d+): another process stopped", log0)
    assert stopped, log0[-2000:]
    saved = sorted(int(s) for s in os.listdir(f"{run}/checkpoints"))
    assert saved == [int(stopped.group(1))]
    # Resume both; once they train, kill process 1: process 0 must fail, fast, saying why.
    with processes(tmp_path, "run", long, heartbeat=10) as procs:
        wait_for_rows(f"{run}/metrics.jsonl", len(rundir.read_jsonl(f"{run}/metrics.jsonl")) + 1, procs)
        t0 = time.monotonic()
        os.killpg(procs[1][0].pid, signal.SIGKILL)
        [(rc0, log0)] = wait_all(procs[:1], timeout=60)
        elapsed = time.monotonic() - t0
    assert f"from step {saved[0]}" in log0, "both processes resumed from the agreed checkpoint"
    assert rc0 != 0
    assert elapsed < 60
    assert re.search(r"another task died|stopped sending heartbeats|Connection closed by peer|unhealthy", log0), \
        log0[-3000:]
