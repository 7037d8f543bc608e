"""The GAN definition, its state, and the pure step functions.

A :class:`GAN` is static (networks, optimizers, loss, schedule, remedies); a :class:`GANState`
is a pytree of arrays. Every step is a pure function ``(state, batch) -> (state, metrics)`` that
runs unchanged under ``jax.jit``, ``jax.vmap`` (several GANs at once), ``jax.lax.scan`` (many
steps per call) and ``jax.pmap`` / ``jax.shard_map`` (set ``axis_name``).

Randomness is keyed by position, never by call order: the draws of discriminator update ``n``
come from ``fold_in(fold_in(state.rng, D), n)``, those of generator update ``n`` from
``fold_in(fold_in(state.rng, G), n)``, and within an update the latent and noise of global
example ``i`` from ``(key, i)`` alone (:mod:`jaxgan.keys`). A run therefore follows the same
trajectory on one device with batch B or on n devices with B/n each, and after a resume.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxgan import keys as keys_lib
from jaxgan import losses as losses_lib
from jaxgan import scores as scores_lib
from jaxgan import unroll as unroll_lib
from jaxgan.nets.adapters import Network
from jaxgan.penalties import PenaltyInputs, Remedy

Array = jax.Array
PyTree = Any
Metrics = dict[str, Array]

# fold_in tags separating the key streams of the state's base key.
_INIT, _D, _G, _SAMPLE = 0, 1, 2, 3


def squared_norm(tree: PyTree) -> Array:
    """The sum of squares of every leaf of ``tree``, in float32: ``optax.tree.norm(tree,
    squared=True)`` with the leaves in float32."""
    tree = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)
    return optax.tree.norm(tree, squared=True).astype(jnp.float32)


def _check_dtype(where: str, batch: Array, dtype: Any) -> None:
    """Refuse real data of another dtype than the generator's samples (D sees both alike)."""
    got = jax.dtypes.canonicalize_dtype(batch.dtype)
    if got != dtype:
        raise ValueError(
            f"{where}: the batch has dtype {got} (shape {tuple(batch.shape)}) but the generator makes "
            f"{jnp.dtype(dtype).name} samples: pass data of dtype {jnp.dtype(dtype).name} (e.g. "
            f"batch.astype(jnp.{jnp.dtype(dtype).name}), uint8 pixels scaled to [-1, 1])"
        )


@flax.struct.dataclass
class PlayerState:
    """One player's trainable state. ``count`` is the number of updates applied to it."""

    params: PyTree
    model_state: PyTree
    opt_state: PyTree
    count: Array


@flax.struct.dataclass
class GANState:
    """Everything that changes during training, as one immutable pytree.

    ``step`` counts completed :meth:`GAN.train_step` rounds. ``rng`` is the run's base key; it
    is never advanced, because every draw is derived from it by position (see module doc).
    ``ema_params`` is the exponential moving average of G's params, or None when EMA is off.
    """

    g: PlayerState
    d: PlayerState
    step: Array
    rng: Array
    ema_params: PyTree = None


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Alternating training: ``d_steps`` discriminator updates, then ``g_steps`` generator
    updates, per round (Goodfellow et al. 2014, Algorithm 1 has d_steps=k, g_steps=1).
    ``simultaneous``: one update of each player per round, both from the round's starting state
    (simultaneous gradient descent, which Mescheder et al. 2017 show can circle the equilibrium
    where the alternating updates settle; for studying that, not for training)."""

    d_steps: int = 1
    g_steps: int = 1
    simultaneous: bool = False

    def __post_init__(self):
        if self.simultaneous and (self.d_steps, self.g_steps) != (1, 1):
            raise ValueError(
                f"a simultaneous schedule makes one update of each player per round; got d_steps={self.d_steps}, "
                f"g_steps={self.g_steps}: set both to 1"
            )
        for name in ("d_steps", "g_steps"):
            value = getattr(self, name)
            if not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(
                    f"Schedule.{name} must be an integer >= 1 (got {value!r}): each round needs "
                    f"at least one update of each player; set {name}=1 for the classic schedule"
                )


@dataclasses.dataclass(frozen=True)
class GAN:
    """A static GAN definition: networks, optimizers, loss, schedule and remedies. Hashable and
    free of arrays, so it is safe to close over in ``jax.jit``; the state is a :class:`GANState`.
    Each field's comment says what it does; :mod:`jaxgan.unroll` explains the lookahead."""

    generator: Network
    discriminator: Network
    g_optimizer: optax.GradientTransformation
    d_optimizer: optax.GradientTransformation
    loss: losses_lib.Loss = losses_lib.NON_SATURATING
    schedule: Schedule = Schedule()
    # G trains against D advanced this many updates ahead; differentiating through D's optimizer
    # needs Adam's eps_root > 0 (a parameter with a zero gradient otherwise makes G's gradient NaN).
    unroll_steps: int = 0
    unroll_first_order: bool = False  # stop the gradient at the advanced D
    unroll_remat: bool = False  # recompute each lookahead update in the backward pass (jax.checkpoint)
    unroll_resample: bool = False  # fresh fakes for each lookahead update (default: the G step's fakes)
    penalties: tuple[Remedy, ...] = ()
    ema_decay: float | None = None  # keep an EMA of G's params in the state (sampled from when kept)
    # The device axis when the steps run under pmap/shard_map: gradients, metrics and (with
    # sync_model_state) batch statistics are averaged over it.
    axis_name: str | None = None
    sync_model_state: bool = True
    # For jax.jit over a mesh instead (state replicated): the sharding of per-example arrays [B],
    # so the drawn latents, noise and data are split and the compiler inserts the reductions.
    batch_sharding: Any = None
    # Discard an update whose loss, gradient norm, new params or model state is not finite; the
    # *_nonfinite metrics flag it either way (without this they do not read the new params, which
    # :func:`jaxgan.runner.train_chunk` then checks once per chunk).
    skip_nonfinite: bool = False
    exact_diversity: bool = False  # diversity over all B(B-1)/2 pairs instead of B neighbouring ones
    # D judges `pack` samples at once (PacGAN, Lin et al. 2018): consecutive examples by global
    # index, concatenated along the last axis; losses, penalties, label remedies and scores are per
    # pack, instance noise and diversity per example. Each device's batch is a multiple of it.
    pack: int = 1

    def __post_init__(self):
        if self.generator.latent_dim is None or self.generator.latent_dim < 1:
            raise ValueError(
                "the generator Network needs latent_dim >= 1 (e.g. from_linen(G(), latent_dim=64))"
            )
        if not isinstance(self.unroll_steps, int | np.integer) or self.unroll_steps < 0:
            raise ValueError(
                f"unroll_steps must be an integer >= 0 (got {self.unroll_steps!r}); "
                "0 is the plain generator step"
            )
        if not isinstance(self.pack, int | np.integer) or self.pack < 1:
            raise ValueError(f"pack must be an integer >= 1 (got {self.pack!r}); 1 is the unpacked discriminator")
        if self.ema_decay is not None and not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) or None (got {self.ema_decay!r})")
        if self.axis_name is not None and self.batch_sharding is not None:
            raise ValueError(
                "set axis_name (the step runs per device under pmap/shard_map) or batch_sharding "
                "(the step runs on the global batch under jax.jit over a mesh), not both"
            )
        if not isinstance(self.penalties, tuple):
            object.__setattr__(self, "penalties", tuple(self.penalties))
        for p in self.penalties:
            if not isinstance(p, Remedy):
                raise TypeError(f"penalties must be jaxgan.penalties remedies, got {p!r}")

    # ------------------------------------------------------------------ helpers

    @property
    def latent_dim(self) -> int:
        return int(self.generator.latent_dim)

    def example_ids(self, n: int) -> Array:
        """Global indices of this device's ``n`` examples."""
        ids = jnp.arange(n, dtype=jnp.uint32)
        if self.axis_name is not None:
            ids = ids + jax.lax.axis_index(self.axis_name).astype(jnp.uint32) * n
        if self.batch_sharding is not None:
            ids = jax.lax.with_sharding_constraint(ids, self.batch_sharding)
        return ids

    def _device_key(self, key: Array) -> Array:
        """A network's key for this device: under ``axis_name`` each device draws its own
        dropout masks (they are drawn per batch, not per example, so they cannot be keyed by
        global example index; without this every device would reuse the same mask)."""
        if self.axis_name is None:
            return key
        return jax.random.fold_in(key, jax.lax.axis_index(self.axis_name))

    def latents(self, key: Array, ids: Array) -> Array:
        """Standard-normal latents ``[len(ids), latent_dim]``; row i is a function of (key, ids[i])."""
        return keys_lib.normal(key, ids, (self.latent_dim,))

    def _pack(self, x: Array) -> Array:
        """``x: [n, *S] -> [n/m, *S[:-1], m * S[-1]]``: consecutive groups of ``m = pack``
        examples concatenated along the last axis, as D sees them (see the class docstring)."""
        m = self.pack
        if m == 1:
            return x
        n = x.shape[0]
        if n % m:
            raise ValueError(
                f"a batch of {n} examples does not split into packs of pack={m}: make each device's batch a "
                f"multiple of {m} (e.g. batch_size={max(m, n - n % m)})"
            )
        grouped = jnp.moveaxis(x.reshape(n // m, m, *x.shape[1:]), 1, -2)
        return grouped.reshape(n // m, *x.shape[1:-1], m * x.shape[-1])

    def _pack_ids(self, ids: Array) -> Array:
        """Global pack indices ``[n/m]`` of this device's examples ``ids`` (pack j holds
        examples ``j*m .. j*m+m-1``), for per-pack draws."""
        return ids if self.pack == 1 else ids[:: self.pack] // self.pack

    def _pmean(self, tree: PyTree) -> PyTree:
        return tree if self.axis_name is None else jax.lax.pmean(tree, self.axis_name)

    def _generate(self, params, model_state, z, key, train):
        return self.generator.apply(params, model_state, z, key=key, train=train)

    def _discriminate(self, params, model_state, x, key, train):
        logits, new_state = self.discriminator.apply(params, model_state, x, key=key, train=train)
        return logits.reshape(x.shape[0]), new_state

    def _perturb(self, x: Array, key: Array, ids: Array, t: Array) -> Array:
        for i, p in enumerate(self.penalties):
            x = p.perturb(x, jax.random.fold_in(key, i), ids, t)
        return x

    def _all_finite(self, *trees: PyTree) -> Array:
        """Whether every float element of ``trees`` is finite: a bool scalar, computed on device
        and agreed across ``axis_name``, so every device keeps or discards an update together.

        The updates pass their loss, the gradient norm, the new model state and, when they may
        discard the update (``skip_nonfinite``), the new params' squared norm. A norm is not
        finite exactly when one of its elements is not, or when it exceeds float32 (a gradient
        or params norm above 1.8e19: a blow-up too); the gradient norm is computed for the
        metrics anyway. Checking gradients and params elementwise instead would cost two more
        small kernels per leaf and catch no update that this misses."""
        flags = [
            jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(trees) if jnp.issubdtype(x.dtype, jnp.inexact)
        ]
        finite = jnp.all(jnp.stack(flags)) if flags else jnp.array(True)
        if self.axis_name is not None:
            finite = jax.lax.pmin(finite.astype(jnp.int32), self.axis_name) > 0
        return finite

    def _update_finite(self, loss: Array, grad_norm: Array, params: PyTree, model_state: PyTree) -> Array:
        """Whether an update is finite (:meth:`_all_finite`); its new params are read only when a
        non-finite update would be discarded (see the class docstring)."""
        if self.skip_nonfinite:
            return self._all_finite(loss, grad_norm, squared_norm(params), model_state)
        return self._all_finite(loss, grad_norm, model_state)

    def params_finite(self, state: GANState) -> tuple[Array, Array]:
        """``(d_ok, g_ok)``: whether every parameter of D and of G is finite (bool scalars,
        agreed across ``axis_name``), read through their norms as the updates read theirs. For
        loops of their own: the update flags do not read the new params unless
        ``skip_nonfinite`` is on; :func:`jaxgan.runner.train_chunk` calls this once per chunk."""
        return (self._all_finite(squared_norm(state.d.params)), self._all_finite(squared_norm(state.g.params)))

    def _finite_update(self, old: PlayerState, new: PlayerState, finite: Array) -> PlayerState:
        if not self.skip_nonfinite:
            return new
        kept = jax.tree.map(
            lambda a, b: jnp.where(finite, a, b), (new.params, new.model_state, new.opt_state),
            (old.params, old.model_state, old.opt_state),
        )
        return new.replace(params=kept[0], model_state=kept[1], opt_state=kept[2])

    # ------------------------------------------------------------------ init / sample

    def init(self, key: Array, example_batch: Array) -> GANState:
        """A fresh state. ``example_batch: [B, ...]`` fixes the data shape (values unused)."""
        if example_batch.ndim < 2:
            raise ValueError(
                f"example_batch must be [batch, ...features], got shape {example_batch.shape}"
            )
        init_key = jax.random.fold_in(key, _INIT)
        kg, kd = jax.random.split(init_key)
        z = jnp.zeros((example_batch.shape[0], self.latent_dim), jnp.float32)
        g_params, g_state = self.generator.init(kg, z)
        fake = jax.eval_shape(lambda p, s: self._generate(p, s, z, kg, False)[0], g_params, g_state)
        if tuple(fake.shape) != tuple(example_batch.shape):
            raise ValueError(
                f"the generator makes samples of shape {tuple(fake.shape)[1:]} but the data has "
                f"shape {tuple(example_batch.shape)[1:]}: make the generator's output match the "
                "data (e.g. its output size or image size)"
            )
        _check_dtype("init", example_batch, fake.dtype)
        d_input = self._pack(jnp.zeros_like(example_batch))
        d_params, d_state = self.discriminator.init(kd, d_input)
        logit_shape = jax.eval_shape(
            lambda p, s: self.discriminator.apply(p, s, d_input, key=kd, train=False)[0],
            d_params,
            d_state,
        ).shape
        if int(np.prod(logit_shape)) != d_input.shape[0]:
            what = "example" if self.pack == 1 else f"pack of {self.pack} examples"
            raise ValueError(
                f"the discriminator must output one logit per {what} ([B] or [B, 1]); it "
                f"outputs shape {tuple(logit_shape)} for a batch of {d_input.shape[0]}"
            )
        # Distinct buffers for every leaf, so a caller may donate the state.
        def zero():
            return jnp.zeros((), jnp.int32)

        g = PlayerState(g_params, g_state, self.g_optimizer.init(g_params), zero())
        d = PlayerState(d_params, d_state, self.d_optimizer.init(d_params), zero())
        ema = jax.tree.map(lambda x: jnp.array(x, copy=True), g_params) if self.ema_decay is not None else None
        return GANState(g=g, d=d, step=zero(), rng=key, ema_params=ema)

    def sample(self, state: GANState, key: Array, n: int, *, use_ema: bool = True) -> Array:
        """``n`` generated samples ``[n, ...]`` in eval mode (EMA params when kept and asked)."""
        if not isinstance(n, int | np.integer) or n < 1:
            raise ValueError(f"sample: n={n!r}: ask for a Python int n >= 1 of samples (the count is static)")
        params = state.ema_params if (use_ema and state.ema_params is not None) else state.g.params
        self._check_params(params, "sample")
        z = self.latents(key, jnp.arange(n, dtype=jnp.uint32))
        fake, _ = self._generate(params, state.g.model_state, z, key, False)
        return fake

    def data_shape(self, state: GANState) -> tuple[int, ...]:
        """The shape of one example (what the generator makes), read without computing."""
        return tuple(self._fake_spec(state).shape[1:])

    def _fake_spec(self, state: GANState) -> jax.ShapeDtypeStruct:
        """Shape ``[1, ...]`` and dtype of one generated sample, read without computing."""
        z = jax.ShapeDtypeStruct((1, self.latent_dim), jnp.float32)
        return jax.eval_shape(
            lambda p, s, zz: self._generate(p, s, zz, jax.random.key(0), False)[0],
            state.g.params,
            state.g.model_state,
            z,
        )

    def _check_params(self, params: PyTree, where: str) -> None:
        """Refuse generator params that do not fit this generator (e.g. a state of another GAN,
        or one still replicated over devices) before flax fails on them; shapes only, at trace time."""
        want = jax.eval_shape(lambda: self.generator.init(jax.random.key(0), jnp.zeros((1, self.latent_dim)))[0])
        got_shapes = [tuple(np.shape(x)) for x in jax.tree.leaves(params)]
        want_shapes = [tuple(x.shape) for x in jax.tree.leaves(want)]
        if jax.tree.structure(params) != jax.tree.structure(want):
            raise ValueError(
                f"{where}: the state's generator params are not this GAN's generator's ({len(got_shapes)} "
                f"arrays in the state, {len(want_shapes)} here, or other names): pass a state made by this "
                "GAN's init (or restored into it)"
            )
        if got_shapes == want_shapes:
            return
        paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(want)[0]]
        path, got, wanted = next(x for x in zip(paths, got_shapes, want_shapes, strict=True) if x[1] != x[2])
        fix = "pass a state made by this GAN's init (or restored into it)"
        replicated = all(g[:1] == got[:1] and g[1:] == w for g, w in zip(got_shapes, want_shapes, strict=True))
        if replicated:
            fix = f"it has a leading device axis [{got[0]}, ...]: pass jaxgan.parallel.unreplicate(state)"
        raise ValueError(
            f"{where}: the state's generator params do not fit this GAN's generator ({path} has shape {got} "
            f"in the state, {wanted} here): {fix}"
        )

    def _check_batch(self, state: GANState, batch: Array, where: str, *, stacked: bool) -> tuple[int, ...]:
        """Refuse, at trace time, a batch whose examples are not what the generator makes: the
        shape (``[B, *S]``, or ``[n, B, *S]`` when ``stacked``) and the dtype. Returns ``S``."""
        self._check_params(state.g.params, where)
        fake = self._fake_spec(state)
        want, shape = tuple(fake.shape[1:]), tuple(np.shape(batch))
        ranks = (len(want) + 1, len(want) + 2) if stacked else (len(want) + 1,)
        examples = shape[len(shape) - len(want):] if len(shape) in ranks else None
        if examples != want:
            got = f"examples of shape {examples}" if examples is not None else f"{len(shape)} axes"
            layout = f"[B, {', '.join(map(str, want))}]"
            if stacked:
                layout += f" or [n, B, {', '.join(map(str, want))}] (one batch per discriminator update)"
            raise ValueError(
                f"{where}: the batch has shape {shape} ({got}) but the generator makes samples of shape "
                f"{want}: pass batches {layout}, or make the generator's output match the data (e.g. its "
                "output size or image size)"
            )
        _check_dtype(where, batch, fake.dtype)
        return want

    # ------------------------------------------------------------------ the D update

    def _d_loss(self, d_params, d_model_state, real, fake, key, ids, t):
        k_tgt, k_noise, k_net, k_pen = jax.random.split(key, 4)
        pack_ids = self._pack_ids(ids)
        y = jnp.ones((pack_ids.shape[0],), jnp.float32)
        for i, p in enumerate(self.penalties):
            y = p.targets(y, jax.random.fold_in(k_tgt, i), pack_ids)
        real_in = self._pack(self._perturb(real, jax.random.fold_in(k_noise, 0), ids, t))
        fake_in = self._pack(self._perturb(fake, jax.random.fold_in(k_noise, 1), ids, t))
        k_real, k_fake, k_pen_net = jax.random.split(self._device_key(k_net), 3)
        # Two passes, as in the reference DCGAN: batch norm sees a real batch and a fake batch.
        real_logits, ms = self._discriminate(d_params, d_model_state, real_in, k_real, True)
        fake_logits, ms = self._discriminate(d_params, ms, fake_in, k_fake, True)
        loss = self.loss.discriminator_loss(real_logits, fake_logits, y)
        base_loss = loss
        terms = {}

        def d_fn(x):
            return self._discriminate(d_params, d_model_state, x, k_pen_net, True)[0]

        inputs = PenaltyInputs(d_fn, real_in, fake_in, d_params, k_pen, pack_ids)
        for i, p in enumerate(self.penalties):
            value = p.loss(dataclasses.replace(inputs, key=jax.random.fold_in(k_pen, i)))
            if value is not None:
                terms[p.name] = value
                loss = loss + value
        aux = {
            "model_state": ms,
            "real_logits": real_logits,
            "fake_logits": fake_logits,
            "d_loss_base": base_loss,
            "terms": terms,
            "real_label_mean": jnp.mean(y),
        }
        return loss, aux

    def d_update(
        self,
        d: PlayerState,
        g_params: PyTree,
        g_model_state: PyTree,
        real: Array,
        key: Array,
        *,
        with_metrics: bool = True,
    ) -> tuple[PlayerState, Metrics]:
        """One discriminator update against fakes from ``g_params`` (held constant: G's new
        batch statistics are discarded). This is the one D update: :meth:`d_step` calls it, and
        the unrolled lookahead scans it (or its second half, :meth:`d_update_on`) with
        ``g_params`` being differentiated.

        ``real: [B, ...]`` is this device's batch; ``key`` the update's key.
        """
        n = real.shape[0]
        ids = self.example_ids(n)
        k_z, k_g, k_loss = jax.random.split(key, 3)
        fake, _ = self._generate(g_params, g_model_state, self.latents(k_z, ids), self._device_key(k_g), True)
        return self.d_update_on(d, real, fake, k_loss, with_metrics=with_metrics)

    def d_update_on(
        self, d: PlayerState, real: Array, fake: Array, key: Array, *, with_metrics: bool = True
    ) -> tuple[PlayerState, Metrics]:
        """The D update of :meth:`d_update` on given fakes ``fake: [B, ...]`` (``key``: the
        loss's key, for penalties and noise)."""
        ids = self.example_ids(real.shape[0])
        grad_fn = jax.value_and_grad(self._d_loss, has_aux=True)
        (loss, aux), grads = grad_fn(d.params, d.model_state, real, fake, key, ids, d.count)
        grads = self._pmean(grads)
        model_state = aux["model_state"]
        if self.sync_model_state:
            model_state = self._pmean(model_state)
        updates, opt_state = self.d_optimizer.update(grads, d.opt_state, d.params)
        params = optax.apply_updates(d.params, updates)
        for p in self.penalties:
            params = p.project(params)
        new = PlayerState(params, model_state, opt_state, d.count + 1)
        grad_norm = jnp.sqrt(squared_norm(grads))
        if not with_metrics and not self.skip_nonfinite:  # the unrolled lookahead's updates
            return new, {}
        finite = self._update_finite(loss, grad_norm, params, model_state)
        new = self._finite_update(d, new, finite)
        if not with_metrics:
            return new, {}
        metrics = {
            "d_loss": loss,
            "d_loss_adversarial": aux["d_loss_base"],
            "d_grad_norm": grad_norm,
            "d_nonfinite": 1.0 - finite.astype(jnp.float32),
            "real_label_mean": aux["real_label_mean"],
            "diversity": (scores_lib.diversity if self.exact_diversity else scores_lib.diversity_estimate)(
                real, fake, self.axis_name
            ),
            **scores_lib.game_scores(self.loss, aux["real_logits"], aux["fake_logits"]),
            **aux["terms"],
        }
        for p in self.penalties:
            metrics.update(p.report(d.count))
        return new, self._pmean(metrics)

    # ------------------------------------------------------------------ the G update

    def g_update(
        self, g: PlayerState, d: PlayerState, reals: Array, key: Array
    ) -> tuple[PlayerState, Metrics]:
        """One generator update against D (held constant), looking ``unroll_steps`` D updates
        ahead. ``reals: [n, B, ...]`` feeds the lookahead (update j uses ``reals[j % n]``)."""
        n_batches, n = reals.shape[0], reals.shape[1]
        ids = self.example_ids(n)
        k_z, k_g, k_d, k_noise, k_unroll = jax.random.split(key, 5)
        k_g, k_d = self._device_key(k_g), self._device_key(k_d)
        z = self.latents(k_z, ids)

        def loss_fn(g_params):
            fake, g_state = self._generate(g_params, g.model_state, z, k_g, True)

            def advance(d_carry, j):
                real = jax.lax.dynamic_index_in_dim(reals, j % n_batches, keepdims=False)
                key_j = jax.random.fold_in(k_unroll, j)
                if self.unroll_resample:
                    new, _ = self.d_update(d_carry, g_params, g.model_state, real, key_j, with_metrics=False)
                else:  # every lookahead update sees this step's fakes (Metz et al.'s notebook)
                    new, _ = self.d_update_on(d_carry, real, fake, key_j, with_metrics=False)
                return new

            d_ahead = unroll_lib.scan_updates(
                advance, d, self.unroll_steps,
                first_order=self.unroll_first_order, remat=self.unroll_remat,
            )
            fake_in = self._pack(self._perturb(fake, k_noise, ids, d_ahead.count))
            # D's batch statistics from this pass are discarded: D is held constant.
            logits, _ = self._discriminate(d_ahead.params, d_ahead.model_state, fake_in, k_d, True)
            return self.loss.generator_loss(logits), (g_state, logits)

        (loss, (g_state, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(g.params)
        # What D's verdict tells G: the slope of G's loss at each fake's logit. The saturating
        # minimax loss's slope is D(G(z)) itself, so it vanishes as D rejects every fake.
        slope = jax.grad(self.loss.generator_loss)(jax.lax.stop_gradient(logits)) * logits.shape[0]
        grads = self._pmean(grads)
        if self.sync_model_state:
            g_state = self._pmean(g_state)
        updates, opt_state = self.g_optimizer.update(grads, g.opt_state, g.params)
        params = optax.apply_updates(g.params, updates)
        new = PlayerState(params, g_state, opt_state, g.count + 1)
        grad_norm = jnp.sqrt(squared_norm(grads))
        finite = self._update_finite(loss, grad_norm, params, g_state)
        new = self._finite_update(g, new, finite)
        metrics = {
            "g_loss": loss,
            "g_grad_norm": grad_norm,
            "g_signal": jnp.mean(jnp.abs(slope)),
            "g_nonfinite": 1.0 - finite.astype(jnp.float32),
        }
        return new, self._pmean(metrics)

    # ------------------------------------------------------------------ public steps

    def _update_key(self, state: GANState, tag: int, count: Array) -> Array:
        return jax.random.fold_in(jax.random.fold_in(state.rng, tag), count)

    def d_step(self, state: GANState, batch: Array) -> tuple[GANState, Metrics]:
        """One discriminator update on ``batch: [B, ...]``; G is held constant."""
        self._check_batch(state, batch, "d_step", stacked=False)
        return self._d_step(state, batch)

    def _d_step(self, state: GANState, batch: Array) -> tuple[GANState, Metrics]:
        key = self._update_key(state, _D, state.d.count)
        d, metrics = self.d_update(state.d, state.g.params, state.g.model_state, batch, key)
        return state.replace(d=d), metrics

    def g_step(self, state: GANState, batch: Array) -> tuple[GANState, Metrics]:
        """One generator update; D is held constant. ``batch: [B, ...]`` (or ``[n, B, ...]``,
        one real batch per lookahead update) sets the batch size and feeds the unrolled
        lookahead; without unrolling its values are not used."""
        return self._g_step(state, self._as_batches(state, batch, "g_step"))

    def _g_step(self, state: GANState, reals: Array) -> tuple[GANState, Metrics]:
        key = self._update_key(state, _G, state.g.count)
        g, metrics = self.g_update(state.g, state.d, reals, key)
        state = state.replace(g=g)
        if self.ema_decay is not None:
            ema = optax.incremental_update(g.params, state.ema_params, 1.0 - self.ema_decay)
            state = state.replace(ema_params=ema)
        return state, metrics

    def _as_batches(self, state: GANState, batch: Array, where: str) -> Array:
        """``[B, ...]`` -> ``[1, B, ...]``; ``[n, B, ...]`` unchanged (decided by G's output rank),
        after :meth:`_check_batch`."""
        example = self._check_batch(state, batch, where, stacked=True)
        return batch[None] if batch.ndim == len(example) + 1 else batch

    def train_step(self, state: GANState, batch: Array) -> tuple[GANState, Metrics]:
        """One alternating round: ``d_steps`` D updates, then ``g_steps`` G updates.

        ``batch`` is ``[B, ...]`` (every D update sees it) or ``[d_steps, B, ...]`` (a fresh
        real batch per D update, as in Goodfellow et al.'s Algorithm 1). Metrics are each
        player's averages over its updates in the round, plus ``step``.
        """
        reals = self._as_batches(state, batch, "train_step")
        n_batches = reals.shape[0]
        if n_batches not in (1, self.schedule.d_steps):
            raise ValueError(
                f"got {n_batches} batches for a round with d_steps={self.schedule.d_steps}: "
                "pass one batch or one per discriminator update"
            )

        def d_body(s, j):
            real = jax.lax.dynamic_index_in_dim(reals, j % n_batches, keepdims=False)
            return self._d_step(s, real)

        def g_body(s, _):
            return self._g_step(s, reals)

        if self.schedule.simultaneous:  # both players step from the round's starting state
            d_state, d_metrics = d_body(state, 0)
            g_state, g_metrics = self._g_step(state, reals)
            state = g_state.replace(d=d_state.d)
            d_metrics, g_metrics = jax.tree.map(lambda x: x[None], (d_metrics, g_metrics))
        else:
            state, d_metrics = jax.lax.scan(d_body, state, jnp.arange(self.schedule.d_steps))
            state, g_metrics = jax.lax.scan(g_body, state, None, length=self.schedule.g_steps)
        metrics = {k: jnp.mean(v, axis=0) for k, v in {**d_metrics, **g_metrics}.items()}
        state = state.replace(step=state.step + 1)
        return state, metrics
