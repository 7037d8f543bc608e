"""What the unrolled-GAN lookahead costs: compile time, step time and memory against k.

Prints one JSON line per configuration (STYLE.md habit 12):

* ``compile``: seconds to trace, lower and compile one training round (``GAN.train_step``: a D
  update, then the G update through ``k`` lookahead D updates) for k in {1, 5, 10, 20}, with the
  library's ``lax.scan`` lookahead and, for contrast, with the same updates unrolled by a Python
  loop (written here only: the library has no Python loops over unroll steps). The scan
  program is the same size for every k, so its compile time stays flat; the Python loop
  pastes k copies of the D update (and k copies of its backward pass) into the program.
* ``throughput``: rounds per second for k in {0, 1, 5, 10} (compiled chunks of rounds with
  the data drawn on device, as ``jaxgan train`` runs them), plus k=10 first-order and remat.
* ``memory``: XLA's buffer assignment for one round (``compiled.memory_analysis()``), with and
  without ``jax.checkpoint`` on the lookahead body. ``temp_bytes`` is the scratch memory the
  round needs beyond its inputs and outputs; it is what grows with k, because the backward
  pass through the scan keeps each lookahead step's residuals (the activations of D's forward
  and backward pass on two batches) in ``[k, ...]`` stacks. With remat only each step's
  carry (D's params and Adam state) is stacked and the rest is recomputed. On CPU this is the
  compiler's static plan, not a measured resident set; on GPU/TPU the same number is the
  device memory the step reserves.

Run (a few minutes on 2 cores; the preset is ring8, batch 512, unless overridden)::

    python benchmarks/unroll_cost.py [--preset ring8] [--set key=value ...] [--out FILE.jsonl]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxgan import bench, configs, loop
from jaxgan import gan as gan_lib
from jaxgan.runner import train_chunk


def python_loop_updates(update, carry, steps, *, first_order=False, remat=False):
    """The alternative to ``jaxgan.unroll.scan_updates``: the same updates in a Python loop,
    so the traced program holds ``steps`` copies of the update. For contrast only."""
    body = jax.checkpoint(update) if remat else update
    for j in range(steps):
        carry = body(carry, jnp.asarray(j, jnp.int32))
    return jax.lax.stop_gradient(carry) if first_order else carry


@contextlib.contextmanager
def python_loop_unroll():
    """Make ``GAN.g_update`` unroll with :func:`python_loop_updates` (benchmark-only swap)."""
    original = gan_lib.unroll_lib.scan_updates
    gan_lib.unroll_lib.scan_updates = python_loop_updates
    try:
        yield
    finally:
        gan_lib.unroll_lib.scan_updates = original


def setup(config: configs.Config):
    run = loop.Run.from_config(config)
    state = run.init_state()
    batch = jnp.zeros((config.batch_size, *run.example_shape), jnp.float32)
    return run, state, batch


def compile_round(config: configs.Config) -> tuple[float, float, object]:
    """(trace+lower seconds, compile seconds, compiled) of one ``train_step`` for ``config``."""
    run, state, batch = setup(config)
    fn = jax.jit(lambda s, b: run.gan.train_step(s, b))  # a fresh function: no cache hit
    t0 = time.perf_counter()
    lowered = fn.lower(state, batch)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, compiled


def throughput(config: configs.Config, rounds: int, calls: int) -> dict:
    run, state, _ = setup(config)
    fn = jax.jit(functools.partial(train_chunk, run.gan, run.source, local_batch=config.batch_size, rounds=rounds),
                 donate_argnums=0)
    t0 = time.perf_counter()
    compiled = fn.lower(state).compile()
    compile_s = time.perf_counter() - t0
    state, m = compiled(state)  # warm-up
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    for _ in range(calls):
        state, m = compiled(state)
    jax.block_until_ready((state, m))
    elapsed = time.perf_counter() - t0
    return {"rounds_per_s": round(rounds * calls / elapsed, 2), "chunk_compile_s": round(compile_s, 2),
            "rounds_timed": rounds * calls, "finite": bool(np.isfinite(np.asarray(m["g_loss"])).all())}


def table(path: str) -> str:
    """The markdown tables of ``benchmarks/README.md`` from saved JSON lines."""
    rows = [json.loads(line) for line in open(path) if line.strip()]
    comp = {(r["impl"], r["unroll_steps"]): r for r in rows if r["kind"] == "compile"}
    ks = sorted({k for _, k in comp})
    out = ["| compile (trace + lower + compile), s | " + " | ".join(f"k={k}" for k in ks) + " |",
           "|---|" + "---|" * len(ks)]
    for impl in ("scan", "python_loop"):
        cells = [f"{comp[(impl, k)]['total_s']:.1f}" if (impl, k) in comp else "—" for k in ks]
        out.append(f"| {impl} | " + " | ".join(cells) + " |")
    out += ["", "| rounds/s | k | first order | remat | chunk compile, s |", "|---|---|---|---|---|"]
    for r in rows:
        if r["kind"] == "throughput":
            out.append(f"| {r['rounds_per_s']:.2f} | {r['unroll_steps']} | {r.get('unroll_first_order', False)} "
                       f"| {r.get('unroll_remat', False)} | {r['chunk_compile_s']:.0f} |")
    mem = {(r["unroll_steps"], r["unroll_remat"]): r for r in rows if r["kind"] == "memory"}
    mks = sorted({k for k, _ in mem})
    out += ["", "| XLA temp buffer, MiB | " + " | ".join(f"k={k}" for k in mks) + " |", "|---|" + "---|" * len(mks)]
    for remat in (False, True):
        cells = [f"{mem[(k, remat)]['temp_bytes'] / 2**20:.1f}" if (k, remat) in mem else "—" for k in mks]
        out.append(f"| {'remat' if remat else 'no remat'} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="ring8")
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE")
    p.add_argument("--compile-ks", default="1,5,10,20")
    p.add_argument("--throughput-ks", default="0,1,5,10")
    p.add_argument("--memory-ks", default="1,5,10,20")
    p.add_argument("--rounds", type=int, default=20, help="rounds per compiled chunk when timing steps/s")
    p.add_argument("--calls", type=int, default=3, help="timed chunks per configuration")
    p.add_argument("--skip-python-loop", action="store_true")
    p.add_argument("--out", default=None, help="also append the JSON lines to this file")
    p.add_argument("--table", default=None, metavar="FILE.jsonl", help="print the markdown tables of saved lines")
    args = p.parse_args(argv)
    if args.table:
        print(table(args.table))
        return 0
    base = configs.apply_overrides(configs.preset(args.preset), configs.parse_overrides(args.set))
    common = {"benchmark": "unroll_cost", "command": " ".join(["python", *sys.argv]), "preset": args.preset,
              "overrides": args.set, "batch_size": base.batch_size, "machine": bench.machine()}
    sink = open(args.out, "a") if args.out else None

    def emit(row: dict) -> None:
        line = json.dumps({**common, **row})
        print(line, flush=True)
        if sink:
            sink.write(line + "\n")
            sink.flush()

    ks = lambda text: [int(k) for k in text.split(",") if k.strip()]
    for impl in ("scan", "python_loop"):
        if impl == "python_loop" and args.skip_python_loop:
            continue
        for k in ks(args.compile_ks):
            config = dataclasses.replace(base, unroll_steps=k)
            ctx = python_loop_unroll() if impl == "python_loop" else contextlib.nullcontext()
            with ctx:
                lower_s, compile_s, compiled = compile_round(config)
            emit({"kind": "compile", "impl": impl, "unroll_steps": k, "lower_s": round(lower_s, 3),
                  "compile_s": round(compile_s, 3), "total_s": round(lower_s + compile_s, 3),
                  "hlo_text_chars": len(compiled.as_text())})
    for k in ks(args.throughput_ks):
        emit({"kind": "throughput", "unroll_steps": k, **throughput(dataclasses.replace(base, unroll_steps=k),
                                                                  args.rounds, args.calls)})
    k_max = max(ks(args.throughput_ks))
    for extra in ({"unroll_first_order": True}, {"unroll_remat": True}):
        config = dataclasses.replace(base, unroll_steps=k_max, **extra)
        emit({"kind": "throughput", "unroll_steps": k_max, **extra, **throughput(config, args.rounds, args.calls)})
    for k in ks(args.memory_ks):
        for remat in (False, True):
            _, _, compiled = compile_round(dataclasses.replace(base, unroll_steps=k, unroll_remat=remat))
            mem = compiled.memory_analysis()
            emit({"kind": "memory", "unroll_steps": k, "unroll_remat": remat,
                  "temp_bytes": int(mem.temp_size_in_bytes), "argument_bytes": int(mem.argument_size_in_bytes),
                  "output_bytes": int(mem.output_size_in_bytes),
                  "peak_bytes": int(getattr(mem, "peak_memory_in_bytes", 0))})
    if sink:
        sink.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
