"""Device scaling of the training step: steps/s on 1, 2, 4 and 8 devices, and the efficiency.

    python benchmarks/scaling.py                          # ring8 preset, pmap, global batch 512
    python benchmarks/scaling.py --modes pmap,sharding,shard_map --devices 1,2,4,8
    python benchmarks/scaling.py --scaling weak           # batch 512 per device

Each configuration runs in its own subprocess, started with exactly N devices (on CPU,
``XLA_FLAGS=--xla_force_host_platform_device_count=N``), and times the loop's own compiled
chunk (:meth:`jaxgan.parallel.DataParallel.train_chunk`, data drawn on device). One JSON line
per configuration: the command, the machine, the versions, the first call (compile + one chunk), the median steps/s
over ``--repeats`` timed chunks, examples/s, and the scaling against the 1-device run of the
same sweep:

* strong scaling (default): the global batch is fixed and split over N devices; speed-up =
  steps/s(N) / steps/s(1), efficiency = speed-up / N;
* weak scaling: the per-device batch is fixed; efficiency = examples/s(N) / (N * examples/s(1)).

Reading CPU figures: simulated CPU devices are not extra hardware. They are N XLA devices
sharing the machine's cores (2 here), so N devices can at best run as fast as one device that
already uses both cores; efficiency on them measures the overhead of splitting the step and of
the cross-device reductions, not a speed-up. Expect efficiency near 1/N for strong scaling on
CPU. Real scaling needs real accelerators (one GPU or TPU core per device); not measured here.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time


def child(args) -> dict:
    """Measure one configuration in this process (started with the right device count)."""
    import jax

    from jaxgan import configs, loop, parallel

    overrides = configs.parse_overrides(args.set)
    overrides.update({"devices": args.child, "parallel": args.mode, "batch_size": args.batch})
    config = configs.apply_overrides(configs.preset(args.preset), overrides)
    plan = parallel.plan(config.parallel, config.devices)
    run = loop.Run.from_config(config)
    state = plan.place(run.init_state())
    fn = plan.train_chunk(run.gan, run.source, config.batch_size, args.chunk)
    t0 = time.perf_counter()
    state, metrics = fn(state)  # compiles, then runs one chunk (the same for every mode)
    jax.block_until_ready((state, metrics))
    first_call_s = time.perf_counter() - t0
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        state, metrics = fn(state)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - t0)
    steps_per_s = args.chunk / statistics.median(times)
    return {
        "preset": args.preset, "overrides": args.set, "mode": plan.mode, "devices": plan.num_devices,
        "global_batch": config.batch_size, "per_device_batch": plan.local_batch(config.batch_size),
        "chunk_rounds": args.chunk, "repeats": args.repeats, "first_call_s": round(first_call_s, 3),
        "steps_per_s": round(steps_per_s, 3), "examples_per_s": round(steps_per_s * config.batch_size, 1),
        "final_generator_score": float(jax.device_get(metrics["generator_score"])[-1]),
        "platform": plan.local[0].platform, "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "jax": jax.__version__,
    }


def sweep(args) -> None:
    counts = [int(n) for n in args.devices.split(",")]
    modes = args.modes.split(",")
    base: dict[str, tuple[float, int]] = {}  # mode -> (figure, devices) of its first count
    for mode in modes:
        for n in counts:
            batch = args.batch * n if args.scaling == "weak" else args.batch
            cmd = [sys.executable, os.path.abspath(__file__), "--child", str(n), "--mode", mode,
                   "--preset", args.preset, "--batch", str(batch), "--chunk", str(args.chunk),
                   "--repeats", str(args.repeats), *(["--set", *args.set] if args.set else [])]
            env = dict(os.environ)
            if args.platform == "cpu":
                env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n}".strip()
                env["JAX_PLATFORMS"] = "cpu"
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
            if done.returncode != 0:
                print(json.dumps({"mode": mode, "devices": n, "error": done.stderr.strip().splitlines()[-1:]}))
                continue
            row = json.loads(done.stdout.strip().splitlines()[-1])
            key = "steps_per_s" if args.scaling == "strong" else "examples_per_s"
            base.setdefault(mode, (row[key], n))
            figure, base_n = base[mode]
            row["scaling"] = args.scaling
            row["speedup"] = round(row[key] / figure, 3)  # of steps/s (strong) or examples/s (weak)
            row["efficiency"] = round(row[key] / figure * base_n / n, 3)
            row["command"] = " ".join(["python", "benchmarks/scaling.py", *sys.argv[1:]])
            print(json.dumps(row), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--devices", default="1,2,4,8", help="device counts, the first is the baseline")
    p.add_argument("--modes", default="pmap", help="comma-separated: pmap, sharding, shard_map")
    p.add_argument("--preset", default="ring8")
    p.add_argument("--batch", type=int, default=512, help="global batch (strong) or per-device batch (weak)")
    p.add_argument("--scaling", choices=("strong", "weak"), default="strong")
    p.add_argument("--chunk", type=int, default=50, help="rounds per timed compiled chunk")
    p.add_argument("--repeats", type=int, default=5, help="timed chunks; the median is reported")
    p.add_argument("--platform", default="cpu", help="cpu simulates the devices; anything else uses real ones")
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="config overrides (jaxgan --set)")
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--mode", default="pmap", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child is not None:
        print(json.dumps(child(args)))
    else:
        sweep(args)


if __name__ == "__main__":
    main()
