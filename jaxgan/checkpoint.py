"""Checkpoints of a run, over orbax's ``CheckpointManager``.

A checkpoint ``<directory>/<step>/`` holds two items:

* ``state``: the full :class:`~jaxgan.gan.GANState` (both players' params, model state and
  optimizer state, the EMA params, the step and the PRNG key). Typed PRNG keys are stored as
  their raw ``uint32`` key data and re-wrapped on restore.
* ``record``: a JSON dict the caller chooses. The loop writes the step, the config, the data
  stream's position (``"data"``, see :mod:`jaxgan.loop`), the metrics at the save, and counters
  such as the number of skipped non-finite updates.

Guarantees:

* Atomic. Orbax writes a checkpoint into ``<step>.orbax-checkpoint-tmp-*`` and renames it to
  ``<step>`` once every file is written, so a process killed at any moment (SIGKILL included)
  leaves only complete checkpoints under step names. :meth:`Checkpointer.latest_step` lists only
  those; the temporary leftovers are deleted when a writable :class:`Checkpointer` next opens
  the directory.
* Asynchronous. :meth:`Checkpointer.save` copies the arrays to host memory and returns; the
  files are written by a background thread while training continues (:meth:`~Checkpointer.wait`
  blocks until they are on disk; :meth:`~Checkpointer.close` waits too). JAX refuses to donate a
  buffer that a host copy still views, so a donated next step cannot corrupt a save in flight.
* Retention: the last ``keep`` checkpoints. The best checkpoint by a quality metric is kept
  apart, in ``<run>/best``, by :class:`KeepBest` (the one keep-best of a run).
* Clear refusals. Restoring into a model whose leaves differ (names, shapes or dtypes) raises
  :class:`CheckpointError` naming the differing leaves, checked against the checkpoint's
  metadata before any array is read; a damaged checkpoint raises :class:`CheckpointError`
  naming the step, the file's directory and the earlier steps to fall back on.

Device-count contract (pmap / jit / shard_map):

* Save the **unreplicated** state: one copy of each leaf, without a leading device axis. A
  pmapped loop calls ``jaxgan.parallel.unreplicate(state)`` first (:meth:`Checkpointer.save`
  refuses a state whose ``step`` is not a scalar, the sign of a replicated state). A state
  placed with ``jax.sharding.NamedSharding`` (the jit path) may be saved as it is: orbax writes
  each array once whatever its sharding.
* :meth:`Checkpointer.restore` places every leaf like the matching leaf of ``like``. Pass a
  fresh single-device state and replicate the result afterwards (pmap: ``parallel.replicate``),
  or pass a ``like`` already laid out on a mesh to restore straight onto it. The checkpoint
  holds no device count, so a run saved with n devices restores on m devices.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import zlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxgan.observers import Boundary, Context, Observer

PyTree = Any

BEST_DIR = "best"  # <run>/best: the best checkpoint (KeepBest)
BEST_FILE = "best.json"  # <run>/best.json: its step and metrics
STATE = "state"
RECORD = "record"
CHECKSUMS = "checksums"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be restored into the current run; the message says why."""


def _is_key(x: Any) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def to_saveable(state: PyTree) -> PyTree:
    """Typed PRNG keys -> raw ``uint32`` key data (orbax stores plain arrays)."""
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, state)


def from_saveable(saved: PyTree, like: PyTree) -> PyTree:
    """Inverse of :func:`to_saveable`, taking key implementations from ``like``."""
    return jax.tree.map(
        lambda s, t: jax.random.wrap_key_data(s, impl=jax.random.key_impl(t)) if _is_key(t) else s,
        saved,
        like,
    )


def leaf_specs(tree: PyTree) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{"g.params.Dense_0.kernel": (shape, dtype)}`` for every leaf of ``tree``.

    Paths are spelled the same for a live state (dataclass fields, named tuples) and for orbax's
    metadata tree of a saved one (dicts and lists), so the two can be compared leaf by leaf.
    """
    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        name = jax.tree_util.keystr(path, simple=True, separator=".")
        shape = tuple(getattr(leaf, "shape", np.shape(leaf)))
        dtype = getattr(leaf, "dtype", None)
        out[name] = (shape, str(np.dtype(dtype)) if dtype is not None else "?")
    return out


def describe_mismatch(saved: PyTree, expected: PyTree, limit: int = 6) -> str:
    """The leaves whose name, shape or dtype differ between two pytrees, in words ("" if none).

    ``saved`` may be a pytree of arrays or orbax's metadata tree of a checkpoint. Parameters are
    listed first: they say most plainly which layer changed.
    """
    a, b = leaf_specs(saved), leaf_specs(expected)
    lines = []
    for path in sorted(set(a) | set(b), key=lambda p: (".params." not in f".{p}.", p)):
        if path not in a:
            lines.append(f"{path}: missing in checkpoint (this model has {_spec(b[path])})")
        elif path not in b:
            lines.append(f"{path}: in checkpoint {_spec(a[path])}, not in this model")
        elif a[path] != b[path]:
            lines.append(f"{path}: checkpoint {_spec(a[path])} vs this model {_spec(b[path])}")
    more = f" (and {len(lines) - limit} more)" if len(lines) > limit else ""
    return "; ".join(lines[:limit]) + more


def checksums(tree: PyTree) -> dict[str, int]:
    """CRC-32 of each leaf's bytes, by leaf path: detects a damaged file that still parses
    (orbax's chunks carry no checksum, so a flipped bit would otherwise restore silently)."""
    host = jax.device_get(tree)
    return {
        jax.tree_util.keystr(path, simple=True, separator="."): zlib.crc32(np.ascontiguousarray(leaf).tobytes())
        for path, leaf in jax.tree_util.tree_leaves_with_path(host)
    }


def _fully_addressable(tree: PyTree) -> bool:
    return all(getattr(x, "is_fully_addressable", True) for x in jax.tree.leaves(tree))


def _spec(spec: tuple[tuple[int, ...], str]) -> str:
    shape, dtype = spec
    return f"{dtype}{list(shape)}"


def _finite_number(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _quiet_read_only(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Given directory is read only")


class Checkpointer:
    """Save and restore the checkpoints of one run under ``directory``, keeping the last ``keep``.
    ``read_only`` opens a run without creating, cleaning or deleting anything (for ``jaxgan
    sample`` and evaluation).

    In a multi-process run orbax's saves are collective: every process calls :meth:`save` with
    the same global arrays. ``process_local=True`` is for a checkpointer only this process uses
    (e.g. an observer, which runs on process 0 alone): orbax then synchronises with no other
    process, and the state is saved from host memory (orbax will not save another process's
    single-device arrays). With one process it changes nothing.
    """

    def __init__(
        self,
        directory: str,
        *,
        keep: int = 3,
        asynchronous: bool = True,
        read_only: bool = False,
        process_local: bool = False,
    ):
        if keep < 1:
            raise ValueError(f"keep={keep}: keep at least the latest checkpoint")
        self.directory = os.path.abspath(directory)
        self._local = process_local and jax.process_count() > 1
        extra: dict[str, Any] = {}
        if self._local:
            if not read_only:
                os.makedirs(self.directory, exist_ok=True)  # orbax cannot create it for a subset of processes
            me = jax.process_index()
            extra["multiprocessing_options"] = ocp.options.MultiprocessingOptions(
                primary_host=me, active_processes={me}
            )
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=0 if read_only else 1,
            max_to_keep=keep,
            create=not read_only and not self._local,
            read_only=read_only,
            cleanup_tmp_directories=not read_only,
            enable_async_checkpointing=asynchronous,
            **extra,
        )
        absl_log = logging.getLogger("absl")
        absl_log.addFilter(_quiet_read_only)  # orbax warns on every read-only open
        try:
            self._manager = ocp.CheckpointManager(
                self.directory,
                options=options,
                item_handlers={
                    STATE: ocp.StandardCheckpointHandler(),
                    RECORD: ocp.JsonCheckpointHandler(),
                    CHECKSUMS: ocp.JsonCheckpointHandler(),
                },
            )
        finally:
            absl_log.removeFilter(_quiet_read_only)

    # ------------------------------------------------------------------ queries

    def latest_step(self) -> int | None:
        """The newest complete checkpoint (temporary, unfinished ones never count)."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    # ------------------------------------------------------------------ save

    def save(self, step: int, state: PyTree, record: dict[str, Any]) -> None:
        """Start saving ``state`` and the JSON ``record`` as checkpoint ``step``.

        Returns once the arrays are copied to host memory (asynchronous mode); :meth:`wait`
        blocks until the files are complete. ``state`` must be unreplicated (see the module
        doc). A step that is already saved is left as it is.
        """
        step_leaf = getattr(state, "step", None)
        if step_leaf is not None and np.ndim(step_leaf) != 0:
            raise ValueError(
                f"the state's step has shape {np.shape(step_leaf)}: this looks like a replicated "
                "state with a leading device axis; save jaxgan.parallel.unreplicate(state) instead"
            )
        if step in self._manager.all_steps():
            return
        saveable = to_saveable(state)
        if self._local:
            saveable = jax.device_get(saveable)
        items = {STATE: ocp.args.StandardSave(saveable), RECORD: ocp.args.JsonSave(record)}
        if _fully_addressable(saveable):  # a multi-host sharded state is checked by orbax alone
            items[CHECKSUMS] = ocp.args.JsonSave(checksums(saveable))
        self._manager.save(step, args=ocp.args.Composite(**items), force=True)

    # ------------------------------------------------------------------ restore

    def _unreadable(self, step: int, err: BaseException) -> CheckpointError:
        earlier = [s for s in self.all_steps() if s < step]
        way_out = (
            f"delete {os.path.join(self.directory, str(step))} to resume from step {earlier[-1]}"
            if earlier
            else "start a new run (no earlier checkpoint is kept)"
        )
        reason = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        return CheckpointError(
            f"checkpoint {step} in {self.directory} is damaged or incomplete ({type(err).__name__}: "
            f"{reason}): {way_out}"
        )

    def _step(self, step: int | None) -> int:
        steps = self.all_steps()
        if step is None:
            if not steps:
                raise CheckpointError(f"no checkpoint in {self.directory}")
            return steps[-1]
        if step not in steps:
            raise CheckpointError(
                f"no checkpoint {step} in {self.directory}; it holds steps {steps or 'none'}"
            )
        return step

    def read_record(self, step: int | None = None) -> dict[str, Any]:
        """The JSON record of checkpoint ``step`` (default: latest), without reading arrays."""
        step = self._step(step)
        try:
            record = self._manager.restore(step, args=ocp.args.Composite(**{RECORD: ocp.args.JsonRestore()}))[RECORD]
        except Exception as err:  # orbax raises many types; say which checkpoint and the way out
            raise self._unreadable(step, err) from err
        if not isinstance(record, dict):
            raise self._unreadable(step, TypeError(f"record is {type(record).__name__}, not a JSON object"))
        return record

    def check_fits(self, like: PyTree, step: int | None = None) -> None:
        """Raise :class:`CheckpointError` naming the leaves where checkpoint ``step`` and
        ``like`` differ in name, shape or dtype (read from metadata; no array is loaded)."""
        step = self._step(step)
        try:
            saved = self._manager.item_metadata(step)[STATE]
        except Exception as err:
            raise self._unreadable(step, err) from err
        if saved is None:
            raise self._unreadable(step, FileNotFoundError("no state metadata"))
        mismatch = describe_mismatch(saved, to_saveable(like))
        if mismatch:
            raise CheckpointError(
                f"checkpoint {step} in {self.directory} was written by a different model: {mismatch}"
            )

    def restore(self, like: PyTree, step: int | None = None) -> tuple[PyTree, dict[str, Any]]:
        """Checkpoint ``step`` (default: latest) as ``(state, record)``.

        The state takes the structure, dtypes and placement (sharding) of ``like``, e.g. a
        freshly initialised state of the same model.
        """
        step = self._step(step)
        record = self.read_record(step)
        self.check_fits(like, step)
        target = to_saveable(like)
        try:
            saved = self._manager.restore(
                step, args=ocp.args.Composite(**{STATE: ocp.args.StandardRestore(target)})
            )[STATE]
        except Exception as err:
            raise self._unreadable(step, err) from err
        self._verify(step, saved)
        return from_saveable(saved, like), record

    def _verify(self, step: int, saved: PyTree) -> None:
        """Compare the restored arrays with the CRC-32s written at save time."""
        if CHECKSUMS not in (self._manager.item_metadata(step) or {}).keys() or not _fully_addressable(saved):
            return
        try:
            expected = self._manager.restore(step, args=ocp.args.Composite(**{CHECKSUMS: ocp.args.JsonRestore()}))[
                CHECKSUMS
            ]
        except Exception as err:
            raise self._unreadable(step, err) from err
        got = checksums(saved)
        bad = sorted(k for k in set(got) | set(expected or {}) if (expected or {}).get(k) != got.get(k))
        if bad:
            raise self._unreadable(
                step, ValueError(f"the stored values of {', '.join(bad[:4])} fail their checksum")
            )

    # ------------------------------------------------------------------ lifetime

    def wait(self) -> None:
        """Block until every started save is on disk (and raise if one failed)."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ----------------------------------------------------------------------------- the best checkpoint


class BestKeeper:
    """Which step is best by metrics compared in order (lexicographic: the second breaks ties of
    the first), each with its direction: ``spec = ((name, "max"|"min"), ...)``. The record lives
    in ``path`` (``best.json``) when given, so a resumed run remembers its best."""

    def __init__(self, spec: tuple[tuple[str, str], ...], path: str | None = None):
        for name, mode in spec:
            if mode not in ("max", "min"):
                raise ValueError(f"{name}: mode must be max or min, got {mode!r}")
        self.spec = tuple(spec)
        self.path = path
        self.best: dict[str, Any] | None = None
        if path is not None and os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                self.best = json.load(f)

    @property
    def metrics(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.spec)

    def _key(self, values: dict[str, float]) -> tuple[float, ...]:
        return tuple(float(values[n]) * (1.0 if mode == "max" else -1.0) for n, mode in self.spec)

    def offer(self, step: int, values: dict[str, float]) -> bool:
        """True (and recorded) when ``values`` holds every metric, all finite, and beats the best."""
        if not all(_finite_number(values.get(n)) is not None for n in self.metrics):
            return False
        if self.best is not None and self._key(values) <= self._key(self.best["metrics"]):
            return False
        self.best = {"step": int(step), "metrics": {n: float(values[n]) for n in self.metrics},
                     "modes": dict(self.spec)}
        if self.path is not None:
            tmp = f"{self.path}.tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(self.best, f, indent=2)
            os.replace(tmp, self.path)
        return True


class KeepBest(Observer):
    """Keeps the best checkpoint of a run in ``<run>/best`` (one orbax checkpoint, and
    ``best.json``): the run's one keep-best. ``keep_best`` is the config value
    (:func:`jaxgan.configs.keep_best_spec`). At each boundary the metrics measured at that step
    (sample quality on toy data, periodic evaluation) are offered; a better set saves the state."""

    def __init__(self, keep_best: str = "auto"):
        self.keep_best = keep_best
        self.keeper: BestKeeper | None = None
        self._latest: dict[str, tuple[int, float]] = {}
        self._warned: set[str] = set()
        self._ckpt: Checkpointer | None = None
        self._ctx: Context | None = None

    def on_start(self, ctx: Context) -> None:
        from jaxgan.configs import keep_best_spec

        self._ctx = ctx
        spec = keep_best_spec(self.keep_best, toy=ctx.run.mixture is not None)
        if spec:
            self.keeper = BestKeeper(spec, os.path.join(ctx.out, BEST_FILE))

    def on_row(self, step: int, row: dict[str, float], stream: str) -> list[dict[str, Any]]:
        if self.keeper is not None:
            for name in self.keeper.metrics:
                if name in row:
                    self._latest[name] = (step, row[name])
        return []

    def on_boundary(self, b: Boundary) -> None:
        if self.keeper is None:
            return
        values = {n: v for n, (step, v) in self._latest.items() if step == b.step}
        missing = [n for n in self.keeper.metrics if n not in values and n not in self._warned]
        if missing and b.checkpoint:
            self._warned.update(missing)
            self._ctx.echo(f"jaxgan: warning: keep_best: {', '.join(missing)} is not measured at step {b.step}; "
                           "no best checkpoint is kept by it")
        if self.keeper.offer(b.step, values):
            if self._ckpt is None:
                # process_local: in a multi-process run observers run on process 0 alone.
                self._ckpt = Checkpointer(os.path.join(self._ctx.out, BEST_DIR), keep=1, process_local=True)
            record = {"step": b.step, "best": self.keeper.best,
                      "config": dataclasses.asdict(self._ctx.run.config)}
            self._ckpt.save(b.step, b.state, record)
            if jax.process_count() > 1:
                # Finish this process-local save before the run's collective checkpoint of the same
                # step starts: two orbax saves of one step in flight at once can hang the latter.
                self._ckpt.wait()

    def on_end(self, step: int) -> None:
        if self._ckpt is not None:
            self._ckpt.wait()
            self._ckpt.close()
            self._ckpt = None
