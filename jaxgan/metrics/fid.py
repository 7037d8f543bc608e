"""The Fréchet distance between two sets of features (FID when the features are Inception's).

Heusel et al. (2017, "GANs trained by a two time-scale update rule...", eq. 6) compare the
Gaussians fitted to the two feature sets:

    d^2 = ||mu_a - mu_b||^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2)).

``S_a S_b`` is not symmetric, but its square root's trace equals that of the symmetric PSD matrix
``S_a^(1/2) S_b S_a^(1/2)`` (the two are similar), so everything here uses symmetric eigen-
decompositions: pure JAX, on any device, no Schur decomposition (``scipy.linalg.sqrtm``, which
the reference implementations call, is CPU-only and is what the tests compare against).

Moments are kept as :class:`Moments` (count, mean, centred sum of squares) with an exact merge
rule (Chan et al. 1979), so features can be accumulated batch by batch or across devices.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array


class Moments(NamedTuple):
    """First and second moments of a feature set: ``count`` scalar, ``mean [D]``, and
    ``m2 [D, D]`` = sum of (x - mean)(x - mean)^T. A pytree; merge with :func:`merge_moments`."""

    count: Array
    mean: Array
    m2: Array

    @property
    def cov(self) -> Array:
        """Unbiased covariance ``[D, D]`` (divides by count - 1, as ``np.cov`` does)."""
        return self.m2 / jnp.maximum(self.count - 1.0, 1.0)


def moments(features: Array) -> Moments:
    """Moments of ``features: [N, D]``."""
    if features.ndim != 2:
        raise ValueError(f"features must be [N, D], got shape {features.shape}: flatten each example first")
    x = features.astype(jnp.promote_types(features.dtype, jnp.float32))
    mean = jnp.mean(x, axis=0)
    centred = x - mean[None, :]
    return Moments(jnp.asarray(x.shape[0], x.dtype), mean, centred.T @ centred)


def merge_moments(a: Moments, b: Moments) -> Moments:
    """The moments of the union of two feature sets (exact; order-independent up to rounding)."""
    n = a.count + b.count
    delta = b.mean - a.mean
    mean = a.mean + delta * (b.count / n)
    m2 = a.m2 + b.m2 + jnp.outer(delta, delta) * (a.count * b.count / n)
    return Moments(n, mean, m2)


def sqrtm_psd(a: Array) -> Array:
    """The principal square root of a symmetric positive semi-definite matrix ``a: [D, D]``.

    Eigenvalues below zero (round-off on a singular matrix) are clipped to zero.
    """
    a = 0.5 * (a + a.T)
    w, v = jnp.linalg.eigh(a)
    return (v * jnp.sqrt(jnp.clip(w, 0.0))[None, :]) @ v.T


def trace_sqrt_product(cov_a: Array, cov_b: Array) -> Array:
    """``tr((cov_a cov_b)^(1/2))`` for symmetric PSD ``cov_a, cov_b: [D, D]``, via the similar
    symmetric matrix ``cov_a^(1/2) cov_b cov_a^(1/2)`` (same eigenvalues, all >= 0)."""
    root_a = sqrtm_psd(cov_a)
    inner = root_a @ cov_b @ root_a
    w = jnp.linalg.eigvalsh(0.5 * (inner + inner.T))
    return jnp.sum(jnp.sqrt(jnp.clip(w, 0.0)))


def frechet_distance(mean_a: Array, cov_a: Array, mean_b: Array, cov_b: Array) -> Array:
    """Squared Fréchet (2-Wasserstein) distance between N(mean_a, cov_a) and N(mean_b, cov_b)."""
    diff = mean_a - mean_b
    d2 = diff @ diff + jnp.trace(cov_a) + jnp.trace(cov_b) - 2.0 * trace_sqrt_product(cov_a, cov_b)
    return jnp.maximum(d2, 0.0)


def frechet_distance_moments(a: Moments, b: Moments) -> Array:
    """:func:`frechet_distance` between the Gaussians fitted to two :class:`Moments`."""
    return frechet_distance(a.mean, a.cov, b.mean, b.cov)


def fid(features_a: Array, features_b: Array) -> Array:
    """The Fréchet distance between feature sets ``[N, D]`` and ``[M, D]`` (FID when the features
    are Inception pool3 activations; "classifier FID" with a classifier's penultimate layer)."""
    if features_a.ndim != 2 or features_b.ndim != 2 or features_a.shape[1] != features_b.shape[1]:
        raise ValueError(
            f"fid needs two feature sets [N, D] and [M, D] with the same D; got {features_a.shape} "
            f"and {features_b.shape}"
        )
    if min(features_a.shape[0], features_b.shape[0]) < 2:
        raise ValueError("fid needs at least 2 examples in each set to estimate a covariance")
    return frechet_distance_moments(moments(features_a), moments(features_b))
