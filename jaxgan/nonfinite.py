"""The host side of NaN/Inf handling: the one place that reads the updates' non-finite flags,
counts skipped updates, writes the ``nan`` events and stops a run.

The steps flag a non-finite update in their metrics (``d_nonfinite``/``g_nonfinite``, per round;
:class:`jaxgan.GAN` computes them, and under ``skip_nonfinite`` discards such an update). After
each compiled chunk the loop hands the chunk's per-round metrics to :meth:`NonFiniteGuard.check`:

* ``nan_policy=stop``: the first flagged update raises :class:`NonFiniteError` naming the step,
  the player and the likely cause, after writing a ``nan`` event; nothing from that chunk is
  saved.
* ``nan_policy=skip``: skipped updates are counted; a ``nan`` event marks the first chunk that
  skipped any, a ``recovered`` event the next chunk that skipped none; a player whose every
  update was skipped for :data:`SKIP_STREAK_LIMIT` rounds stops the run (it is not training).
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Callable
from typing import Any

import numpy as np

SKIP_STREAK_LIMIT = 50  # consecutive rounds with every update of a player skipped: stop
PLAYERS = {"d": "discriminator", "g": "generator"}

Event = dict[str, Any]


class NonFiniteError(RuntimeError):
    """Training produced NaN/Inf; the run stopped and kept its last good checkpoint."""


def first_nonfinite(metrics: dict[str, np.ndarray], first_step: int) -> tuple[int, str] | None:
    """``(step, player)`` of the first non-finite update in a chunk's per-round metrics that
    starts after ``first_step`` (in a round D updates first), or None."""
    flags = []
    for order, player in enumerate(PLAYERS):
        values = metrics.get(f"{player}_nonfinite")
        if values is not None:
            bad = np.flatnonzero(~(np.asarray(values) == 0.0))
            if bad.size:
                flags.append((first_step + int(bad[0]) + 1, order, player))
    if not flags:
        return None
    step, _, player = min(flags)
    return step, player


def likely_cause(config: Any, player: str) -> str:
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


def remedies(config: Any) -> list[str]:
    """What to try after a non-finite update (the ``nan`` event's remedies)."""
    from jaxgan import diagnose

    return diagnose.remedies("nan", config)


class NonFiniteGuard:
    """Reads each chunk's non-finite flags (see the module docstring). ``saved_steps()`` lists
    the checkpoints on disk, for the error's way out; ``skipped`` starts from a resumed count."""

    def __init__(self, config: Any, out: str, saved_steps: Callable[[], list[int]], checkpoint_dir: str,
                 skipped: int = 0):
        self.config = config
        self.out = out
        self.saved_steps = saved_steps
        self.checkpoint_dir = checkpoint_dir
        self.skipped = skipped
        self._streak = {"d": 0, "g": 0}
        self._per_round = {"d": config.d_steps, "g": config.g_steps}
        self._skipping = False

    def check(self, first_step: int, metrics: dict[str, np.ndarray]) -> list[Event]:
        """Events for the chunk whose rounds follow ``first_step``; raises :class:`NonFiniteError`
        (carrying the ``nan`` event as ``err.event``) when the run must stop."""
        n = len(next(iter(metrics.values())))
        bad = first_nonfinite(metrics, first_step)
        if bad is not None and self.config.nan_policy == "stop":
            step, player = bad
            row = {k: float(np.asarray(v)[step - first_step - 1]) for k, v in metrics.items()}
            values = (f"{player}_loss={row.get(f'{player}_loss', math.nan):.4g}, "
                      f"{player}_grad_norm={row.get(f'{player}_grad_norm', math.nan):.4g}")
            raise self._fail(step, player, f"the {PLAYERS[player]} update produced NaN/Inf ({values})",
                             {"player": PLAYERS[player], f"{player}_loss": row.get(f"{player}_loss"),
                              f"{player}_grad_norm": row.get(f"{player}_grad_norm")})
        events: list[Event] = []
        fractions = {}
        for p in PLAYERS:
            flags = np.asarray(metrics.get(f"{p}_nonfinite", np.zeros(n)), np.float64)
            self.skipped += round(float(np.sum(flags)) * self._per_round[p])
            if np.any(flags > 0):
                fractions[p] = float(np.mean(flags))
            for i, f in enumerate(flags):
                self._streak[p] = self._streak[p] + 1 if f >= 1.0 else 0
                if self._streak[p] >= SKIP_STREAK_LIMIT:
                    raise self._fail(first_step + i + 1, p, f"every {PLAYERS[p]} update of the last "
                                     f"{SKIP_STREAK_LIMIT} rounds was non-finite and skipped (nan_policy=skip), so "
                                     "training is not moving", {"player": PLAYERS[p], "skipped": self.skipped})
        if fractions and not self._skipping:
            self._skipping = True
            evidence = {f"{p}_skipped_fraction": round(v, 4) for p, v in fractions.items()}
            events.append({"step": first_step + n, "kind": "nan", "evidence": {**evidence, "skipped": self.skipped},
                           "remedies": remedies(self.config),
                           "message": "updates produced NaN/Inf and were skipped (nan_policy=skip): "
                                      + ", ".join(f"{PLAYERS[p]} {100 * v:.0f}% of the chunk's rounds"
                                                  for p, v in fractions.items())})
        elif not fractions and self._skipping:
            self._skipping = False
            events.append({"step": first_step + n, "kind": "recovered", "evidence": {"failure": "nan"},
                           "remedies": [], "message": "updates are finite again"})
        return events

    def _fail(self, step: int, player: str, what: str, evidence: dict[str, Any]) -> NonFiniteError:
        saved = [s for s in self.saved_steps() if s < step]
        kept = (f"the last good checkpoint (step {saved[-1]}) in {self.checkpoint_dir} is kept" if saved
                else f"no checkpoint was saved before it (ckpt_every={self.config.ckpt_every})")
        ways = ["start a new run (another --out) with lower g_lr/d_lr"]
        if saved and self.config.nan_policy == "stop":
            ways.append(f"continue this one skipping such updates: jaxgan train --out {shlex.quote(self.out)} "
                        "--set nan_policy=skip")
        cause = likely_cause(self.config, player)
        err = NonFiniteError(f"step {step}: {what} (likely cause: {cause}). Stopped; {kept}. "
                             f"Way out: {', or '.join(ways)}")
        err.event = {"step": step, "kind": "nan", "evidence": {**evidence, "likely_cause": cause},
                     "remedies": remedies(self.config), "message": what}
        return err
