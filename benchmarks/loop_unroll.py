"""Rounds per loop iteration: the library's chunk and the hand-fused chunk at several ``unroll``
values (``jaxgan.runner.UNROLL``, ``jax.lax.scan``'s ``unroll``), all in one process, interleaved
chunk by chunk (the order reversed every other repeat) so that the machine's state hits them
alike; separate invocations of ``throughput.py --unroll N`` drift by more than the effect here.

It prints one JSON line per preset: steps/s of each chunk, and the medians (with quartiles and
the median's 95% interval, :func:`jaxgan.bench.ratio_summary`) of the paired time ratios (each
unrolled chunk over the one-round-per-iteration chunk of the same repeat, and each library chunk
over the fused chunk of its ``unroll``), plus compile times.
Run from the repository root::

    python benchmarks/loop_unroll.py --preset ring8 --repeats 60
    python benchmarks/loop_unroll.py --preset dcgan32 --rounds 5 --repeats 10 --unroll 1 --unroll 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from throughput import fused_carry, fused_chunk

from jaxgan import bench, build, configs, cpu, runner


def compare(preset: str, rounds: int, repeats: int, unrolls: list[int]) -> dict:
    config = configs.preset(preset)
    chunks, compile_s = {}, {}
    for u in unrolls:
        runner.UNROLL = u  # read when the chunks are traced, below
        run, fn, args, _plan = bench.library_chunk(config, rounds)
        carry = fused_carry(args[0])
        for name, jitted, call_args in ((f"jaxgan_u{u}", fn, list(args)),
                                        (f"fused_u{u}", fused_chunk(run, rounds, build.default_layers()),
                                         [carry, 0])):
            t0 = time.perf_counter()
            chunks[name] = (jitted.lower(*call_args).compile(), call_args)
            compile_s[name] = round(time.perf_counter() - t0, 2)

    def call(name):
        compiled, call_args = chunks[name]
        call_args[0], metrics = compiled(*call_args)
        jax.block_until_ready((call_args[0], metrics))

    for name in chunks:  # warm-up
        call(name)
    times: dict[str, list[float]] = {name: [] for name in chunks}
    order = list(chunks)
    for r in range(repeats):
        for name in order if r % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            call(name)
            times[name].append(time.perf_counter() - t0)
    t = {k: np.array(v) for k, v in times.items()}

    def ratio(a, b):
        return bench.ratio_summary(t[a] / t[b])

    base = unrolls[0]
    return {
        "benchmark": "loop_unroll",
        "preset": preset,
        "rounds_per_chunk": rounds,
        "repeats": repeats,
        "command": " ".join(["python", *sys.argv]),
        "steps_per_s": {k: round(rounds / float(np.median(v)), 3) for k, v in t.items()},
        "time_ratio_vs_first_unroll": {
            f"{who}_u{u}": ratio(f"{who}_u{u}", f"{who}_u{base}") for u in unrolls[1:] for who in ("jaxgan", "fused")
        },
        "library_over_fused": {f"u{u}": ratio(f"jaxgan_u{u}", f"fused_u{u}") for u in unrolls},
        "compile_s": compile_s,
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "jax": jax.__version__,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", action="append", choices=["ring8", "dcgan32", "dcgan64"], help="default: ring8")
    p.add_argument("--rounds", type=int, default=100, help="rounds per timed chunk")
    p.add_argument("--repeats", type=int, default=40, help="timed chunks of each kind")
    p.add_argument("--unroll", type=int, action="append", help="rounds per loop iteration (default: 1 and 2)")
    a = p.parse_args(argv)
    unrolls = a.unroll or [1, 2]
    if min(unrolls) < 1 or a.rounds < 1 or a.repeats < 1:
        p.error("--unroll, --rounds and --repeats must be >= 1")
    cpu.tune()  # as `jaxgan train` runs
    for preset in a.preset or ["ring8"]:
        print(json.dumps(compare(preset, a.rounds, a.repeats, unrolls)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
