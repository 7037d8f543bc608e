"""What ``jaxgan eval`` computes for a run, and the periodic evaluation during training.

An :class:`Evaluator` is built once per run from its config: it draws (or reads) the real
samples, fits or loads the evaluation classifier, computes the real features, and then turns any
set of generated samples into one flat dict of metrics. Which metrics depends on the data:

=================  ==========================================================================
data               metrics
=================  ==========================================================================
toy mixtures       ``modes``, ``high_quality``, ``mode_kl`` (VEEGAN/PacGAN protocol, through
                   :mod:`jaxgan.metrics.coverage`), and ``*_data`` distances on the points
stacked digits     ``modes`` of 1000, ``mode_kl`` (KL(model || uniform), Metz et al. 2016
(``stacked:NAME``)  Table 2, PacGAN Tables 2-3), the same for real data (``*_real``), and
                   ``*_classifier`` distances on the per-channel classifier features
TFDS images with   ``modes`` (classes hit), ``mode_kl`` (KL(model || real class frequencies)),
labels             ``class_histogram``, ``*_classifier`` distances
other arrays       ``*_data`` distances on the flattened examples
any images         ``*_inception`` distances when Inception weights are given
=================  ==========================================================================

Distances in each feature space: ``fid`` (``fd`` for raw data), ``kid`` and ``kid_std``,
``precision``, ``recall`` (k = 3), ``density``, ``coverage`` (k = 5).

This module is an edge, like :mod:`jaxgan.loop`: it jits, loops over batches on the host and
writes files (``eval.jsonl``, ``eval.png``, the cached classifier under ``eval/``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxgan import rundir, viz
from jaxgan.build import Run
from jaxgan.configs import Config, ConfigError, metric_direction
from jaxgan.data import toy
from jaxgan.metrics import classifier as clf_lib
from jaxgan.metrics import features as feat_lib
from jaxgan.metrics import fid as fid_lib
from jaxgan.metrics import kid as kid_lib
from jaxgan.metrics import modes as modes_lib
from jaxgan.metrics import prdc as prdc_lib
from jaxgan.observers import Boundary, Context, Observer, Sampler, sample_key

EVAL_LOG = "eval.jsonl"
EVAL_PLOT = "eval.png"
EVAL_DIR = "eval"  # cached classifier
STACKED = "stacked:"

def better(metric: str) -> str:
    """``"max"`` or ``"min"``: which end of ``metric`` is best (what ``keep_best`` assumes)."""
    direction = metric_direction(metric)
    if direction is None:
        raise ValueError(f"no direction known for metric {metric!r}")
    return direction


def default_samples(config: Config) -> int:
    """Samples per evaluation when none is asked: 2,500 for toy data (VEEGAN/PacGAN), 25,600 for
    stacked digits (PacGAN's code for the unrolled-GAN Stacked-MNIST setup), 10,000 otherwise."""
    if config.dataset in toy.TOY:
        return 2500
    if config.dataset.startswith(STACKED):
        return 25600
    return 10000


# ----------------------------------------------------------------------------- host helpers


def batched(fn: Callable[[jax.Array], jax.Array], data: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """``fn`` (jitted by the caller) over ``data [N, ...]`` in equal batches (the last padded,
    so ``fn`` compiles once); results concatenated on the host."""
    return clf_lib._batched(fn, data, min(batch_size, data.shape[0]))


@functools.partial(jax.jit, static_argnames=("subset_size",))
def _distances(real: jax.Array, fake: jax.Array, key: jax.Array, *, subset_size: int) -> dict[str, jax.Array]:
    kid_mean, kid_std = kid_lib.kid(real, fake, key, num_subsets=100, subset_size=subset_size)
    return {"fid": fid_lib.fid(real, fake), "kid": kid_mean, "kid_std": kid_std,
            **prdc_lib.prdc(real, fake, k_pr=3, k_dc=5)}


def distances(real: np.ndarray, fake: np.ndarray, key: jax.Array, space: str) -> dict[str, float]:
    """Every feature-set distance between ``real [N, D]`` and ``fake [M, D]``, suffixed with the
    feature space (``fid_classifier``, ...; raw data gives ``fd_data`` rather than ``fid``)."""
    # Subsets of 1000 (Bińkowski et al.) when there are at least 2000 examples; smaller ones below
    # that, so that subsets differ and kid_std means something (the estimate is unbiased at any size).
    size = max(2, min(1000, real.shape[0] // 2, fake.shape[0] // 2))
    out = jax.device_get(_distances(jnp.asarray(real, jnp.float32), jnp.asarray(fake, jnp.float32), key,
                                    subset_size=size))
    named = {}
    for k, v in out.items():
        name = "fd" if (k == "fid" and space == "data") else k
        named[f"{name}_{space}"] = float(v)
    return named


# ----------------------------------------------------------------------------- the evaluator


@dataclasses.dataclass
class Evaluator:
    """Turns generated samples into metrics for one run's data (see the module table)."""

    kind: str  # toy | stacked | labeled | array
    n: int
    seed: int
    real_features: dict[str, np.ndarray]  # feature space -> real features [n, D]
    extractors: dict[str, Callable[[np.ndarray], np.ndarray]]  # feature space -> samples -> features
    mixture: Any = None  # toy.MixtureOfGaussians for toy data
    classify: Callable[[np.ndarray], np.ndarray] | None = None  # samples -> labels [N] or [N, C]
    num_classes: int = 0
    reference: np.ndarray | None = None  # mode distribution to compare with (None: uniform)
    constants: dict[str, Any] = dataclasses.field(default_factory=dict)  # e.g. modes of real data

    def __call__(self, samples: np.ndarray, *, key: jax.Array | None = None) -> dict[str, Any]:
        """Metrics of ``samples [N, ...]`` (N at least 6; the real set has ``self.n``)."""
        samples = np.asarray(samples, np.float32)
        if not np.all(np.isfinite(samples)):
            bad = int(samples.size - np.count_nonzero(np.isfinite(samples)))
            return {"n": int(samples.shape[0]), "nonfinite_samples": bad, **self.constants}
        key = jax.random.key(self.seed + 1) if key is None else key
        out: dict[str, Any] = {"n": int(samples.shape[0])}
        if self.mixture is not None:
            cov = jax.device_get(_coverage_of(self.mixture)(jnp.asarray(samples)))
            out.update(modes=int(cov.modes), high_quality=float(cov.high_quality),
                       mode_kl=_finite_or_none(cov.reverse_kl), num_modes=int(self.mixture.num_modes))
        if self.classify is not None:
            labels = self.classify(samples)
            stats = jax.device_get(modes_lib.mode_stats(
                jnp.asarray(labels), self.num_classes,
                None if self.reference is None else jnp.asarray(self.reference)))
            out.update(modes=int(stats["modes"]), mode_kl=float(stats["mode_kl"]),
                       num_modes=int(stats["histogram"].shape[0]))
            if stats["histogram"].shape[0] <= 100:
                out["class_histogram"] = [int(c) for c in stats["histogram"]]
        for i, (space, extract) in enumerate(self.extractors.items()):
            fake = extract(samples)
            out.update(distances(self.real_features[space], fake, jax.random.fold_in(key, i), space))
        out.update(self.constants)
        return out


@functools.cache
def _coverage_of(mixture) -> Callable[[jax.Array], Any]:
    """VEEGAN/PacGAN coverage against ``mixture``, compiled once per mixture."""
    from jaxgan.metrics import coverage

    return jax.jit(lambda samples: coverage.of_mixture(samples, mixture))


def _finite_or_none(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _flat(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, np.float32).reshape(x.shape[0], -1)


def _jit_features(fn: Callable[[jax.Array], jax.Array], batch_size: int) -> Callable[[np.ndarray], np.ndarray]:
    jitted = jax.jit(fn)
    return lambda x: batched(jitted, np.asarray(x, np.float32), batch_size)


def _channels(fn: Callable[[jax.Array], jax.Array]) -> Callable[[jax.Array], jax.Array]:
    """A per-digit function applied to each channel of stacked images ``[B, H, W, C]``:
    results ``[B, C, ...]`` (flattened by the caller as it needs)."""

    def per_channel(x):
        b, h, w, c = x.shape
        digits = jnp.moveaxis(x, -1, 1).reshape(b * c, h, w, 1)
        out = fn(digits)
        return out.reshape(b, c, *out.shape[1:])

    return per_channel


def _is_image(shape: tuple[int, ...]) -> bool:
    return len(shape) == 3 and shape[-1] in (1, 3)


def build(
    config: Config,
    run_dir: str,
    *,
    n: int | None = None,
    inception: str | None = None,
    seed: int = 0,
    classifier_steps: int = 1500,
    echo: Callable[[str], None] = print,
    source: Any = None,
    features: dict[str, Callable[[jax.Array], jax.Array]] | None = None,
) -> Evaluator:
    """The evaluator for ``config``'s data; the classifier (image data with labels) is fitted
    once and cached in ``run_dir/eval/``. ``source`` (optional) is the run's data source.
    ``features`` adds feature spaces: ``{name: fn}`` with ``fn(samples [B, ...]) -> [B, D]`` pure
    (it is jitted here), giving ``fid_<name>``, ``kid_<name>``, ... (a
    :class:`~jaxgan.metrics.features.FeatureExtractor` works too)."""
    n = default_samples(config) if n is None else int(n)
    if n < 10:
        raise ConfigError(f"evaluation needs at least 10 samples (k-NN metrics, KID subsets); got n={n}")
    key = jax.random.key(seed)
    if source is None:
        source = _source(config)
    shape = tuple(source.example_shape)
    cache_dir = os.path.join(run_dir, EVAL_DIR)
    real_features: dict[str, np.ndarray] = {}
    extractors: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
    ev = Evaluator(kind="array", n=n, seed=seed, real_features=real_features, extractors=extractors)

    if config.dataset in toy.TOY:
        ev.kind = "toy"
        ev.mixture = source
        real = np.asarray(jax.jit(source.sample, static_argnums=1)(key, n))
    elif config.dataset.startswith(STACKED):
        ev.kind = "stacked"
        real, real_labels = (np.asarray(a) for a in jax.jit(source.sample_with_labels, static_argnums=1)(key, n))
        digits = _labeled_data(config, config.dataset)
        model = _classifier(config, cache_dir, digits, classifier_steps, echo)
        ev.classify = _jit_features(_channels(model.predict), 500)
        ev.num_classes = digits["num_classes"]
        extractors["classifier"] = _jit_features(
            lambda x: _channels(model.features)(x).reshape(x.shape[0], -1), 500)
        real_modes = jax.device_get(modes_lib.mode_stats(jnp.asarray(ev.classify(real)), ev.num_classes))
        true_modes = jax.device_get(modes_lib.mode_stats(jnp.asarray(real_labels), ev.num_classes))
        ev.constants = {"modes_real": int(real_modes["modes"]), "mode_kl_real": float(real_modes["mode_kl"]),
                        "modes_real_labels": int(true_modes["modes"]),
                        "classifier_test_accuracy": model.info.get("test_accuracy")}
    elif _has_labels(config):
        ev.kind = "labeled"
        data = _labeled_data(config, config.dataset)
        pick = np.random.default_rng(seed).permutation(data["train"][0].shape[0])[:n]
        real = clf_lib.as_float(jnp.asarray(data["train"][0][pick]))
        real = np.asarray(real)
        model = _classifier(config, cache_dir, data, classifier_steps, echo)
        ev.classify = _jit_features(model.predict, 500)
        ev.num_classes = data["num_classes"]
        freq = np.bincount(data["train"][1], minlength=ev.num_classes).astype(np.float64)
        ev.reference = freq / freq.sum()
        extractors["classifier"] = _jit_features(model.features, 500)
        ev.constants = {"classifier_test_accuracy": model.info.get("test_accuracy")}
    else:
        real = _real_from_source(source, key, n)
    if ev.kind in ("toy", "array"):
        extractors["data"] = _flat
    if inception:
        if not _is_image(shape):
            raise ConfigError(f"--inception needs image data [H, W, 1 or 3]; this run's examples have shape {shape}")
        extractor = feat_lib.load_inception(inception)
        extractors["inception"] = _jit_features(extractor.fn, 50)
    for name, fn in (features or {}).items():
        if name in extractors or name == "data":
            raise ValueError(f"feature space {name!r} already exists; name yours differently")
        extractors[name] = _jit_features(fn, 500)
    ev.n = real.shape[0]
    for space, extract in extractors.items():
        real_features[space] = extract(real)
    return ev


def _source(config: Config):
    from jaxgan import build as build_lib

    return build_lib.data_source(config)


def _real_from_source(source, key, n: int) -> np.ndarray:
    if hasattr(source, "sample_ids"):
        return np.asarray(jax.jit(source.sample_ids)(key, jnp.arange(n, dtype=jnp.uint32)))
    raise ConfigError(f"cannot draw real examples from data source {type(source).__name__} for evaluation")


def _has_labels(config: Config) -> bool:
    name = config.dataset
    if name in toy.TOY or name.endswith(".npy") or name.startswith("random:"):
        return False
    import tensorflow_datasets as tfds

    from jaxgan.data import sklearn_digits  # noqa: F401  (registers the offline builder)

    try:
        features = tfds.builder(name, data_dir=_data_dir(config)).info.features
    except tfds.core.registered.DatasetNotFoundError:
        return False
    return "label" in features and hasattr(features["label"], "num_classes")


def _data_dir(config: Config) -> str | None:
    return getattr(config, "data_dir", "") or None


def _labeled_data(config: Config, name: str) -> dict[str, Any]:
    """Train (and test, when there is one) splits of the labelled base dataset, as uint8."""
    from jaxgan.data import labeled

    base = name.removeprefix(STACKED)
    size = getattr(config, "image_size", 0) or None
    train = labeled.load(base, split="train", data_dir=_data_dir(config), image_size=size)
    try:
        test = labeled.load(base, split="test", data_dir=_data_dir(config), image_size=size)
        test_pair = (test.images, test.labels)
    except Exception:  # no test split: report no held-out accuracy
        test_pair = None
    return {"name": base, "train": (train.images, train.labels), "test": test_pair,
            "num_classes": train.num_classes}


def _classifier(config: Config, cache_dir: str, data: dict[str, Any], steps: int, echo) -> clf_lib.Classifier:
    images, labels = data["train"]
    identity = {"dataset": data["name"], "data_dir": _data_dir(config) or "", "input_shape": list(images.shape[1:]),
                "train_size": int(images.shape[0]), "num_classes": int(data["num_classes"])}
    model, cached = clf_lib.fit_cached(
        cache_dir, identity, lambda: (images, labels, data["num_classes"], data["test"]), echo=echo, steps=steps)
    if not cached and model.info.get("test_accuracy") is not None:
        echo(f"jaxgan: evaluation classifier: test accuracy {model.info['test_accuracy']:.4f}")
    return model


# ----------------------------------------------------------------------------- runs


def sample(run: Run, state, n: int, key: jax.Array, batch_size: int = 500) -> np.ndarray:
    """``n`` generated samples of ``state`` (:class:`jaxgan.observers.Sampler`)."""
    return Sampler(run.gan, batch_size)(state, key, n)


def evaluate_run(
    run_dir: str,
    *,
    n: int | None = None,
    step: int | None = None,
    inception: str | None = None,
    seed: int = 0,
    classifier_steps: int = 1500,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Evaluate the checkpoint ``step`` (default: latest) of ``run_dir``; append the result to
    ``run_dir/eval.jsonl`` and return it."""
    from jaxgan.checkpoint import Checkpointer

    config = rundir.load_config(run_dir)
    run = Run.from_config(config)
    with Checkpointer(os.path.join(run_dir, rundir.CHECKPOINTS), read_only=True) as ckpt:  # never prunes
        if ckpt.latest_step() is None:
            raise rundir.RunDirError(
                f"{run_dir!r} has no checkpoint yet: train it first (jaxgan train --out {run_dir})")
        if step is not None and step not in ckpt.all_steps():
            raise rundir.RunDirError(f"{run_dir!r} has no checkpoint at step {step}; it has {ckpt.all_steps()}")
        state, record = ckpt.restore(run.init_state(), step)
    evaluator = build(config, run_dir, n=n, inception=inception, seed=seed, classifier_steps=classifier_steps,
                      echo=echo, source=run.source)
    samples = sample(run, state, evaluator.n, sample_key(seed, int(record["step"])))
    result = {"step": int(record["step"]), **evaluator(samples), "ema": state.ema_params is not None,
              "seed": seed}
    rundir.append_jsonl(os.path.join(run_dir, EVAL_LOG), [result])
    return result


def scalars(result: dict[str, Any]) -> dict[str, float]:
    """The numeric entries of an evaluation (what goes into metrics.jsonl and the plot)."""
    return {k: float(v) for k, v in result.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and k not in ("step", "n", "seed")}


def plot_keys(result: dict[str, Any], evaluator: Evaluator) -> list[str]:
    """The metrics worth a panel: those that change with the generator."""
    fixed = {*evaluator.constants, "num_modes", "nonfinite_samples"}
    return [k for k in scalars(result) if k not in fixed and not k.startswith("kid_std")]


class EvalObserver(Observer):
    """Periodic evaluation during training: every ``config.eval.every`` rounds and at the end, on
    ``config.eval.samples`` of the boundary's shared samples (from the EMA generator when the run
    keeps one). Appends each result to ``eval.jsonl``, redraws ``eval.png`` at plot steps and at
    the end (on the writer), and returns the scalars, which the loop hands to the other
    observers (diagnosis, keep-best) as an ``eval`` row."""

    def __init__(self, config: Config, *, echo: Callable[[str], None] = print):
        self.config = config
        self.echo = echo
        self.evaluator: Evaluator | None = None
        self.last: dict[str, float] = {}
        self._keys: list[str] = []
        self._unplotted = False

    def on_start(self, ctx: Context) -> None:
        self._ctx = ctx
        c = self.config
        self.evaluator = build(c, ctx.out, n=c.eval.samples, inception=c.eval.inception or None, seed=c.seed,
                               classifier_steps=c.eval.classifier_steps, echo=self.echo, source=ctx.run.source)

    def wants(self, step: int) -> int:
        c = self.config
        return self.evaluator.n if step % c.eval.every == 0 or step == c.steps else -1

    def measure(self, b: Boundary) -> dict[str, float]:
        if self.evaluator is None or self.wants(b.step) < 0 or b.samples is None:
            return {}
        key = jax.random.fold_in(jax.random.key(self.config.seed), b.step)
        result = {"step": b.step, **self.evaluator(b.samples[: self.evaluator.n], key=key)}
        rundir.append_jsonl(os.path.join(self._ctx.out, EVAL_LOG), [result])
        self.last = scalars(result)
        self._keys = plot_keys(result, self.evaluator)
        self._unplotted = True
        if b.plot or b.final:
            self._plot()
        return self.last

    def _plot(self) -> None:
        """``eval.png``: every evaluation in ``eval.jsonl`` so far (a resumed run's too)."""
        rows = rundir.read_jsonl(os.path.join(self._ctx.out, EVAL_LOG))
        self._ctx.writer.submit("eval.png", functools.partial(viz.metrics_plot, keys=list(self._keys),
                                                              title="evaluation over training"),
                                rows, os.path.join(self._ctx.out, EVAL_PLOT))
        self._unplotted = False

    def on_end(self, step: int) -> None:
        if self._unplotted:  # stopped between plot steps
            self._plot()

    def postfix(self) -> dict[str, str]:
        for key in ("modes", "fid_classifier", "fid_inception", "fd_data"):
            if key in self.last:
                return {key: f"{self.last[key]:.3g}"}
        return {}


def observers(config: Config, *, echo: Callable[[str], None] = print) -> tuple[Observer, ...]:
    """The evaluation observers ``config`` asks for (none when ``eval_every == 0``)."""
    return (EvalObserver(config, echo=echo),) if config.eval.every > 0 else ()
