"""Device scaling of the training step: steps/s on 1, 2, 4 and 8 devices, and the efficiency.

    python benchmarks/scaling.py                          # ring8 preset, pmap, global batch 512
    python benchmarks/scaling.py --modes pmap,sharding,shard_map --devices 1,2,4,8
    python benchmarks/scaling.py --scaling weak           # batch 512 per device
    python benchmarks/scaling.py --same-process           # all counts in one 8-device process

By default each configuration runs in its own subprocess, started with exactly N devices (on
CPU, ``XLA_FLAGS=--xla_force_host_platform_device_count=N``). ``--same-process`` runs them all in
one process with the largest count instead, timing their chunks round-robin: on a busy machine
the ratios between configurations are then much more stable than across processes.

Every configuration times the loop's own compiled chunk
(:meth:`jaxgan.parallel.DataParallel.train_chunk`, data drawn on device). One JSON line per
configuration: the command, the machine, the versions, the first call (compile + one chunk),
the median steps/s over ``--repeats`` timed chunks, examples/s, and the scaling against the
first device count of the same sweep:

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


def measure(args, configs_to_run: list[tuple[str, int, int]]) -> list[dict]:
    """Time ``(mode, devices, global batch)`` configurations in this process (started with
    enough devices). With several, the timed chunks are interleaved (round-robin), so a change
    in the machine's load hits them all alike."""
    import jax

    from jaxgan import configs, loop, parallel

    runs = []
    for mode, n, batch in configs_to_run:
        overrides = configs.parse_overrides(args.set)
        overrides.update({"devices": n, "parallel": mode, "batch_size": batch})
        config = configs.apply_overrides(configs.preset(args.preset), overrides)
        plan = parallel.plan(config.parallel, config.devices)
        run = loop.Run.from_config(config)
        fn = plan.train_chunk(run.gan, run.source, config.batch_size, args.chunk)
        state = plan.place(run.init_state())
        t0 = time.perf_counter()
        state, metrics = fn(state)  # compiles, then runs one chunk (the same for every mode)
        jax.block_until_ready((state, metrics))
        runs.append({"config": config, "plan": plan, "fn": fn, "state": state, "metrics": metrics,
                     "first_call_s": time.perf_counter() - t0, "times": []})
    for _ in range(args.repeats):
        for r in runs:
            t0 = time.perf_counter()
            r["state"], r["metrics"] = r["fn"](r["state"])
            jax.block_until_ready((r["state"], r["metrics"]))
            r["times"].append(time.perf_counter() - t0)
    rows = []
    for r in runs:
        config, plan = r["config"], r["plan"]
        steps_per_s = args.chunk / statistics.median(r["times"])
        rows.append({
            "preset": args.preset, "overrides": args.set, "mode": plan.mode, "devices": plan.num_devices,
            "devices_in_process": jax.device_count(), "global_batch": config.batch_size,
            "per_device_batch": plan.local_batch(config.batch_size), "chunk_rounds": args.chunk,
            "repeats": args.repeats, "first_call_s": round(r["first_call_s"], 3),
            "steps_per_s": round(steps_per_s, 3), "examples_per_s": round(steps_per_s * config.batch_size, 1),
            "final_generator_score": float(jax.device_get(r["metrics"]["generator_score"])[-1]),
            "platform": plan.local[0].platform, "machine": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "jax": jax.__version__,
        })
    return rows


def run_child(args, devices: int, configs_to_run: list[tuple[str, int, int]]) -> list[dict] | str:
    """Run :func:`measure` in a fresh interpreter with ``devices`` devices; rows, or the error."""
    spec = ",".join(f"{m}:{n}:{b}" for m, n, b in configs_to_run)
    cmd = [sys.executable, os.path.abspath(__file__), "--child", spec, "--preset", args.preset,
           "--chunk", str(args.chunk), "--repeats", str(args.repeats), *(["--set", *args.set] if args.set else [])]
    env = dict(os.environ)
    if args.platform == "cpu":
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip()
        env["JAX_PLATFORMS"] = "cpu"
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    if done.returncode != 0:
        return (done.stderr.strip().splitlines() or ["no output"])[-1]
    return [json.loads(line) for line in done.stdout.strip().splitlines()]


def sweep(args) -> None:
    counts = [int(n) for n in args.devices.split(",")]
    modes = args.modes.split(",")
    todo = [(m, n, args.batch * n if args.scaling == "weak" else args.batch) for m in modes for n in counts]
    if args.same_process:
        results = run_child(args, max(counts), todo)
        rows = results if isinstance(results, list) else [{"error": results}]
    else:
        rows = []
        for item in todo:
            result = run_child(args, item[1], [item])
            rows.extend(result if isinstance(result, list) else [{"mode": item[0], "devices": item[1],
                                                                   "error": result}])
    key = "steps_per_s" if args.scaling == "strong" else "examples_per_s"
    base: dict[str, tuple[float, int]] = {}  # requested mode -> (figure, devices) of its first count
    for (mode, n, _), row in zip(todo, rows, strict=False):
        if "error" not in row:
            base.setdefault(mode, (row[key], n))
            figure, base_n = base[mode]
            row["scaling"] = args.scaling
            row["speedup"] = round(row[key] / figure, 3)  # of steps/s (strong) or examples/s (weak)
            row["efficiency"] = round(row[key] / figure * base_n / n, 3)
            row["same_process"] = args.same_process
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
    p.add_argument("--same-process", action="store_true",
                   help="time every configuration in one process with the largest device count, interleaved "
                        "(ratios robust to a busy machine)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child is not None:
        todo = [(m, int(n), int(b)) for m, n, b in (item.split(":") for item in args.child.split(","))]
        for row in measure(args, todo):
            print(json.dumps(row))
    else:
        sweep(args)


if __name__ == "__main__":
    main()
