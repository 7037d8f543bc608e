"""Stacked-MNIST mode coverage for unroll steps 0 and 10, beside the published figures.

The protocol (Metz et al. 2016, "Unrolled Generative Adversarial Networks", section 3.3.1 and
Table 2; also Lin et al. 2018, PacGAN, section 5.2 and Table 3, which repeats it): each real
example stacks three digit images drawn independently as its three channels, so the data has
10^3 = 1000 modes. After training, a digit classifier labels each channel of N generated
images; ``modes`` is the number of distinct label triples seen (of 1000) and ``mode_kl`` is
KL(generated mode histogram || uniform) (PacGAN's code: ``sum p log(p / (1/1000))``). PacGAN's
code for this setup evaluates N = 25,600 samples, our default.

Usage::

    python benchmarks/stacked_mnist.py --data-dir DIR                  # MNIST prepared in DIR
    python benchmarks/stacked_mnist.py --prepare-digits DIR            # offline: build sklearn_digits
    python benchmarks/stacked_mnist.py --dataset sklearn_digits --data-dir DIR --image-size 16 --steps 2000

Prints one JSON line per (unroll steps, seed) run and one per unroll setting with the mean and
std over seeds beside the published values, then a Markdown table (stderr). When the digit
dataset is not prepared in DIR it prints a skip line saying how to prepare it, and exits 0.

The generator and discriminator are whatever the config builds: the DCGAN pair when the library
has one (``model=dcgan``), else the reference MLPs; the discriminator is kept smaller than the
generator as in the paper's "D 1/4 the size of G" setting. Override anything with ``--set``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

# Metz et al. 2016 (arXiv:1611.02163v4), Table 2: modes generated (of 1000) and
# KL(model || data), mean ± standard error over runs, for unroll steps 0, 1, 5, 10, with the
# discriminator 1/4 and 1/2 the size of the generator.
PUBLISHED = {
    "source": "Metz et al. 2016, Unrolled GANs (ICLR 2017), Table 2",
    "D 1/4 size of G": {
        0: {"modes": (30.6, 20.73), "kl": (5.99, 0.42)},
        1: {"modes": (65.4, 34.75), "kl": (5.911, 0.14)},
        5: {"modes": (236.4, 63.30), "kl": (4.67, 0.43)},
        10: {"modes": (327.2, 74.67), "kl": (4.66, 0.46)},
    },
    "D 1/2 size of G": {
        0: {"modes": (628.0, 140.9), "kl": (2.58, 0.751)},
        1: {"modes": (523.6, 55.768), "kl": (2.44, 0.26)},
        5: {"modes": (732.0, 44.98), "kl": (1.66, 0.090)},
        10: {"modes": (817.4, 37.91), "kl": (1.43, 0.12)},
    },
}

# PacGAN's reproduction of this setup (fjxmlzn/PacGAN, stacked_MNIST_experiments/
# unrolled_GAN_experiment/*/config.py): Adam, D lr 2e-4, G lr 1e-4, beta1 0.5, beta2 0.99,
# batch 128, z of 256 dimensions.
PAPER_OPTIMISATION = {"d_lr": 2e-4, "g_lr": 1e-4, "b1": 0.5, "b2": 0.99, "batch_size": 128, "latent_dim": 256}


def _versions() -> dict[str, str]:
    import flax
    import jax

    return {"jax": jax.__version__, "flax": flax.__version__, "python": platform.python_version()}


def base_config(args):
    """The run config for one unroll setting (before seed and unroll are set)."""
    from jaxgan import configs

    models = getattr(configs, "MODELS", ("mlp",))
    values = {
        **PAPER_OPTIMISATION,
        "dataset": f"stacked:{args.dataset}", "data_dir": args.data_dir, "image_size": args.image_size or 0,
        "steps": args.steps, "log_every": min(100, args.steps), "plot_every": args.steps,
        "ckpt_every": args.steps, "activation": "relu",
    }
    if "dcgan" in models:
        values.update(model="dcgan", g_width=32, d_width=8)  # D a quarter of G's width
    else:
        values.update(model="mlp", g_hidden=(512, 512), d_hidden=(128,))  # D about a quarter of G
    values.update(configs.parse_overrides(args.set))
    return configs.apply_overrides(configs.Config(preset="stacked-mnist"), values)


def published_for(unroll: int) -> dict:
    return {size: PUBLISHED[size][unroll] for size in ("D 1/4 size of G", "D 1/2 size of G")
            if unroll in PUBLISHED[size]}


def run(args) -> int:
    import dataclasses

    import jax

    from jaxgan import evaluate, loop
    from jaxgan.data.checks import DataError

    command = " ".join([os.path.basename(sys.executable), *sys.argv])
    try:
        config = base_config(args)
        probe = loop.Run.from_config(config)  # loads the digits: fails here if they are not prepared
    except DataError as err:
        print(json.dumps({"benchmark": "stacked_mnist", "skipped": True, "reason": str(err), "command": command}))
        print(f"stacked_mnist: skipped: {err}\nPrepare MNIST where there is a network with "
              f"`tfds build mnist --data_dir DIR`, or offline `python benchmarks/stacked_mnist.py "
              f"--prepare-digits DIR` and pass --dataset sklearn_digits --data-dir DIR.", file=sys.stderr)
        return 0
    os.makedirs(args.out, exist_ok=True)
    evaluator = None
    rows = []
    for unroll in args.unroll:
        for seed in args.seeds:
            cfg = dataclasses.replace(config, unroll_steps=unroll, seed=seed)
            out = os.path.join(args.out, f"unroll{unroll}-seed{seed}")
            t0 = time.perf_counter()
            result = loop.train(cfg, out, progress=False, echo=lambda m: print(m, file=sys.stderr))
            train_s = time.perf_counter() - t0
            if evaluator is None:  # one classifier and one real sample for every run
                evaluator = evaluate.build(cfg, args.out, n=args.n, seed=0, classifier_steps=args.classifier_steps,
                                           echo=lambda m: print(m, file=sys.stderr), source=probe.source)
            # sampling needs only the generator, which the unroll depth does not change
            samples = evaluate.sample(probe, result.state, evaluator.n, jax.random.key(1000 + seed))
            metrics = evaluator(samples)
            row = {
                "benchmark": "stacked_mnist", "dataset": cfg.dataset, "model": cfg.model, "unroll_steps": unroll,
                "seed": seed, "steps": result.final_step, "train_s": round(train_s, 1),
                "steps_per_s": round(result.steps_per_s, 2), "n": metrics["n"], "modes": metrics["modes"],
                "mode_kl": round(metrics["mode_kl"], 4), "modes_real": metrics["modes_real"],
                "mode_kl_real": round(metrics["mode_kl_real"], 4),
                "fid_classifier": round(metrics["fid_classifier"], 3),
                "classifier_test_accuracy": metrics["classifier_test_accuracy"], "run_dir": out,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    summary = []
    for unroll in args.unroll:
        mine = [r for r in rows if r["unroll_steps"] == unroll]
        modes = np.array([r["modes"] for r in mine], float)
        kl = np.array([r["mode_kl"] for r in mine], float)
        line = {
            "benchmark": "stacked_mnist", "summary": True, "dataset": config.dataset, "model": config.model,
            "image_size": config.image_size, "unroll_steps": unroll, "seeds": len(mine), "steps": config.steps,
            "n": mine[0]["n"], "modes_mean": float(modes.mean()), "modes_std": float(modes.std()),
            "mode_kl_mean": float(kl.mean()), "mode_kl_std": float(kl.std()), "modes_real": mine[0]["modes_real"],
            "mode_kl_real": mine[0]["mode_kl_real"], "published": {"source": PUBLISHED["source"],
                                                                   **published_for(unroll)},
            "command": command, "machine": platform.processor() or platform.machine(), **_versions(),
        }
        summary.append(line)
        print(json.dumps(line), flush=True)
    print(table(summary), file=sys.stderr)
    return 0


def table(summary: list[dict]) -> str:
    """A Markdown table of the summary lines beside the published values."""
    out = ["| unroll | ours: modes (of 1000) | ours: KL | real data: modes, KL | Metz et al. D=1/4 G: modes, KL "
           "| Metz et al. D=1/2 G: modes, KL |", "|---|---|---|---|---|---|"]
    for s in summary:
        def cell(size, pub=s["published"]):
            p = pub.get(size)
            if not p:
                return "—"
            return f"{p['modes'][0]} ± {p['modes'][1]}, {p['kl'][0]} ± {p['kl'][1]}"

        out.append(f"| {s['unroll_steps']} | {s['modes_mean']:.1f} ± {s['modes_std']:.1f} | "
                   f"{s['mode_kl_mean']:.2f} ± {s['mode_kl_std']:.2f} | {s['modes_real']}, {s['mode_kl_real']:.2f} | "
                   f"{cell('D 1/4 size of G')} | {cell('D 1/2 size of G')} |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="mnist", help="TFDS digit dataset (mnist; sklearn_digits offline)")
    p.add_argument("--data-dir", default=os.environ.get("TFDS_DATA_DIR", ""), help="TFDS data_dir holding it")
    p.add_argument("--image-size", type=int, default=0, help="resize digits to N x N (0: as stored, 28)")
    p.add_argument("--steps", type=int, default=20000, help="training rounds per run")
    p.add_argument("--unroll", type=int, nargs="+", default=[0, 10], help="unroll steps to compare")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--n", type=int, default=25600, help="generated samples to classify (PacGAN: 25,600)")
    p.add_argument("--classifier-steps", type=int, default=1500)
    p.add_argument("--out", default="runs/stacked_mnist", help="where the runs and the classifier go")
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="config overrides for every run, e.g. --set model=mlp batch_size=64")
    p.add_argument("--prepare-digits", metavar="DIR", help="build the offline sklearn_digits dataset into DIR and exit")
    args = p.parse_args(argv)
    if args.prepare_digits:
        from jaxgan.data import sklearn_digits

        print(f"prepared sklearn_digits in {sklearn_digits.prepare(args.prepare_digits)}", file=sys.stderr)
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
