"""Failure-mode diagnosis: read the game from the logged rows, name the cause, say what to try.

Host-side and numpy-only. A :class:`Diagnosis` is fed the rows the loop logs (training metrics
averaged over ``log_every`` rounds, the toy data's sample quality, evaluation results) and
returns **events**, ``{"step", "kind", "evidence", "remedies", "message"}``: when a failure starts
(onset; a cause, with the other conditions it explains as ``symptoms``) and when it ends
(``kind="recovered"``), never on every row. NaN/Inf events are :mod:`jaxgan.nonfinite`'s.

Windows are in rounds. A row logged at step ``t`` covers the rounds since the previous row, so
the mean over ``(t - w, t]`` weights each row by the rounds it covers. Score rules judge from
``score_warmup`` on, sample rules (collapse, poor fit) from ``warmup``. Each ``detect_*``
function says what it reads; every threshold is a ``diag.*`` config key (:class:`Thresholds`).
Once a failure is active it stays so until its condition is clearly off (hysteresis), so a
value wandering across a threshold does not repeat events.

Policies (:class:`Policy`): ``warn`` reports; ``stop`` also ends a run whose failure has not
recovered for ``stop_after`` rounds (if the scores do not recover the run will not come back);
``stop_on_converged`` ends it when D's feedback has become noise.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

Row = dict[str, Any]
Event = dict[str, Any]

FAILURES = (
    "nan",
    "vanishing_gradients",
    "discriminator_dominates",
    "generator_dominates",
    "non_convergence",
    "mode_collapse",
    "poor_fit",
)
KINDS = (*FAILURES, "converged")
# A cause explains its symptoms: when both hold, the event names the cause and lists the rest.
EXPLAINS: dict[str, tuple[str, ...]] = {
    "vanishing_gradients": ("discriminator_dominates", "mode_collapse", "poor_fit"),
    "discriminator_dominates": ("mode_collapse", "poor_fit"),
    "generator_dominates": ("mode_collapse", "poor_fit"),
    "mode_collapse": ("non_convergence", "poor_fit"),  # a blob hopping between modes swings the scores
    "non_convergence": ("poor_fit",),
}
SAMPLE_KINDS = ("mode_collapse", "poor_fit")  # judged on G's samples; need D without a clear edge
HYSTERESIS = 0.05  # how far back across a score threshold a value must go to count as recovered
SCORE_KEYS = ("generator_score", "discriminator_score")


# ----------------------------------------------------------------------------- settings


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """Each detector's thresholds and windows (config keys ``diag.<field>``; see module doc)."""

    warmup: int = 500
    score_warmup: int = 100
    window: int = 200
    long_window: int = 1000
    g_low: float = 0.1
    d_high: float = 0.85
    g_high: float = 0.7
    half_band: float = 0.05
    acc_band: float = 0.1
    edge: float = 0.6
    diversity_min: float = 0.5
    modes_min: float = 0.5
    fit_min: float = 0.5
    fit_band: float = 0.1
    fit_progress: float = 0.2
    fit_window: int = 2000
    vanish_ratio: float = 0.05
    osc_std: float = 0.1
    osc_crossings: int = 4
    osc_swing: float = 0.15

    @classmethod
    def from_config(cls, config: Any) -> Thresholds:
        return cls(**{f.name: getattr(config.diag, f.name) for f in dataclasses.fields(cls)})


@dataclasses.dataclass(frozen=True)
class Policy:
    """What to do about failures: ``mode`` warn | stop; ``stop_after`` rounds unrecovered;
    ``stop_on_converged``: also stop at the onset of ``converged``."""

    mode: str = "warn"
    stop_after: int = 2000
    stop_on_converged: bool = False

    @classmethod
    def from_config(cls, config: Any) -> Policy:
        d = config.diag
        return cls(d.mode, d.stop_after, d.stop_on_converged)


# ----------------------------------------------------------------------------- remedies

# The remedies for each failure (the classic list, plus those this library adds), each with the
# config keys that apply it.


@dataclasses.dataclass(frozen=True)
class Advice:
    """One remedy: what to try, the ``--set`` that does it for a config (derived from its current
    values, or None when no config key does it), and whether the config already does it."""

    text: str
    hint: Callable[[Any], str | None] = lambda c: None
    in_use: Callable[[Any], bool] = lambda c: False


def _wider(widths: Sequence[int]) -> str:
    return ",".join(str(2 * w) for w in widths)


def _narrower(widths: Sequence[int]) -> str:
    return ",".join(str(max(1, w // 2)) for w in widths)


def _more(current: float, start: float, cap: float) -> str:
    return f"{start:g}" if current <= 0 else f"{min(cap, 2 * current):g}"


_LABEL_FLIP = Advice("one-sided label flipping: label a random fraction of the real examples as fake",
                     lambda c: f"label_flip={_more(c.label_flip, 0.1, 0.3)}")
_D_DROPOUT = Advice("dropout in the discriminator", lambda c: f"d_dropout={_more(c.d_dropout, 0.3, 0.6)}")
_G_WIDER = Advice("more filters (units) in the generator", lambda c: f"g_hidden={_wider(c.g_hidden)}")
_G_NARROWER = Advice("fewer filters (units) in the generator", lambda c: f"g_hidden={_narrower(c.g_hidden)}")
_D_WIDER = Advice("more filters (units) in the discriminator", lambda c: f"d_hidden={_wider(c.d_hidden)}")
_D_NARROWER = Advice("fewer filters (units) in the discriminator", lambda c: f"d_hidden={_narrower(c.d_hidden)}")
_G_DROPOUT = Advice("dropout in the generator (the reference MLP generator has no dropout option: add a "
                    "Dropout layer to your own generator)")
_LATENT = Advice("a larger latent input", lambda c: f"latent_dim={2 * c.latent_dim}")
_WASSERSTEIN = Advice("the Wasserstein loss with a gradient penalty", lambda c: "loss=wasserstein gp=10",
                      lambda c: c.loss == "wasserstein" and (c.gp > 0 or c.weight_clip > 0))
_NON_SATURATING = Advice("the modified minimax (non-saturating) generator loss", lambda c: "loss=non_saturating",
                         lambda c: c.loss == "non_saturating")
_UNROLL = Advice("an unrolled GAN: G trains against D advanced k updates ahead",
                 lambda c: f"unroll_steps={max(5, 2 * c.unroll_steps)}")
_NOISE = Advice("noise added to the discriminator's inputs (instance noise, annealed to 0)",
                lambda c: f"instance_noise={_more(c.instance_noise, 0.1, 1.0)} instance_noise_anneal={c.steps}")
_WEIGHT_PENALTY = Advice("a penalty on the discriminator's weights",
                         lambda c: f"d_weight_l2={_more(c.d_weight_l2, 1e-4, 1e-2)}")
_GRADIENT_PENALTY = Advice("a gradient penalty on the discriminator",
                           lambda c: f"gp={_more(c.gp, 10.0, 100.0)}" if c.loss == "wasserstein"
                           else f"r1={_more(c.r1, 1.0, 100.0)}")
_PACK = Advice("packing: D judges several samples at once (PacGAN), so it sees how they spread",
               lambda c: f"pack={max(2, 2 * c.pack)}")
_MBSTD = Advice("minibatch standard deviation in D: it sees its batch's spread", lambda c: "d_mbstd=true",
                lambda c: c.d_mbstd)
_D_FASTER = Advice("a discriminator that learns faster (it cannot tell the samples from the data now)",
                   lambda c: f"d_lr={min(1e-2, 4 * c.d_lr):g}")
_DECAY = Advice("learning rates that decay to 0 over the run, so both players settle",
                lambda c: "lr_decay=cosine", lambda c: c.lr_decay != "none")
_STOP_BEST = Advice("stop training here and keep the best checkpoint",
                    lambda c: "diag.stop_on_converged=true keep_best=auto")
_LOOK = Advice("look at the samples: a flat pair of scores can hide a collapsed generator")
_LOWER_LR = Advice("lower learning rates", lambda c: f"g_lr={c.g_lr / 4:g} d_lr={c.d_lr / 4:g}")
_BOUNDED = Advice("a bounded critic for the wasserstein loss (gp or weight_clip)", lambda c: "gp=10",
                  lambda c: c.gp > 0 or c.weight_clip > 0)
_CHECK_DATA = Advice("check the data for NaN/Inf")
_SKIP = Advice("skip non-finite updates instead of stopping", lambda c: "nan_policy=skip",
               lambda c: c.nan_policy == "skip")

ADVICE: dict[str, tuple[Advice, ...]] = {
    "discriminator_dominates": (_LABEL_FLIP, _D_DROPOUT, _G_WIDER, _D_NARROWER),
    "generator_dominates": (_D_WIDER, _G_DROPOUT, _G_NARROWER),
    "mode_collapse": (_PACK, _MBSTD, _UNROLL, _LATENT, _G_WIDER, _LABEL_FLIP, _WASSERSTEIN),
    "poor_fit": (_D_FASTER, _D_WIDER, _PACK, _MBSTD, _DECAY),
    "vanishing_gradients": (_WASSERSTEIN, _NON_SATURATING),
    "non_convergence": (_NOISE, _WEIGHT_PENALTY, _GRADIENT_PENALTY),
    "converged": (_STOP_BEST, _LOOK),
    "nan": (_LOWER_LR, _BOUNDED, _CHECK_DATA, _SKIP),
}


def remedies(kind: str, config: Any = None) -> list[str]:
    """What to try for failure ``kind``, each with the ``--set`` that does it.

    With a ``config`` the values are derived from the current ones (e.g. twice the latent size)
    and remedies it already uses come last, marked "(already in use)"; without one, the hints
    start from the defaults."""
    from jaxgan.configs import Config

    generic = config is None
    c = Config() if generic else config
    ready, in_use = [], []
    for advice in ADVICE.get(kind, ()):
        if not generic and advice.in_use(c):
            in_use.append(f"{advice.text} (already in use)")
            continue
        hint = advice.hint(c)
        ready.append(f"{advice.text} (--set {hint})" if hint else advice.text)
    return ready + in_use


REMEDIES: dict[str, tuple[str, ...]] = {kind: tuple(remedies(kind)) for kind in ADVICE}

_MEANING = {
    "discriminator_dominates": "D rejects the fakes with confidence; G gets little to learn from "
                               "and may not recover",
    "generator_dominates": "D calls the fakes real; early on this usually means a trivial feature "
                           "fools D and the samples are poor",
    "mode_collapse": "G makes many near-identical outputs from different latents",
    "vanishing_gradients": "D is so sure of every fake that the saturating loss tells G almost nothing",
    "non_convergence": "the scores keep swinging without settling",
    "poor_fit": "G's samples do not look like the data, yet D cannot tell them apart, so G is told "
                "nothing that would improve them",
    "converged": "D is flipping a coin: its feedback is now noise, and training on can make G "
                 "worse (convergence is often fleeting)",
    "nan": "an update produced NaN/Inf",
}


# ----------------------------------------------------------------------------- the stream


def _value(x: Any) -> float:
    if x is None:
        return math.nan
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _r(x: float) -> float:
    """Evidence numbers, readable: 4 significant digits."""
    return float(f"{x:.4g}") if math.isfinite(x) else x


@dataclasses.dataclass
class Window:
    """The rows of one metric in ``(start, end]``: their steps, values and rounds covered."""

    start: int
    end: int
    steps: np.ndarray
    values: np.ndarray
    weights: np.ndarray

    @property
    def mean(self) -> float:
        return float(np.sum(self.values * self.weights) / np.sum(self.weights))

    @property
    def std(self) -> float:
        m = self.mean
        return float(np.sqrt(np.sum(self.weights * (self.values - m) ** 2) / np.sum(self.weights)))

    @property
    def rows(self) -> int:
        return int(self.values.size)


class History:
    """The metric stream so far: per metric, the steps it was logged at and its values.

    ``origin`` is the step the stream starts from (0, or where a resumed run restarted before
    any row was replayed): the first row of a metric covers ``(origin, step]``.
    """

    def __init__(self, origin: int = 0):
        self.origin = origin
        self._steps: dict[str, list[int]] = {}
        self._values: dict[str, list[float]] = {}
        self.last_step = origin

    def add(self, step: int, row: Row) -> None:
        for key, value in row.items():
            if key == "step" or isinstance(value, bool):
                continue
            if value is not None and not isinstance(value, int | float | np.number):
                continue
            self._steps.setdefault(key, []).append(int(step))
            self._values.setdefault(key, []).append(_value(value))
        self.last_step = max(self.last_step, int(step))

    def has(self, key: str) -> bool:
        return key in self._steps

    def latest(self, key: str) -> tuple[int, float] | None:
        if key not in self._steps:
            return None
        return self._steps[key][-1], self._values[key][-1]

    def series(self, key: str, after: int = -1, until: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Steps and values of ``key`` logged in ``(after, until]``."""
        steps = np.asarray(self._steps.get(key, []), np.int64)
        values = np.asarray(self._values.get(key, []), np.float64)
        keep = steps > after
        if until is not None:
            keep &= steps <= until
        return steps[keep], values[keep]

    def window(self, key: str, end: int, length: int, warmup: int) -> Window | None:
        """Chunk-mean rows of ``key`` in ``(end - length, end]``, or None unless the stream covers
        that span entirely after ``warmup`` (non-finite values are left out)."""
        steps = np.asarray(self._steps.get(key, []), np.int64)
        values = np.asarray(self._values.get(key, []), np.float64)
        if steps.size == 0:
            return None
        upto = steps <= end
        steps, values = steps[upto], values[upto]
        bounds = np.concatenate([[self.origin], steps])
        before = bounds[bounds <= end - length]
        if before.size == 0 or before[-1] < warmup:
            return None
        start = int(before[-1])
        inside = steps > start
        weights = np.diff(bounds)[inside].astype(np.float64)
        steps, values = steps[inside], values[inside]
        finite = np.isfinite(values)
        if not finite.any():
            return None
        return Window(start, end, steps[finite], values[finite], weights[finite])



@dataclasses.dataclass(frozen=True)
class Finding:
    """A detector's verdict on the stream now: does its condition hold, and on what numbers."""

    holds: bool
    evidence: dict[str, Any]
    summary: str


Detector = Callable[[History, int, Thresholds, bool, dict[str, Any]], "Finding | None"]


def _scores(h: History, t: int, th: Thresholds) -> tuple[Window, Window] | None:
    g = h.window("generator_score", t, th.window, th.score_warmup)
    d = h.window("discriminator_score", t, th.window, th.score_warmup)
    return None if g is None or d is None else (g, d)


def detect_discriminator_dominates(h: History, t: int, th: Thresholds, active: bool, ctx) -> Finding | None:
    w = _scores(h, t, th)
    if w is None:
        return None
    g, d = w
    m = HYSTERESIS if active else 0.0
    holds = g.mean <= th.g_low + m and d.mean >= th.d_high - m
    ev = {"window": [g.start, g.end], "rows": g.rows, "generator_score": _r(g.mean),
          "discriminator_score": _r(d.mean), "g_low": th.g_low, "d_high": th.d_high}
    for key in ("d_accuracy_fake", "g_signal"):
        x = h.window(key, t, th.window, th.score_warmup)
        if x is not None:
            ev[key] = _r(x.mean)
    summary = (f"generator score {g.mean:.3f} <= {th.g_low:g} and discriminator score {d.mean:.3f} >= "
               f"{th.d_high:g} over steps {g.start}-{g.end}")
    return Finding(holds, ev, summary)


def detect_generator_dominates(h: History, t: int, th: Thresholds, active: bool, ctx) -> Finding | None:
    g = h.window("generator_score", t, th.window, th.score_warmup)
    if g is None:
        return None
    m = HYSTERESIS if active else 0.0
    holds = g.mean >= th.g_high - m
    ev = {"window": [g.start, g.end], "rows": g.rows, "generator_score": _r(g.mean), "g_high": th.g_high}
    for key in ("discriminator_score", "d_accuracy_fake"):
        w = h.window(key, t, th.window, th.score_warmup)
        if w is not None:
            ev[key] = _r(w.mean)
    summary = f"generator score {g.mean:.3f} >= {th.g_high:g} over steps {g.start}-{g.end}"
    return Finding(holds, ev, summary)


def detect_vanishing_gradients(h: History, t: int, th: Thresholds, active: bool, ctx) -> Finding | None:
    """The slope of G's loss at D's verdict (``g_signal``) has fallen to ``vanish_ratio`` of its
    largest value while D is confident: the saturating minimax loss tells G almost nothing."""
    sig = h.window("g_signal", t, th.window, th.score_warmup)
    d = h.window("discriminator_score", t, th.window, th.score_warmup)
    if sig is None or d is None:
        return None
    _, seen = h.series("g_signal", until=t)
    seen = seen[np.isfinite(seen)]
    peak = float(seen.max()) if seen.size else math.nan
    ratio = sig.mean / peak if peak > 0 else 1.0
    m = HYSTERESIS if active else 0.0
    holds = ratio <= th.vanish_ratio * (2.0 if active else 1.0) and d.mean >= th.d_high - m
    ev = {"window": [sig.start, sig.end], "rows": sig.rows, "g_signal": _r(sig.mean), "g_signal_peak": _r(peak),
          "ratio": _r(ratio), "discriminator_score": _r(d.mean), "vanish_ratio": th.vanish_ratio, "d_high": th.d_high}
    gn = h.window("g_grad_norm", t, th.window, th.score_warmup)
    if gn is not None:
        ev["g_grad_norm"] = _r(gn.mean)
    summary = (f"the slope of G's loss at D's verdict is {sig.mean:.3g}, {ratio:.3g} x its peak {peak:.3g}, while "
               f"the discriminator score is {d.mean:.3f}, over steps {sig.start}-{sig.end}")
    return Finding(holds, ev, summary)


def _measured(h: History, key: str, t: int, th: Thresholds) -> Window | None:
    """Sample measurements over the window, or, when none falls inside it (measured less often
    than the window, e.g. periodic evaluation), the latest one of the last ``long_window`` rounds."""
    if t - th.window < th.warmup:
        return None
    w = h.window(key, t, th.window, th.warmup)
    if w is not None:
        return w
    latest = h.latest(key)
    if latest is None or not (t - th.long_window < latest[0] <= t) or latest[0] <= th.warmup \
            or not math.isfinite(latest[1]):
        return None
    step, value = latest
    one = np.asarray([step], np.int64)
    return Window(step, step, one, np.asarray([value]), np.ones(1))


def detect_mode_collapse(h: History, t: int, th: Thresholds, active: bool, ctx) -> Finding | None:
    """Diversity (fake spread over real spread, in-step) at most ``diversity_min``; or, on toy
    data, G's samples (each at its nearest mode) spread over at most ``modes_min`` of the modes'
    territories (``modes_spread``; on or off the modes: how close they sit is :func:`detect_poor_fit`'s)."""
    verdicts, ev, parts = [], {}, []
    div = h.window("diversity", t, th.window, th.warmup)
    if div is not None:
        limit = th.diversity_min * (1.2 if active else 1.0)
        verdicts.append(div.mean <= limit)
        ev.update({"window": [div.start, div.end], "rows": div.rows, "diversity": _r(div.mean),
                   "diversity_min": th.diversity_min})
        parts.append(f"diversity {div.mean:.3f} ({'<=' if div.mean <= limit else '>'} {th.diversity_min:g}) "
                     f"over steps {div.start}-{div.end}")
    num_modes = ctx.get("num_modes")
    spread = _measured(h, "modes_spread", t, th)
    if num_modes and spread is not None:
        limit = th.modes_min * num_modes * (1.2 if active else 1.0)
        verdicts.append(spread.mean <= limit)
        ev.update({"modes_spread": _r(spread.mean), "modes_total": int(num_modes), "modes_min": th.modes_min})
        parts.append(f"samples spread over {spread.mean:.1f} of {num_modes} modes' territories "
                     f"({'<=' if spread.mean <= limit else '>'} {th.modes_min:g} x {num_modes})")
    if not verdicts:
        return None
    return Finding(any(verdicts), ev, "; ".join(parts))


FIT_KEYS = ("high_quality_frac", "precision_classifier", "precision_inception")  # toy, then images


def detect_poor_fit(h: History, t: int, th: Thresholds, active: bool, ctx) -> Finding | None:
    """G's samples are mostly off the data (toy: the high-quality fraction over ``long_window``;
    images: the precision of their features against real ones, from periodic evaluation) below ``fit_min``
    while both scores sit within 0.5 +- ``fit_band``: D cannot tell, so G gets no signal to fix
    them. On toy data, also not closing in: the samples' median distance to their nearest mode
    fell by less than ``fit_progress`` over the last ``fit_window`` rounds (a G still sharpening
    onto the modes is learning, not stuck). Judged after ``warmup``."""
    w = _scores(h, t, th)
    if w is None or t < th.warmup + th.window:
        return None
    g, d = w
    fit = None
    for key in FIT_KEYS:
        # The toy probe runs every chunk on the live G, whose samples jitter from update to
        # update: judge it over the long window. Evaluation precision is sparse: the latest.
        x = h.window(key, t, th.long_window, th.warmup) if key == "high_quality_frac" else _measured(h, key, t, th)
        if x is not None:
            fit = (key, x)
            break
    if fit is None:
        return None
    key, x = fit
    band = th.fit_band * (1.5 if active else 1.0)
    low = x.mean < th.fit_min * (1.1 if active else 1.0)
    undecided = abs(g.mean - 0.5) <= band and abs(d.mean - 0.5) <= band
    ev = {"window": [x.start, x.end], "rows": x.rows, key: _r(x.mean), "fit_min": th.fit_min,
          "generator_score": _r(g.mean), "discriminator_score": _r(d.mean), "fit_band": th.fit_band}
    summary = (f"{key.replace('_', ' ')} {x.mean:.3f} {'<' if low else '>='} {th.fit_min:g} while the scores sit at "
               f"{g.mean:.2f} and {d.mean:.2f}, over steps {x.start}-{x.end}")
    stuck = True
    if key == "high_quality_frac" and h.latest("median_distance") is not None:
        now = h.window("median_distance", t, th.window, th.warmup)
        then = h.window("median_distance", t - th.fit_window, th.window, th.warmup)
        if now is None or then is None:
            return None  # too early to tell a stalled G from one still closing in
        fell = 1.0 - now.mean / then.mean if then.mean > 0 else 0.0
        stuck = fell < th.fit_progress
        ev.update({"median_distance": _r(now.mean), "median_distance_before": _r(then.mean),
                   "fit_progress": th.fit_progress, "fit_window": th.fit_window})
        summary += (f"; their median distance to a mode went from {then.mean:.2f} to {now.mean:.2f} std over "
                    f"{th.fit_window} rounds ({'not ' if stuck else ''}closing in)")
    return Finding(low and undecided and stuck, ev, summary)


def _crossings(values: np.ndarray, level: float) -> int:
    side = np.sign(values - level)
    side = side[side != 0]
    return int(np.count_nonzero(side[1:] != side[:-1]))


def detect_non_convergence(h: History, t: int, th: Thresholds, active: bool, ctx) -> Finding | None:
    """A score swings without settling: round to round within the logged rows (its per-row std,
    ``<score>_swing``, at least ``osc_swing`` over the window, after ``warmup``), or from row to row over the
    long window (std at least ``osc_std``, crossing its mean ``osc_crossings`` times, the second
    half swinging at least half as much as the first)."""
    best: Finding | None = None
    for key in SCORE_KEYS:
        sw = h.window(f"{key}_swing", t, th.window, th.warmup)  # every run's opening rounds swing
        if sw is None:
            continue
        level = float(np.sqrt(np.sum(sw.weights * sw.values**2) / np.sum(sw.weights)))
        need = th.osc_swing * (0.75 if active else 1.0)
        ev = {"window": [sw.start, sw.end], "rows": sw.rows, "score": key, "swing": _r(level),
              "osc_swing": th.osc_swing}
        summary = (f"{key.replace('_', ' ')} swings by {level:.3f} (std) from round to round over steps "
                   f"{sw.start}-{sw.end}")
        finding = Finding(level >= need, ev, summary)
        if finding.holds:
            return finding
        best = best or finding
    for key in SCORE_KEYS:
        w = h.window(key, t, th.long_window, th.score_warmup)
        if w is None or w.rows < 2 * th.osc_crossings:
            continue
        half = w.rows // 2
        first = Window(w.start, int(w.steps[half - 1]), w.steps[:half], w.values[:half], w.weights[:half])
        second = Window(int(w.steps[half - 1]), w.end, w.steps[half:], w.values[half:], w.weights[half:])
        std, crossings = w.std, _crossings(w.values, w.mean)
        settling = second.std < 0.5 * first.std
        need = th.osc_std * (0.75 if active else 1.0)
        holds = std >= need and crossings >= th.osc_crossings and not settling
        ev = {"window": [w.start, w.end], "rows": w.rows, "score": key, "std": _r(std), "mean": _r(w.mean),
              "crossings": crossings, "std_first_half": _r(first.std), "std_second_half": _r(second.std),
              "osc_std": th.osc_std, "osc_crossings": th.osc_crossings}
        summary = (f"{key.replace('_', ' ')} swings with std {std:.3f} around {w.mean:.3f}, crossing it "
                   f"{crossings} times over steps {w.start}-{w.end}"
                   + (" and damping out" if settling else ""))
        finding = Finding(holds, ev, summary)
        if best is None or (finding.holds and not best.holds) or (
            finding.holds == best.holds and std > best.evidence.get("std", 0.0)
        ):
            best = finding
    return best


def detect_converged(h: History, t: int, th: Thresholds, active: bool, ctx) -> Finding | None:
    w = _scores(h, t, th)
    ar = h.window("d_accuracy_real", t, th.window, th.score_warmup)
    af = h.window("d_accuracy_fake", t, th.window, th.score_warmup)
    if w is None or ar is None or af is None:
        return None
    g, d = w
    _, d_before = h.series("discriminator_score", after=-1, until=t)
    d_before = d_before[np.isfinite(d_before)]
    edge = float(d_before.max()) if d_before.size else math.nan
    acc = 0.5 * (ar.mean + af.mean)
    widen = 1.5 if active else 1.0
    holds = (
        abs(g.mean - 0.5) <= th.half_band * widen
        and abs(d.mean - 0.5) <= th.half_band * widen
        and abs(acc - 0.5) <= th.acc_band * widen
        and edge >= th.edge
    )
    ev = {"window": [g.start, g.end], "rows": g.rows, "generator_score": _r(g.mean),
          "discriminator_score": _r(d.mean), "d_accuracy": _r(acc), "max_discriminator_score": _r(edge),
          "half_band": th.half_band, "acc_band": th.acc_band, "edge": th.edge}
    summary = (f"generator score {g.mean:.3f}, discriminator score {d.mean:.3f}, D accuracy {acc:.3f} over "
               f"steps {g.start}-{g.end}, after D's score had reached {edge:.3f}")
    return Finding(holds, ev, summary)


DETECTORS: dict[str, Detector] = {
    "vanishing_gradients": detect_vanishing_gradients,
    "discriminator_dominates": detect_discriminator_dominates,
    "generator_dominates": detect_generator_dominates,
    "non_convergence": detect_non_convergence,
    "mode_collapse": detect_mode_collapse,
    "poor_fit": detect_poor_fit,
    "converged": detect_converged,
}


class Diagnosis:
    """Feeds the metric stream through every detector, names the cause and applies the policy.

    ``feed(step, row)`` returns the new events. Each row is judged by every detector; a failure
    that holds is a *cause* unless a failure that explains it (:data:`EXPLAINS`) holds too, in
    which case it is listed among that cause's ``symptoms``. A failure judged on samples
    (:data:`SAMPLE_KINDS`) is a cause only while D has no clear edge (its score below ``edge``):
    while D is winning, G still has something to learn from, and if D goes on to dominate, that
    is the cause. ``converged`` is not reported while G's samples are poor or collapsed.
    ``active`` maps each failure that is on to the step it started; ``stop_reason`` is set when
    the policy says stop. ``num_modes`` (toy data) lets the sample detectors read mode counts;
    ``config`` makes the remedies concrete.
    """

    def __init__(self, thresholds: Thresholds | None = None, policy: Policy | None = None, *,
                 config: Any = None, num_modes: int | None = None, origin: int = 0):
        self.thresholds = thresholds or Thresholds()
        self.policy = policy or Policy()
        self.config = config
        self.num_modes = num_modes
        self.history = History(origin)
        self.active: dict[str, int] = {}
        self.events: list[Event] = []
        self.latest: dict[str, Finding] = {}
        self.stop_reason: str | None = None

    def feed(self, step: int, row: Row) -> list[Event]:
        """Add one logged row (training metrics, sample quality or evaluation) and judge."""
        step = int(step)
        self.history.add(step, row)
        ctx = {"num_modes": self.num_modes, "row": row}
        findings: dict[str, Finding] = {}
        for kind, detect in DETECTORS.items():
            finding = detect(self.history, step, self.thresholds, kind in self.active, ctx)
            if finding is not None:
                findings[kind] = finding
                self.latest[kind] = finding
        holding = {k for k, f in findings.items() if f.holds}
        if holding & set(SAMPLE_KINDS):
            holding.discard("converged")
        d = self.history.window("discriminator_score", step, self.thresholds.window, self.thresholds.score_warmup)
        edge = d is not None and d.mean >= self.thresholds.edge
        new: list[Event] = []
        for kind in KINDS:
            if kind not in holding or kind in self.active:
                continue
            if any(kind in EXPLAINS.get(other, ()) for other in holding):
                continue  # a symptom of another failure that holds
            if kind in SAMPLE_KINDS and edge:
                continue  # D is winning: if it goes on to dominate, that is the cause
            symptoms = sorted(k for k in holding if k in EXPLAINS.get(kind, ()))
            self.active[kind] = step
            new.append(self._onset(step, kind, findings[kind], symptoms, findings))
        for kind in list(self.active):
            finding = findings.get(kind)
            if finding is not None and not finding.holds:
                since = self.active.pop(kind)
                new.append({
                    "step": step, "kind": "recovered",
                    "evidence": {"failure": kind, "since_step": since, "steps_active": step - since,
                                 **finding.evidence},
                    "remedies": [],
                    "message": f"{kind} is over after {step - since} steps ({finding.summary})",
                })
        new.extend(self._apply_policy(step))
        self.events.extend(new)
        return new

    def _onset(self, step: int, kind: str, finding: Finding, symptoms: list[str],
               findings: dict[str, Finding]) -> Event:
        evidence = dict(finding.evidence)
        message = f"{finding.summary}: {_MEANING[kind]}"
        if symptoms:
            evidence["symptoms"] = symptoms
            evidence["symptom_evidence"] = {k: findings[k].evidence for k in symptoms}
            message += "; symptoms: " + "; ".join(f"{k.replace('_', ' ')} ({findings[k].summary})" for k in symptoms)
        return {"step": step, "kind": kind, "evidence": evidence, "remedies": remedies(kind, self.config),
                "message": message}

    def _apply_policy(self, step: int) -> list[Event]:
        if self.stop_reason is not None:
            return []
        p = self.policy
        if p.stop_on_converged and "converged" in self.active:
            self.stop_reason = (f"converged at step {self.active['converged']} (D's feedback is now noise; "
                                "diag_stop_on_converged=true)")
            return [self._stop_event(step, "converged")]
        if p.mode != "stop":
            return []
        for kind in FAILURES:
            since = self.active.get(kind)
            if since is not None and step - since >= p.stop_after:
                self.stop_reason = (f"{kind} has not recovered for {step - since} steps (since step {since}): "
                                    "the run will not come back")
                return [self._stop_event(step, kind)]
        return []

    def _stop_event(self, step: int, kind: str) -> Event:
        since = self.active[kind]
        return {"step": step, "kind": "stopped",
                "evidence": {"failure": kind, "since_step": since, "steps_unrecovered": step - since,
                             "policy": "stop_on_converged" if kind == "converged" else "stop",
                             "stop_after": self.policy.stop_after},
                "remedies": remedies(kind, self.config),
                "message": f"stopping: {self.stop_reason}"}

    def status(self) -> str:
        """A few words for the progress bar: the failures now on, or the latest event."""
        if self.active:
            return ",".join(sorted(self.active, key=self.active.get))
        return self.events[-1]["kind"] if self.events else "ok"


def clean_rows(rows: Iterable[Row]) -> list[Row]:
    """Rows of ``metrics.jsonl`` as the run finally went: a resumed run logs again the steps
    after its checkpoint, so a row that repeats a metric at or before that metric's last step
    drops the earlier rows from its step on (those of the abandoned session)."""
    kept: list[Row] = []
    last: dict[str, int] = {}
    for row in rows:
        if "step" not in row:
            continue
        step = int(row["step"])
        keys = [k for k in row if k != "step"]
        if any(last.get(k, -1) >= step for k in keys):
            kept = [r for r in kept if int(r["step"]) < step]
            last = {}
            for r in kept:
                for k in r:
                    if k != "step":
                        last[k] = int(r["step"])
        kept.append(row)
        for k in keys:
            last[k] = step
    return kept


def replay(rows: Iterable[Row], thresholds: Thresholds = Thresholds(), policy: Policy = Policy(), *,
           config: Any = None, num_modes: int | None = None, origin: int = 0, clean: bool = True) -> Diagnosis:
    """Feed logged rows (dicts with ``step``, in step order; ``clean``: pass them through
    :func:`clean_rows` first) through a fresh :class:`Diagnosis`."""
    diag = Diagnosis(thresholds, policy, config=config, num_modes=num_modes, origin=origin)
    for row in clean_rows(rows) if clean else rows:
        diag.feed(int(row["step"]), row)
    return diag
