"""The host-side training loop: the only impure orchestration in jaxgan.

config -> (GAN, data) -> compiled chunks of rounds -> metrics -> logs, plots, checkpoints.
The loop dispatches chunk k+1 before it reads chunk k's metrics, so host work overlaps device
work; it syncs only at plot and checkpoint boundaries (and first checks the chunk was finite, so
a checkpoint never holds NaNs).

Resuming is exact: a checkpoint holds the whole state, and the data of round t is drawn from
(seed, t) on device, so the step is the data stream's position. A data source that keeps a
host-side position instead (an input pipeline's iterator) offers two methods, and the loop stores
the first in each checkpoint's record (``"data"``) and hands it back to the second on resume:

* ``source.position() -> JSON value``: where the stream stands after the last round trained;
* ``source.restore_position(position) -> None``: make the next batch the one that follows.

Exit paths: SIGTERM/SIGINT between chunks saves a checkpoint and returns ``interrupted=True``
(the CLI exits 75, EX_TEMPFAIL, printing how to resume); a non-finite update under
``nan_policy=stop`` raises :class:`NonFiniteError` without saving the broken state.

Devices (:mod:`jaxgan.parallel`): the chunk runs on ``config.devices`` devices (0: all local
ones) in ``config.parallel`` mode; checkpoints, observers and plots always see the unreplicated
state, so a run saved on n devices resumes on any other count. In a multi-process run every
process runs this loop (checkpoints are collective, orbax writes them once), process 0 alone
writes logs, plots and summaries, and a stop (signal, observer) is agreed by all processes.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shlex
import signal
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from jaxgan import build, diagnose, parallel, rundir, viz
from jaxgan.checkpoint import Checkpointer, CheckpointError
from jaxgan.configs import Config
from jaxgan.data.host import HostSource, Prefetcher, check_first_batch
from jaxgan.gan import GAN, GANState


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

    def wants_state(self, step: int) -> bool:
        """Whether ``on_checkpoint`` must also run at ``step`` (a multiple of log_every) when it is
        not a checkpoint or plot boundary (e.g. periodic evaluation)."""
        return False

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
    skipped_updates: int = 0
    stopped_by: str | None = None


@dataclasses.dataclass
class Run:
    """What a run's pieces are, built once from a config (no state)."""

    config: Config
    gan: GAN
    source: Any
    example_shape: tuple[int, ...]

    @classmethod
    def from_config(cls, config: Config, *, sync_axis: str | None = None) -> Run:
        """``sync_axis``: the device axis the networks' batch norm reduces over (sync BN under
        pmap/shard_map, :attr:`jaxgan.parallel.DataParallel.sync_axis`)."""
        source = build.data_source(config)
        shape = tuple(source.example_shape)
        return cls(config, build.gan(config, shape, sync_axis=sync_axis), source, shape)

    def init_state(self) -> GANState:
        example = np.zeros((self.config.batch_size, *self.example_shape), np.float32)
        return jax.jit(self.gan.init)(jax.random.key(self.config.seed), example)


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
    """(step, player) of the first non-finite update, if any (in a round D updates first)."""
    flags = []
    for order, player in enumerate(("d", "g")):
        values = metrics.get(f"{player}_nonfinite")
        if values is not None:
            bad = np.flatnonzero(~(np.asarray(values) == 0.0))
            if bad.size:
                flags.append((first_step + int(bad[0]) + 1, order, player))
    if not flags:
        return None
    step, _, player = min(flags)
    return step, player


def _chunk_mean(values: np.ndarray) -> float:
    """Mean of a chunk's per-round values over the finite ones (NaN when none is finite)."""
    values = np.asarray(values, np.float64)
    finite = np.isfinite(values)
    return float(values[finite].mean()) if finite.any() else float("nan")


def default_observers(config: Config) -> tuple[Observer, ...]:
    """The observers every run gets: failure-mode diagnosis (unless ``diag=off``), a
    TensorBoard writer (unless ``tensorboard=false``) and periodic evaluation (when
    ``eval_every > 0``)."""
    out: list[Observer] = []
    if config.diag != "off":
        out.append(diagnose.DiagnosisObserver.from_config(config))
    if config.tensorboard:
        from jaxgan import tensorboard

        out.append(tensorboard.TensorBoardObserver())
    if config.eval_every > 0:
        from jaxgan import evaluate  # evaluate builds on this module

        out.extend(evaluate.observers(config))
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


def _next_boundary(step: int, total: int, config: Config) -> int:
    """The end of the chunk starting at ``step``: the next multiple of log_every, ckpt_every or
    plot_every, or ``total`` (so checkpoints land where ckpt_every says, whatever log_every is)."""
    ends = [(step // every + 1) * every for every in (config.log_every, config.ckpt_every, config.plot_every)]
    return min([*ends, total])


def _likely_cause(config: Config, player: str) -> str:
    """The likeliest reasons for a non-finite update, read from the config."""
    causes = []
    lr = config.d_lr if player == "d" else config.g_lr
    if lr > 1e-2:
        causes.append(f"{player}_lr={lr:g} is far above Adam's usual 1e-4..1e-3")
    if config.loss == "wasserstein" and config.gp == 0 and config.weight_clip == 0:
        causes.append("the wasserstein critic is unbounded without gp or weight_clip")
    if not causes:
        causes.append("learning rates too high for this loss and model (lower g_lr/d_lr), or too strong a penalty")
    return "; ".join(causes)


SKIP_STREAK_LIMIT = 50  # consecutive rounds with every update of a player skipped: stop


def _restore_position(source: Any, position: Any, step: int) -> None:
    """Put a data source with a host-side position back where checkpoint ``step`` left it."""
    has_restore = hasattr(source, "restore_position")
    if position is None and has_restore:
        raise CheckpointError(
            f"checkpoint {step} holds no data position, but this data source needs one to resume exactly"
        )
    if position is not None and not has_restore:
        raise CheckpointError(
            f"checkpoint {step} holds a data position ({str(position)[:80]}) that this data source cannot take"
        )
    if position is not None:
        source.restore_position(position)


def _resume(
    run: Run, out: str, ckpt: Checkpointer, state: GANState, echo, main: bool = True, using: str = "1 device"
) -> tuple[GANState, int, dict]:
    """Restore the latest checkpoint of ``out`` into the layout of ``state``: ``(state, step,
    record)`` (record ``{}`` if none). Only the ``main`` process trims the logs."""
    config = run.config
    step = ckpt.latest_step()
    if step is None:
        if main:
            rundir.truncate_after(out, 0)
        echo(f"jaxgan: {out} has this config but no checkpoint yet; starting it from step 0, {using}")
        return state, 0, {}
    record = ckpt.read_record(step)
    try:
        saved = Config.from_dict(record["config"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"checkpoint {step} in {ckpt.directory} has no readable config ({err})") from None
    diffs = rundir.config_differences(saved, config)
    if diffs:
        try:
            ckpt.check_fits(state, step)
            leaves = ""
        except CheckpointError as err:
            leaves = f"; its model differs: {str(err).split(': ', 1)[-1]}"
        raise CheckpointError(
            f"checkpoint {step} in {ckpt.directory} was written with another config than "
            f"{os.path.join(out, rundir.CONFIG)} ({'; '.join(diffs)}){leaves}. The config file was edited "
            "after the run started: put those values back, or start a new run with another --out"
        )
    state, record = ckpt.restore(state, step)
    if int(jax.device_get(state.step)) != step:
        raise CheckpointError(
            f"checkpoint {step} in {ckpt.directory} holds a state at step {int(jax.device_get(state.step))}: "
            f"delete {os.path.join(ckpt.directory, str(step))} to resume from an earlier checkpoint"
        )
    _restore_position(run.source, record.get("data"), step)
    dropped = rundir.truncate_after(out, step) if main else 0
    note = f"; dropped {dropped} log rows written after that checkpoint" if dropped else ""
    echo(f"jaxgan: resuming {out} ({config.preset}) from step {step} (its latest checkpoint), "
         f"training to step {config.steps}, {using}{note}")
    return state, step, record


def train(
    config: Config,
    out: str,
    *,
    progress: bool = True,
    echo: Callable[[str], None] = print,
    observers: tuple[Observer, ...] | None = None,
) -> RunResult:
    """Train ``config`` into run directory ``out`` (resuming it if it holds this run).

    Everything that can be refused is checked before anything is written or compiled: the run
    directory (read only), then the data and the model. Checkpoints are saved every
    ``ckpt_every`` rounds, at the end, and when SIGTERM/SIGINT arrives (the run then stops and
    prints how to resume). A non-finite update stops the run (``nan_policy=stop``; raises
    :class:`NonFiniteError`, keeping the last good checkpoint) or is skipped and counted
    (``nan_policy=skip``).

    ``observers=None`` uses :func:`default_observers` (diagnosis and TensorBoard, as the config
    says); pass ``()`` for none.
    """
    plan = parallel.plan(config.parallel, config.devices)
    local = plan.local_batch(config.batch_size)  # refuse a batch that does not split, before any work
    if local % config.pack:
        raise parallel.ParallelError(
            f"batch_size={config.batch_size} gives each of {plan.num_devices} devices {local} examples, not a "
            f"multiple of pack={config.pack}: use a batch_size that is a multiple of {plan.num_devices * config.pack}"
        )
    main = parallel.is_main_process()
    if not main:  # one process writes the run directory, the others only checkpoint with it
        echo, progress, observers = (lambda _msg: None), False, ()
    resuming = rundir.inspect(out, config) if main else False
    run = Run.from_config(config, sync_axis=plan.sync_axis)
    total = config.steps
    state = run.init_state()
    if main and not resuming:
        rundir.create(out, config)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("jaxgan: run directory ready")
        if not main:  # the directory process 0 has prepared (read only here)
            resuming = rundir.inspect(out, config)
    if observers is None:
        observers = default_observers(config)
    ckpt = Checkpointer(
        os.path.join(out, rundir.CHECKPOINTS), keep=config.keep_checkpoints,
        best_metric=config.keep_best_metric or None, best_mode=config.keep_best_mode,
    )
    start, record = 0, {}
    using = plan.describe()
    try:
        if resuming:
            state, start, record = _resume(run, out, ckpt, plan.restore_target(state), echo, main, using)
            if main:
                rundir.update_config(out, config)
        else:
            echo(f"jaxgan: training {config.preset} into {out} ({total} steps, {jax.device_count()} "
                 f"{jax.devices()[0].platform} device(s) visible, {using})")
    except BaseException:
        ckpt.close()
        raise
    if start >= total:
        echo(f"jaxgan: {out} is already at step {start} >= --steps {total}; raise --steps to train on")
        ckpt.close()
        return RunResult(out, state, start, start, 0.0, 0.0, {}, skipped_updates=int(record.get("skipped_updates", 0)))
    for obs in observers:
        obs.on_start(run, out, start)
    state = plan.place(state)  # the unreplicated state -> this mode's layout

    chunk_fns: dict[int, Callable] = {}
    # Host-fed data (TFDS images): chunks scan over stacked host batches, made ahead of time.
    host_fed = isinstance(run.source, HostSource)
    prefetch: Prefetcher | None = None
    if host_fed:
        check_first_batch(run.source, start, config.d_steps, config.batch_size)
        prefetch = Prefetcher(run.source, d_steps=config.d_steps, global_batch=config.batch_size, total=total,
                              put=plan.put_fed)

    def chunk_fn(n: int):
        if n not in chunk_fns:
            if host_fed:
                chunk_fns[n] = plan.train_chunk_fed(run.gan, run.source.device_transform, config.batch_size)
            else:
                chunk_fns[n] = plan.train_chunk(run.gan, run.source, config.batch_size, n)
        return chunk_fns[n]

    def run_chunk(first: int, n: int, state: GANState):
        if prefetch is None:
            return chunk_fn(n)(state)
        return chunk_fn(n)(state, prefetch.get(first, n))

    n_plot = 1000 if run.example_shape == (2,) else 64
    sample_fn = jax.jit(lambda s, k: run.gan.sample(s, k, n_plot))
    metrics_path = os.path.join(out, rundir.METRICS)
    frames: list = []
    step = start
    last: dict[str, float] = {}
    skipped = int(record.get("skipped_updates", 0))
    # Per-round metrics since the last logged row (a row is their mean over log_every rounds). A
    # chunk may end between rows (at a checkpoint), so this is carried in the checkpoint too.
    window: dict[str, list[float]] = {
        k: [math.nan if x is None else x for x in v] for k, v in (record.get("log_window") or {}).items()
    }
    streak = {"d": 0, "g": 0}  # consecutive rounds with every update of the player skipped
    steps_per_round = {"d": config.d_steps, "g": config.g_steps}
    who = {"d": "discriminator", "g": "generator"}
    t0 = time.perf_counter()
    bar = _progress(total, start, progress)
    say = bar.write if (progress and echo is print) else echo  # event lines above the bar, not through it
    interrupted = False
    stop_reason: str | None = None
    warned: set[str] = set()

    def fail(bad_step: int, player: str, what: str) -> NonFiniteError:
        saved = [s for s in ckpt.all_steps() if s < bad_step]
        kept = (f"the last good checkpoint (step {saved[-1]}) in {ckpt.directory} is kept" if saved
                else f"no checkpoint was saved before it (ckpt_every={config.ckpt_every})")
        ways = ["start a new run (another --out) with lower g_lr/d_lr"]
        if saved and config.nan_policy == "stop":
            ways.append(f"continue this one skipping such updates: jaxgan train --out {shlex.quote(out)} "
                        "--set nan_policy=skip")
        return NonFiniteError(
            f"step {bad_step}: {what} (likely cause: {_likely_cause(config, player)}). Stopped; {kept}. "
            f"Way out: {', or '.join(ways)}"
        )

    def handle(first_step: int, metrics_dev) -> None:
        nonlocal last, skipped
        metrics = jax.device_get(metrics_dev)
        n = len(next(iter(metrics.values())))
        bad = _first_nonfinite(metrics, first_step)
        if bad is not None and config.nan_policy == "stop":
            bad_step, player = bad
            row = {k: float(v[bad_step - first_step - 1]) for k, v in metrics.items()}
            if main:
                rundir.append_jsonl(metrics_path, [{"step": bad_step, **row}])
                rundir.append_jsonl(_events_path(out), [{
                    "step": bad_step, "kind": "nan", "evidence": {"player": who[player]},
                    "remedies": list(diagnose.REMEDIES["nan"]),
                }])
            values = f"{player}_loss={row.get(f'{player}_loss', math.nan):.4g}, " \
                     f"{player}_grad_norm={row.get(f'{player}_grad_norm', math.nan):.4g}"
            raise fail(bad_step, player, f"the {who[player]} update produced NaN/Inf ({values})")
        for p in ("d", "g"):
            flags = np.asarray(metrics.get(f"{p}_nonfinite", np.zeros(n)), np.float64)
            skipped += round(float(np.sum(flags)) * steps_per_round[p])
            for i, f in enumerate(flags):
                streak[p] = streak[p] + 1 if f >= 1.0 else 0
                if streak[p] >= SKIP_STREAK_LIMIT:
                    raise fail(first_step + i + 1, p, f"every {who[p]} update of the last {SKIP_STREAK_LIMIT} "
                               "rounds was non-finite and skipped (nan_policy=skip), so training is not moving")
        for k, v in metrics.items():
            window.setdefault(k, []).extend(np.asarray(v, np.float64).tolist())
        # The row is the mean over the rounds since the last row (finite values only; the
        # *_nonfinite flags say what fraction was skipped): one round is too noisy to read.
        last = {k: _chunk_mean(v) for k, v in window.items()}
        row_step = first_step + n
        if row_step % config.log_every == 0 or row_step == total:
            window.clear()
            if main:
                rundir.append_jsonl(metrics_path, [{"step": row_step, **last}])
            for obs in observers:
                _emit(out, obs.on_metrics(row_step, last), say)
        if not main:
            return
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
            position = run.source.position() if hasattr(run.source, "position") else None
            scalars = {k: v if math.isfinite(v) else None for k, v in {**last, **extra}.items()}
            record = {"step": step, "config": dataclasses.asdict(config), "data": position,
                      "skipped_updates": skipped, "metrics": scalars,
                      "log_window": {k: [x if math.isfinite(x) else None for x in v] for k, v in window.items()}}
            best = config.keep_best_metric
            if best and best not in scalars and best not in warned:
                warned.add(best)
                echo(f"jaxgan: warning: keep_best_metric={best!r} is not among the metrics at step {step} "
                     f"({', '.join(sorted(scalars))}); such checkpoints are kept by recency only")
            ckpt.save(step, plan.for_checkpoint(state), record, metrics=scalars)
        if plot_due and main:
            _plot(run, out, state, step, sample_fn, frames)

    def write_summary(wall: float, stopped_by: str | None, final: int | None = None) -> None:
        if not main:
            return
        final = step if final is None else final
        rundir.write_json(os.path.join(out, rundir.SUMMARY), {
            "start_step": start, "final_step": final, "wall_s": round(wall, 3),
            "steps_per_s": round((final - start) / wall, 2) if wall > 0 else 0.0, "skipped_updates": skipped,
            "stopped_by": stopped_by, "devices": plan.num_devices, "parallel": plan.mode, **last,
        })

    with _Signals() as signals:
        pending = None
        try:
            while step < total:
                first, step = step, _next_boundary(step, total, config)
                state, metrics_dev = run_chunk(first, step - first, state)
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
                wanted = any(getattr(obs, "wants_state", lambda _: False)(step) for obs in observers)
                if plot_due or ckpt_due or wanted:
                    handle(*pending)
                    pending = None
                    boundary(step, state, ckpt_due, plot_due)
                if stop_reason is not None:
                    interrupted = signals.received is not None
                    break
            if pending is not None:
                handle(*pending)
        except NonFiniteError as err:
            kept = [s for s in ckpt.all_steps() if s > start]  # the state to resume from
            write_summary(time.perf_counter() - t0, f"non-finite update: {err}", kept[-1] if kept else start)
            raise
        finally:
            if prefetch is not None:
                prefetch.close()
            bar.close()
            try:
                ckpt.wait()
            finally:
                ckpt.close()
    state = plan.unplace(state)
    for obs in observers:
        obs.on_end(step, state)
    wall = time.perf_counter() - t0
    rate = (step - start) / wall if wall > 0 else 0.0
    write_summary(wall, stop_reason)
    if skipped:
        echo(f"jaxgan: skipped {skipped} non-finite update(s) so far (nan_policy=skip)")
    if interrupted:
        echo(f"jaxgan: received {signals.received}; saved a checkpoint at step {step} of {total}. "
             f"Resume with: jaxgan train --out {shlex.quote(out)}")
    elif stop_reason is not None:
        echo(f"jaxgan: stopped at step {step}: {stop_reason}; checkpoint saved in {out}")
    else:
        echo(f"jaxgan: done: step {step} in {wall:.1f} s ({rate:.1f} steps/s); outputs in {out}")
    return RunResult(out, state, start, step, wall, rate, last, interrupted, skipped, stop_reason)
