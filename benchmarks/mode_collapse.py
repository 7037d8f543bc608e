"""Mode collapse on the 2-D mixtures: plain GAN, unrolled GAN, packing, WGAN-GP, and our presets.

For each preset (``metz-ring8``, ``metz-grid25``: Metz et al. 2016's 2-D setup; ``pacgan-ring8``,
``pacgan-grid25``: PacGAN's networks and settings; ``ring8``, ``grid25``: ours; see
``jaxgan/configs.py``) and each variant (``preset``: as it is; ``gan``: unpacked, not unrolled;
``unrolled-k``; ``pack-m``, with PacGAN's batch of B packs; ``wgan-gp``),
trains ``--seeds`` GANs at once (the seeds are ``vmap``-ed in one compiled program: the GAN
state is a pytree and ``jaxgan.runner.train_chunk`` draws the data on device), then evaluates
2,500 samples per seed with the VEEGAN/PacGAN protocol (``jaxgan.metrics.coverage``): modes
captured, fraction of high-quality samples (within 3 std of the nearest mode) and reverse
KL(mode histogram || uniform). Coverage is also recorded every ``--eval-every`` rounds, so the
JSON shows whether the plain GAN holds a mode or rotates between modes.

Prints one JSON line per (dataset, variant) with the command, the machine, the versions, the
mean and std over seeds (sample std, ddof=1) and the per-seed figures; ``--table`` turns saved
lines into the markdown table of ``benchmarks/README.md``; ``--plot-dir`` writes the
samples-over-time picture of seed 0 for each variant (Metz et al. 2016, Figure 1).

Examples::

    python benchmarks/mode_collapse.py --out benchmarks/results/mode_collapse.jsonl \\
        --plot-dir benchmarks/results
    python benchmarks/mode_collapse.py --presets metz-ring8 --variants gan unrolled-10 --seeds 5
    python benchmarks/mode_collapse.py --table benchmarks/results/mode_collapse.jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxgan import bench, configs, cpu, loop, viz
from jaxgan.metrics import coverage
from jaxgan.runner import train_chunk

N_EVAL = 2500  # VEEGAN Table 1 / PacGAN: 2,500 samples per trained model

# Gulrajani et al. 2017 (WGAN-GP), gan_toy.py in igul222/improved_wgan_training: 5 critic
# updates per generator update, lambda = 0.1 "for toy tasks", Adam(1e-4, beta1 = 0.5, beta2 = 0.9).
WGAN_GP = {"loss": "wasserstein", "gp": 0.1, "d_steps": 5, "g_lr": 1e-4, "d_lr": 1e-4, "b1": 0.5, "b2": 0.9}

VARIANTS: dict[str, dict] = {
    "preset": {},  # the preset as it is (our ring8/grid25 presets, or a published setup's own)
    "gan": {"pack": 1, "unroll_steps": 0},  # the plain GAN of the setup
    "unrolled-1": {"unroll_steps": 1},
    "unrolled-5": {"unroll_steps": 5},
    "unrolled-10": {"unroll_steps": 10},
    # PacGAN's convention: a batch of B packs, so D sees as many inputs as unpacked and G makes m x B.
    "pack-2": lambda c: {"pack": 2, "batch_size": 2 * c.batch_size},
    "pack-3": lambda c: {"pack": 3, "batch_size": 3 * c.batch_size},
    "pack-4": lambda c: {"pack": 4, "batch_size": 4 * c.batch_size},
    "wgan-gp": WGAN_GP,
    "wgan-gp-10": {**WGAN_GP, "gp": 10.0},  # the penalty weight of Gulrajani et al.'s image experiments
}


def _stats(values: np.ndarray) -> tuple[float, float]:
    values = np.asarray(values, np.float64)
    std = float(np.std(values, ddof=1)) if values.size > 1 else 0.0
    return float(np.mean(values)), std


def run_variant(config: configs.Config, seeds: int, eval_every: int, frames: int) -> dict:
    """Train ``seeds`` GANs of ``config`` in one vmapped program; return figures and frames."""
    run = loop.Run.from_config(config)
    gan, source = run.gan, run.source
    example = jnp.zeros((config.batch_size, *run.example_shape), jnp.float32)
    keys = jax.vmap(jax.random.key)(config.seed + jnp.arange(seeds))
    states = jax.jit(jax.vmap(gan.init, in_axes=(0, None)))(keys, example)

    @functools.cache
    def chunk(rounds: int):
        fn = functools.partial(train_chunk, gan, source, local_batch=config.batch_size, rounds=rounds)
        return jax.jit(jax.vmap(fn), donate_argnums=0)

    eval_keys = jax.vmap(jax.random.key)(10_000 + jnp.arange(seeds))

    @jax.jit
    def evaluate(states):
        samples = jax.vmap(lambda s, k: gan.sample(s, k, N_EVAL))(states, eval_keys)
        return samples, jax.vmap(lambda x: coverage.mode_coverage(x, source.centers, source.std))(samples)

    frame_steps = set(np.linspace(0, config.steps, frames).round().astype(int).tolist()) if frames else set()
    timeline, pictures = [], []
    step, t0 = 0, time.perf_counter()
    samples, cov = evaluate(states)
    if 0 in frame_steps:
        pictures.append((0, np.asarray(samples[0])))
    while step < config.steps:
        n = min(eval_every - step % eval_every, config.steps - step)
        for f in sorted(frame_steps):  # stop at frame steps too
            if step < f < step + n:
                n = f - step
                break
        states, metrics = chunk(n)(states)
        step += n
        samples, cov = evaluate(states)
        if step % eval_every == 0 or step == config.steps:
            timeline.append({"step": step, "modes": np.asarray(cov.modes).tolist(),
                             "high_quality": np.round(np.asarray(cov.high_quality), 4).tolist(),
                             "top_mode": np.argmax(np.asarray(cov.counts), axis=1).tolist()})
            print(f"  {config.dataset} step {step}: modes {timeline[-1]['modes']} high-quality "
                  f"{timeline[-1]['high_quality']} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
        if step in frame_steps:
            pictures.append((step, np.asarray(samples[0])))
    wall = time.perf_counter() - t0
    modes, hq, kl = (np.asarray(x) for x in (cov.modes, cov.high_quality, cov.reverse_kl))
    finite = np.isfinite(np.asarray(metrics["g_loss"])).all(axis=-1)
    return {
        "modes_mean": _stats(modes)[0], "modes_std": _stats(modes)[1],
        "high_quality_mean": _stats(hq)[0], "high_quality_std": _stats(hq)[1],
        # KL is NaN for a seed with no high-quality sample (empty histogram); averaged over the others.
        "reverse_kl_mean": _stats(kl[np.isfinite(kl)])[0] if np.isfinite(kl).any() else None,
        "reverse_kl_std": _stats(kl[np.isfinite(kl)])[1] if np.isfinite(kl).any() else None,
        "seeds_without_hq_samples": int(np.sum(~np.isfinite(kl))),
        "per_seed": {"modes": modes.tolist(), "high_quality": np.round(hq, 4).tolist(),
                     "reverse_kl": [None if not np.isfinite(v) else round(float(v), 4) for v in kl],
                     "finite_training": finite.tolist()},
        "timeline": timeline,
        "wall_s": round(wall, 1),
        "_frames": pictures,
    }


def key_config(c: configs.Config) -> dict:
    keys = ("dataset", "latent_dim", "g_hidden", "d_hidden", "activation", "d_activation", "g_norm", "init_gain",
            "init_std", "d_input_scale", "loss", "d_steps", "unroll_steps", "pack", "d_mbstd", "g_lr", "d_lr", "b1",
            "b2", "lr_decay", "ema_decay", "gp", "batch_size", "steps")
    return {k: getattr(c, k) for k in keys}


def table(path: str) -> str:
    rows = [json.loads(line) for line in open(path) if line.strip()]
    out = ["| preset | variant | modes (of K) | per seed | high-quality samples | reverse KL | rounds | wall |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        kl = "—" if r["reverse_kl_mean"] is None else f"{r['reverse_kl_mean']:.3f} ± {r['reverse_kl_std']:.3f}"
        if r.get("seeds_without_hq_samples"):  # KL undefined for those seeds: say over how many it is
            kl += f" ({r['seeds'] - r['seeds_without_hq_samples']} of {r['seeds']} seeds)"
        modes = f"{r['modes_mean']:.1f} ± {r['modes_std']:.1f} (of {r['num_modes']})"
        per_seed = ", ".join(str(m) for m in r["per_seed"]["modes"])
        hq = f"{100 * r['high_quality_mean']:.1f} ± {100 * r['high_quality_std']:.1f} %"
        out.append(f"| {r.get('preset', r['dataset'])} | {r['variant']} | {modes} | {per_seed} | {hq} | {kl} "
                   f"| {r['config']['steps']} | {r['wall_s'] / 60:.0f} min |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["metz-ring8", "metz-grid25"], help="presets to run")
    p.add_argument("--variants", nargs="+", default=["gan", "unrolled-5", "unrolled-10", "pack-2", "pack-4", "wgan-gp"],
                   choices=list(VARIANTS))
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--steps", type=int, default=None, help="rounds per run (default: the preset's)")
    p.add_argument("--eval-every", type=int, default=None, help="rounds between coverage evaluations")
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="extra config overrides for every run")
    p.add_argument("--frames", type=int, default=6, help="sample pictures per run (seed 0)")
    p.add_argument("--plot-dir", default=None)
    p.add_argument("--out", default=None, help="also append the JSON lines to this file")
    p.add_argument("--table", default=None, metavar="FILE.jsonl", help="print the markdown table of saved lines")
    args = p.parse_args(argv)
    if args.table:
        print(table(args.table))
        return 0
    if args.seeds < 1:
        raise SystemExit("--seeds must be >= 1")
    cpu.tune(warn=False)
    extra = configs.parse_overrides(args.set)
    for name_preset in args.presets:
        for name in args.variants:
            base = configs.preset(name_preset)
            variant = VARIANTS[name](base) if callable(VARIANTS[name]) else VARIANTS[name]
            config = configs.apply_overrides(base, {**variant, **extra})
            if args.steps is not None:
                config = dataclasses.replace(config, steps=args.steps)
            every = args.eval_every or max(1, config.steps // 10)
            res = run_variant(config, args.seeds, every, args.frames if args.plot_dir else 0)
            frames = res.pop("_frames")
            num_modes = int(loop.Run.from_config(config).source.num_modes)
            row = {"benchmark": "mode_collapse", "command": " ".join(["python", *sys.argv]), "preset": name_preset,
                   "dataset": config.dataset, "variant": name, "num_modes": num_modes,
                   "seeds": args.seeds, "config": key_config(config), "machine": bench.machine(), **res}
            line = json.dumps(row)
            print(line, flush=True)
            if args.out:
                os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
                with open(args.out, "a") as f:
                    f.write(line + "\n")
            if args.plot_dir and frames:
                os.makedirs(args.plot_dir, exist_ok=True)
                centers = loop.Run.from_config(config).source.centers
                viz.scatter_over_time(frames, os.path.join(args.plot_dir, f"{name_preset}_{name}_over_time.png"),
                                      centers=centers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
