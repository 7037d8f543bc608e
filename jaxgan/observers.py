"""What happens around the compiled training chunks: the :class:`Observer` protocol and the
host-side actions built on it (metrics files, plots, diagnosis), the shared sampler, the
sample-quality probe, and the background writer.

The loop (:mod:`jaxgan.loop`) runs chunks of rounds and, around them, calls every observer:

* ``on_row(step, row, stream)`` for each logged row: ``"train"`` rows are the mean of the
  per-round metrics over ``log_every`` rounds (``metrics.jsonl``), ``"quality"`` rows the sample
  quality measured after each chunk on toy data (``quality.jsonl``), ``"eval"`` rows the periodic
  evaluation (``eval.jsonl``). It returns events (``{"step", "kind", "evidence", "remedies",
  "message"}``), which the loop writes to ``events.jsonl`` and hands to ``on_event``.
* ``measure(boundary)`` then ``on_boundary(boundary)`` at plot and checkpoint steps, and at the
  steps some observer ``wants``: the boundary carries one unreplicated copy of the state and the
  samples drawn once for every observer (as many as the most any observer asked for); what
  ``measure`` returns is logged as an ``"eval"`` row before any ``on_boundary`` runs.
* ``should_stop()``, ``postfix()`` (progress bar) and ``on_end(step)``.

Files are drawn and written from host copies by one background :class:`Writer`, so the progress
bar does not stall at a boundary; a run ends only after every file is written, and a failure in
the writer stops the run with its error.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxgan import diagnose, rundir, viz

Event = dict[str, Any]
Row = dict[str, float]
STREAMS = ("train", "quality", "eval")
_SAMPLE = 3  # fold_in tag of the boundary samples' key stream (apart from the GAN's own streams)


@dataclasses.dataclass
class Context:
    """What observers get at the start of a session: the run's pieces, its directory, the step
    it starts from, the background writer and the console."""

    run: Any  # jaxgan.build.Run
    out: str
    start: int
    writer: Writer
    echo: Callable[[str], None] = print


@dataclasses.dataclass
class Boundary:
    """A step where observers see the state: ``state`` is one unreplicated copy (valid during
    the call), ``samples`` the generated samples every observer shares (None when none asked),
    ``plot``/``checkpoint``: whether this is a plot or checkpoint step, ``final``: the session's
    last step."""

    step: int
    state: Any
    samples: np.ndarray | None
    plot: bool
    checkpoint: bool
    final: bool


class Observer:
    """A host-side watcher of a run. Every hook is optional (see the module docstring)."""

    def on_start(self, ctx: Context) -> None:
        """The session starts (a resumed run's earlier rows are on disk)."""

    def wants(self, step: int) -> int:
        """Samples this observer needs at ``step``: -1 for no boundary of its own there, 0 for
        the state only, n > 0 for n generated samples (at plot and checkpoint steps the loop
        calls :meth:`on_boundary` anyway)."""
        return -1

    def on_row(self, step: int, row: Row, stream: str) -> list[Event]:
        return []

    def on_event(self, event: Event) -> None:
        """An event some observer (or the non-finite guard) raised, as written to events.jsonl."""

    def measure(self, boundary: Boundary) -> Row:
        """Scalars measured on the boundary's state or samples (logged as an ``"eval"`` row and
        handed to every observer before any :meth:`on_boundary`), or {}."""
        return {}

    def on_boundary(self, boundary: Boundary) -> None:
        """Act on the boundary (pictures, the best checkpoint), after every measurement is logged."""

    def should_stop(self) -> str | None:
        return None

    def postfix(self) -> dict[str, str]:
        return {}

    def on_end(self, step: int) -> None:
        """The session ends (also after an error): release files and wait for saves."""


# ----------------------------------------------------------------------------- shared machinery


class WriterError(RuntimeError):
    """Writing a file in the background failed; the message names the file's job."""


class Writer:
    """One background thread that draws and writes the files of boundaries from host copies.

    :meth:`submit` queues a job; :meth:`check` raises :class:`WriterError` for the first job that
    failed; :meth:`close` waits for every job, then checks."""

    def __init__(self):
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="jaxgan-writer")
        self._jobs: list[tuple[str, concurrent.futures.Future]] = []

    def submit(self, what: str, fn: Callable[..., Any], *args: Any) -> None:
        self.check()
        self._jobs.append((what, self._pool.submit(fn, *args)))

    def check(self) -> None:
        pending = []
        for what, job in self._jobs:
            if not job.done():
                pending.append((what, job))
            elif job.exception() is not None:
                err = job.exception()
                self._jobs = pending + [j for j in self._jobs if not j[1].done()]
                raise WriterError(f"writing {what} failed: {type(err).__name__}: {err}") from err
        self._jobs = pending

    def wait(self) -> None:
        concurrent.futures.wait([job for _, job in self._jobs])
        self.check()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)


def sample_key(seed: int, step: int) -> jax.Array:
    """The key of the samples drawn at ``step`` (boundaries, the quality probe, ``jaxgan eval``)."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), _SAMPLE), step)


class Sampler:
    """``sampler(state, key, n) -> [n, ...]`` generated samples on the host (EMA params when the
    run keeps them), in batches of ``batch_size`` compiled once; batch b uses ``fold_in(key, b)``."""

    def __init__(self, gan: Any, batch_size: int = 500):
        self.batch_size = batch_size
        self._fn = jax.jit(lambda s, k: gan.sample(s, k, batch_size))

    def __call__(self, state: Any, key: jax.Array, n: int) -> np.ndarray:
        parts = [np.asarray(self._fn(state, jax.random.fold_in(key, b))) for b in range(-(-n // self.batch_size))]
        return np.concatenate(parts)[:n]


def quality_probe(run: Any, n: int) -> Callable[[Any, int], dict[str, jax.Array]] | None:
    """A compiled ``(state, step) -> coverage.quality(...)`` of ``n`` samples against the data's
    modes (toy mixtures; None for other data). Dispatched after every chunk without waiting, it
    costs one generator pass of ``n`` samples per chunk. It samples the generator being trained,
    like the in-step scores, not its EMA copy: early on an EMA still holds much of the initial
    weights (0.999^800 = 0.45), and the monitor judges the game, not the average."""
    mixture = run.mixture
    if mixture is None:
        return None
    from jaxgan.metrics import coverage

    gan, seed = run.gan, run.config.seed
    centers, std = np.asarray(mixture.centers, np.float32), float(mixture.std)

    @jax.jit
    def probe(state, step):
        key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), _SAMPLE), step)
        samples = gan.sample(state, key, n, use_ema=False).reshape(n, -1)
        return coverage.quality(samples, jnp.asarray(centers), std)

    return probe


# ----------------------------------------------------------------------------- the actions


class MetricsLog(Observer):
    """Writes ``metrics.jsonl`` (training rows) and ``quality.jsonl`` (sample-quality rows), one
    schema per file. Evaluation rows are :mod:`jaxgan.evaluate`'s (``eval.jsonl``)."""

    def __init__(self):
        self.files = {"train": rundir.METRICS, "quality": rundir.QUALITY}

    def on_start(self, ctx: Context) -> None:
        self._out = ctx.out

    def on_row(self, step: int, row: Row, stream: str) -> list[Event]:
        name = self.files.get(stream)
        if name is not None:
            rundir.append_jsonl(os.path.join(self._out, name), [{"step": step, **row}])
        return []


class Plots(Observer):
    """``scores.png``, ``losses.png``, ``health.png`` and the sample pictures
    (``samples_STEP.png``, ``samples_over_time.png``) at every plot step, drawn by the writer
    from in-memory copies of the rows (a resumed run reads its earlier rows once)."""

    def __init__(self, samples: int | None = None, diversity_min: float | None = None):
        self.samples = samples
        self.diversity_min = diversity_min
        self.rows: list[Row] = []
        self.quality: list[Row] = []
        self.events: list[Event] = []
        self.frames: list[tuple[int, np.ndarray]] = []

    def on_start(self, ctx: Context) -> None:
        self._ctx = ctx
        shape = tuple(ctx.run.example_shape)
        self._n = self.samples or (1000 if shape == (2,) else 64)
        self._every = ctx.run.config.plot_every
        rows = diagnose.clean_rows(rundir.read_jsonl(os.path.join(ctx.out, rundir.METRICS)))
        self.rows = [r for r in rows if int(r["step"]) <= ctx.start]
        quality = diagnose.clean_rows(rundir.read_jsonl(os.path.join(ctx.out, rundir.QUALITY)))
        self.quality = [r for r in quality if int(r["step"]) <= ctx.start]
        self.events = [e for e in rundir.read_jsonl(os.path.join(ctx.out, rundir.EVENTS))
                       if int(e.get("step", 0)) <= ctx.start]

    def wants(self, step: int) -> int:
        return self._n if step % self._every == 0 else -1

    def on_row(self, step: int, row: Row, stream: str) -> list[Event]:
        if stream == "train":
            self.rows.append({"step": step, **row})
        elif stream == "quality":
            self.quality.append({"step": step, **row})
        return []

    def on_event(self, event: Event) -> None:
        self.events.append(event)

    def on_boundary(self, b: Boundary) -> None:
        if not (b.plot or b.final) or b.samples is None:
            return
        run, out = self._ctx.run, self._ctx.out
        mixture = run.mixture
        num_modes = len(mixture.centers) if mixture is not None else None
        rows, quality, events = list(self.rows), list(self.quality), list(self.events)
        samples = b.samples[: self._n]
        self._ctx.writer.submit("the score, loss and health plots", _curves, out, rows, quality, events,
                                self.diversity_min, num_modes)
        shape = tuple(run.example_shape)
        path = os.path.join(out, f"samples_{b.step:06d}.png")
        if shape == (2,):
            self.frames = [*self.frames, (b.step, samples)][-8:]
            self._ctx.writer.submit(f"samples_{b.step:06d}.png", _scatter, path, samples, run.source,
                                    list(self.frames), os.path.join(out, "samples_over_time.png"), b.step)
        elif len(shape) == 3:
            self._ctx.writer.submit(f"samples_{b.step:06d}.png",
                                    functools.partial(viz.image_grid, title=f"step {b.step}"), samples[:64], path)


def _curves(out: str, rows, quality, events, diversity_min, num_modes) -> None:
    viz.score_plot(rows, os.path.join(out, "scores.png"), events)
    viz.loss_plot(rows, os.path.join(out, "losses.png"), events)
    viz.health_plot(rows, os.path.join(out, "health.png"), events, quality=quality, diversity_min=diversity_min,
                    num_modes=num_modes)


def _scatter(path: str, samples: np.ndarray, source: Any, frames, over_time: str, step: int) -> None:
    centers = getattr(source, "centers", None)
    viz.scatter_2d(samples, path, log_density=getattr(source, "log_density", None), centers=centers,
                   title=f"step {step}")
    viz.scatter_over_time(frames, over_time, centers=centers)


class DiagnosisObserver(Observer):
    """Runs :class:`jaxgan.diagnose.Diagnosis` over every logged row (training, sample quality,
    evaluation); a resumed run first replays its rows up to the restart, silently."""

    def __init__(self, thresholds: diagnose.Thresholds | None = None, policy: diagnose.Policy | None = None, *,
                 config: Any = None):
        self.thresholds = thresholds or diagnose.Thresholds()
        self.policy = policy or diagnose.Policy()
        self.config = config
        self.diagnosis: diagnose.Diagnosis | None = None

    @classmethod
    def from_config(cls, config: Any) -> DiagnosisObserver:
        return cls(diagnose.Thresholds.from_config(config), diagnose.Policy.from_config(config), config=config)

    def on_start(self, ctx: Context) -> None:
        self.config = self.config if self.config is not None else ctx.run.config
        mixture = ctx.run.mixture
        num_modes = len(mixture.centers) if mixture is not None else None
        rows = []
        for name in (rundir.METRICS, rundir.QUALITY):
            rows += [r for r in diagnose.clean_rows(rundir.read_jsonl(os.path.join(ctx.out, name)))
                     if int(r["step"]) <= ctx.start]
        rows.sort(key=lambda r: int(r["step"]))
        origin = 0 if rows else ctx.start
        self.diagnosis = diagnose.replay(rows, self.thresholds, self.policy, config=self.config,
                                         num_modes=num_modes, origin=origin, clean=False)
        self.diagnosis.stop_reason = None

    def on_row(self, step: int, row: Row, stream: str) -> list[Event]:
        return self.diagnosis.feed(step, row)

    def should_stop(self) -> str | None:
        return self.diagnosis.stop_reason if self.diagnosis is not None else None

    def postfix(self) -> dict[str, str]:
        return {"diag": self.diagnosis.status()} if self.diagnosis is not None else {}
