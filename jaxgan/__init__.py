"""jaxgan: GANs in JAX as a static definition plus a pytree of state, stepped by pure functions."""

from jaxgan import diagnose, losses, nets, parallel, penalties, scores, unroll
from jaxgan.gan import GAN, GANState, PlayerState, Schedule

__version__ = "0.1.0"

__all__ = [
    "GAN",
    "GANState",
    "PlayerState",
    "Schedule",
    "diagnose",
    "losses",
    "nets",
    "parallel",
    "penalties",
    "scores",
    "unroll",
]
