"""From a :class:`~jaxgan.configs.Config` to the things a run needs: the GAN and its data.

The one place that reads a config and constructs library objects; everything below takes
plain arguments.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxgan import losses, penalties
from jaxgan.configs import Config, ConfigError
from jaxgan.data import checks, synthetic, toy
from jaxgan.gan import GAN, Schedule
from jaxgan.keys import per_example
from jaxgan.nets import mlp_pair
from jaxgan.nets.dcgan import dcgan_pair

Array = jax.Array


@dataclasses.dataclass(frozen=True, eq=False)
class ArraySource:
    """Real examples held in memory ``[N, ...]``, sampled with replacement by position: the
    batch for key ``k`` and example ``i`` is ``data[randint(fold_in(k, i))]`` (pure, on device)."""

    name: str
    data: np.ndarray

    @property
    def example_shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape[1:])

    def sample_ids(self, key: Array, ids: Array) -> Array:
        data = jnp.asarray(self.data)
        idx = per_example(key, ids, lambda k: jax.random.randint(k, (), 0, data.shape[0]))
        return data[idx]


def load_array(path: str) -> ArraySource:
    """A ``.npy`` array of real examples ``[N, ...]``, checked on load."""
    if not os.path.isfile(path):
        raise checks.DataError(f"dataset file {path!r} does not exist: pass an existing .npy file")
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic != b"\x93NUMPY":
        raise checks.DataError(
            f"{path!r} is not a .npy file (no .npy header{'; it is empty' if not magic else ''}): "
            "save the array [N, ...] with np.save"
        )
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, EOFError, OSError) as err:
        raise checks.DataError(
            f"cannot read {path!r} as a numpy array ({err or type(err).__name__}): save it with np.save"
        ) from None
    if not isinstance(data, np.ndarray):  # e.g. an .npz archive under a .npy name
        raise checks.DataError(f"{path!r} is not a single .npy array: save one array [N, ...] with np.save")
    what = f"dataset {path!r}"
    if data.ndim < 2 or data.shape[0] < 2:
        raise checks.DataError(f"{what} has shape {data.shape}: it needs [N, ...] with N >= 2 examples")
    checks.check_batch(data, data.shape[1:], what=what)
    checks.check_image_layout(data.shape[1:], what=what)
    checks.check_range(data, what=what)
    return ArraySource(name=os.path.basename(path), data=data.astype(np.float32))


def data_source(config: Config):
    """The real-data sampler named by ``config.dataset``."""
    if config.dataset in toy.TOY:
        return toy.TOY[config.dataset]
    if config.dataset.endswith(".npy"):
        return load_array(config.dataset)
    if config.dataset.startswith("stacked:"):
        from jaxgan.data import stacked

        return stacked.load(config.dataset.removeprefix("stacked:"), data_dir=config.data_dir or None,
                            image_size=config.image_size or None)
    random_images = synthetic.parse(config.dataset)
    if random_images is not None:
        return random_images
    if config.dataset.startswith("random:"):
        raise ConfigError(f"dataset={config.dataset!r}: write random images as random:HxWxC, e.g. random:32x32x3")
    from jaxgan.data.tfds import TFDSImages  # imports TFDS only when it is used

    return TFDSImages(
        config.dataset, data_dir=config.data_dir, split=config.data_split, image_size=config.image_size,
        seed=config.seed, download=config.download,
    )


def remedies(config: Config) -> tuple[penalties.Remedy, ...]:
    """The penalty/remedy tuple the config switches on, in a fixed order."""
    out: list[penalties.Remedy] = []
    if config.gp > 0:
        out.append(penalties.GradientPenalty(weight=config.gp))
    if config.r1 > 0:
        out.append(penalties.R1(gamma=config.r1))
    if config.r2 > 0:
        out.append(penalties.R2(gamma=config.r2))
    if config.d_weight_l2 > 0:
        out.append(penalties.WeightPenalty(weight=config.d_weight_l2))
    if config.weight_clip > 0:
        out.append(penalties.WeightClip(clip=config.weight_clip))
    if config.instance_noise > 0:
        # The config anneals over rounds; the remedy counts D updates.
        anneal = config.instance_noise_anneal * config.d_steps
        out.append(penalties.InstanceNoise(std=config.instance_noise, anneal_steps=anneal))
    if config.label_smoothing > 0:
        out.append(penalties.LabelSmoothing(real_target=1.0 - config.label_smoothing))
    if config.label_flip > 0:
        out.append(penalties.LabelFlip(rate=config.label_flip))
    return tuple(out)


def learning_rate(lr: float, config: Config, updates_per_round: int) -> float | optax.Schedule:
    """``lr``, or its decay to 0 over the run's ``steps`` rounds (``config.lr_decay``); the
    schedule reads the optimizer's own update count, which the checkpoint holds."""
    total = max(1, config.steps * updates_per_round)
    if config.lr_decay == "cosine":
        return optax.cosine_decay_schedule(lr, total)
    if config.lr_decay == "linear":
        return optax.linear_schedule(lr, 0.0, total)
    return lr


def adam(lr: float, config: Config, updates_per_round: int = 1) -> optax.GradientTransformation:
    # Differentiating through Adam (the unrolled lookahead) needs eps_root > 0: the derivative
    # of sqrt(v) is infinite at v = 0, which a parameter with an exactly-zero gradient hits.
    eps_root = 1e-16 if config.unroll_steps > 0 else 0.0
    return optax.adam(learning_rate(lr, config, updates_per_round), b1=config.b1, b2=config.b2, eps_root=eps_root)


def default_layers(backend: str | None = None) -> str:
    """The DCGAN layers (``jaxgan.nets.dcgan.LAYERS``) for programs run on ``backend`` (default:
    JAX's default backend): flax's own on a GPU or TPU; on the CPU the drop-ins made for XLA's CPU
    backend, with oneDNN's convolutions once :func:`jaxgan.cpu.tune` has loaded them."""
    if (backend or jax.default_backend()) != "cpu":
        return "flax"
    from jaxgan import cpu

    return cpu.layers()


def gan(config: Config, example_shape: tuple[int, ...], *, axis_name: str | None = None,
        sync_axis: str | None = None, layers: str | None = None) -> GAN:
    """The GAN definition for ``config`` on data with examples of ``example_shape``. ``sync_axis``
    (or else ``axis_name``) is the device axis the networks' batch norm averages statistics over.
    ``layers``: DCGAN's layers (default: :func:`default_layers` for JAX's default backend)."""
    if config.model == "dcgan":
        try:
            # Sync batch norm: under a device axis, BN normalises with the global batch's statistics.
            g, d = dcgan_pair(
                example_shape, config.latent_dim, g_width=config.g_width, d_width=config.d_width,
                d_norm=config.d_norm, d_dropout=config.d_dropout, d_mbstd=config.d_mbstd,
                axis_name=sync_axis or axis_name, layers=layers or default_layers(),
            )
        except ValueError as err:
            raise ConfigError(f"model=dcgan on dataset={config.dataset!r}: {err}") from None
    elif config.model == "mlp":
        g, d = mlp_pair(
            example_shape,
            config.latent_dim,
            g_hidden=config.g_hidden,
            d_hidden=config.d_hidden,
            activation=config.activation,
            d_dropout=config.d_dropout,
            init_gain=config.init_gain,
            init_std=config.init_std,
            d_input_scale=config.d_input_scale,
            d_mbstd=config.d_mbstd,
            d_activation=config.d_activation or None,
            g_norm=config.g_norm,
            axis_name=sync_axis or axis_name,
        )
    else:
        raise ConfigError(f"model={config.model!r}: unknown model")
    return GAN(
        generator=g,
        discriminator=d,
        g_optimizer=adam(config.g_lr, config, config.g_steps),
        d_optimizer=adam(config.d_lr, config, config.d_steps),
        loss=losses.get(config.loss),
        schedule=Schedule(d_steps=config.d_steps, g_steps=config.g_steps, simultaneous=config.simultaneous),
        unroll_steps=config.unroll_steps,
        unroll_first_order=config.unroll_first_order,
        unroll_remat=config.unroll_remat,
        unroll_resample=config.unroll_resample,
        penalties=remedies(config),
        ema_decay=config.ema_decay if config.ema_decay > 0 else None,
        axis_name=axis_name,
        skip_nonfinite=config.nan_policy == "skip",
        pack=config.pack,
    )


@dataclasses.dataclass
class Run:
    """What a run's pieces are, built once from a config (no state): the GAN definition, its
    data source and the shape of one example."""

    config: Config
    gan: GAN
    source: object
    example_shape: tuple[int, ...]

    @classmethod
    def from_config(cls, config: Config, *, sync_axis: str | None = None) -> Run:
        """``sync_axis``: the device axis the networks' batch statistics (and D's minibatch
        standard deviation) reduce over under pmap/shard_map (:attr:`jaxgan.parallel.DataParallel.sync_axis`)."""
        source = data_source(config)
        shape = tuple(source.example_shape)
        return cls(config, gan(config, shape, sync_axis=sync_axis), source, shape)

    def init_state(self):
        """A fresh :class:`~jaxgan.gan.GANState` for the config's seed and batch size."""
        example = np.zeros((self.config.batch_size, *self.example_shape), np.float32)
        return jax.jit(self.gan.init)(jax.random.key(self.config.seed), example)

    def chunk_options(self) -> dict[str, bool]:
        """Keyword arguments of :func:`jaxgan.runner.train_chunk` for this run's data on this
        backend (where a chunk draws its real batch: :func:`jaxgan.cpu.draw_in_round`)."""
        if jax.default_backend() != "cpu":
            return {}
        from jaxgan import cpu

        return {"draw_in_round": cpu.draw_in_round(self.source)}

    @property
    def mixture(self):
        """The data's mixture of Gaussians (toy data with several modes), else None."""
        centers = getattr(self.source, "centers", None)
        return self.source if centers is not None and len(centers) > 1 else None
