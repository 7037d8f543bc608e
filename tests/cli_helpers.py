"""Run ``python -m jaxgan`` in subprocesses for end-to-end tests (resume, signals, bad input).

Every subprocess uses the session's XLA compilation cache (tests/conftest.py), so the second
process that compiles the same chunk loads it instead of compiling again (it runs the same
executable; the cache changes no number). Here every compile is kept, however short.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from jaxgan import rundir

# A small, fast toy run: chunks of 10 rounds, a checkpoint every 20.
FAST = ["batch_size=64", "g_hidden=32,32", "d_hidden=32,32", "latent_dim=16", "log_every=10",
        "ckpt_every=20", "plot_every=100000"]


def env(**extra: str) -> dict[str, str]:
    out = dict(os.environ)
    out.update(
        JAX_PLATFORMS="cpu",
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        PYTHONUNBUFFERED="1",
    )
    out.update(extra)
    return out


def jaxgan(*args: str, timeout: float = 600, **extra_env: str) -> subprocess.CompletedProcess:
    """``python -m jaxgan ARGS`` to completion, capturing text output."""
    return subprocess.run(
        [sys.executable, "-m", "jaxgan", *args], capture_output=True, text=True, timeout=timeout,
        env=env(**extra_env),
    )


def start(*args: str, **extra_env: str) -> subprocess.Popen:
    """``python -m jaxgan ARGS`` in the background (stdout and stderr piped, text)."""
    return subprocess.Popen(
        [sys.executable, "-m", "jaxgan", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=env(**extra_env),
    )


def python(script: str, *args: str, timeout: float = 600, **extra_env: str) -> subprocess.CompletedProcess:
    """Run a Python script text in a fresh interpreter."""
    return subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=timeout,
        env=env(**extra_env),
    )


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 300, poll: float = 0.05) -> None:
    """Poll ``predicate()`` until true; fail if ``proc`` exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"process exited {proc.returncode} too early:\n{out}\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.communicate()
            raise AssertionError("timed out waiting for the run")
        time.sleep(poll)


def metric_rows(out: str) -> list[dict]:
    """The complete rows of ``out``'s metrics.jsonl (a line being written is left out)."""
    return rundir.read_jsonl(os.path.join(out, rundir.METRICS))


def training_rows(out: str) -> list[dict]:
    """The rows of the training metrics (not the evaluation rows written at checkpoints)."""
    return [r for r in metric_rows(out) if "d_loss" in r]


def error_lines(stderr: str) -> list[str]:
    """The lines of ``stderr`` that jaxgan wrote (absl/orbax log noise left out)."""
    return [line for line in stderr.splitlines() if line.startswith("jaxgan:")]
