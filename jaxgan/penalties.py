"""Penalties and remedies for the discriminator, as static hooks the GAN step calls.

Each remedy is a frozen dataclass with up to four hooks (the base class's defaults do
nothing), so one tuple ``GAN.penalties`` carries them all:

* ``loss(inputs)``: a term added to D's loss (gradient penalties, weight penalties);
* ``project(params)``: applied to D's params after each update (weight clipping);
* ``perturb(x, key, ids, t)``: applied to every input D sees, real and generated, in both
  players' updates (instance noise); ``t`` counts discriminator updates;
* ``targets(y, key, ids)``: rewrites the per-example labels of real data (one-sided label
  smoothing and flipping).

``ids`` are the global example indices of the batch, so per-example randomness does not
depend on how the batch is split over devices.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxgan import keys as keys_lib

Array = jax.Array
PyTree = Any


@dataclasses.dataclass(frozen=True)
class PenaltyInputs:
    """What a loss-term hook may look at: ``d(x) -> logits [B]`` at D's current params."""

    d: Callable[[Array], Array]
    real: Array  # [B, ...] as D sees it (after perturbation; packs of examples under GAN.pack)
    fake: Array  # [B, ...]
    d_params: PyTree
    key: Array
    ids: Array  # [B] global indices of D's inputs (examples, or packs)


@dataclasses.dataclass(frozen=True)
class Remedy:
    """Base: every hook is a no-op. Subclasses override the ones they need."""

    @property
    def name(self) -> str:
        raise NotImplementedError

    def loss(self, inputs: PenaltyInputs) -> Array | None:
        return None

    def project(self, params: PyTree) -> PyTree:
        return params

    def perturb(self, x: Array, key: Array, ids: Array, t: Array) -> Array:
        return x

    def targets(self, y: Array, key: Array, ids: Array) -> Array:
        return y

    def report(self, t: Array) -> dict[str, Array]:
        """Scalars worth logging that are not loss terms (e.g. the current noise level)."""
        return {}


def _input_gradients(d: Callable[[Array], Array], x: Array) -> Array:
    """Per-example gradients of D's logit w.r.t. its input, flattened: ``[B, prod(x.shape[1:])]``."""
    grads = jax.grad(lambda inp: jnp.sum(d(inp)))(x)
    return grads.reshape(x.shape[0], -1)


@dataclasses.dataclass(frozen=True)
class GradientPenalty(Remedy):
    """WGAN-GP (Gulrajani et al. 2017, Algorithm 1): ``weight * E[(||grad D(x_hat)|| - 1)^2]``.

    ``x_hat`` is uniform on the segment between a real and a generated example (one draw per
    example pair). ``target`` is the norm the gradient is pulled to.
    """

    weight: float = 10.0
    target: float = 1.0

    @property
    def name(self) -> str:
        return "gp"

    def loss(self, inputs: PenaltyInputs) -> Array:
        real, fake = inputs.real, inputs.fake
        eps = keys_lib.per_example(inputs.key, inputs.ids, lambda k: jax.random.uniform(k, ()))
        eps = eps.reshape((-1,) + (1,) * (real.ndim - 1)).astype(real.dtype)
        x_hat = eps * real + (1.0 - eps) * fake
        norms = jnp.linalg.norm(_input_gradients(inputs.d, x_hat), axis=1)
        return self.weight * jnp.mean(jnp.square(norms - self.target))


@dataclasses.dataclass(frozen=True)
class R1(Remedy):
    """R1 (Mescheder et al. 2018, eq. 9): ``gamma/2 * E_real[||grad D(x)||^2]``."""

    gamma: float = 10.0

    @property
    def name(self) -> str:
        return "r1"

    def loss(self, inputs: PenaltyInputs) -> Array:
        g = _input_gradients(inputs.d, inputs.real)
        return 0.5 * self.gamma * jnp.mean(jnp.sum(jnp.square(g), axis=1))


@dataclasses.dataclass(frozen=True)
class R2(Remedy):
    """R2 (Mescheder et al. 2018, eq. 10): ``gamma/2 * E_fake[||grad D(x)||^2]``."""

    gamma: float = 10.0

    @property
    def name(self) -> str:
        return "r2"

    def loss(self, inputs: PenaltyInputs) -> Array:
        g = _input_gradients(inputs.d, inputs.fake)
        return 0.5 * self.gamma * jnp.mean(jnp.sum(jnp.square(g), axis=1))


@dataclasses.dataclass(frozen=True)
class WeightPenalty(Remedy):
    """L2 penalty on D's weights: ``weight * sum ||W||^2`` over every parameter with >= 2 axes
    (kernels; biases and normalisation scales are left alone)."""

    weight: float = 1e-4

    @property
    def name(self) -> str:
        return "d_weight_l2"

    def loss(self, inputs: PenaltyInputs) -> Array:
        kernels = [w for w in jax.tree.leaves(inputs.d_params) if jnp.ndim(w) >= 2]
        if not kernels:
            return jnp.zeros((), jnp.float32)
        return self.weight * sum(jnp.sum(jnp.square(w)) for w in kernels)


@dataclasses.dataclass(frozen=True)
class WeightClip(Remedy):
    """WGAN weight clipping (Arjovsky et al. 2017, Algorithm 1): every D parameter is clipped
    to ``[-clip, clip]`` after each update."""

    clip: float = 0.01

    @property
    def name(self) -> str:
        return "weight_clip"

    def project(self, params: PyTree) -> PyTree:
        return jax.tree.map(lambda w: jnp.clip(w, -self.clip, self.clip), params)


@dataclasses.dataclass(frozen=True)
class InstanceNoise(Remedy):
    """Gaussian noise on every input of D, real and generated (Sønderby et al. 2017;
    Arjovsky & Bottou 2017): it makes the two distributions overlap so D cannot separate
    them perfectly. The std decays linearly from ``std`` to 0 over ``anneal_steps`` D updates
    (0: constant)."""

    std: float = 0.1
    anneal_steps: int = 0

    @property
    def name(self) -> str:
        return "instance_noise"

    def level(self, t: Array) -> Array:
        if self.anneal_steps <= 0:
            return jnp.asarray(self.std, jnp.float32)
        frac = jnp.clip(1.0 - t.astype(jnp.float32) / self.anneal_steps, 0.0, 1.0)
        return self.std * frac

    def perturb(self, x: Array, key: Array, ids: Array, t: Array) -> Array:
        noise = keys_lib.normal(key, ids, x.shape[1:], x.dtype)
        return x + self.level(t).astype(x.dtype) * noise

    def report(self, t: Array) -> dict[str, Array]:
        return {"instance_noise_std": self.level(t)}


@dataclasses.dataclass(frozen=True)
class LabelSmoothing(Remedy):
    """One-sided label smoothing (Salimans et al. 2016, section 3.4): real targets become
    ``real_target`` (e.g. 0.9); fake targets stay 0."""

    real_target: float = 0.9

    @property
    def name(self) -> str:
        return "label_smoothing"

    def targets(self, y: Array, key: Array, ids: Array) -> Array:
        return y * self.real_target


@dataclasses.dataclass(frozen=True)
class LabelFlip(Remedy):
    """One-sided label flipping: each real example is labelled fake with probability ``rate``
    (a noisy teacher for a discriminator that dominates)."""

    rate: float = 0.05

    @property
    def name(self) -> str:
        return "label_flip"

    def targets(self, y: Array, key: Array, ids: Array) -> Array:
        flip = keys_lib.per_example(key, ids, lambda k: jax.random.bernoulli(k, self.rate))
        return jnp.where(flip, 0.0, y)


# Lower-case spellings for configs and quick use: ``jg.penalties.r1(gamma=10.0)``.
gradient_penalty = GradientPenalty
r1 = R1
r2 = R2
weight_penalty = WeightPenalty
weight_clip = WeightClip
instance_noise = InstanceNoise
label_smoothing = LabelSmoothing
label_flip = LabelFlip
