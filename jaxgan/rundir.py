"""A run's directory: what is in it, and the rules for starting, resuming and refusing.

Layout::

    config.json       the run's Config (written once, before training starts)
    metrics.jsonl     one JSON object per logged step: {"step": ..., every training metric}
    quality.jsonl     one JSON object per logged step on toy data: the samples' mode coverage
    events.jsonl      one JSON object per diagnosis event: {"step", "kind", "evidence", "remedies"}
    summary.json      wall time, steps/s and final metrics, rewritten when a session ends
    scores.png, losses.png, health.png, samples*.png
    eval.jsonl        one JSON object per evaluation (`jaxgan eval`, or eval_every during training)
    eval.png          the evaluation metrics over training
    eval/             the cached evaluation classifier (image data with labels)
    checkpoints/      orbax checkpoints
    best/, best.json  the best checkpoint by keep_best, and its record (jaxgan.checkpoint.KeepBest)
    tensorboard/      TensorBoard event files (jaxgan.tensorboard)
    report/           `jaxgan diagnose`'s report.md and report.html, with their plots
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import tempfile
from collections.abc import Iterable
from typing import Any

from jaxgan.configs import RESUMABLE_CHANGES, Config, ConfigError

CONFIG = "config.json"
METRICS = "metrics.jsonl"
QUALITY = "quality.jsonl"
EVENTS = "events.jsonl"
SUMMARY = "summary.json"
CHECKPOINTS = "checkpoints"


class RunDirError(ValueError):
    """A run directory that cannot be used as asked; the message gives the way out."""


def _clean(value: Any) -> Any:
    """JSON-safe scalars: numpy/jax scalars to Python, NaN/Inf to None."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def append_jsonl(path: str, rows: Iterable[dict[str, Any]]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps({k: _clean(v) for k, v in row.items()}) + "\n")
        f.flush()


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """Every complete line of a JSONL file (a torn last line from a crash is skipped)."""
    if not os.path.exists(path):
        return []
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def write_json(path: str, data: dict[str, Any]) -> None:
    """Write ``data`` atomically (temporary file, then rename)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({k: _clean(v) for k, v in data.items()}, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def load_config(run: str) -> Config:
    """The config saved in run directory ``run``."""
    if not os.path.isdir(run):
        raise RunDirError(f"run directory {run!r} does not exist: pass the --out of a `jaxgan train` run")
    path = os.path.join(run, CONFIG)
    if not os.path.isfile(path):
        raise RunDirError(f"{run!r} is not a jaxgan run (no {CONFIG}): pass the --out of a `jaxgan train` run")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if not isinstance(data, dict):
            raise ValueError(f"it holds a JSON {type(data).__name__}, not an object")
        return Config.from_dict(data)
    except (ValueError, ConfigError, OSError) as err:  # JSONDecodeError is a ValueError
        raise RunDirError(
            f"{path} is unreadable ({err}): restore it, or choose another --out"
        ) from None


def config_differences(saved: Config, new: Config) -> list[str]:
    """Keys whose values differ, ignoring those a resume may change (e.g. ``steps``)."""
    out = []
    for field in dataclasses.fields(Config):
        a, b = getattr(saved, field.name), getattr(new, field.name)
        if a != b and field.name not in RESUMABLE_CHANGES:
            out.append(f"{field.name}: saved {a!r}, now {b!r}")
    return out


def _nearest_existing(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def _writable(directory: str) -> str | None:
    """None if a file can be created in ``directory``, else the reason (tried for real: permission
    bits say nothing for root or on a read-only mount)."""
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as err:
        return err.strerror or type(err).__name__
    return None


def inspect(out: str, config: Config) -> bool:
    """Check, without changing anything, that ``out`` can hold a run of ``config``; return True
    when it holds that run already (to resume).

    Refuses (with the way out) a path that is a file, a directory that cannot be created or
    written, a non-empty directory that is not a jaxgan run, and a run made with a different
    config (only the keys in ``configs.RESUMABLE_CHANGES``, such as ``steps``, may differ).
    """
    if os.path.exists(out) and not os.path.isdir(out):
        raise RunDirError(f"--out {out!r} is a file, not a directory: choose another --out")
    if not os.path.exists(out):
        parent = _nearest_existing(out)
        if not os.path.isdir(parent):
            raise RunDirError(f"cannot create run directory {out!r}: {parent!r} is a file; choose another --out")
        reason = _writable(parent)
        if reason is not None:
            raise RunDirError(
                f"cannot create run directory {out!r}: {parent!r} does not take new files ({reason}); "
                "choose another --out"
            )
        return False
    reason = _writable(out)
    if reason is not None:
        raise RunDirError(
            f"run directory {out!r} is not writable ({reason}): choose another --out or fix its permissions"
        )
    if os.path.exists(os.path.join(out, CONFIG)):
        saved = load_config(out)
        diffs = config_differences(saved, config)
        if diffs:
            raise RunDirError(
                f"{out!r} holds a run with a different config ({'; '.join(diffs)}): resume it with "
                f"`jaxgan train --out {out}` (its saved config; --steps N raises the target), or "
                "choose another --out for the new config"
            )
        return True
    leftovers = [name for name in os.listdir(out) if not name.startswith(".")]
    if leftovers:
        raise RunDirError(
            f"{out!r} is not empty and is not a jaxgan run ({', '.join(sorted(leftovers)[:5])}): "
            "choose a new or empty --out"
        )
    return False


def create(out: str, config: Config) -> None:
    """Start a new run in ``out`` (new or empty): write its config. On failure nothing is left
    behind that was not there before."""
    existing = _nearest_existing(out)
    try:
        os.makedirs(out, exist_ok=True)
        write_json(os.path.join(out, CONFIG), dataclasses.asdict(config))
        open(os.path.join(out, EVENTS), "a").close()
    except OSError as err:
        for name in (CONFIG, f"{CONFIG}.tmp", EVENTS):
            with contextlib.suppress(OSError):
                os.remove(os.path.join(out, name))
        made = os.path.abspath(out)
        while made != existing and len(made) > len(existing):  # only the directories made here
            with contextlib.suppress(OSError):
                os.rmdir(made)
            made = os.path.dirname(made)
        reason = err.strerror or str(err)
        raise RunDirError(f"cannot create run directory {out!r} ({reason}): choose another --out") from None


def update_config(out: str, config: Config) -> None:
    """Record the resumable fields (e.g. a raised ``steps``) of a resumed run."""
    write_json(os.path.join(out, CONFIG), dataclasses.asdict(config))


def truncate_after(out: str, step: int) -> int:
    """Drop the metrics, quality and events rows logged after ``step`` (work lost since the
    checkpoint being resumed, e.g. after a kill), so the resumed run logs them once. Returns
    how many."""
    dropped = 0
    for name in (METRICS, QUALITY, EVENTS):
        path = os.path.join(out, name)
        if not os.path.exists(path):
            continue
        rows = read_jsonl(path)
        keep = [r for r in rows if not (isinstance(r.get("step"), int | float) and r["step"] > step)]
        with open(path, encoding="utf-8") as f:
            torn = sum(1 for line in f if line.strip()) - len(rows)
        if len(keep) == len(rows) and not torn:
            continue
        dropped += len(rows) - len(keep)
        tmp = f"{path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            for row in keep:
                f.write(json.dumps(row) + "\n")
        os.replace(tmp, path)
    return dropped
