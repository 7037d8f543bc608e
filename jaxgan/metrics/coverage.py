"""Mode coverage of a generator on a mixture with known modes (the VEEGAN/PacGAN protocol).

Srivastava et al. 2017 (VEEGAN, section 5.1 and Table 1): draw samples from the generator; a
sample is *high quality* if it lies within ``threshold`` (3) standard deviations of its nearest
mode centre; a mode is *captured* if it is the nearest centre of at least one high-quality
sample; report the number of modes captured and the fraction of high-quality samples (2,500
samples per model, averaged over runs).

Lin et al. 2018 (PacGAN, Table 1) add the *reverse* KL divergence between the generator's mode
distribution and the data's: with ``p_k`` the fraction of the high-quality samples whose
nearest centre is mode ``k`` and the data uniform over the ``K`` modes,
``KL(p || uniform) = sum_k p_k log(K p_k) = log K - H(p)`` (natural log, nats; ``0 log 0 = 0``).
"Reverse" because the model's distribution comes first (the forward KL(uniform || p) would be
infinite whenever a mode is missed). Their code (fjxmlzn/PacGAN,
``synthetic_data_experiments/PacGAN/pacgan/extensions.py``, ``MetricLogger``) builds this
histogram from high-quality samples only and logs its entropy H(p); KL(p || uniform) is
``log K`` minus that entropy. When no sample is high quality the histogram is empty and the
KL is NaN (it is undefined, and we do not make up a value).

Everything here is pure ``jax.numpy``: it runs under ``jit`` and ``vmap`` (e.g. over seeds),
for any number of modes and any dimension. The pairwise differences take ``N*K*D`` floats.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

THRESHOLD = 3.0  # VEEGAN: within three standard deviations of the nearest mode (2-D datasets)


class Coverage(NamedTuple):
    """Mode-coverage statistics of one set of samples (every field a JAX array).

    ``modes``: number of modes captured (int32 scalar); ``high_quality``: fraction of samples
    within the threshold of their nearest mode; ``reverse_kl``: KL(p || uniform) in nats of
    the high-quality samples' mode histogram (NaN if there is none); ``counts: [K]``: the
    histogram itself (high-quality samples per mode).
    """

    modes: Array
    high_quality: Array
    reverse_kl: Array
    counts: Array


def nearest_mode(samples: Array, centers: Array) -> tuple[Array, Array]:
    """Index ``[N]`` of each sample's nearest centre (Euclidean) and the distance ``[N]`` to it.

    ``samples: [N, D]``, ``centers: [K, D]``.
    """
    diff = samples[:, None, :] - centers[None, :, :]  # [N, K, D]
    dist = jnp.sqrt(jnp.sum(diff * diff, axis=-1))  # [N, K]
    idx = jnp.argmin(dist, axis=1)
    return idx, jnp.take_along_axis(dist, idx[:, None], axis=1)[:, 0]


def _check(samples, centers, std) -> None:
    if samples.ndim != 2:
        raise ValueError(f"samples must be [N, D], got shape {tuple(samples.shape)}")
    if centers.ndim != 2 or centers.shape[0] < 1:
        raise ValueError(f"centers must be [K, D] with K >= 1, got shape {tuple(centers.shape)}")
    if samples.shape[1] != centers.shape[1]:
        raise ValueError(
            f"samples have {samples.shape[1]} dimensions but the centers have {centers.shape[1]}: "
            "pass centres in the samples' space"
        )
    if np.ndim(std) not in (0, 1) or (np.ndim(std) == 1 and np.shape(std)[0] != centers.shape[0]):
        raise ValueError(f"std must be a scalar or one value per mode [K], got shape {np.shape(std)}")
    if not isinstance(std, jax.core.Tracer) and np.any(np.asarray(std) <= 0):
        raise ValueError(f"std must be > 0 (the mixture components' standard deviation), got {std}")


def mode_coverage(
    samples: Array, centers: Array, std: float | Array, *, threshold: float = THRESHOLD
) -> Coverage:
    """VEEGAN/PacGAN mode coverage of ``samples: [N, D]`` against mode ``centers: [K, D]``.

    ``std`` is the components' standard deviation (scalar, or ``[K]`` one per mode; the
    nearest mode's is used). A sample is high quality if its distance to the nearest centre
    is below ``threshold * std``. See the module docstring for the exact definitions.
    """
    samples = jnp.asarray(samples)
    centers = jnp.asarray(centers, samples.dtype)
    _check(samples, centers, std)
    k = centers.shape[0]
    idx, dist = nearest_mode(samples, centers)
    std_of = jnp.broadcast_to(jnp.asarray(std, samples.dtype), (k,))[idx]
    hq = dist < threshold * std_of  # [N]
    counts = jnp.zeros((k,), jnp.int32).at[idx].add(hq.astype(jnp.int32))
    total = jnp.sum(counts)
    p = counts / jnp.maximum(total, 1)
    kl = jnp.sum(jax.scipy.special.xlogy(p, p * k))
    kl = jnp.where(total > 0, kl, jnp.nan)
    return Coverage(
        modes=jnp.sum(counts > 0).astype(jnp.int32),
        high_quality=jnp.mean(hq.astype(samples.dtype)),
        reverse_kl=kl.astype(samples.dtype),
        counts=counts,
    )


def of_mixture(samples: Array, mixture, *, threshold: float = THRESHOLD) -> Coverage:
    """:func:`mode_coverage` against a :class:`jaxgan.data.toy.MixtureOfGaussians` (its
    ``centers`` and ``std``)."""
    return mode_coverage(samples, mixture.centers, mixture.std, threshold=threshold)


def quality(samples: Array, centers: Array, std: float | Array, *, threshold: float = THRESHOLD) -> dict[str, Array]:
    """The sample-quality scalars the monitor logs for toy data (float32, jit- and vmap-able):
    ``modes_captured`` and ``high_quality_frac`` (:func:`mode_coverage`), and
    ``modes_effective`` = exp(entropy) of the high-quality samples' mode histogram
    (= K exp(-reverse KL)): K when they spread evenly over K modes, 1 when they all sit on one,
    not moved by a few stray samples as a count is; 0 when no sample is high quality; and
    ``modes_spread``, the same over every sample by its nearest mode, high quality or not: how
    many modes' territories the samples spread over (about 1 for a single blob); and
    ``median_distance``, the median distance of a sample to its nearest mode in units of the
    modes' std (falling while G sharpens onto the modes, flat when it has stalled off them)."""
    cov = mode_coverage(samples, centers, std, threshold=threshold)
    total = jnp.sum(cov.counts)
    p = cov.counts / jnp.maximum(total, 1)
    entropy = -jnp.sum(jax.scipy.special.xlogy(p, p))
    nearest, dist = nearest_mode(jnp.asarray(samples), jnp.asarray(centers, samples.dtype))
    q = jnp.zeros((centers.shape[0],), jnp.float32).at[nearest].add(1.0) / samples.shape[0]
    return {
        "modes_captured": cov.modes.astype(jnp.float32),
        "modes_effective": jnp.where(total > 0, jnp.exp(entropy), 0.0).astype(jnp.float32),
        "high_quality_frac": cov.high_quality.astype(jnp.float32),
        "modes_spread": jnp.exp(-jnp.sum(jax.scipy.special.xlogy(q, q))).astype(jnp.float32),
        "median_distance": (jnp.median(dist) / std).astype(jnp.float32),
    }
