"""Precision and recall (k-NN manifolds) and density and coverage, between two feature sets.

Kynkäänniemi et al. (2019, "Improved precision and recall metric for assessing generative
models", eq. 1-2): the manifold of a set is the union of balls around its points, each with the
radius to that point's k-th nearest neighbour in the set (k = 3). Precision is the fraction of
generated samples inside the real manifold (quality); recall the fraction of real samples inside
the generated manifold (coverage of the data).

Naeem et al. (2020, "Reliable fidelity and diversity metrics for generative models", eq. 3-4),
with the real balls only (k = 5): density = (1 / kM) sum_j #{real balls containing fake j}
(can exceed 1; about 1 when the distributions agree), coverage = fraction of real balls that
contain at least one fake.

Balls are closed (distance <= radius); a point's own zero distance is not its neighbour (the
k-th neighbour is the (k+1)-th smallest distance in its own set, as in the authors' code).
Distances are computed block by block (``lax.map`` over rows), so memory is
``block x N``, not ``N x N``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

Array = jax.Array


def _check(real: Array, fake: Array, k: int) -> None:
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(
            f"need two feature sets [N, D] and [M, D] with the same D; got {real.shape} and {fake.shape}"
        )
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    smallest = min(real.shape[0], fake.shape[0])
    if smallest < k + 1:
        raise ValueError(f"k={k} nearest neighbours need at least {k + 1} examples per set; got {smallest}")


def _row_blocks(queries: Array, refs: Array, fn: Callable[[Array], Array], block: int) -> Array:
    """``fn`` applied to squared distances ``[b, M]`` from blocks of ``queries: [N, D]`` to
    ``refs: [M, D]``; returns the per-query results ``[N, ...]``."""
    n = queries.shape[0]
    block = max(1, min(block, n))
    nb = -(-n // block)
    q = jnp.pad(queries, ((0, nb * block - n), (0, 0))).reshape(nb, block, queries.shape[1])
    ref_sq = jnp.sum(refs * refs, axis=1)

    def one(qb):
        d2 = jnp.sum(qb * qb, axis=1)[:, None] + ref_sq[None, :] - 2.0 * (qb @ refs.T)
        return fn(jnp.maximum(d2, 0.0))

    out = jax.lax.map(one, q)
    return out.reshape(nb * block, *out.shape[2:])[:n]


def _prepare(real: Array, fake: Array) -> tuple[Array, Array]:
    # Centring on the real mean changes no distance but shrinks the norms, and so the round-off of
    # |a|^2 + |b|^2 - 2 a.b.
    real = real.astype(jnp.float32)
    fake = fake.astype(jnp.float32)
    centre = jnp.mean(real, axis=0)
    return real - centre[None, :], fake - centre[None, :]


def knn_sq_radii(features: Array, ks: tuple[int, ...], *, block: int = 1024) -> Array:
    """Squared distance from each point to its k-th nearest other point, for each k in ``ks``:
    ``[N, len(ks)]``."""
    kmax = max(ks)

    def fn(d2):
        smallest = -jax.lax.top_k(-d2, kmax + 1)[0]  # ascending, the point itself first
        return jnp.stack([smallest[:, k] for k in ks], axis=1)

    return _row_blocks(features, features, fn, block)


def knn_radii(features: Array, k: int, *, block: int = 1024) -> Array:
    """Distance from each point of ``features: [N, D]`` to its k-th nearest other point: ``[N]``."""
    _check(features, features, k)
    return jnp.sqrt(knn_sq_radii(features.astype(jnp.float32), (k,), block=block)[:, 0])


def _inside_counts(queries: Array, refs: Array, ref_sq_radii: Array, block: int) -> Array:
    """For each query, how many reference balls contain it: ``[N]`` (int32)."""
    return _row_blocks(
        queries, refs, lambda d2: jnp.sum(d2 <= ref_sq_radii[None, :], axis=1, dtype=jnp.int32), block
    )


def precision_recall(real: Array, fake: Array, *, k: int = 3, block: int = 1024) -> tuple[Array, Array]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) of ``fake: [M, D]`` against
    ``real: [N, D]``: (precision, recall), each in [0, 1]."""
    _check(real, fake, k)
    real, fake = _prepare(real, fake)
    r_real = knn_sq_radii(real, (k,), block=block)[:, 0]
    r_fake = knn_sq_radii(fake, (k,), block=block)[:, 0]
    precision = jnp.mean(_inside_counts(fake, real, r_real, block) > 0)
    recall = jnp.mean(_inside_counts(real, fake, r_fake, block) > 0)
    return precision, recall


def density_coverage(real: Array, fake: Array, *, k: int = 5, block: int = 1024) -> tuple[Array, Array]:
    """Density and coverage (Naeem et al. 2020) of ``fake: [M, D]`` against ``real: [N, D]``."""
    _check(real, fake, k)
    real, fake = _prepare(real, fake)
    r_real = knn_sq_radii(real, (k,), block=block)[:, 0]
    density = jnp.mean(_inside_counts(fake, real, r_real, block)) / k
    nearest_fake = _row_blocks(real, fake, lambda d2: jnp.min(d2, axis=1), block)
    coverage = jnp.mean(nearest_fake <= r_real)
    return density, coverage


def prdc(
    real: Array, fake: Array, *, k_pr: int = 3, k_dc: int = 5, block: int = 1024
) -> dict[str, Array]:
    """Precision, recall (k = ``k_pr``), density and coverage (k = ``k_dc``) in one pass over
    the distances: ``{"precision", "recall", "density", "coverage"}``."""
    _check(real, fake, max(k_pr, k_dc))
    real, fake = _prepare(real, fake)
    r_real = knn_sq_radii(real, (k_pr, k_dc), block=block)
    r_fake = knn_sq_radii(fake, (k_pr,), block=block)[:, 0]

    def fake_rows(d2):  # fake j against every real ball
        return jnp.stack([jnp.sum(d2 <= r_real[None, :, i], axis=1, dtype=jnp.int32) for i in (0, 1)], 1)

    def real_rows(d2):  # real i against every fake: inside a fake ball (recall), nearest fake (coverage)
        inside = jnp.any(d2 <= r_fake[None, :], axis=1)
        return jnp.stack([inside.astype(d2.dtype), jnp.min(d2, axis=1)], axis=1)

    per_fake = _row_blocks(fake, real, fake_rows, block)
    per_real = _row_blocks(real, fake, real_rows, block)
    return {
        "precision": jnp.mean(per_fake[:, 0] > 0),
        "recall": jnp.mean(per_real[:, 0]),
        "density": jnp.mean(per_fake[:, 1]) / k_dc,
        "coverage": jnp.mean(per_real[:, 1] <= r_real[:, 1]),
    }
