"""``jaxgan``: train | sample | eval | bench | diagnose.

Errors a user can fix (bad config, bad data, bad run directory, unusable checkpoint) print one
line starting with ``jaxgan: error:`` and exit with status 2, before anything is compiled.
Warnings about the data (e.g. images outside [-1, 1]) print one ``jaxgan: warning:`` line each.

Exit status of ``jaxgan train``: 0 trained to ``--steps``; 2 a user error (nothing was written);
3 stopped on a NaN/Inf update (``nan_policy=stop``; the last good checkpoint is kept);
75 (EX_TEMPFAIL) interrupted by SIGTERM/SIGINT after saving a checkpoint: run the printed
``jaxgan train --out DIR`` to resume; 130 interrupted before a checkpoint could be saved.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

from jaxgan import configs, cpu, rundir
from jaxgan.checkpoint import CheckpointError
from jaxgan.data.checks import DataError, DataWarning

USER_ERRORS = (configs.ConfigError, DataError, rundir.RunDirError, CheckpointError)
EXIT_USER_ERROR = 2
EXIT_NONFINITE = 3
EXIT_INTERRUPTED = 75  # sysexits.h EX_TEMPFAIL: try again (resume) later
EXIT_KEYBOARD = 130


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Data warnings as one ``jaxgan: warning:`` line; other warnings as Python prints them."""
    if issubclass(category, DataWarning):
        print(f"jaxgan: warning: {message}", file=sys.stderr)
    else:
        _python_show_warning(message, category, filename, lineno, file, line)


_python_show_warning = warnings.showwarning


def _add_config_args(p: argparse.ArgumentParser, *, default_preset: str | None) -> None:
    p.add_argument("--preset", default=default_preset,
                   help=f"named configuration: {', '.join(sorted(configs.PRESETS))}")
    p.add_argument("--steps", type=int, default=None, help="the total number of steps (rounds) to reach")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="override config fields, e.g. --set loss=hinge unroll_steps=5 "
                        "penalties=gp:10 (unknown keys list the valid ones)")


def _note(message: str) -> None:
    print(f"jaxgan: note: {message}", file=sys.stderr)


def _config_from_args(args, base: configs.Config | None = None) -> configs.Config:
    config = base if base is not None else configs.preset(args.preset or "ring8")
    overrides = configs.parse_overrides(args.set, warn=_note)
    if args.steps is not None:
        overrides["steps"] = args.steps
    if args.seed is not None:
        overrides["seed"] = args.seed
    return configs.apply_overrides(config, overrides)


def _default_out(preset: str) -> str:
    return os.path.join("runs", f"{preset}-{time.strftime('%Y%m%d-%H%M%S')}")


def _add_distributed_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("multi-process (one process per host; every process runs the same command)")
    g.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                   help="address of process 0's coordinator (env JAXGAN_COORDINATOR or JAX_COORDINATOR_ADDRESS)")
    g.add_argument("--num-processes", type=int, default=None,
                   help="number of processes (env JAXGAN_NUM_PROCESSES or JAX_NUM_PROCESSES)")
    g.add_argument("--process-id", type=int, default=None,
                   help="this process's index, 0 .. num-processes-1 (env JAXGAN_PROCESS_ID or JAX_PROCESS_ID)")
    g.add_argument("--heartbeat-timeout", type=int, default=100, metavar="SECONDS",
                   help="a process silent this long is taken as dead and the others stop with an error")


def _start_jax(args) -> None:
    """JAX's distributed runtime when ``train`` asks for several processes (before anything
    touches a device), then :func:`jaxgan.cpu.tune` (its XLA flags before JAX's backends start;
    it asks for the default backend, which starts them)."""
    if args.func is cmd_train:
        from jaxgan import parallel

        parallel.initialize_distributed(args.coordinator, args.num_processes, args.process_id,
                                        heartbeat_timeout_s=args.heartbeat_timeout)
    cpu.tune(warn=False)


def cmd_train(args) -> int:
    from jaxgan import loop

    saved = None
    if args.out and args.preset is None and os.path.isfile(os.path.join(args.out, rundir.CONFIG)):
        # `jaxgan train --out DIR [--steps N] [--set k=v]` resumes DIR from its saved config.
        saved = rundir.load_config(args.out)
    if args.preset is None and saved is None:
        args.preset = "ring8"
    config = _config_from_args(args, base=saved)
    out = args.out or _default_out(config.preset)
    try:
        result = loop.train(config, out, progress=not args.quiet)
    except loop.NonFiniteError as err:
        print(f"jaxgan: error: {err}", file=sys.stderr)
        return EXIT_NONFINITE
    return EXIT_INTERRUPTED if result.interrupted else 0


def cmd_sample(args) -> int:
    import jax
    import numpy as np

    from jaxgan import loop, viz
    from jaxgan.checkpoint import Checkpointer

    if not args.out.endswith((".npy", ".png")):
        raise configs.ConfigError(f"--out {args.out!r}: write samples to a .npy or .png file")
    if args.n < 1:
        raise configs.ConfigError(f"-n {args.n}: ask for at least one sample")
    config = rundir.load_config(args.run)
    run = loop.Run.from_config(config)
    with Checkpointer(os.path.join(args.run, rundir.CHECKPOINTS), read_only=True) as ckpt:
        if ckpt.latest_step() is None:
            raise rundir.RunDirError(
                f"{args.run!r} has no checkpoint yet: train it first (jaxgan train --out {args.run})"
            )
        state, record = ckpt.restore(run.init_state())
    samples = np.asarray(jax.jit(lambda s, k: run.gan.sample(s, k, args.n))(state, jax.random.key(args.seed)))
    if args.out.endswith(".npy"):
        np.save(args.out, samples)
    elif samples.ndim == 2 and samples.shape[1] == 2:
        viz.scatter_2d(samples, args.out, log_density=getattr(run.source, "log_density", None),
                       centers=getattr(run.source, "centers", None), title=f"step {record['step']}")
    elif samples.ndim == 4:
        viz.image_grid(samples, args.out, title=f"step {record['step']}")
    else:
        raise configs.ConfigError(f"samples of shape {samples.shape[1:]} have no picture; use --out FILE.npy")
    print(f"jaxgan: wrote {args.n} samples from step {record['step']} of {args.run} to {args.out}")
    return 0


def cmd_eval(args) -> int:
    from jaxgan import evaluate

    if args.n is not None and args.n < 10:
        raise configs.ConfigError(f"--n {args.n}: evaluation needs at least 10 samples")
    if args.inception and not os.path.isfile(args.inception):
        raise configs.ConfigError(
            f"--inception {args.inception!r} does not exist: pass a .npz of pytorch-fid's FID Inception "
            "state_dict (see `python -c 'import jaxgan.metrics.features as f; help(f.load_inception_variables)'`)")
    result = evaluate.evaluate_run(args.run, n=args.n, step=args.step, inception=args.inception, seed=args.seed,
                                   classifier_steps=args.classifier_steps,
                                   echo=lambda msg: print(msg, file=sys.stderr))
    print(json.dumps(result))
    return 0


def cmd_bench(args) -> int:
    from jaxgan import bench

    config = _config_from_args(args)
    steps = args.steps or 200
    result = bench.measure(config, steps)
    result["overrides"] = args.set
    print(json.dumps(result))
    return 0


def cmd_diagnose(args) -> int:
    from jaxgan import report

    overrides = configs.parse_overrides(args.set, warn=_note)
    bad = sorted(k for k in overrides if k.split(".", 1)[0] not in configs.DIAG_KEYS)
    if bad:
        raise configs.ConfigError(
            f"diagnose --set changes only the diagnosis settings (diag.*, e.g. diag.window=500); "
            f"{', '.join(bad)} would describe a different run"
        )
    if overrides:
        configs.apply_overrides(rundir.load_config(args.run), overrides)  # validate the values
    summary = report.summarize(args.run, replay=args.replay or bool(overrides), overrides=overrides)
    if args.json:
        print(json.dumps(summary.to_dict()))
    else:
        print(report.format_text(summary))
    if not args.no_report:
        md, page = report.write_report(args.run, summary)
        if not args.json:
            print(f"report: {md} and {page}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxgan", description="Train and measure GANs in JAX.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a preset (default ring8) into a run directory")
    _add_config_args(p, default_preset=None)
    p.add_argument("--out", default=None, help="run directory (default runs/<preset>-<time>); "
                   "an existing run there is resumed")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_distributed_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="draw samples from a trained run")
    p.add_argument("--run", required=True, help="a run directory")
    p.add_argument("-n", type=int, default=1000, help="number of samples")
    p.add_argument("--out", required=True, help="FILE.npy (array) or FILE.png (picture)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("diagnose", help="what a (finished or running) run is doing, and what to try next")
    p.add_argument("--run", required=True, help="a run directory (the --out of jaxgan train)")
    p.add_argument("--replay", action="store_true",
                   help="run the detectors again over metrics.jsonl instead of reading events.jsonl")
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="replay with other diagnosis settings, e.g. --set diag.window=500 diag.g_low=0.2")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--no-report", action="store_true", help="do not write <run>/report/report.{md,html}")
    p.set_defaults(func=cmd_diagnose)

    p = sub.add_parser("eval", help="sample quality and mode coverage of a trained run (one JSON line; "
                       "also appended to RUN/eval.jsonl)")
    p.add_argument("--run", required=True, help="a run directory")
    p.add_argument("--n", type=int, default=None,
                   help="samples (and real examples) to compare (default: 2500 for toy data, 25600 for stacked "
                        "digits, 10000 otherwise)")
    p.add_argument("--step", type=int, default=None, help="which checkpoint (default: the latest)")
    p.add_argument("--inception", default=None, metavar="WEIGHTS.npz",
                   help="FID Inception weights (pytorch-fid's state_dict as .npz) for fid/kid/prdc_inception")
    p.add_argument("--classifier-steps", type=int, default=1500,
                   help="training steps of the evaluation classifier (image data with labels; cached in RUN/eval)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("bench", help="compile time and steps/s of a preset's training step")
    _add_config_args(p, default_preset="ring8")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.showwarning = _show_warning
    try:
        _start_jax(args)
        return args.func(args)
    except USER_ERRORS as err:
        print(f"jaxgan: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("jaxgan: interrupted; checkpoints already complete are kept", file=sys.stderr)
        return EXIT_KEYBOARD
    finally:
        warnings.showwarning = _python_show_warning


if __name__ == "__main__":
    sys.exit(main())
