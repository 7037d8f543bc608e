"""The host-side training loop: the only impure orchestration in jaxgan.

config -> (GAN, data) -> compiled chunks of rounds -> metrics -> logs, plots, checkpoints.
The loop dispatches chunk k+1 before it reads chunk k's metrics, so host work overlaps device
work; it syncs only at plot and checkpoint boundaries (and first checks the chunk was finite, so
a checkpoint never holds NaNs).

Devices (:mod:`jaxgan.parallel`): the chunk runs on ``config.devices`` devices (0: all local
ones) in ``config.parallel`` mode; checkpoints, observers and plots always see the unreplicated
state, so a run saved on n devices resumes on any other count. In a multi-process run every
process runs this loop (checkpoints are collective, orbax writes them once), process 0 alone
writes logs, plots and summaries, and a stop (signal, observer) is agreed by all processes.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from jaxgan import build, diagnose, parallel, rundir, viz
from jaxgan.checkpoint import Checkpointer
from jaxgan.configs import Config
from jaxgan.gan import GAN, GANState

NAN_CAUSES = (
    "a learning rate too high for this loss (lower g_lr/d_lr), an unbounded loss such as "
    "wasserstein without gp or weight_clip, or NaN/Inf in the data"
)


class Observer:
    """A host-side watcher of a run (diagnosis, periodic evaluation). Every hook is optional.

    ``on_metrics`` sees each logged row (every row written to ``metrics.jsonl``, including the
    extra scalars of ``on_checkpoint``) and returns events (dicts with ``step``, ``kind``,
    ``evidence``, ``remedies``, optionally ``message``) that the loop writes to ``events.jsonl``
    and prints; ``on_checkpoint`` runs at each checkpoint/plot boundary with the current state;
    ``should_stop`` asks the loop to save and stop; ``postfix`` adds to the progress bar.
    """

    def on_start(self, run: Run, out: str, start_step: int) -> None: ...

    def on_metrics(self, step: int, row: dict[str, float]) -> list[dict[str, Any]]:
        return []

    def on_checkpoint(self, step: int, state: GANState) -> dict[str, float]:
        """Extra scalars to log at this step (e.g. evaluation metrics)."""
        return {}

    def should_stop(self) -> str | None:
        return None

    def postfix(self) -> dict[str, str]:
        return {}

    def on_end(self, step: int, state: GANState) -> None: ...


class NonFiniteError(RuntimeError):
    """Training produced NaN/Inf; the run stopped and kept its last good checkpoint."""


@dataclasses.dataclass
class RunResult:
    out: str
    state: GANState
    start_step: int
    final_step: int
    wall_s: float
    steps_per_s: float
    last_metrics: dict[str, float]
    interrupted: bool = False


@dataclasses.dataclass
class Run:
    """What a run's pieces are, built once from a config (no state)."""

    config: Config
    gan: GAN
    source: Any
    example_shape: tuple[int, ...]

    @classmethod
    def from_config(cls, config: Config) -> Run:
        source = build.data_source(config)
        shape = tuple(source.example_shape)
        return cls(config, build.gan(config, shape), source, shape)

    def init_state(self) -> GANState:
        example = np.zeros((self.config.batch_size, *self.example_shape), np.float32)
        return self.gan.init(jax.random.key(self.config.seed), example)


class _Signals:
    """Turns SIGTERM/SIGINT into a flag the loop checks between chunks (restored on exit)."""

    def __init__(self):
        self.received: str | None = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave the default handlers
                pass
        return self

    def _handle(self, signum, frame):
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="step", disable=not enabled, dynamic_ncols=True,
                smoothing=0.1)


def _first_nonfinite(metrics: dict[str, np.ndarray], first_step: int) -> tuple[int, str] | None:
    """(step, player) of the first round whose update was not finite, if any."""
    flags = []
    for player in ("d", "g"):
        values = metrics.get(f"{player}_nonfinite")
        if values is not None:
            bad = np.flatnonzero(~(np.asarray(values) == 0.0))
            if bad.size:
                flags.append((first_step + int(bad[0]) + 1, player))
    return min(flags) if flags else None


def _chunk_mean(values: np.ndarray) -> float:
    """Mean of a chunk's per-round values over the finite ones (NaN when none is finite)."""
    values = np.asarray(values, np.float64)
    finite = np.isfinite(values)
    return float(values[finite].mean()) if finite.any() else float("nan")


def default_observers(config: Config) -> tuple[Observer, ...]:
    """The observers every run gets: failure-mode diagnosis (unless ``diag=off``) and a
    TensorBoard writer (unless ``tensorboard=false``)."""
    out: list[Observer] = []
    if config.diag != "off":
        out.append(diagnose.DiagnosisObserver.from_config(config))
    if config.tensorboard:
        from jaxgan import tensorboard

        out.append(tensorboard.TensorBoardObserver())
    return tuple(out)


def _plot(run: Run, out: str, state: GANState, step: int, sample_fn, frames: list) -> None:
    rows = diagnose.clean_rows(rundir.read_jsonl(os.path.join(out, rundir.METRICS)))
    events = rundir.read_jsonl(os.path.join(out, rundir.EVENTS))
    viz.score_plot(rows, os.path.join(out, "scores.png"), events)
    viz.loss_plot(rows, os.path.join(out, "losses.png"), events)
    centers = getattr(run.source, "centers", None)
    viz.health_plot(rows, os.path.join(out, "health.png"), events, diversity_min=run.config.diag_diversity_min,
                    num_modes=len(centers) if centers is not None and len(centers) > 1 else None)
    samples = np.asarray(sample_fn(state, jax.random.key(step)))
    shape = run.example_shape
    if shape == (2,):
        centers = getattr(run.source, "centers", None)
        density = getattr(run.source, "log_density", None)
        path = os.path.join(out, f"samples_{step:06d}.png")
        viz.scatter_2d(samples, path, log_density=density, centers=centers, title=f"step {step}")
        frames.append((step, samples))
        viz.scatter_over_time(frames[-8:], os.path.join(out, "samples_over_time.png"), centers=centers)
    elif len(shape) == 3:
        viz.image_grid(samples[:64], os.path.join(out, f"samples_{step:06d}.png"), title=f"step {step}")


def _events_path(out: str) -> str:
    return os.path.join(out, rundir.EVENTS)


def _emit(out: str, events: list[dict[str, Any]], echo: Callable[[str], None]) -> None:
    if not events:
        return
    rundir.append_jsonl(_events_path(out), events)
    for ev in events:
        what = f"{ev['kind']}: {ev['message']}" if ev.get("message") else ev["kind"]
        tip = f" Try: {ev['remedies'][0]}" if ev.get("remedies") else ""
        echo(f"jaxgan: step {ev['step']}: {what}.{tip}")


def train(
    config: Config,
    out: str,
    *,
    progress: bool = True,
    echo: Callable[[str], None] = print,
    observers: tuple[Observer, ...] | None = None,
) -> RunResult:
    """Train ``config`` into run directory ``out`` (resuming it if it holds this run).

    ``observers=None`` uses :func:`default_observers` (diagnosis and TensorBoard, as the config
    says); pass ``()`` for none."""
    plan = parallel.plan(config.parallel, config.devices)
    plan.local_batch(config.batch_size)  # refuse a batch that does not split, before any work
    main = parallel.is_main_process()
    if not main:  # one process writes the run directory, the others only checkpoint with it
        echo, progress, observers = (lambda _msg: None), False, ()
    resuming = rundir.prepare(out, config) if main else False
    if observers is None:
        observers = default_observers(config)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("jaxgan: run directory ready")
    run = Run.from_config(config)
    total = config.steps
    state = run.init_state()
    ckpt = Checkpointer(os.path.join(out, rundir.CHECKPOINTS), keep=config.keep_checkpoints)
    start = 0
    using = plan.describe()
    if ckpt.latest_step() is not None:
        state, record = ckpt.restore(plan.restore_target(state))
        start = int(record["step"])
        echo(f"jaxgan: resuming {out} from step {start} (target {total}), {using}")
    elif resuming:
        echo(f"jaxgan: {out} has this config but no checkpoint yet; starting from step 0, {using}")
    else:
        echo(f"jaxgan: training {config.preset} into {out} ({total} steps, {jax.device_count()} "
             f"{jax.devices()[0].platform} device(s) visible, {using})")
    if resuming:
        rundir.update_config(out, config)
    if start >= total:
        echo(f"jaxgan: {out} is already at step {start} >= --steps {total}; raise --steps to train on")
        ckpt.close()
        return RunResult(out, state, start, start, 0.0, 0.0, {})
    for obs in observers:
        obs.on_start(run, out, start)
    state = plan.place(state)  # the unreplicated state -> this mode's layout

    chunk_fns: dict[int, Callable] = {}

    def chunk_fn(n: int):
        if n not in chunk_fns:
            chunk_fns[n] = plan.train_chunk(run.gan, run.source, config.batch_size, n)
        return chunk_fns[n]

    n_plot = 1000 if run.example_shape == (2,) else 64
    sample_fn = jax.jit(lambda s, k: run.gan.sample(s, k, n_plot))
    metrics_path = os.path.join(out, rundir.METRICS)
    frames: list = []
    step = start
    last: dict[str, float] = {}
    skipped = 0
    t0 = time.perf_counter()
    bar = _progress(total, start, progress)
    say = bar.write if (progress and echo is print) else echo  # event lines above the bar, not through it
    interrupted = False
    stop_reason: str | None = None

    def handle(first_step: int, metrics_dev) -> None:
        nonlocal last, skipped
        metrics = jax.device_get(metrics_dev)
        n = len(next(iter(metrics.values())))
        bad = _first_nonfinite(metrics, first_step)
        if bad is not None and config.nan_policy == "stop":
            bad_step, player = bad
            who = {"d": "discriminator", "g": "generator"}[player]
            row = {k: float(v[bad_step - first_step - 1]) for k, v in metrics.items()}
            if main:
                rundir.append_jsonl(metrics_path, [{"step": bad_step, **row}])
                rundir.append_jsonl(_events_path(out), [{
                    "step": bad_step, "kind": "nan", "evidence": {"player": who},
                    "remedies": list(diagnose.REMEDIES["nan"]),
                }])
            raise NonFiniteError(
                f"step {bad_step}: the {who} update produced NaN/Inf (likely {NAN_CAUSES}); "
                f"stopped, the last good checkpoint in {os.path.join(out, rundir.CHECKPOINTS)} is kept"
            )
        if bad is not None:
            skipped += int(sum(np.count_nonzero(metrics[f"{p}_nonfinite"]) for p in ("d", "g")))
        # The row is the chunk's mean over its rounds (finite values only; the *_nonfinite flags
        # say what fraction was skipped): one round's batch is too noisy to read the game from.
        last = {k: _chunk_mean(v) for k, v in metrics.items()}
        row_step = first_step + n
        if not main:
            return
        rundir.append_jsonl(metrics_path, [{"step": row_step, **last}])
        for obs in observers:
            _emit(out, obs.on_metrics(row_step, last), say)
        post = {"G": f"{last['generator_score']:.2f}", "D": f"{last['discriminator_score']:.2f}"}
        if skipped:
            post["skipped"] = skipped
        for obs in observers:
            post.update(obs.postfix())
        bar.set_postfix(post, refresh=False)
        bar.update(row_step - bar.n)

    def boundary(step: int, state: GANState, ckpt_due: bool, plot_due: bool) -> None:
        state = plan.unplace(state)  # observers, checkpoints and plots see one unreplicated copy
        extra: dict[str, float] = {}
        for obs in observers:
            extra.update(obs.on_checkpoint(step, state))
        if extra:
            rundir.append_jsonl(metrics_path, [{"step": step, **extra}])
            for obs in observers:  # every logged row reaches the observers, these too
                _emit(out, obs.on_metrics(step, extra), say)
        if ckpt_due:  # the unreplicated state resumes on any number of devices
            ckpt.save(step, plan.for_checkpoint(state), {"step": step, "config": dataclasses.asdict(config)})
        if plot_due and main:
            _plot(run, out, state, step, sample_fn, frames)

    with _Signals() as signals:
        pending = None
        try:
            while step < total:
                n = min(config.log_every - step % config.log_every, total - step)
                state, metrics_dev = chunk_fn(n)(state)
                first, step = step, step + n
                if pending is not None:
                    handle(*pending)  # overlaps with the chunk just dispatched
                pending = (first, metrics_dev)
                stop_reason = signals.received or next(
                    (r for r in (obs.should_stop() for obs in observers) if r), None
                )
                if parallel.agree(stop_reason is not None) and stop_reason is None:
                    stop_reason = "another process stopped"
                plot_due = step % config.plot_every == 0 or step == total or stop_reason is not None
                ckpt_due = step % config.ckpt_every == 0 or step == total or stop_reason is not None
                if plot_due or ckpt_due:
                    handle(*pending)
                    pending = None
                    boundary(step, state, ckpt_due, plot_due)
                if stop_reason is not None:
                    interrupted = signals.received is not None
                    break
            if pending is not None:
                handle(*pending)
        finally:
            bar.close()
            ckpt.wait()
            ckpt.close()
    state = plan.unplace(state)
    for obs in observers:
        obs.on_end(step, state)
    wall = time.perf_counter() - t0
    rate = (step - start) / wall if wall > 0 else 0.0
    if main:
        rundir.write_json(os.path.join(out, rundir.SUMMARY), {
            "start_step": start, "final_step": step, "wall_s": round(wall, 3),
            "steps_per_s": round(rate, 2), "skipped_updates": skipped, "stopped_by": stop_reason,
            "devices": plan.num_devices, "parallel": plan.mode, **last,
        })
    if interrupted:
        echo(f"jaxgan: received {signals.received}; saved a checkpoint at step {step}. Resume with: "
             f"jaxgan train --out {out} --steps {total}")
    elif stop_reason is not None:
        echo(f"jaxgan: stopped at step {step}: {stop_reason}; checkpoint saved in {out}")
    else:
        echo(f"jaxgan: done: step {step} in {wall:.1f} s ({rate:.1f} steps/s); outputs in {out}")
    return RunResult(out, state, start, step, wall, rate, last, interrupted)
