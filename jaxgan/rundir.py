"""A run's directory: what is in it, and the rules for starting, resuming and refusing.

Layout::

    config.json       the run's Config (written once, before training starts)
    metrics.jsonl     one JSON object per logged step: {"step": ..., every metric}
    events.jsonl      one JSON object per diagnosis event: {"step", "kind", "evidence", "remedies"}
    summary.json      wall time, steps/s and final metrics, rewritten when a session ends
    scores.png, losses.png, health.png, samples*.png
    checkpoints/      orbax checkpoints
    best/, best.json  the best checkpoint by diag_best_metric, and its record (jaxgan.diagnose)
    tensorboard/      TensorBoard event files (jaxgan.tensorboard)
    report/           `jaxgan diagnose`'s report.md and report.html, with their plots
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable
from typing import Any

from jaxgan.configs import RESUMABLE_CHANGES, Config, ConfigError

CONFIG = "config.json"
METRICS = "metrics.jsonl"
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
    with open(path, encoding="utf-8") as f:
        return Config.from_dict(json.load(f))


def config_differences(saved: Config, new: Config) -> list[str]:
    """Keys whose values differ, ignoring those a resume may change (e.g. ``steps``)."""
    out = []
    for field in dataclasses.fields(Config):
        a, b = getattr(saved, field.name), getattr(new, field.name)
        if a != b and field.name not in RESUMABLE_CHANGES:
            out.append(f"{field.name}: saved {a!r}, now {b!r}")
    return out


def prepare(out: str, config: Config) -> bool:
    """Make ``out`` ready for ``config``; return True when it holds a run to resume.

    Refuses (with the way out) a path that is a file, an unwritable directory, a non-empty
    directory that is not a jaxgan run, and a run made with a different config.
    """
    if os.path.exists(out) and not os.path.isdir(out):
        raise RunDirError(f"--out {out!r} is a file, not a directory: choose another --out")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as err:
        raise RunDirError(f"cannot create run directory {out!r} ({err.strerror}): choose another --out") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise RunDirError(f"run directory {out!r} is not writable: choose another --out or fix its permissions")
    config_path = os.path.join(out, CONFIG)
    if os.path.exists(config_path):
        try:
            saved = load_config(out)
        except (ConfigError, json.JSONDecodeError) as err:
            raise RunDirError(f"{config_path} is unreadable ({err}): choose another --out") from None
        diffs = config_differences(saved, config)
        if diffs:
            raise RunDirError(
                f"{out!r} holds a run with a different config ({'; '.join(diffs)}): resume it with "
                "the same preset and --set values (only --steps may be raised), or choose another --out"
            )
        return True
    leftovers = [name for name in os.listdir(out) if not name.startswith(".")]
    if leftovers:
        raise RunDirError(
            f"{out!r} is not empty and is not a jaxgan run ({', '.join(sorted(leftovers)[:5])}): "
            "choose a new or empty --out"
        )
    write_json(config_path, dataclasses.asdict(config))
    open(os.path.join(out, EVENTS), "a").close()
    return False


def update_config(out: str, config: Config) -> None:
    """Record the resumable fields (e.g. a raised ``steps``) of a resumed run."""
    write_json(os.path.join(out, CONFIG), dataclasses.asdict(config))
