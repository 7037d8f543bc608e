"""GAN losses as pure functions of discriminator logits.

A loss is three per-example terms, each a function of D's raw output ``l``:

* ``real(l)``: what D pays on an example it should call real,
* ``fake(l)``: what D pays on an example it should call fake,
* ``gen(l)``:  what G pays on a generated example.

The discriminator loss is the sum of the mean real term over data and the mean fake term over
generated samples. A per-example real target ``y`` in [0, 1] (one-sided label smoothing and
flipping) mixes the two D terms: ``y * real(l) + (1 - y) * fake(l)``, which for the binary
cross-entropy losses is exactly cross-entropy against the soft label ``y``.

``readout`` says how D's output is read as the probability that an example is real, for the
generator and discriminator scores (see :mod:`jaxgan.scores`):

* ``"sigmoid"``: ``sigmoid(l)``; D is a classifier (minimax, non-saturating) or a margin
  classifier with its boundary at 0 (hinge);
* ``"clip"``: ``clip(l, 0, 1)``; least squares regresses D's output on the labels 1 and 0;
* ``"centered"``: ``sigmoid(l - m)`` with ``m`` the midpoint of the mean critic values on real
  and generated data; a Wasserstein critic is defined up to an additive constant, so only its
  position relative to the two means says "real" or "fake".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

Array = jax.Array
Term = Callable[[Array], Array]


@dataclasses.dataclass(frozen=True)
class Loss:
    """A GAN loss: per-example terms for D on real, D on fake and G on fake (static, hashable)."""

    name: str
    real: Term
    fake: Term
    gen: Term
    readout: str  # "sigmoid" | "clip" | "centered"

    def discriminator_loss(
        self, real_logits: Array, fake_logits: Array, real_targets: Array | None = None
    ) -> Array:
        """Mean real term plus mean fake term. ``*_logits: [B]``; ``real_targets: [B]`` or None (all 1)."""
        if real_targets is None:
            real_part = jnp.mean(self.real(real_logits))
        else:
            y = real_targets
            real_part = jnp.mean(y * self.real(real_logits) + (1.0 - y) * self.fake(real_logits))
        return real_part + jnp.mean(self.fake(fake_logits))

    def generator_loss(self, fake_logits: Array) -> Array:
        """Mean generator term over generated examples. ``fake_logits: [B]``."""
        return jnp.mean(self.gen(fake_logits))


def _neg(f: Term) -> Term:
    return lambda logits: -f(logits)


def _identity(logits: Array) -> Array:
    return logits


def _minus(logits: Array) -> Array:
    return -logits


def _softplus_neg(logits: Array) -> Array:
    # -log sigmoid(l), computed stably.
    return jax.nn.softplus(-logits)


def _softplus(logits: Array) -> Array:
    # -log(1 - sigmoid(l)), computed stably.
    return jax.nn.softplus(logits)


def _hinge_real(logits: Array) -> Array:
    return jax.nn.relu(1.0 - logits)


def _hinge_fake(logits: Array) -> Array:
    return jax.nn.relu(1.0 + logits)


def _ls_real(logits: Array) -> Array:
    return 0.5 * jnp.square(logits - 1.0)


def _ls_fake(logits: Array) -> Array:
    return 0.5 * jnp.square(logits)


# Goodfellow et al. 2014, eq. 1: D maximises log D(x) + log(1 - D(G(z))); G minimises
# log(1 - D(G(z))), which saturates when D rejects the fakes confidently.
MINIMAX = Loss("minimax", _softplus_neg, _softplus, _neg(_softplus), "sigmoid")
# Goodfellow et al. 2014, section 3: G maximises log D(G(z)) instead (same fixed point,
# strong gradients early on).
NON_SATURATING = Loss("non_saturating", _softplus_neg, _softplus, _softplus_neg, "sigmoid")
# Arjovsky et al. 2017: the critic maximises E[f(x)] - E[f(G(z))]; pair it with weight
# clipping or a gradient penalty to keep f Lipschitz.
WASSERSTEIN = Loss("wasserstein", _minus, _identity, _minus, "centered")
# Lim & Ye 2017; Miyato et al. 2018: hinge for D, -E[D(G(z))] for G.
HINGE = Loss("hinge", _hinge_real, _hinge_fake, _minus, "sigmoid")
# Mao et al. 2017, eq. 2 with a=0, b=c=1 and the paper's factor 1/2.
LEAST_SQUARES = Loss("least_squares", _ls_real, _ls_fake, _ls_real, "clip")

LOSSES: dict[str, Loss] = {
    loss.name: loss for loss in (MINIMAX, NON_SATURATING, WASSERSTEIN, HINGE, LEAST_SQUARES)
}


def get(name: str) -> Loss:
    """The loss called ``name``; the error lists the valid names."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}") from None


def to_probability(loss: Loss, real_logits: Array, fake_logits: Array) -> tuple[Array, Array]:
    """D's outputs read as P(real), per the loss's ``readout``. Returns ``(p_real [B], p_fake [B])``."""
    if loss.readout == "sigmoid":
        return jax.nn.sigmoid(real_logits), jax.nn.sigmoid(fake_logits)
    if loss.readout == "clip":
        return jnp.clip(real_logits, 0.0, 1.0), jnp.clip(fake_logits, 0.0, 1.0)
    if loss.readout == "centered":
        mid = 0.5 * (jnp.mean(real_logits) + jnp.mean(fake_logits))
        return jax.nn.sigmoid(real_logits - mid), jax.nn.sigmoid(fake_logits - mid)
    raise ValueError(f"unknown readout {loss.readout!r} on loss {loss.name!r}")
