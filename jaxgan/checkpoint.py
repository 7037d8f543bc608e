"""Checkpoints of a run with orbax's ``CheckpointManager``.

A checkpoint holds the full :class:`~jaxgan.gan.GANState` (typed PRNG keys are stored as their
raw key data) and a JSON record (the config, the step, and anything the loop needs to resume
exactly). Orbax writes each checkpoint to a temporary directory and renames it when complete,
so a crash mid-save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

PyTree = Any


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


def describe_mismatch(saved: PyTree, expected: PyTree, limit: int = 8) -> str:
    """The leaves whose path or shape differ between two pytrees of arrays, in words."""
    a = {jax.tree_util.keystr(p): np.shape(v) for p, v in jax.tree_util.tree_leaves_with_path(saved)}
    b = {jax.tree_util.keystr(p): np.shape(v) for p, v in jax.tree_util.tree_leaves_with_path(expected)}
    lines = []
    for path in sorted(set(a) | set(b)):
        if path not in a:
            lines.append(f"{path}: missing in checkpoint (run expects {b[path]})")
        elif path not in b:
            lines.append(f"{path}: in checkpoint {a[path]} but not in this model")
        elif a[path] != b[path]:
            lines.append(f"{path}: checkpoint {a[path]} vs this model {b[path]}")
    more = f" (and {len(lines) - limit} more)" if len(lines) > limit else ""
    return "; ".join(lines[:limit]) + more


class Checkpointer:
    """Save and restore a run's checkpoints under ``directory`` (keeps the last ``keep``).

    In a multi-process run orbax's saves are collective: every process calls :meth:`save` with
    the same global arrays. ``process_local=True`` is for a checkpointer only this process uses
    (e.g. an observer, which runs on process 0 alone): orbax then synchronises with no other
    process, and the state is saved from host memory (orbax will not save another process's
    single-device arrays). With one process it changes nothing.
    """

    def __init__(self, directory: str, *, keep: int = 3, asynchronous: bool = True, process_local: bool = False):
        self.directory = os.path.abspath(directory)
        self._local = process_local and jax.process_count() > 1
        extra = {}
        if self._local:
            os.makedirs(self.directory, exist_ok=True)  # orbax cannot create it for a subset of processes
            me = jax.process_index()
            extra["multiprocessing_options"] = ocp.options.MultiprocessingOptions(
                primary_host=me, active_processes={me}
            )
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=not self._local, enable_async_checkpointing=asynchronous, **extra
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: PyTree, record: dict[str, Any]) -> None:
        """Start saving ``state`` and ``record`` as checkpoint ``step`` (returns before the write
        finishes when asynchronous; :meth:`wait` blocks until it is on disk)."""
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(self._saveable(state)), record=ocp.args.JsonSave(record)
            ),
            force=True,
        )

    def _saveable(self, state: PyTree) -> PyTree:
        saveable = to_saveable(state)
        return jax.device_get(saveable) if self._local else saveable

    def restore(self, like: PyTree, step: int | None = None) -> tuple[PyTree, dict[str, Any]]:
        """Checkpoint ``step`` (default: latest) restored into the structure of ``like``."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        target = to_saveable(like)
        try:
            record = self._manager.restore(step, args=ocp.args.Composite(record=ocp.args.JsonRestore())).record
        except Exception as err:  # orbax raises many types; say which file and why
            raise CheckpointError(f"checkpoint {step} in {self.directory} is unreadable: {err}") from err
        try:
            saved = self._manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
            ).state
        except Exception as err:
            metadata = self._manager.item_metadata(step)
            shapes = getattr(metadata, "state", None)
            detail = describe_mismatch(shapes, target) if shapes is not None else ""
            raise CheckpointError(
                f"checkpoint {step} in {self.directory} does not fit this model"
                + (f": {detail}" if detail else f": {err}")
            ) from err
        mismatch = describe_mismatch(saved, target)
        if mismatch:
            raise CheckpointError(f"checkpoint {step} in {self.directory} does not fit this model: {mismatch}")
        return from_saveable(saved, like), record

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()
