"""Mode counting from class predictions: the Stacked-MNIST protocol and class histograms.

Metz et al. (2016, section 3.3.1 and Table 2) and Lin et al. (PacGAN, 2018, Tables 2-3) stack
three MNIST digits as the colour channels of one image, giving 10^3 = 1000 modes; a pretrained
classifier labels each channel of each generated image, a mode is covered when at least one
sample falls in it, and the histogram of modes is compared with the uniform one by
KL(model || uniform) (PacGAN's code: ``sum p log(p / (1/1000))`` over the generated histogram).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def mode_ids(labels: Array, num_classes: int) -> Array:
    """Per-channel labels ``[N, C]`` -> one mode id per example ``[N]`` in ``[0, num_classes^C)``
    (channel 0 the most significant digit: labels (3, 1, 4) of 10 classes are mode 314)."""
    if labels.ndim == 1:
        return labels.astype(jnp.int32)
    weights = num_classes ** jnp.arange(labels.shape[1] - 1, -1, -1, dtype=jnp.int32)
    return jnp.sum(labels.astype(jnp.int32) * weights[None, :], axis=1)


def histogram(ids: Array, num_modes: int) -> Array:
    """Counts of each mode id ``[num_modes]`` (float32)."""
    return jnp.zeros((num_modes,), jnp.float32).at[ids].add(1.0)


def kl_divergence(p: Array, q: Array) -> Array:
    """KL(p || q) for probability vectors ``[K]``, with 0 log 0 = 0 (``q`` must be > 0 where
    ``p`` is)."""
    safe = jnp.where(p > 0, p / jnp.where(q > 0, q, 1.0), 1.0)
    return jnp.sum(jnp.where(p > 0, p * jnp.log(safe), 0.0))


def mode_stats(labels: Array, num_classes: int, reference: Array | None = None) -> dict[str, Array]:
    """From predicted labels ``[N]`` or ``[N, C]``: ``modes`` (distinct modes hit),
    ``mode_kl`` = KL(generated histogram || reference) with ``reference`` a probability vector
    over the ``num_classes^C`` modes (uniform when None, as the papers use), and the histogram."""
    channels = 1 if labels.ndim == 1 else labels.shape[1]
    num_modes = num_classes**channels
    counts = histogram(mode_ids(labels, num_classes), num_modes)
    p = counts / jnp.sum(counts)
    q = jnp.full((num_modes,), 1.0 / num_modes) if reference is None else reference
    return {"modes": jnp.sum(counts > 0), "mode_kl": kl_divergence(p, q), "histogram": counts}
