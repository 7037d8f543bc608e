"""The 0-to-1 scores and in-step statistics that say how each player is doing.

Definitions, with ``p`` the discriminator's output read as P(real)
(:func:`jaxgan.losses.to_probability`):

* generator score = mean(p on generated samples): near 0 when D rejects every fake;
* discriminator score = 1/2 mean(p on real) + 1/2 mean(1 - p on generated);
* D accuracy on real = fraction of real samples with p > 1/2; on fake, fraction with p < 1/2.

At the game's equilibrium (p_g = p_data, D = 1/2 everywhere) both scores are 1/2 and the
accuracies are a coin flip.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxgan import losses as losses_lib

Array = jax.Array


def game_scores(loss: losses_lib.Loss, real_logits: Array, fake_logits: Array) -> dict[str, Array]:
    """Scores and accuracies from D's outputs on equal numbers of real and generated samples.

    ``real_logits, fake_logits: [B]``. For Wasserstein critics the probabilities are read
    relative to the midpoint of the two mean critic values (see :mod:`jaxgan.losses`), and the
    raw ``wasserstein_estimate`` = mean critic(real) - mean critic(fake) is reported too.
    """
    p_real, p_fake = losses_lib.to_probability(loss, real_logits, fake_logits)
    out = {
        "generator_score": jnp.mean(p_fake),
        "discriminator_score": 0.5 * jnp.mean(p_real) + 0.5 * jnp.mean(1.0 - p_fake),
        "d_accuracy_real": jnp.mean((p_real > 0.5).astype(jnp.float32)),
        "d_accuracy_fake": jnp.mean((p_fake < 0.5).astype(jnp.float32)),
    }
    if loss.readout == "centered":
        out["wasserstein_estimate"] = jnp.mean(real_logits) - jnp.mean(fake_logits)
    return out


def mean_pairwise_distance(x: Array, axis_name: str | None = None) -> Array:
    """Mean Euclidean distance over distinct pairs of rows of ``x: [B, ...]`` (B >= 2).

    Rows are centred first (distances do not change): the Gram-matrix form |a|^2 + |b|^2 - 2ab
    cancels catastrophically in float32 when near-identical rows sit far from the origin, which
    is exactly a collapsed generator's output.

    Under ``pmap``/``shard_map`` with ``axis_name``, ``x`` is this device's share of a global
    batch and the mean runs over all pairs of the global batch (each device takes the pairs
    that start in its rows, centred on the global mean), so the value does not depend on how
    the batch is split.
    """
    flat = x.reshape(x.shape[0], -1).astype(jnp.float32)
    centre = jnp.mean(flat, axis=0, keepdims=True)
    if axis_name is not None:
        centre = jax.lax.pmean(centre, axis_name)
    flat = flat - centre
    n = flat.shape[0]
    row_ids = jnp.arange(n)
    every = flat
    if axis_name is not None:
        every = jax.lax.all_gather(flat, axis_name, tiled=True)
        row_ids = row_ids + jax.lax.axis_index(axis_name) * n
    total = every.shape[0]
    d2 = jnp.sum(flat * flat, axis=1)[:, None] + jnp.sum(every * every, axis=1)[None, :] - 2.0 * flat @ every.T
    off_diagonal = (row_ids[:, None] != jnp.arange(total)[None, :]).astype(flat.dtype)
    # sqrt of a clipped value, with a zero-safe gradient (the diagonal is masked out anyway).
    dist = jnp.sqrt(jnp.maximum(d2, 0.0) * off_diagonal + (1.0 - off_diagonal))
    pair_sum = jnp.sum(dist * off_diagonal)
    if axis_name is not None:
        pair_sum = jax.lax.psum(pair_sum, axis_name)
    return pair_sum / (total * (total - 1))


def diversity(real: Array, fake: Array, axis_name: str | None = None) -> Array:
    """Batch diversity: mean pairwise distance among fakes over the same among reals.

    About 1 when the generator spreads like the data; well below 1 under mode collapse
    (many near-identical outputs from different latents). ``real, fake: [B, ...]`` (this
    device's share of the global batch when ``axis_name`` is set).
    """
    return mean_pairwise_distance(fake, axis_name) / jnp.maximum(mean_pairwise_distance(real, axis_name), 1e-12)


def mean_neighbour_distance(x: Array, axis_name: str | None = None) -> Array:
    """Mean Euclidean distance between rows ``i`` and ``i + 1 (mod B)`` of ``x: [B, ...]``.

    For exchangeable rows (i.i.d. latents, shuffled data) each pair is a draw of two distinct
    examples, so this has the same expectation as :func:`mean_pairwise_distance` at O(B) cost
    instead of O(B^2) (its variance is larger: B pairs instead of B(B-1)/2). Under
    ``pmap``/``shard_map`` with ``axis_name``, ``x`` is this device's share and the pairs run
    over the gathered global batch, so the value does not depend on how the batch is split."""
    flat = x.reshape(x.shape[0], -1).astype(jnp.float32)
    if axis_name is not None:
        flat = jax.lax.all_gather(flat, axis_name, tiled=True)
    return jnp.mean(jnp.sqrt(jnp.sum((flat - jnp.roll(flat, 1, axis=0)) ** 2, axis=1)))


def diversity_estimate(real: Array, fake: Array, axis_name: str | None = None) -> Array:
    """:func:`diversity` estimated from B neighbouring pairs instead of all B(B-1)/2 pairs
    (:func:`mean_neighbour_distance`): the in-step statistic, cheap at any batch size."""
    return mean_neighbour_distance(fake, axis_name) / jnp.maximum(mean_neighbour_distance(real, axis_name), 1e-12)
