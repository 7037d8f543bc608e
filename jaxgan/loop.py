"""The host-side training loop: run a compiled chunk of rounds; after each, log a row and
measure sample quality; at plot, checkpoint and observer-requested steps, hand one copy of the
state and one set of samples to every observer and save a checkpoint.

config -> (GAN, data) -> compiled chunks -> metrics -> observers (:mod:`jaxgan.observers`) ->
files. Chunk k+1 is dispatched before chunk k's metrics are read, so host work overlaps device
work; the loop waits for the device only at boundaries (after checking the chunk was finite, so
a checkpoint never holds NaNs). Drawing and writing files happens on a background writer.

Resuming is exact: a checkpoint holds the whole state, and the data of round t is drawn from
(seed, t) on device, so the step is the data stream's position. A data source that keeps a
host-side position instead offers ``position() -> JSON`` and ``restore_position(position)``;
the loop stores the first in each checkpoint's record (``"data"``) and hands it back on resume.

Exit paths: SIGTERM/SIGINT between chunks saves a checkpoint and returns ``interrupted=True``
(the CLI exits 75, printing how to resume); a non-finite update under ``nan_policy=stop``
raises :class:`~jaxgan.nonfinite.NonFiniteError` without saving the broken state.

Devices (:mod:`jaxgan.parallel`): chunks run on ``config.devices`` devices in
``config.parallel`` mode; checkpoints and observers see the unreplicated state, so a run saved
on n devices resumes on any other count. In a multi-process run every process runs this loop
(checkpoints are collective), process 0 alone writes logs, plots and summaries, and a stop
(signal, observer) is agreed by all processes.
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

from jaxgan import parallel, rundir
from jaxgan.build import Run
from jaxgan.checkpoint import Checkpointer, CheckpointError, KeepBest
from jaxgan.configs import Config
from jaxgan.data.host import HostSource, Prefetcher, check_first_batch
from jaxgan.gan import GANState
from jaxgan.nonfinite import NonFiniteError, NonFiniteGuard
from jaxgan.observers import (
    Boundary,
    Context,
    DiagnosisObserver,
    MetricsLog,
    Observer,
    Plots,
    Sampler,
    Writer,
    quality_probe,
    sample_key,
)

SWING_KEYS = ("generator_score", "discriminator_score")

__all__ = ["NonFiniteError", "Observer", "Run", "RunResult", "default_observers", "train"]


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


def default_observers(config: Config) -> tuple[Observer, ...]:
    """What every run gets besides its metric files: plots, the best checkpoint (``keep_best``),
    failure-mode diagnosis (unless ``diag.mode=off``), TensorBoard (unless ``tensorboard=false``)
    and periodic evaluation (when ``eval.every > 0``)."""
    out: list[Observer] = [Plots(diversity_min=config.diag.diversity_min), KeepBest(config.keep_best)]
    if config.diag.mode != "off":
        out.append(DiagnosisObserver.from_config(config))
    if config.tensorboard:
        from jaxgan import tensorboard

        out.append(tensorboard.TensorBoardObserver())
    if config.eval.every > 0:
        from jaxgan import evaluate

        out.append(evaluate.EvalObserver(config))
    return tuple(out)


class MetricWindow:
    """The per-round metrics since the last logged row; a row is their mean over the finite
    values (the ``*_nonfinite`` flags say what fraction was skipped). A chunk may end between
    rows (at a checkpoint), so the window is saved in the checkpoint's record."""

    def __init__(self, values: dict[str, list[float]] | None = None):
        self.values: dict[str, list[float]] = {k: list(v) for k, v in (values or {}).items()}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> MetricWindow:
        saved = record.get("log_window") or {}
        return cls({k: [math.nan if x is None else x for x in v] for k, v in saved.items()})

    def to_record(self) -> dict[str, list[float | None]]:
        return {k: [x if math.isfinite(x) else None for x in v] for k, v in self.values.items()}

    def add(self, metrics: dict[str, np.ndarray]) -> None:
        for k, v in metrics.items():
            self.values.setdefault(k, []).extend(np.asarray(v, np.float64).tolist())

    def mean(self) -> dict[str, float]:
        """The row: each metric's mean over the window's finite values, and for the two scores
        their round-to-round spread too (``<score>_swing``, the std of the per-round values: a
        game that swings faster than rows are logged averages out in the means)."""
        out = {}
        for k, v in self.values.items():
            a = np.asarray(v, np.float64)
            a = a[np.isfinite(a)]
            out[k] = float(a.mean()) if a.size else math.nan
            if k in SWING_KEYS:
                out[f"{k}_swing"] = float(a.std()) if a.size else math.nan
        return out

    def clear(self) -> None:
        self.values.clear()


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


class _Chunks:
    """The compiled chunks of this run (one per length), their host-fed data and the quality
    probe dispatched after each: ``run(first, n, state) -> (state, (metrics, quality))``, all
    on device, nothing waited for."""

    def __init__(self, run: Run, plan: parallel.DataParallel, start: int):
        config = run.config
        self.run, self.plan = run, plan
        self._fns: dict[int, Callable] = {}
        self._prefetch: Prefetcher | None = None
        if isinstance(run.source, HostSource):
            check_first_batch(run.source, start, config.d_steps, config.batch_size)
            self._prefetch = Prefetcher(run.source, d_steps=config.d_steps, global_batch=config.batch_size,
                                        total=config.steps, put=plan.put_fed)
        self._probe = quality_probe(run, config.diag.samples) if config.diag.quality != "off" else None

    def _fn(self, n: int) -> Callable:
        if n not in self._fns:
            c = self.run.config
            if self._prefetch is not None:
                self._fns[n] = self.plan.train_chunk_fed(self.run.gan, self.run.source.device_transform, c.batch_size)
            else:
                self._fns[n] = self.plan.train_chunk(self.run.gan, self.run.source, c.batch_size, n,
                                                     **self.run.chunk_options())
        return self._fns[n]

    def run_chunk(self, first: int, n: int, state: GANState):
        if self._prefetch is None:
            state, metrics = self._fn(n)(state)
        else:
            state, metrics = self._fn(n)(state, self._prefetch.get(first, n))
        quality = self._probe(self.plan.unplace(state), first + n) if self._probe is not None else None
        return state, (metrics, quality)

    def close(self) -> None:
        if self._prefetch is not None:
            self._prefetch.close()


class _Rows:
    """Turns each chunk's per-round metrics into logged rows: the non-finite guard reads them
    first, the window averages them, and every ``log_every`` rounds (and at the end) the row,
    and the chunk's quality measurement, go to the observers; their events are written."""

    def __init__(self, config: Config, out: str, observers, guard: NonFiniteGuard, window: MetricWindow,
                 say: Callable[[str], None], bar, main: bool):
        self.config, self.out, self.observers, self.guard, self.window = config, out, observers, guard, window
        self.say, self.bar, self.main = say, bar, main
        self.last: dict[str, float] = {}

    def consume(self, first: int, outputs) -> None:
        metrics, quality = jax.device_get(outputs)
        n = len(next(iter(metrics.values())))
        try:
            self.emit(self.guard.check(first, metrics))
        except NonFiniteError as err:
            one = MetricWindow({k: [np.asarray(v)[err.event["step"] - first - 1]] for k, v in metrics.items()})
            self.log(err.event["step"], one.mean(), "train")  # the round that failed, as a row of its own
            self.emit([err.event])
            raise
        self.window.add(metrics)
        self.last = self.window.mean()
        step = first + n
        if step % self.config.log_every == 0 or step == self.config.steps:
            self.window.clear()
            self.log(step, self.last, "train")
            if quality is not None:
                self.log(step, {k: float(v) for k, v in quality.items()}, "quality")
        if self.main:
            post = {"G": f"{self.last['generator_score']:.2f}", "D": f"{self.last['discriminator_score']:.2f}"}
            if self.guard.skipped:
                post["skipped"] = self.guard.skipped
            for obs in self.observers:
                post.update(obs.postfix())
            self.bar.set_postfix(post, refresh=False)
            self.bar.update(step - self.bar.n)

    def log(self, step: int, row: dict[str, float], stream: str) -> None:
        """Hand a row to every observer (the metrics log writes it) and write their events."""
        events = []
        for obs in self.observers:
            events += obs.on_row(step, row, stream)
        self.emit(events)

    def emit(self, events: list[dict[str, Any]]) -> None:
        if not events:
            return
        if self.main:
            rundir.append_jsonl(os.path.join(self.out, rundir.EVENTS), events)
        for ev in events:
            for obs in self.observers:
                obs.on_event(ev)
            what = f"{ev['kind']}: {ev['message']}" if ev.get("message") else ev["kind"]
            tip = f" Try: {ev['remedies'][0]}" if ev.get("remedies") else ""
            self.say(f"jaxgan: step {ev['step']}: {what}.{tip}")


def next_boundary(step: int, total: int, config: Config) -> int:
    """The end of the chunk starting at ``step``: the next multiple of log_every, ckpt_every or
    plot_every, or ``total`` (so checkpoints land where ckpt_every says, whatever log_every is)."""
    ends = [(step // every + 1) * every for every in (config.log_every, config.ckpt_every, config.plot_every)]
    return min([*ends, total])


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


def _resume(run: Run, out: str, ckpt: Checkpointer, state: GANState, echo, main: bool,
            using: str) -> tuple[GANState, int, dict]:
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


def _prepare(config: Config, out: str, echo, main: bool):
    """Everything checked and built before training: ``(plan, run, state, ckpt, start, record)``.
    Refusals come first (the run directory is only read, the batch split checked), so a bad
    input writes nothing."""
    plan = parallel.plan(config.parallel, config.devices)
    local = plan.local_batch(config.batch_size)
    if local % config.pack:
        raise parallel.ParallelError(
            f"batch_size={config.batch_size} gives each of {plan.num_devices} devices {local} examples, not a "
            f"multiple of pack={config.pack}: use a batch_size that is a multiple of {plan.num_devices * config.pack}"
        )
    resuming = rundir.inspect(out, config) if main else False
    run = Run.from_config(config, sync_axis=plan.sync_axis)
    state = run.init_state()
    if main and not resuming:
        rundir.create(out, config)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("jaxgan: run directory ready")
        if not main:  # the directory process 0 has prepared (read only here)
            resuming = rundir.inspect(out, config)
    ckpt = Checkpointer(os.path.join(out, rundir.CHECKPOINTS), keep=config.keep_checkpoints)
    start, record = 0, {}
    try:
        if resuming:
            state, start, record = _resume(run, out, ckpt, plan.restore_target(state), echo, main, plan.describe())
            if main:
                rundir.update_config(out, config)
        else:
            echo(f"jaxgan: training {config.preset} into {out} ({config.steps} steps, {jax.device_count()} "
                 f"{jax.devices()[0].platform} device(s) visible, {plan.describe()})")
    except BaseException:
        ckpt.close()
        raise
    return plan, run, state, ckpt, start, record


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="step", disable=not enabled, dynamic_ncols=True,
                smoothing=0.1)


def train(
    config: Config,
    out: str,
    *,
    progress: bool = True,
    echo: Callable[[str], None] = print,
    observers: tuple[Observer, ...] | None = None,
) -> RunResult:
    """Train ``config`` into run directory ``out`` (resuming it if it holds this run).

    Every chunk: dispatch it, then read the previous one's metrics (the non-finite guard, the
    logged row, the quality probe). At a boundary (plot, checkpoint, or a step an observer
    wants): one unreplicated copy of the state and one set of samples go to every observer,
    then the checkpoint is saved. ``observers=None`` uses :func:`default_observers`; pass ``()``
    for none (the run then writes its config, metric files, events and checkpoints only).
    """
    main = parallel.is_main_process()
    if not main:  # one process writes the run directory, the others only checkpoint with it
        echo, progress, observers = (lambda _msg: None), False, ()
    plan, run, state, ckpt, start, record = _prepare(config, out, echo, main)
    total = config.steps
    if start >= total:
        echo(f"jaxgan: {out} is already at step {start} >= --steps {total}; raise --steps to train on")
        ckpt.close()
        return RunResult(out, state, start, start, 0.0, 0.0, {}, skipped_updates=int(record.get("skipped_updates", 0)))
    observers = default_observers(config) if observers is None else tuple(observers)
    if main:  # the metric files are the run's record, whatever else watches it
        observers = (MetricsLog(), *observers)
    writer = Writer()
    bar = _progress(total, start, progress)
    say = bar.write if (progress and echo is print) else echo  # event lines above the bar, not through it
    guard = NonFiniteGuard(config, out, ckpt.all_steps, ckpt.directory, int(record.get("skipped_updates", 0)))
    rows = _Rows(config, out, observers, guard, MetricWindow.from_record(record), say, bar, main)
    sampler = Sampler(run.gan)
    chunks = None
    step, stop_reason, interrupted, failed = start, None, False, False
    boundary_s = 0.0  # main-thread time at boundaries (waiting for the step excluded): the loop's overhead
    t0 = time.perf_counter()
    try:
        for obs in observers:
            obs.on_start(Context(run, out, start, writer, echo))
        chunks = _Chunks(run, plan, start)
        state = plan.place(state)  # the unreplicated state -> this mode's layout
        with _Signals() as signals:
            pending = None
            while step < total:
                first, step = step, next_boundary(step, total, config)
                state, outputs = chunks.run_chunk(first, step - first, state)
                if pending is not None:
                    rows.consume(*pending)  # overlaps with the chunk just dispatched
                pending = (first, outputs)
                stop_reason = signals.received or next((r for r in (o.should_stop() for o in observers) if r), None)
                if parallel.agree(stop_reason is not None) and stop_reason is None:
                    stop_reason = "another process stopped"
                plot = step % config.plot_every == 0 or step == total or stop_reason is not None
                ckpt_due = step % config.ckpt_every == 0 or step == total or stop_reason is not None
                wanted = max((o.wants(step) for o in observers), default=-1)
                if plot or ckpt_due or wanted >= 0:
                    rows.consume(*pending)
                    pending = None
                    t_boundary = time.perf_counter()
                    _boundary(step, state, plot, ckpt_due, step == total or stop_reason is not None, plan, run,
                              observers, sampler, ckpt, rows, guard, writer)
                    boundary_s += time.perf_counter() - t_boundary
                if stop_reason is not None:
                    interrupted = signals.received is not None
                    break
            if pending is not None:
                rows.consume(*pending)
    except NonFiniteError as err:
        failed = True
        kept = [s for s in ckpt.all_steps() if s > start]  # the state to resume from
        _write_summary(out, main, start, kept[-1] if kept else start, time.perf_counter() - t0,
                       f"non-finite update: {err}", guard.skipped, plan, rows.last)
        raise
    except BaseException:
        failed = True
        raise
    finally:
        if chunks is not None:
            chunks.close()
        bar.close()
        try:
            ckpt.wait()
        finally:
            ckpt.close()
            for obs in observers:
                obs.on_end(step)
            if failed:
                try:
                    writer.close()
                except Exception:
                    pass
    t_close = time.perf_counter()
    writer.close()
    boundary_s += time.perf_counter() - t_close  # files still being written when training ended
    wall = time.perf_counter() - t0
    rate = (step - start) / wall if wall > 0 else 0.0
    _write_summary(out, main, start, step, wall, stop_reason, guard.skipped, plan, rows.last, boundary_s)
    if guard.skipped:
        echo(f"jaxgan: skipped {guard.skipped} non-finite update(s) so far (nan_policy=skip)")
    if interrupted:
        echo(f"jaxgan: received {signals.received}; saved a checkpoint at step {step} of {total}. "
             f"Resume with: jaxgan train --out {shlex.quote(out)}")
    elif stop_reason is not None:
        echo(f"jaxgan: stopped at step {step}: {stop_reason}; checkpoint saved in {out}")
    else:
        echo(f"jaxgan: done: step {step} in {wall:.1f} s ({rate:.1f} steps/s); outputs in {out}")
    return RunResult(out, plan.unplace(state), start, step, wall, rate, rows.last, interrupted, guard.skipped,
                     stop_reason)


def _boundary(step: int, state, plot: bool, ckpt_due: bool, final: bool, plan, run: Run, observers, sampler,
              ckpt: Checkpointer, rows: _Rows, guard: NonFiniteGuard, writer: Writer) -> None:
    """One unreplicated copy of the state and one set of samples for every observer: their
    measurements first (logged as ``eval`` rows), then their actions, then the checkpoint
    (from the same copy)."""
    writer.check()
    host = plan.unplace(state)
    n = max((o.wants(step) for o in observers), default=-1)
    samples = sampler(host, sample_key(run.config.seed, step), n) if n > 0 else None
    boundary = Boundary(step, host, samples, plot, ckpt_due, final)
    for obs in observers:
        measured = obs.measure(boundary)
        if measured:
            rows.log(step, measured, "eval")
    for obs in observers:
        obs.on_boundary(boundary)
    if ckpt_due:  # the unreplicated state resumes on any number of devices
        source = run.source
        scalars = {k: v if math.isfinite(v) else None for k, v in rows.last.items()}
        record = {"step": step, "config": dataclasses.asdict(run.config),
                  "data": source.position() if hasattr(source, "position") else None,
                  "skipped_updates": guard.skipped, "metrics": scalars, "log_window": rows.window.to_record()}
        ckpt.save(step, plan.for_checkpoint(host), record)


def _write_summary(out: str, main: bool, start: int, final: int, wall: float, stopped_by: str | None,
                   skipped: int, plan, last: dict[str, float], boundary_s: float | None = None) -> None:
    if not main:
        return
    rundir.write_json(os.path.join(out, rundir.SUMMARY), {
        "start_step": start, "final_step": final, "wall_s": round(wall, 3),
        "boundary_s": None if boundary_s is None else round(boundary_s, 3),
        "steps_per_s": round((final - start) / wall, 2) if wall > 0 else 0.0, "skipped_updates": skipped,
        "stopped_by": stopped_by, "devices": plan.num_devices, "parallel": plan.mode, **last,
    })
