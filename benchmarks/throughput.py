"""Training-step throughput: jaxgan vs a hand-fused jitted step vs PyTorch eager, in one run.

For each preset (``dcgan32``, ``dcgan64``: the pytorch/examples DCGAN, nz=100, ngf=ndf=64,
3 channels, batch 64, Adam 2e-4/0.5; ``ring8``: the toy MLP GAN, 2x128 MLPs, batch 512) it
measures, interleaving the three so that machine load hits them alike:

* ``jaxgan``: the compiled chunk ``jaxgan train`` runs (:func:`jaxgan.bench.library_chunk`:
  ``GAN.train_step`` scanned over rounds, data drawn on device, every metric computed);
* ``fused``: one hand-written jitted function doing the same model's round (same flax modules,
  same data and latent draws, G forward in the D update, fresh latents in the G update, Adam)
  with nothing else, scanned over the same number of rounds with the same loop (``unroll``
  rounds per iteration, :data:`jaxgan.runner.UNROLL`): the library's overhead is jaxgan vs
  this;
* ``torch``: :mod:`torch_dcgan` (PyTorch eager, same work per step), if torch is installed.

jaxgan and the fused step run with ``jaxgan.cpu.tune()`` as ``jaxgan train`` does, with the
layers ``jaxgan train`` picks: with oneDNN installed (``pip install ".[onednn]"``) their 2-D
convolutions are oneDNN's (``--xla-convolutions`` keeps XLA's, for comparison).

It prints one JSON line per preset (steps/s of each, the ratios, XLA's FLOPs per step and the
achieved GFLOP/s against a matmul peak measured in the same run, compile time, the size of the
training step as a GPU or TPU runs it (``hlo_ops``, :mod:`hlo_ops`), versions) and a table. The
library's overhead is given two ways: from the median chunk times, and as the median (with
quartiles and the median's 95% interval) of each library chunk's time over the fused chunk run
beside it (the pair's order alternates), which drift in the machine's speed during the run does
not move.

``--trees A B ...`` compares checkouts (e.g. a worktree of main and this one) in one invocation:
each repeat runs each checkout's own ``throughput.py`` once, in a subprocess with that checkout
on ``PYTHONPATH``, the checkouts' order reversed every other repeat; it prints one JSON line per
checkout and preset with the per-repeat figures and their medians. Run from the repository root::

    python benchmarks/throughput.py                     # all three presets
    python benchmarks/throughput.py --preset dcgan32 --repeats 5
    python benchmarks/throughput.py --preset ring8 --repeats 3 --trees ../main-checkout .
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import hlo_ops

from jaxgan import bench, build, configs, cpu, keys, loop, runner
from jaxgan.runner import round_batches

PRESETS = {
    # preset: (rounds per timed chunk, default timed chunks per repeat)
    "dcgan32": (5, 4),
    "dcgan64": (2, 1),
    "ring8": (100, 3),
}


def fused_chunk(run: loop.Run, rounds: int, layers: str = "flax"):
    """A hand-fused round of the same model (DCGAN with ``layers``), scanned ``rounds`` times: the
    reference for the library's overhead. Only the two losses are returned as metrics."""
    gan, config = run.gan, run.config
    g_mod, d_mod = _linen_modules(run, layers)
    g_opt, d_opt = gan.g_optimizer, gan.d_optimizer
    batch = config.batch_size

    def g_apply(params, stats, z):
        return g_mod.apply({"params": params, **stats}, z, train=True, mutable=list(stats) or False)

    def d_apply(params, stats, x, key):
        return d_mod.apply({"params": params, **stats}, x, train=True, mutable=list(stats) or False,
                           rngs={"dropout": key})

    def split(out, stats):
        return out if stats else (out, stats)

    def one_round(carry, t):
        gp, gs, go, dp, ds, do, rng = carry
        key = jax.random.fold_in(rng, t)
        k_z1, k_z2, k_d1, k_d2 = jax.random.split(key, 4)
        real = round_batches(gan, run.source, _FakeState(rng, t), batch)[0]
        ids = jnp.arange(batch, dtype=jnp.uint32)
        z1 = keys.normal(k_z1, ids, (gan.latent_dim,))
        z2 = keys.normal(k_z2, ids, (gan.latent_dim,))
        fake, _ = split(g_apply(gp, gs, z1), gs)

        def d_loss(params):
            lr, s1 = split(d_apply(params, ds, real, k_d1), ds)
            lf, s2 = split(d_apply(params, s1, fake, k_d2), s1)
            return jnp.mean(jax.nn.softplus(-lr)) + jnp.mean(jax.nn.softplus(lf)), s2

        (ld, ds_new), grads = jax.value_and_grad(d_loss, has_aux=True)(dp)
        updates, do = d_opt.update(grads, do, dp)
        dp = optax.apply_updates(dp, updates)

        def g_loss(params):
            f, gs_new = split(g_apply(params, gs, z2), gs)
            logits, _ = split(d_apply(dp, ds_new, f, k_d1), ds_new)
            return jnp.mean(jax.nn.softplus(-logits)), gs_new

        (lg, gs), grads = jax.value_and_grad(g_loss, has_aux=True)(gp)
        updates, go = g_opt.update(grads, go, gp)
        gp = optax.apply_updates(gp, updates)
        return (gp, gs, go, dp, ds_new, do, rng), {"d_loss": ld, "g_loss": lg}

    def chunk(carry, first):
        return jax.lax.scan(one_round, carry, first + jnp.arange(rounds), unroll=runner.UNROLL)

    return jax.jit(chunk, donate_argnums=0)


class _FakeState:
    """Just what ``runner.round_batches`` reads from a state (rng and step)."""

    def __init__(self, rng, step):
        self.rng, self.step = rng, step


def _linen_modules(run: loop.Run, layers: str):
    """The flax modules behind the run's Networks (rebuilt from the config: same classes)."""
    from jaxgan.nets.dcgan import DCGANDiscriminator, DCGANGenerator
    from jaxgan.nets.mlp import MLPDiscriminator, MLPGenerator

    c, shape = run.config, run.example_shape
    if c.model == "dcgan":
        return (DCGANGenerator(image_size=shape[0], channels=shape[2], width=c.g_width, layers=layers),
                DCGANDiscriminator(image_size=shape[0], width=c.d_width, norm=c.d_norm, dropout=c.d_dropout,
                                   layers=layers))
    return (MLPGenerator(out_shape=shape, hidden=c.g_hidden, activation=c.activation),
            MLPDiscriminator(hidden=c.d_hidden, activation=c.activation, dropout=c.d_dropout))


def fused_carry(state):
    """The fused chunk's carry from a GANState (same initial weights)."""
    copy = functools.partial(jax.tree.map, lambda x: jnp.array(x, copy=True))
    players = (state.g.params, state.g.model_state, state.g.opt_state, state.d.params, state.d.model_state,
               state.d.opt_state)
    return (*copy(players), jax.random.clone(state.rng))


def torch_peer(config: configs.Config, threads: int | None):
    try:
        import torch
    except ImportError:
        return None, None
    if threads:
        torch.set_num_threads(threads)
    from torch_dcgan import Peer

    if config.model == "dcgan":
        peer = Peer("dcgan", image_size=int(config.dataset.split(":")[1].split("x")[0]), batch=config.batch_size,
                    nz=config.latent_dim, width=config.g_width, lr_g=config.g_lr, lr_d=config.d_lr, b1=config.b1)
    else:
        peer = Peer("mlp", batch=config.batch_size, nz=config.latent_dim, lr_g=config.g_lr, lr_d=config.d_lr,
                    b1=config.b1, mlp_activation=config.activation)
    return peer, torch.__version__


def run_preset(name: str, repeats: int, chunks: int | None, peak: float, threads: int | None) -> dict:
    config = configs.preset(name)
    rounds, default_chunks = PRESETS[name]
    chunks = chunks or default_chunks
    layers = build.default_layers()
    run, lib_fn, lib_args, _plan = bench.library_chunk(config, rounds)
    t0 = time.perf_counter()
    lib = lib_fn.lower(*lib_args).compile()
    lib_compile = time.perf_counter() - t0
    lib_flops = bench.chunk_flops(config, rounds, lib, layers)

    fused_fn = fused_chunk(run, rounds, layers)
    carry = fused_carry(lib_args[0])
    t0 = time.perf_counter()
    fused = fused_fn.lower(carry, 0).compile()
    fused_compile = time.perf_counter() - t0
    fused_flops = bench.compiled_flops(fused_chunk(run, 1, bench.xla_layers(layers)).lower(carry, 0).compile())

    peer, torch_version = torch_peer(config, threads)

    lib_state = lib_args[0]
    times: dict[str, list[float]] = {"jaxgan": [], "fused": [], "torch": []}
    # warm-up
    lib_state, m = lib(lib_state)
    jax.block_until_ready(m)
    carry, m = fused(carry, 0)
    jax.block_until_ready(m)
    if peer is not None:
        peer.time_steps(1, warmup=1)

    def run_lib():
        nonlocal lib_state
        lib_state, m = lib(lib_state)
        jax.block_until_ready(m)

    def run_fused(first):
        nonlocal carry
        carry, m = fused(carry, first)
        jax.block_until_ready(m)

    for r in range(repeats):
        for c in range(chunks):
            # The two jitted chunks run in pairs, each pair in the other order than the last, so
            # that load, and whatever the PyTorch steps leave behind, hit both alike.
            i = r * chunks + c
            pair = (("jaxgan", run_lib), ("fused", functools.partial(run_fused, (i + 1) * rounds)))
            for who, fn in pair if i % 2 == 0 else pair[::-1]:
                t0 = time.perf_counter()
                fn()
                times[who].append((time.perf_counter() - t0) / rounds)
        if peer is not None:
            times["torch"] += peer.time_steps(max(1, min(rounds, 10)) * chunks, warmup=0)
    rate = {k: 1.0 / float(np.median(v)) for k, v in times.items() if v}
    paired = np.array(times["jaxgan"]) / np.array(times["fused"])
    out = {
        "benchmark": "throughput",
        "preset": name,
        "model": config.model,
        "dataset": config.dataset,
        "batch_size": config.batch_size,
        "command": " ".join(["python", *sys.argv]),
        "steps_per_s": {k: round(v, 3) for k, v in rate.items()},
        "jaxgan_over_torch": round(rate["jaxgan"] / rate["torch"], 3) if "torch" in rate else None,
        "library_overhead_pct": round(100.0 * (rate["fused"] / rate["jaxgan"] - 1.0), 2),
        # each library chunk against the fused chunk run beside it (same machine state): quartiles
        # and the 95% interval of the median, in percent
        "library_overhead_paired_pct": _pct(bench.ratio_summary(paired)),
        "gflop_per_step": {"jaxgan": _g(lib_flops), "fused": _g(fused_flops)},
        "gflops_achieved": round(lib_flops * rate["jaxgan"] / 1e9, 2) if lib_flops else None,
        "matmul_peak_gflops": round(peak, 1),
        "fraction_of_peak": round(lib_flops * rate["jaxgan"] / 1e9 / peak, 3) if lib_flops else None,
        "compile_s": {"jaxgan": round(lib_compile, 2), "fused": round(fused_compile, 2)},
        "samples": {k: len(v) for k, v in times.items()},
        "rounds_per_chunk": rounds,
        "rounds_per_loop_iteration": runner.UNROLL,
        "machine": f"{platform.processor() or platform.machine()} x{os.cpu_count()}",
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "jax": jax.__version__,
        "torch": torch_version,
        "commit": _commit(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "threefry_unrolled": cpu.threefry_unrolled(),
        "native_random": cpu.native_random(),
        "layers": layers,
        "onednn_convolutions": layers == "onednn",
        "hlo_ops": hlo_ops.hlo_ops(name),
    }
    return out


def _pct(summary: dict) -> dict:
    """A :func:`jaxgan.bench.ratio_summary` of time ratios as percent overheads."""
    pct = lambda v: round(100.0 * (v - 1.0), 2)
    ci = summary["median_ci95"]
    return {"q25": pct(summary["q25"]), "median": pct(summary["median"]), "q75": pct(summary["q75"]),
            "median_ci95": None if ci is None else [pct(v) for v in ci], "n": summary["n"]}


def _ci(pct: dict) -> str:
    ci = pct["median_ci95"]
    return "-" if ci is None else f"[{ci[0]:.1f}, {ci[1]:.1f}]"


def _g(flops):
    return round(flops / 1e9, 3) if flops else None


def _commit(tree: str) -> str:
    """The checkout's commit (``+`` if its tracked files differ from it)."""
    git = ["git", "-C", tree]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run([*git, "diff", "--quiet", "HEAD"]).returncode != 0
    return head + ("+" if dirty else "")


def compare_trees(trees: list[str], presets: list[str], repeats: int, forward: list[str]) -> list[dict]:
    """Each checkout's own ``throughput.py`` once per repeat (``forward``: its other arguments),
    the checkouts' order reversed every other repeat; one summary row per checkout and preset."""
    runs: dict[tuple[str, str], list[dict]] = {(t, p): [] for t in trees for p in presets}
    for r in range(repeats):
        for tree in trees if r % 2 == 0 else trees[::-1]:
            script = os.path.join(tree, "benchmarks", "throughput.py")
            cmd = [sys.executable, script, *(x for p in presets for x in ("--preset", p)), "--repeats", "1", *forward]
            env = {**os.environ, "PYTHONPATH": os.path.abspath(tree)}
            out = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
            if out.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} (in {tree}) failed:\n{out.stderr[-3000:]}")
            for line in out.stdout.splitlines():
                if line.startswith("{"):
                    row = json.loads(line)
                    runs[(tree, row["preset"])].append(row)
    summary = []
    for tree in trees:
        ops = {p: runs[(tree, p)][0].get("hlo_ops") for p in presets}
        if any(v is None for v in ops.values()):  # a checkout from before the count
            ops = hlo_ops.in_tree(tree, presets)
        for preset in presets:
            rows = runs[(tree, preset)]
            rates = {k: [row["steps_per_s"][k] for row in rows] for k in rows[0]["steps_per_s"]}
            paired = [row["library_overhead_paired_pct"]["median"] for row in rows]
            summary.append({
                "benchmark": "throughput_trees",
                "tree": os.path.abspath(tree),
                "commit": _commit(tree),
                "preset": preset,
                "command": " ".join(["python", *sys.argv]),
                "steps_per_s": {k: round(float(np.median(v)), 3) for k, v in rates.items()},
                "steps_per_s_per_repeat": rates,
                "library_overhead_paired_pct": round(float(np.median(paired)), 2),
                "library_overhead_paired_pct_per_repeat": paired,
                "hlo_ops": ops[preset],
                "gflop_per_step": rows[0]["gflop_per_step"],
                "compile_s": rows[0]["compile_s"],
                "load_avg_1m": [row["load_avg_1m"] for row in rows],
                "machine": rows[0]["machine"],
                "jax": rows[0]["jax"],
            })
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", action="append", choices=sorted(PRESETS), help="default: all")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds of measurement")
    p.add_argument("--chunks", type=int, default=None, help="timed chunks per repeat (default per preset)")
    p.add_argument("--torch-threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--no-cpu-tuning", action="store_true",
                   help="leave XLA's CPU defaults (YNNPACK dots, rolled threefry) instead of jaxgan.cpu.tune()")
    p.add_argument("--xla-convolutions", action="store_true",
                   help="jaxgan.cpu.tune() without the oneDNN convolutions (XLA's own kernels)")
    p.add_argument("--unroll", type=int, default=None,
                   help=f"rounds per loop iteration of both chunks (default jaxgan.runner.UNROLL = {runner.UNROLL})")
    p.add_argument("--trees", nargs="+", metavar="DIR",
                   help="compare these checkouts, each running its own throughput.py (see the module docstring)")
    a = p.parse_args(argv)
    if a.unroll is not None and a.unroll < 1:
        p.error(f"--unroll must be >= 1 (got {a.unroll})")
    if a.trees:
        forward = [*(["--chunks", str(a.chunks)] if a.chunks else []),
                   *(["--torch-threads", str(a.torch_threads)] if a.torch_threads else []),
                   *(["--no-cpu-tuning"] if a.no_cpu_tuning else []),
                   *(["--xla-convolutions"] if a.xla_convolutions else []),
                   *(["--unroll", str(a.unroll)] if a.unroll else [])]
        rows = compare_trees(a.trees, a.preset or list(PRESETS), a.repeats, forward)
        for row in rows:
            print(json.dumps(row), flush=True)
        print(f"{'preset':10s} {'commit':>10s} {'jaxgan':>9s} {'fused':>9s} {'torch':>9s} {'paired%':>8s} "
              f"{'hlo_ops':>8s}", file=sys.stderr)
        for r in sorted(rows, key=lambda r: r["preset"]):
            s = r["steps_per_s"]
            print(f"{r['preset']:10s} {r['commit']:>10s} {s['jaxgan']:9.3f} {s['fused']:9.3f} "
                  f"{s.get('torch', float('nan')):9.3f} {r['library_overhead_paired_pct']:8.2f} {r['hlo_ops']:8d}",
                  file=sys.stderr)
        return 0
    if a.unroll is not None:
        runner.UNROLL = a.unroll
    if not a.no_cpu_tuning:
        cpu.tune(onednn=not a.xla_convolutions)  # what `jaxgan train` runs with
    if not a.xla_convolutions and not cpu.onednn_in_use():
        from jaxgan.cpu import onednn

        if onednn.unavailable_reason():
            print(f"oneDNN convolutions unavailable: {onednn.unavailable_reason()}", file=sys.stderr)
    peak = bench.matmul_peak()
    rows = []
    for name in a.preset or list(PRESETS):
        row = run_preset(name, a.repeats, a.chunks, peak, a.torch_threads)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\nmatmul peak (jax, 2048^2 f32): {peak:.1f} GFLOP/s", file=sys.stderr)
    print(f"{'preset':10s} {'jaxgan':>9s} {'fused':>9s} {'torch':>9s} {'jaxgan/torch':>12s} {'overhead%':>9s} "
          f"{'paired%':>7s} {'95% CI':>13s} {'GFLOP/step':>10s} {'GFLOP/s':>8s} {'of peak':>7s}", file=sys.stderr)
    for r in rows:
        s = r["steps_per_s"]
        print(f"{r['preset']:10s} {s['jaxgan']:9.3f} {s['fused']:9.3f} {s.get('torch', float('nan')):9.3f} "
              f"{r['jaxgan_over_torch'] or float('nan'):12.3f} {r['library_overhead_pct']:9.2f} "
              f"{r['library_overhead_paired_pct']['median']:7.2f} {_ci(r['library_overhead_paired_pct']):>13s} "
              f"{r['gflop_per_step']['jaxgan'] or float('nan'):10.3f} {r['gflops_achieved'] or float('nan'):8.1f} "
              f"{r['fraction_of_peak'] or float('nan'):7.3f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
