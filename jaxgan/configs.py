"""Run configurations as data, and the named presets.

A :class:`Config` is a frozen dataclass of plain values (it round-trips through JSON into a
run's ``config.json``). Presets are small functions returning one; ``--set key=value``
overrides are parsed and validated here, once, before anything is compiled.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the field, the value and the fix."""


@dataclasses.dataclass(frozen=True)
class DiagConfig:
    """Diagnosis (:mod:`jaxgan.diagnose`): what to do about failure modes, and each detector's
    thresholds. Windows count rounds. ``--set diag.<field>=value``."""

    mode: str = "warn"  # warn | stop | off; stop: end a run whose failure lasts diag.stop_after rounds
    stop_after: int = 2000  # rounds a failure may last, unrecovered, before mode=stop ends the run
    stop_on_converged: bool = False  # stop when D's accuracy has fallen to a coin flip (converged)
    quality: str = "auto"  # sample quality for poor_fit/mode_collapse: auto (toy data: every log row), off
    samples: int = 2500  # generated samples per quality measurement (toy data)
    warmup: int = 500  # rounds before sample-based detectors judge (a fresh G is a blob off the data)
    score_warmup: int = 100  # rounds before score-based detectors judge (a fresh D scores 0.5)
    window: int = 200  # rounds a condition must hold (dominance, collapse, vanishing, converged, poor fit)
    long_window: int = 1000  # rounds over which non_convergence looks for swings
    g_low: float = 0.1  # discriminator_dominates: generator score at most this ...
    d_high: float = 0.85  # ... and discriminator score at least this (also "D confident")
    g_high: float = 0.7  # generator_dominates: generator score at least this (a tanh D tops out ~0.77)
    half_band: float = 0.05  # converged: both scores within 0.5 +- this ...
    acc_band: float = 0.1  # ... D's accuracy within 0.5 +- this ...
    edge: float = 0.6  # ... after D's score had reached this (D had an edge, then lost it)
    diversity_min: float = 0.5  # mode_collapse: diversity (fake/real spread) at most this, or
    modes_min: float = 0.5  # (toy) the samples spread over at most this fraction of the modes' territories
    fit_min: float = 0.5  # poor_fit: high-quality fraction (toy) or precision (images) below this ...
    fit_band: float = 0.1  # ... while both scores sit within 0.5 +- this (D cannot tell the samples apart)
    fit_progress: float = 0.2  # ... and (toy) their median distance to a mode fell less than this ...
    fit_window: int = 2000  # ... over this many rounds (a G still closing in on the modes is learning)
    vanish_ratio: float = 0.05  # vanishing_gradients: G's gradient norm at most this x its peak
    osc_std: float = 0.1  # non_convergence: a score's std over the long window at least this,
    osc_crossings: int = 4  # crossing its mean at least this often, and not damping out; or
    osc_swing: float = 0.15  # its round-to-round std within logged rows at least this over the window


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Periodic evaluation during training (:mod:`jaxgan.evaluate`). ``--set eval.<field>=value``."""

    every: int = 0  # rounds between evaluations during training (0: off; a multiple of log_every)
    samples: int = 2500  # generated (and real) samples per evaluation during training
    inception: str = ""  # .npz of FID Inception weights (jaxgan.metrics.features.load_inception)
    classifier_steps: int = 1500  # training steps of the evaluation classifier (labelled images)


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything a run needs, as plain values. Field comments are the ``--set`` help."""

    preset: str = "ring8"
    dataset: str = "ring8"  # ring8 | grid25 | gaussian1d | gaussian2d | a .npy file [N, ...] | random:HxWxC
    #   | any TFDS image dataset (mnist, fashion_mnist, cifar10, celeb_a, ...)
    #   | stacked:NAME (Stacked-MNIST over TFDS digits NAME: mnist, or sklearn_digits offline)
    model: str = "mlp"  # mlp | dcgan
    latent_dim: int = 256
    g_hidden: tuple[int, ...] = (128, 128)  # MLP hidden widths, e.g. g_hidden=128,128
    d_hidden: tuple[int, ...] = (128, 128)
    activation: str = "tanh"  # relu | tanh | leaky_relu | elu
    d_activation: str = ""  # D's own activation ("": activation), or maxout (5 pieces, PacGAN's D)
    g_norm: str = "none"  # MLP G: none | batch (batch norm before each hidden activation, PacGAN's G)
    d_dropout: float = 0.0  # dropout rate in D's hidden layers (a remedy)
    pack: int = 1  # PacGAN: D judges this many samples concatenated (1: one at a time)
    d_mbstd: bool = False  # minibatch standard deviation as one more feature in D (Karras et al. 2018)
    g_width: int = 64  # DCGAN: G's base width (ngf; the last hidden layer's channels)
    d_width: int = 64  # DCGAN: D's base width (ndf; the first layer's channels)
    d_norm: str = "batch"  # DCGAN: D's normalisation: batch | spectral | none
    image_size: int = 0  # TFDS images: crop to the central square and resize to N x N (0: as stored)
    data_dir: str = ""  # TFDS data_dir ("": $TFDS_DATA_DIR or ~/tensorflow_datasets)
    data_split: str = "train"  # TFDS split to train on, e.g. train or train+test
    download: bool = False  # TFDS: download and prepare a dataset that data_dir does not hold
    init_gain: float = 0.0  # > 0: orthogonal kernels with this gain (Metz et al.: 0.8); 0: LeCun normal
    init_std: float = 0.0  # > 0 (and init_gain 0): N(0, init_std^2) kernels (PacGAN: 0.02)
    d_input_scale: float = 1.0  # D multiplies its input by this first (Metz et al.: 0.25)
    loss: str = "non_saturating"  # minimax | non_saturating | wasserstein | hinge | least_squares
    d_steps: int = 1  # D updates per round
    g_steps: int = 1  # G updates per round
    simultaneous: bool = False  # both players update from the same state each round (for study, not training)
    unroll_steps: int = 0  # unrolled-GAN lookahead depth k (0: plain GAN)
    unroll_first_order: bool = False  # stop the gradient through the lookahead
    unroll_remat: bool = False  # jax.checkpoint the lookahead (less memory, more compute)
    unroll_resample: bool = False  # fresh fakes for every lookahead update (default: the G step's fakes)
    g_lr: float = 1e-3
    d_lr: float = 1e-4
    b1: float = 0.5  # Adam beta1 (both players)
    b2: float = 0.999  # Adam beta2 (both players)
    lr_decay: str = "none"  # none | cosine | linear: both learning rates decay to 0 over `steps` rounds
    batch_size: int = 512  # global batch (split over devices)
    steps: int = 5000  # rounds to reach (one round = d_steps D updates + g_steps G updates)
    # Penalties and remedies (0 switches one off). `penalties=gp:10,label_flip:0.1` sets several.
    gp: float = 0.0  # WGAN-GP weight lambda
    r1: float = 0.0  # R1 gamma
    r2: float = 0.0  # R2 gamma
    weight_clip: float = 0.0  # WGAN weight clipping bound c
    d_weight_l2: float = 0.0  # L2 penalty weight on D's kernels
    instance_noise: float = 0.0  # std of Gaussian noise on D's inputs
    instance_noise_anneal: int = 0  # rounds over which that std decays linearly to 0 (0: constant)
    label_smoothing: float = 0.0  # one-sided: real targets become 1 - label_smoothing
    label_flip: float = 0.0  # fraction of real examples labelled fake
    ema_decay: float = 0.0  # EMA of G's weights for sampling (0: off), e.g. 0.999
    nan_policy: str = "stop"  # stop | skip: on a NaN/Inf update, stop the run or skip the update
    devices: int = 0  # devices to use (0: all local devices; 1: plain jit); per process when multi-host
    parallel: str = "pmap"  # pmap | sharding | shard_map: how the step spreads over several devices
    seed: int = 0
    log_every: int = 100  # rounds between logged metrics (and compiled chunk length)
    plot_every: int = 1000  # rounds between plots and sample pictures
    ckpt_every: int = 1000  # rounds between checkpoints
    keep_checkpoints: int = 3  # how many recent checkpoints to keep
    keep_best: str = "auto"  # keep the best checkpoint in <run>/best by these metrics, compared in order,
    #   each `name` or `name:max|min` (e.g. fid_classifier, or modes_captured,high_quality_frac);
    #   auto: coverage on toy data, else off; off
    tensorboard: bool = True  # write TensorBoard event files (scalars, samples) to <run>/tensorboard
    diag: DiagConfig = DiagConfig()  # diag.<field>: failure-mode diagnosis (jaxgan.diagnose)
    eval: EvalConfig = EvalConfig()  # eval.<field>: periodic evaluation (jaxgan.evaluate)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        """A config from its JSON form: nested ``diag``/``eval`` groups, or the flat keys of
        configs saved before they were grouped (``diag_window``, ``eval_every``, ...)."""
        data = dict(data)
        values: dict[str, Any] = {}
        for group in GROUPS:
            nested = data.pop(group, None)
            if isinstance(nested, dict):
                for key, value in nested.items():
                    values[f"{group}.{key}"] = value
            elif nested is not None:
                values[group] = nested  # an old flat `diag: warn`
        for key, value in data.items():
            values[key] = value
        known = set(_flat_fields())
        unknown = sorted(k for k in values if LEGACY_KEYS.get(k, k) is not None and LEGACY_KEYS.get(k, k) not in known)
        if unknown:
            raise ConfigError(f"unknown config key(s) {unknown} in saved config; valid keys: {sorted(known)}")
        resolved: dict[str, Any] = {}
        for key, value in values.items():
            name = LEGACY_KEYS.get(key, key)
            if name is not None:  # None: replaced by keep_best (see _legacy_best), or GONE
                resolved[name] = _coerce(name, value)
        best = _legacy_best(values)
        if best is not None and "keep_best" not in values:
            resolved["keep_best"] = best
        return validate(_replace(cls(), resolved))


# The groups of nested settings, and the flat keys they replace (still read from saved configs
# and accepted by --set with a note naming the new key).
GROUPS = {"diag": DiagConfig, "eval": EvalConfig}
LEGACY_KEYS: dict[str, str | None] = {
    "diag": "diag.mode",
    **{f"diag_{f.name}": f"diag.{f.name}" for f in dataclasses.fields(DiagConfig) if f.name != "mode"},
    **{f"eval_{f.name}": f"eval.{f.name}" for f in dataclasses.fields(EvalConfig)},
    "diag_best_metric": None, "diag_best_mode": None, "keep_best_metric": None, "keep_best_mode": None,
    "diag_quality_min": None,
}
# Keys that a saved config may hold and that are now ignored, with what replaced them.
GONE = {"diag_quality_min": "the toy collapse rule reads where every sample falls (modes_spread), not only the "
                            "high-quality ones; tune diag.modes_min"}


def _legacy_best(values: dict[str, Any]) -> str | None:
    """``keep_best`` for a config saved with the two keep-best mechanisms this replaced
    (``keep_best_metric``/``keep_best_mode`` in the checkpoint manager, ``diag_best_metric``/
    ``diag_best_mode`` in the diagnosis): the checkpoint manager's when it was set, else the
    diagnosis's (whose default was ``auto``)."""
    for metric_key, mode_key in (("keep_best_metric", "keep_best_mode"), ("diag_best_metric", "diag_best_mode")):
        metric = str(values.get(metric_key, "") or "").strip()
        if metric:
            mode = str(values.get(mode_key, "") or "").strip()
            if metric in ("auto", "off") or not mode:
                return metric
            return ",".join(f"{name.strip()}:{mode}" for name in metric.split(","))
    return None


PENALTY_KEYS = (
    "gp",
    "r1",
    "r2",
    "weight_clip",
    "d_weight_l2",
    "instance_noise",
    "label_smoothing",
    "label_flip",
)

# Which config keys may differ between a run's saved config and a resumed one.
# None of them changes the trajectory: how far, how often to log/plot/save, what to keep, how
# the step is spread over devices, what to do on a non-finite update (changed to resume a run
# stopped by one), and where the (same) TFDS dataset is found.
# Which config keys may differ between a run's saved config and a resumed one. None of them
# changes the trajectory: how far, how often to log/plot/save, what to keep, how the step is
# spread over devices, what to do on a non-finite update (changed to resume a run stopped by
# one), where the (same) TFDS dataset is found, and what the monitoring and evaluation watch.
RESUMABLE_CHANGES = frozenset({
    "steps", "log_every", "plot_every", "ckpt_every", "keep_checkpoints", "keep_best", "devices", "parallel",
    "nan_policy", "data_dir", "download", "tensorboard", "diag", "eval",
})
# What `jaxgan diagnose --set` may change when it replays a run's metrics.
DIAG_KEYS = frozenset({"diag"})


# ---------------------------------------------------------------------------- presets


# What the toy presets share, and why (each choice tried on 2 seeds, then the presets on 10, with
# benchmarks/mode_collapse.py; figures in benchmarks/README.md):
# - D learns as fast as G (Adam 1e-3 both): with D at 1e-4, D cannot tell samples 0.1 off a mode
#   from the data, both scores sit at 0.5 and fewer than half the samples land on a mode;
# - maxout units in D (5 pieces, PacGAN's D): sharp, piecewise-linear decision boundaries that
#   separate modes 3 std wide; with tanh units a bigger G collapses;
# - three layers of 256 in G: enough to tear the latent space into every mode with thin seams;
# - packs of 2 (PacGAN2): D sees how a pair spreads, which keeps every mode covered;
# - samples from an EMA of G's weights (0.999): it averages out the last updates' jitter.
TOY_2D: dict[str, Any] = {
    "g_hidden": (256, 256, 256), "d_hidden": (128, 128), "activation": "tanh", "d_activation": "maxout",
    "g_lr": 1e-3, "d_lr": 1e-3, "b1": 0.5, "b2": 0.999, "pack": 2, "batch_size": 512, "steps": 8000,
    "ema_decay": 0.999,
}


def ring8() -> Config:
    """Ring of 8 Gaussians (radius 2, std 0.02): the default, ``TOY_2D`` with a 16-dimensional
    latent.

    Run: ``jaxgan train``; its mode coverage over 10 seeds is in benchmarks/README.md. The
    paper's own setup is ``metz-ring8``.
    """
    return Config(preset="ring8", dataset="ring8", latent_dim=16, **TOY_2D)


def grid25() -> Config:
    """5x5 grid of Gaussians (VEEGAN/PacGAN's harder benchmark): ``TOY_2D`` with a 256-dimensional
    latent (a 16-dimensional one lost modes here).

    Run: ``jaxgan train --preset grid25``. Results over 10 seeds: benchmarks/README.md.
    """
    return Config(preset="grid25", dataset="grid25", latent_dim=256, **TOY_2D)


# The 2-D mixture experiment of Metz et al. 2016 (arXiv:1611.02163, appendix A): G has two ReLU
# layers of 128 and a linear output; D scales its input by 1/4, then one ReLU layer of 128 and a
# linear logit; all kernels orthogonal with gain 0.8; the saturating minimax loss; z ~ N(0, I_256);
# Adam(1e-4, beta1 = 0.5) for both players; 25,000 single-player updates (12,500 rounds). The
# batch size (512) is the authors' notebook's (poolio/unrolled_gan); the paper does not give one.
METZ_2D: dict[str, Any] = {
    "latent_dim": 256, "g_hidden": (128, 128), "d_hidden": (128,), "activation": "relu", "init_gain": 0.8,
    "d_input_scale": 0.25, "loss": "minimax", "g_lr": 1e-4, "d_lr": 1e-4, "b1": 0.5, "batch_size": 512,
    "steps": 12500, "log_every": 250, "plot_every": 2500, "ckpt_every": 2500,
}


def metz_ring8() -> Config:
    """Ring of 8 Gaussians with Metz et al.'s 2-D setup (``METZ_2D``): the plain GAN collapses.

    Run: ``jaxgan train --preset metz-ring8 --set unroll_steps=10`` (the paper's Figure 1); it
    is slow on a CPU (12,500 rounds of batch 512). Results: benchmarks/README.md.
    """
    return Config(preset="metz-ring8", dataset="ring8", **METZ_2D)


def metz_grid25() -> Config:
    """5x5 grid (spacing 2, std 0.05) with ``METZ_2D``; D's input scale 1/4 maps it to [-1, 1].

    Run: ``jaxgan train --preset metz-grid25 --set unroll_steps=10``. Results: benchmarks/README.md.
    """
    return Config(preset="metz-grid25", dataset="grid25", **METZ_2D)


# PacGAN's 2-D experiments (Lin et al. 2018), read from the authors' code (fjxmlzn/PacGAN,
# synthetic_data_experiments/2DRing_GAN&PacGAN and 2DGrid_GAN&PacGAN: config.py, pacgan_task.py):
# G maps z ~ N(0, I_2) through four 400-unit layers, each linear without bias, batch norm and ReLU,
# to a linear output; D has three maxout layers of 200 units and 5 pieces and a linear logit
# (packing concatenates the m inputs); weights N(0, 0.02^2), biases 0; the non-saturating loss;
# one Adam(1e-4, beta1 = 0.8) for both players, which update together on each batch of 100 (here
# alternating, D first); 400 epochs of 1,000 batches. Their ring has radius 1 and std 0.01 (the
# ring8 data has radius 2 and std 0.02: D's input is scaled by 1/2 to see theirs); their grid is
# the grid25 data. Their data is a fixed set of 100,000 points; here every batch is fresh.
PACGAN_2D: dict[str, Any] = {
    "latent_dim": 2, "g_hidden": (400, 400, 400, 400), "g_norm": "batch", "activation": "relu",
    "d_hidden": (200, 200, 200), "d_activation": "maxout", "init_std": 0.02, "loss": "non_saturating",
    "g_lr": 1e-4, "d_lr": 1e-4, "b1": 0.8, "batch_size": 100, "steps": 400_000, "log_every": 500,
    "plot_every": 20_000, "ckpt_every": 20_000,
}


def pacgan_ring8() -> Config:
    """Ring of 8 with PacGAN's networks and settings (``PACGAN_2D``); ``--set pack=2`` is PacGAN2.

    Run: ``jaxgan train --preset pacgan-ring8 --set pack=2 --steps 20000`` (the full 400,000
    rounds are hours on a CPU). Results: benchmarks/README.md.
    """
    return Config(preset="pacgan-ring8", dataset="ring8", d_input_scale=0.5, **PACGAN_2D)


def pacgan_grid25() -> Config:
    """5x5 grid with PacGAN's networks and settings (``PACGAN_2D``); ``--set pack=4`` is PacGAN4."""
    return Config(preset="pacgan-grid25", dataset="grid25", **PACGAN_2D)


def gaussian1d() -> Config:
    """One 1-D Gaussian N(1, 0.5^2): the smallest problem on which a GAN must move G's moments.

    ``jaxgan train --preset gaussian1d`` (about 20 s here): the EMA generator's samples have
    mean 1.00 +- 0.01 and std 0.42-0.54 over seeds 0-2 (the plain iterate oscillates more; the
    EMA average of G's weights, Yazici et al. 2019, damps it).
    """
    return Config(
        preset="gaussian1d", dataset="gaussian1d", latent_dim=4, g_hidden=(32,), d_hidden=(32,),
        activation="relu", batch_size=256, steps=3000, d_lr=1e-3, g_lr=1e-3, ema_decay=0.995,
    )


def _dcgan(**overrides) -> Config:
    """DCGAN hyperparameters (Radford et al. 2016, sec. 4; the PyTorch example): Adam 2e-4 with
    beta1 = 0.5 for both players, z of 100 dimensions, base widths 64, batch 64."""
    base = dict(model="dcgan", latent_dim=100, g_width=64, d_width=64, d_norm="batch", g_lr=2e-4, d_lr=2e-4,
                b1=0.5, b2=0.999, batch_size=64, loss="non_saturating", log_every=50, plot_every=500,
                ckpt_every=500)
    return Config(**{**base, **overrides})


def dcgan_mnist() -> Config:
    """DCGAN on MNIST at 28 x 28 x 1 (G: z -> 7x7x128 -> 14x14x64 -> 28x28x1).

    Run: ``jaxgan train --preset dcgan-mnist --set data_dir=DIR`` with MNIST prepared in DIR
    (or add ``download=true`` once, with network access). Not run to completion here (no
    network on this project's machines); the pipeline is exercised on offline TFDS datasets
    in tests/test_tfds.py.
    """
    return _dcgan(preset="dcgan-mnist", dataset="mnist", image_size=28, steps=10_000)


def dcgan_cifar10() -> Config:
    """DCGAN on CIFAR-10 at 32 x 32 x 3 (G: z -> 4x4x256 -> 8x8x128 -> 16x16x64 -> 32x32x3).

    Run: ``jaxgan train --preset dcgan-cifar10 --set data_dir=DIR`` (CIFAR-10 prepared in DIR,
    or ``download=true``). Not run to completion here (no network).
    """
    return _dcgan(preset="dcgan-cifar10", dataset="cifar10", image_size=32, steps=20_000)


def dcgan32() -> Config:
    """Throughput benchmark: the PyTorch example's DCGAN at 32 x 32 x 3 (nz 100, ngf = ndf = 64,
    batch 64, Adam 2e-4/0.5) on random images. Run: ``jaxgan bench --preset dcgan32``, or
    ``python benchmarks/throughput.py`` for the comparison with PyTorch (benchmarks/README.md)."""
    return _dcgan(preset="dcgan32", dataset="random:32x32x3", steps=50, log_every=10)


def dcgan64() -> Config:
    """As :func:`dcgan32` at 64 x 64 x 3: exactly the PyTorch example's netG and netD."""
    return _dcgan(preset="dcgan64", dataset="random:64x64x3", steps=10, log_every=5)


PRESETS: dict[str, Callable[[], Config]] = {
    "ring8": ring8,
    "grid25": grid25,
    "gaussian1d": gaussian1d,
    "dcgan-mnist": dcgan_mnist,
    "dcgan-cifar10": dcgan_cifar10,
    "dcgan32": dcgan32,
    "dcgan64": dcgan64,
    "metz-ring8": metz_ring8,
    "metz-grid25": metz_grid25,
    "pacgan-ring8": pacgan_ring8,
    "pacgan-grid25": pacgan_grid25,
}


def preset(name: str) -> Config:
    try:
        return PRESETS[name]()
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None


# ---------------------------------------------------------------------------- overrides


def _flat_fields() -> dict[str, Any]:
    """Every settable key with its type: top-level fields, and ``group.field`` for the groups."""
    out: dict[str, Any] = {}
    for name, typ in typing.get_type_hints(Config).items():
        if name in GROUPS:
            for sub, sub_typ in typing.get_type_hints(GROUPS[name]).items():
                out[f"{name}.{sub}"] = sub_typ
        else:
            out[name] = typ
    return out


def _coerce(key: str, value: Any) -> Any:
    """Turn ``value`` (a string from the command line, or JSON) into the type of key ``key``
    (a field, or ``group.field``)."""
    typ = _flat_fields()[key]
    try:
        if typ is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if typ is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value) if not isinstance(value, str) else int(value.strip())
        if typ is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if typ is str:
            return str(value)
        if typing.get_origin(typ) is tuple:
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(int(v) for v in items if str(v).strip() != "")
        if isinstance(typ, types.UnionType):
            return value
    except (TypeError, ValueError):
        name = getattr(typ, "__name__", str(typ))
        raise ConfigError(
            f"config key {key!r} needs a value of type {name}, got {value!r}"
        ) from None
    return value


def canonical_key(key: str, *, warn: Callable[[str], None] | None = None) -> str:
    """The current spelling of a settable key: ``diag_window`` -> ``diag.window`` (with a note
    to ``warn``), ``diag`` -> ``diag.mode``. Keys replaced by ``keep_best`` are refused, naming it."""
    if key in LEGACY_KEYS:
        new = LEGACY_KEYS[key]
        if new is None and key in GONE:
            raise ConfigError(f"{key} is gone: {GONE[key]}")
        if new is None:
            raise ConfigError(
                f"{key} is gone: one keep-best now serves both uses; set keep_best=METRIC[:max|min],... "
                "(e.g. keep_best=fid_classifier or keep_best=modes_captured,high_quality_frac), auto or off"
            )
        if warn is not None and key != "diag":
            warn(f"{key} is now spelled {new} (the flat spelling still works for now)")
        return new
    return key


def parse_overrides(items: Iterable[str], *, warn: Callable[[str], None] | None = None) -> dict[str, Any]:
    """``["loss=hinge", "gp=10", "diag.window=300"]`` -> ``{"loss": "hinge", "gp": 10.0,
    "diag.window": 300}``; ``penalties=gp:10,r1:1`` expands to the penalty keys; flat spellings of
    grouped keys (``diag_window``) are accepted and renamed (``warn`` gets a note). Unknown keys
    and bad values raise :class:`ConfigError` listing the valid keys."""
    valid = _flat_fields()
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r} (e.g. --set loss=hinge)")
        key, value = item.split("=", 1)
        key = key.strip()
        if key == "penalties":
            out.update(_parse_penalties(value))
            continue
        key = canonical_key(key, warn=warn)
        if key not in valid or key == "preset":
            names = sorted(k for k in valid if k != "preset")
            raise ConfigError(f"unknown config key {key!r}; valid keys: {', '.join(names)}, penalties")
        out[key] = _coerce(key, value)
    return out


def _parse_penalties(text: str) -> dict[str, float]:
    out: dict[str, float] = {k: 0.0 for k in PENALTY_KEYS}
    text = text.strip()
    if text.lower() in ("", "none", "off"):
        return out
    for part in text.split(","):
        name, sep, value = part.partition(":")
        name = name.strip()
        if name not in PENALTY_KEYS or not sep:
            raise ConfigError(
                f"penalties expects name:value pairs such as gp:10,label_flip:0.1; got {part!r}; "
                f"names: {', '.join(PENALTY_KEYS)}"
            )
        out[name] = _coerce(name, value)
    return out


def _replace(config: Config, values: dict[str, Any]) -> Config:
    """``config`` with ``values`` set: keys are fields or ``group.field`` (not validated)."""
    top: dict[str, Any] = {}
    groups: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        group, dot, field = key.partition(".")
        if dot:
            if group not in GROUPS or field not in GROUPS[group].__dataclass_fields__:
                raise ConfigError(f"unknown config key {key!r}")
            groups.setdefault(group, {})[field] = value
        elif key in GROUPS and not isinstance(value, GROUPS[key]):
            raise ConfigError(f"{key} is a group of settings: set {key}.FIELD=value (fields: "
                              f"{', '.join(GROUPS[key].__dataclass_fields__)})")
        else:
            top[key] = value
    for group, fields in groups.items():
        top[group] = dataclasses.replace(top.get(group, getattr(config, group)), **fields)
    return dataclasses.replace(config, **top)


def apply_overrides(config: Config, overrides: dict[str, Any]) -> Config:
    """``config`` with ``overrides`` (keys as :func:`parse_overrides` returns them; flat spellings
    of grouped keys are renamed), validated."""
    return validate(_replace(config, {canonical_key(k): v for k, v in overrides.items()}))


def flat_items(config: Config) -> dict[str, Any]:
    """``{key: value}`` for every settable key (``group.field`` for the groups)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name in GROUPS:
            out.update({f"{f.name}.{k}": v for k, v in dataclasses.asdict(value).items()})
        else:
            out[f.name] = value
    return out


# ---------------------------------------------------------------------------- validation

# Metrics by which end is best, matched by prefix (``fid`` covers ``fid_classifier``, ``modes``
# covers ``modes_captured``): the direction keep-best takes when keep_best names no :max/:min.
EVAL_HIGHER_IS_BETTER = ("modes", "high_quality", "precision", "recall", "density", "coverage")
EVAL_LOWER_IS_BETTER = ("fid", "fd", "kid", "mode_kl")
# Measured on toy data by the loop's quality probe (every log row), without periodic evaluation.
QUALITY_METRICS = ("modes_captured", "modes_effective", "high_quality_frac")
TOY_BEST = "modes_captured,high_quality_frac"  # keep_best=auto on toy data


def metric_direction(name: str) -> str | None:
    """``"max"`` or ``"min"``: which end of metric ``name`` is best (None: not known)."""
    for prefix in sorted(EVAL_HIGHER_IS_BETTER + EVAL_LOWER_IS_BETTER, key=len, reverse=True):
        if name == prefix or name.startswith(prefix + "_"):
            return "max" if prefix in EVAL_HIGHER_IS_BETTER else "min"
    return None


def keep_best_spec(value: str, toy: bool) -> tuple[tuple[str, str], ...]:
    """``keep_best`` as ``((metric, "max"|"min"), ...)`` (empty: off). ``auto`` is mode coverage
    on toy mixtures and off otherwise; a metric without ``:max``/``:min`` takes the direction
    :func:`metric_direction` knows. Raises :class:`ConfigError` for an unknown direction."""
    value = value.strip()
    if value in ("off", ""):
        return ()
    if value == "auto":
        value = TOY_BEST if toy else ""
    out = []
    for part in (p.strip() for p in value.split(",") if p.strip()):
        name, _, mode = part.partition(":")
        mode = mode.strip() or (metric_direction(name) or "")
        if mode not in ("max", "min"):
            raise ConfigError(f"keep_best={value!r}: say which end of {name} is best, e.g. {name}:max or {name}:min")
        out.append((name.strip(), mode))
    return tuple(out)


def _validate_keep_best(c: Config, need: Callable[[bool, str, str], None]) -> None:
    """Each keep-best metric is measured in this run: evaluation metrics need eval.every, and a
    stated direction must be the metric's right end."""
    value = c.keep_best.strip()
    if value in ("auto", "off", ""):
        return
    parts = [p.strip() for p in value.split(",")]
    need(all(parts), "keep_best", "give metric names separated by commas (e.g. modes_captured,high_quality_frac), "
         "auto or off")
    for part in parts:
        name, _, mode = part.partition(":")
        direction = metric_direction(name)
        need(mode in ("", "max", "min"), "keep_best", f"{part}: the direction after ':' is max or min")
        if direction is None:
            need(bool(mode), "keep_best", f"{name} has no known best end: write {name}:max or {name}:min")
            continue
        need(not mode or mode == direction, "keep_best",
             f"{name} is better when {'larger' if direction == 'max' else 'smaller'}: write {name}:{direction} "
             f"or just {name}")
        need(c.eval.every > 0 or name in QUALITY_METRICS, "keep_best",
             f"{name} comes from periodic evaluation: set eval.every (e.g. eval.every={10 * c.log_every})")


def _validate_diag(d: DiagConfig, need: Callable[[bool, str, str], None]) -> None:
    need(d.mode in ("warn", "stop", "off"), "diag.mode", "choose warn (report failure modes), stop (also stop "
         "a run whose failure does not recover) or off")
    need(d.quality in ("auto", "off"), "diag.quality", "choose auto (measure sample quality where the data allows) "
         "or off")
    for key in ("stop_after", "window", "long_window", "fit_window", "samples"):
        need(getattr(d, key) >= 1, f"diag.{key}", "must be >= 1")
    need(d.warmup >= 0, "diag.warmup", "must be >= 0")
    need(d.score_warmup >= 0, "diag.score_warmup", "must be >= 0")
    need(d.osc_crossings >= 1, "diag.osc_crossings", "must be >= 1")
    for key in ("g_low", "d_high", "g_high", "edge", "modes_min", "fit_min", "fit_progress"):
        need(0.0 <= getattr(d, key) <= 1.0, f"diag.{key}", "is a fraction or a 0-to-1 score: choose a value in [0, 1]")
    for key in ("half_band", "acc_band", "fit_band"):
        need(0.0 <= getattr(d, key) <= 0.5, f"diag.{key}", "is a distance from 0.5: choose a value in [0, 0.5]")
    for key in ("diversity_min", "vanish_ratio", "osc_std", "osc_swing"):
        need(getattr(d, key) >= 0.0, f"diag.{key}", "must be >= 0")


LOSS_NAMES = ("minimax", "non_saturating", "wasserstein", "hinge", "least_squares")
DATASETS = ("ring8", "grid25", "gaussian1d", "gaussian2d")
PARALLEL_MODES = ("pmap", "sharding", "shard_map")
MODELS = ("mlp", "dcgan")
ACTIVATION_NAMES = ("relu", "tanh", "leaky_relu", "elu")
# A TFDS dataset name: snake_case, optionally /config and :version (e.g. celeb_a, mnist:3.*.*).
TFDS_NAME = re.compile(r"[a-z][a-z0-9_]*(/[A-Za-z0-9_.+-]+)?(:[0-9*]+\.[0-9*]+\.[0-9*]+)?")
D_NORMS = ("batch", "spectral", "none")
LR_DECAYS = ("none", "cosine", "linear")


def validate(c: Config) -> Config:
    """Raise :class:`ConfigError` for a config that cannot run; return it unchanged otherwise."""

    values = flat_items(c)

    def need(ok: bool, key: str, why: str) -> None:
        if not ok:
            raise ConfigError(f"{key}={values[key]!r}: {why}")

    for key, value in values.items():
        if isinstance(value, float):
            need(math.isfinite(value), key, "must be a finite number")
    need(c.loss in LOSS_NAMES, "loss", f"unknown loss; choose one of {', '.join(LOSS_NAMES)}")
    # Any other name is looked up in TFDS when the data source is built (before compiling).
    need(
        c.dataset in DATASETS or c.dataset.endswith(".npy") or c.dataset.startswith(("random:", "stacked:"))
        or TFDS_NAME.fullmatch(c.dataset) is not None,
        "dataset",
        f"choose one of {', '.join(DATASETS)}, a path to a .npy array [N, ...], random:HxWxC, stacked:NAME, "
        "or a TFDS image dataset such as mnist or cifar10",
    )
    need(c.model in MODELS, "model", f"choose one of {', '.join(MODELS)}")
    need(c.activation in ACTIVATION_NAMES, "activation", f"choose one of {', '.join(ACTIVATION_NAMES)}")
    need(c.d_activation in ("", "maxout", *ACTIVATION_NAMES), "d_activation",
         f"choose one of {', '.join(ACTIVATION_NAMES)}, maxout, or leave it empty (the activation)")
    need(c.g_norm in ("none", "batch"), "g_norm", "choose none or batch")
    need(c.init_std >= 0.0, "init_std", "must be >= 0 (0: the default init), e.g. 0.02")
    need(c.d_norm in D_NORMS, "d_norm", f"choose one of {', '.join(D_NORMS)}")
    need(c.g_width >= 1, "g_width", "must be >= 1, e.g. 64")
    need(c.d_width >= 1, "d_width", "must be >= 1, e.g. 64")
    need(c.image_size >= 0, "image_size", "must be >= 0 (0: the dataset's own size), e.g. 32 or 64")
    need(c.d_steps >= 1, "d_steps", "each round needs at least one D update; use d_steps=1 or more")
    need(c.g_steps >= 1, "g_steps", "each round needs at least one G update; use g_steps=1 or more")
    need(not c.simultaneous or (c.d_steps, c.g_steps) == (1, 1), "simultaneous",
         "a simultaneous round makes one update of each player: set d_steps=1 g_steps=1")
    need(c.unroll_steps >= 0, "unroll_steps", "the lookahead depth must be >= 0 (0: plain GAN)")
    need(c.latent_dim >= 1, "latent_dim", "must be >= 1")
    need(c.batch_size >= 2, "batch_size", "must be >= 2 (the diversity statistic compares pairs)")
    need(c.pack >= 1, "pack", "must be >= 1 (1: D sees one sample at a time; PacGAN uses 2 to 4)")
    need(c.batch_size % c.pack == 0, "batch_size",
         f"must be a multiple of pack={c.pack} (D judges packs of {c.pack} samples)")
    need(c.steps >= 1, "steps", "must be >= 1")
    for key in ("g_lr", "d_lr"):
        need(getattr(c, key) >= 0.0, key, "a learning rate must be >= 0")
    for key in ("b1", "b2"):
        need(0.0 <= getattr(c, key) < 1.0, key, "Adam's betas must be in [0, 1)")
    for key in ("gp", "r1", "r2", "weight_clip", "d_weight_l2", "instance_noise"):
        need(getattr(c, key) >= 0.0, key, "must be >= 0 (0 switches it off)")
    need(0.0 <= c.label_smoothing < 1.0, "label_smoothing", "must be in [0, 1), e.g. 0.1")
    need(0.0 <= c.label_flip < 1.0, "label_flip", "must be in [0, 1), e.g. 0.05")
    need(0.0 <= c.d_dropout < 1.0, "d_dropout", "must be in [0, 1)")
    need(c.init_gain >= 0.0, "init_gain", "must be >= 0 (0: the default LeCun-normal init), e.g. 0.8")
    need(c.d_input_scale > 0.0, "d_input_scale", "must be > 0 (1: inputs unchanged), e.g. 0.25")
    need(0.0 <= c.ema_decay < 1.0, "ema_decay", "must be in [0, 1) (0: off), e.g. 0.999")
    need(c.instance_noise_anneal >= 0, "instance_noise_anneal", "must be >= 0")
    need(c.nan_policy in ("stop", "skip"), "nan_policy", "choose stop or skip")
    need(c.devices >= 0, "devices", "must be >= 0 (0: all local devices)")
    need(
        c.devices == 0 or c.batch_size % c.devices == 0,
        "batch_size",
        f"the global batch must split evenly over devices={c.devices}; use a multiple of {c.devices}",
    )
    need(
        c.devices == 0 or (c.batch_size // c.devices) % c.pack == 0,
        "batch_size",
        f"each of devices={c.devices} gets {c.batch_size // max(c.devices, 1)} examples, not a multiple of "
        f"pack={c.pack}; use a multiple of {c.devices * c.pack}",
    )
    need(c.parallel in PARALLEL_MODES, "parallel", f"choose one of {', '.join(PARALLEL_MODES)}")
    for key in ("log_every", "plot_every", "ckpt_every", "keep_checkpoints"):
        need(getattr(c, key) >= 1, key, "must be >= 1")
    need(c.lr_decay in LR_DECAYS, "lr_decay", f"choose one of {', '.join(LR_DECAYS)}")
    _validate_diag(c.diag, need)
    need(c.eval.every >= 0, "eval.every", "must be >= 0 (0: no evaluation during training)")
    need(c.eval.every % c.log_every == 0, "eval.every",
         f"must be a multiple of log_every={c.log_every} (the loop evaluates between compiled chunks)")
    need(c.eval.samples >= 10, "eval.samples", "needs at least 10 samples (k-NN metrics, KID subsets)")
    need(c.eval.classifier_steps >= 1, "eval.classifier_steps", "must be >= 1")
    _validate_keep_best(c, need)
    need(all(w >= 1 for w in c.g_hidden) and len(c.g_hidden) >= 1, "g_hidden", "widths >= 1, e.g. 128,128")
    need(all(w >= 1 for w in c.d_hidden) and len(c.d_hidden) >= 1, "d_hidden", "widths >= 1, e.g. 128,128")
    return c
