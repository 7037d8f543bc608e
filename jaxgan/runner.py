"""The compiled unit of training: a chunk of rounds with the real data drawn inside.

For samplers that run on device (toy mixtures, in-memory arrays) the real batch of round ``t``
is drawn from ``fold_in(fold_in(state.rng, DATA), t)`` inside the compiled chunk, so a chunk of
``n`` rounds is one device call with no host traffic. The real example with global index ``i``
of D update ``j`` is a function of (seed, t, j, i): the same on any number of devices.

Data made on the host (TFDS images) comes in as one stacked array per chunk instead
(:func:`train_chunk_fed`), with the same keying by position (:mod:`jaxgan.data.host`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxgan.gan import GAN, GANState

Array = jax.Array
_DATA = 100  # fold_in tag of the data stream, apart from the GAN's own streams

UNROLL = 1
"""Rounds per iteration of a chunk's loop (``jax.lax.scan``'s ``unroll``) when a chunk function
is not given ``unroll=``. With one, a chunk's numbers are bitwise those of its rounds one by one;
``benchmarks/loop_unroll.py`` measures other values."""


def round_batches(gan: GAN, source, state: GANState, local_batch: int) -> Array:
    """This device's real data for the round ``state.step``: ``[d_steps, local_batch, ...]``."""
    key = jax.random.fold_in(jax.random.fold_in(state.rng, _DATA), state.step)
    ids = gan.example_ids(local_batch)
    draws = jnp.arange(gan.schedule.d_steps, dtype=jnp.uint32)
    return jax.vmap(lambda j: source.sample_ids(jax.random.fold_in(key, j), ids))(draws)


def _scan_rounds(step, carry, xs, length: int | None = None, unroll: int | None = None):
    """``jax.lax.scan`` of ``step: (carry, x) -> (carry, metrics)`` with the round's scalar
    float32 metrics written as one vector per round instead of one array each (a dozen
    scalar writes per round were a dozen more kernels on CPU), ``unroll`` rounds per loop
    iteration (default :data:`UNROLL`). Returns ``(carry, {name: [rounds]})`` as the plain scan would."""
    names: list[str] = []

    def body(c, x):
        c, metrics = step(c, x)
        packed = {k: v for k, v in metrics.items() if v.shape == () and v.dtype == jnp.float32}
        names[:] = list(packed)
        rest = {k: v for k, v in metrics.items() if k not in packed}
        vector = jnp.stack(list(packed.values())) if packed else jnp.zeros((0,), jnp.float32)
        return c, (vector, rest)

    unroll = UNROLL if unroll is None else unroll
    carry, (vectors, rest) = jax.lax.scan(body, carry, xs, length=length, unroll=unroll)
    return carry, {**{k: vectors[:, i] for i, k in enumerate(names)}, **rest}


def _flag_final_params(gan: GAN, state: GANState, metrics: dict) -> dict:
    """Without ``skip_nonfinite`` the updates' flags do not read their new params
    (:class:`jaxgan.GAN`): the chunk's final params are read here, once, and a player whose
    params are not finite flags the chunk's last round, so no chunk that ends in non-finite
    params looks finite to the loop (which then saves nothing from it)."""
    if gan.skip_nonfinite:
        return metrics
    out = dict(metrics)
    for player, ok in zip(("d", "g"), gan.params_finite(state), strict=True):
        name = f"{player}_nonfinite"
        if name in out:
            out[name] = out[name].at[-1].max(1.0 - ok.astype(out[name].dtype))
    return out


def train_chunk(gan: GAN, source, state: GANState, local_batch: int, rounds: int, unroll: int | None = None,
                draw_in_round: bool = False):
    """``rounds`` training rounds with on-device data: ``(state, metrics [rounds])``. Pure;
    the caller jits it with ``rounds`` (and ``local_batch``) static. ``unroll``: rounds per
    loop iteration (default :data:`UNROLL`). With ``unroll=1`` the chunk's numbers are bitwise
    those of ``gan.train_step`` called round by round; unrolled, XLA fuses across rounds and
    they agree to float rounding (an ulp or two).

    By default each round draws the next round's batch and carries it: a value carried by the
    loop is computed once, whereas XLA fuses a batch drawn inside the round into each of its
    readers (D's input and the diversity metric) and recomputes its draw for each; the chunk
    draws one batch more than it trains on. ``draw_in_round`` draws each round's batch in that
    round instead, the better choice where the draw is a call whose output is kept, not fused
    (:func:`jaxgan.cpu.draw_in_round` says when). The numbers are the same either way.

    The ``*_nonfinite`` flags of the chunk's last round also say whether the final params are
    finite (:meth:`jaxgan.GAN.params_finite`; the updates read them only under
    ``skip_nonfinite``)."""

    if draw_in_round:

        def step(s, _):
            return gan.train_step(s, round_batches(gan, source, s, local_batch))

        state, metrics = _scan_rounds(step, state, None, length=rounds, unroll=unroll)
        return state, _flag_final_params(gan, state, metrics)

    def carried(carry, _):
        s, batch = carry
        s, metrics = gan.train_step(s, batch)
        return (s, round_batches(gan, source, s, local_batch)), metrics

    first = round_batches(gan, source, state, local_batch)
    (state, _), metrics = _scan_rounds(carried, (state, first), None, length=rounds, unroll=unroll)
    return state, _flag_final_params(gan, state, metrics)


def train_chunk_fed(gan: GAN, state: GANState, batches: Array, transform=None, unroll: int | None = None):
    """Training rounds on host-fed data: ``batches: [rounds, d_steps, B, ...]`` is this device's
    real data (:mod:`jaxgan.data.host`), ``transform`` maps its storage dtype to what the GAN
    trains on (e.g. uint8 pixels to [-1, 1]). Returns ``(state, metrics [rounds])``. Pure; the
    caller jits it. ``unroll`` as in :func:`train_chunk`."""

    def step(s, batch):
        return gan.train_step(s, batch if transform is None else transform(batch))

    state, metrics = _scan_rounds(step, state, batches, unroll=unroll)
    return state, _flag_final_params(gan, state, metrics)
