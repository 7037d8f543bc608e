"""Throughput of the library's training step: the compiled chunk that ``jaxgan train`` runs.

:func:`measure` times ``rounds``-round chunks of a config's training step (after compiling and
one warm-up chunk) and reads the FLOPs of one chunk from XLA's cost analysis; ``jaxgan bench``
prints it as one JSON line, and ``benchmarks/throughput.py`` puts it beside a hand-fused step,
PyTorch, and the machine's matmul peak measured in the same run.
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import time
from typing import Any

import jax
import numpy as np

from jaxgan import build, runner
from jaxgan.configs import Config
from jaxgan.data.host import HostSource


def machine() -> dict[str, Any]:
    """What a benchmark figure was measured on: CPU model, cores, JAX platform, the 1-minute load
    average (figures taken under load are pessimistic) and library versions."""
    import flax
    import optax

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "platform": jax.devices()[0].platform,
        "onednn_convolutions": build.default_layers() == "onednn",
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "versions": {"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__,
                     "python": platform.python_version()},
    }


def compiled_flops(compiled) -> float | None:
    """FLOPs of one call of a compiled function (XLA's cost analysis), or None if unavailable.

    XLA counts a while-loop body once whatever its trip count (checked here: at one round per
    loop iteration, a chunk of 1, 2 or 8 rounds reports the same count), so for a compiled
    chunk this is the FLOPs of its loop body (``jaxgan.runner.UNROLL`` rounds) plus whatever
    runs outside the loop; :func:`chunk_flops` counts one round.
    """
    try:
        cost = compiled.cost_analysis()
    except Exception:  # not every backend implements it
        return None
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    return float(cost["flops"])


def xla_layers(layers: str) -> str:
    """DCGAN's ``layers`` with XLA's convolutions for oneDNN's, whose calls XLA's cost analysis
    does not see into."""
    return "cpu" if layers == "onednn" else layers


def chunk_flops(config: Config, rounds: int, compiled, layers: str | None = None) -> float | None:
    """FLOPs of one training round of ``config``: from ``compiled`` (the chunk
    :func:`library_chunk` makes for ``config`` with ``layers``, default
    :func:`jaxgan.build.default_layers`) when it has XLA's own convolutions and one round or one
    round per loop iteration, else from a one-round chunk with XLA's convolutions compiled for the
    purpose (the count of a longer chunk mixes its loop body, which holds
    ``jaxgan.runner.UNROLL`` rounds, with the rounds left outside the loop)."""
    layers = layers or build.default_layers()
    if (rounds == 1 or runner.UNROLL == 1) and layers == xla_layers(layers):
        return compiled_flops(compiled)
    _run, fn, args, _plan = library_chunk(config, 1, layers=xla_layers(layers))
    return compiled_flops(fn.lower(*args).compile())


def matmul_peak(n: int = 2048, repeats: int = 10) -> float:
    """Best achieved GFLOP/s of an ``n x n`` float32 matmul (a practical peak of this machine)."""
    a = jax.random.normal(jax.random.key(0), (n, n), np.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), np.float32)
    f = jax.jit(lambda x, y: x @ y)
    jax.block_until_ready(f(a, b))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(f(a, b))
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best / 1e9


def median_interval(x, level: float = 0.95) -> tuple[float, float] | None:
    """A distribution-free confidence interval for the median of the population ``x`` was drawn
    from: the order statistics ``(x_(j), x_(n+1-j))`` with the largest ``j`` whose coverage,
    ``1 - 2 P(B < j)`` for ``B ~ Binomial(n, 1/2)``, is at least ``level``. ``None`` when ``x``
    has too few values for any such pair (fewer than 6 at 95%)."""
    x = np.sort(np.asarray(x, np.float64).ravel())
    n = len(x)
    below, j = 0.0, 0  # below = P(B < j + 1) after each step
    while j < n // 2:
        below += math.comb(n, j) / 2.0**n
        if 1.0 - 2.0 * below < level:
            break
        j += 1
    return None if j == 0 else (float(x[j - 1]), float(x[n - j]))


def ratio_summary(ratios, digits: int = 4) -> dict[str, Any]:
    """Quartiles of paired time ratios (each chunk over its partner timed beside it) and the 95%
    interval of their median (:func:`median_interval`)."""
    r = np.asarray(ratios, np.float64)
    out: dict[str, Any] = {q: round(float(np.percentile(r, p)), digits) for q, p in (("q25", 25), ("median", 50),
                                                                                    ("q75", 75))}
    ci = median_interval(r)
    out["median_ci95"] = None if ci is None else [round(v, digits) for v in ci]
    out["n"] = len(r)
    return out


def library_chunk(config: Config, rounds: int, layers: str | None = None):
    """``(run, fn, args, plan)``: the chunk ``jaxgan train`` runs for ``config`` in its parallel
    mode (:func:`jaxgan.parallel.plan`; not yet compiled) and its arguments (the placed fresh
    state, and the placed host batches when the data is host-fed). ``layers``: DCGAN's layers
    (default: :func:`jaxgan.build.default_layers`, as ``jaxgan train``)."""
    from jaxgan import parallel

    plan = parallel.plan(config.parallel, config.devices)
    plan.local_batch(config.batch_size)
    run = build.Run.from_config(config, sync_axis=plan.sync_axis)
    if layers is not None:
        run = dataclasses.replace(run, gan=build.gan(config, run.example_shape, sync_axis=plan.sync_axis,
                                                     layers=layers))
    state = plan.place(run.init_state())
    if isinstance(run.source, HostSource):
        fn = plan.train_chunk_fed(run.gan, run.source.device_transform, config.batch_size)
        batches = plan.put_fed(run.source.host_batches(0, rounds, config.d_steps, config.batch_size))
        return run, fn, (state, batches), plan
    return run, plan.train_chunk(run.gan, run.source, config.batch_size, rounds, **run.chunk_options()), (state,), plan


def time_chunks(compiled, args: tuple, n_chunks: int) -> tuple[list[float], dict]:
    """Wall seconds of ``n_chunks`` calls (after one warm-up), threading the state through, and
    the last chunk's metrics."""
    state, rest = args[0], args[1:]
    state, m = compiled(state, *rest)
    jax.block_until_ready((state, m))
    times = []
    for _ in range(n_chunks):
        t0 = time.perf_counter()
        state, m = compiled(state, *rest)
        jax.block_until_ready((state, m))
        times.append(time.perf_counter() - t0)
    return times, m


def measure(config: Config, steps: int, *, chunk: int | None = None) -> dict[str, Any]:
    """Compile time, steps/s (median over chunks) and GFLOP per step of ``config``'s training
    step, run as ``jaxgan train`` runs it (a compiled chunk of rounds)."""
    rounds = max(1, min(chunk or config.log_every, steps))
    _run, fn, args, plan = library_chunk(config, rounds)
    t0 = time.perf_counter()
    compiled = fn.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    flops = chunk_flops(config, rounds, compiled)
    n_chunks = max(1, steps // rounds)
    times, metrics = time_chunks(compiled, args, n_chunks)
    per_step = float(np.median(times)) / rounds
    out = {
        "preset": config.preset,
        "model": config.model,
        "dataset": config.dataset,
        "steps": n_chunks * rounds,
        "chunk": rounds,
        "batch_size": config.batch_size,
        "compile_s": round(compile_s, 3),
        "steps_per_s": round(1.0 / per_step, 3),
        "gflop_per_step": round(flops / 1e9, 3) if flops else None,
        "gflops_achieved": round(flops / per_step / 1e9, 2) if flops else None,
        "final_generator_score": float(np.asarray(metrics["generator_score"])[-1]),
        "devices": plan.num_devices,
        "parallel": plan.mode,
        "platform": jax.devices()[0].platform,
        "onednn_convolutions": build.default_layers() == "onednn",
        "machine": platform.processor() or platform.machine(),
        "jax": jax.__version__,
    }
    return out
