"""Unrolled-GAN lookahead (Metz, Poole, Pfau & Sohl-Dickstein 2016, arXiv:1611.02163).

The generator is trained against a discriminator advanced ``k`` optimizer steps ahead; the
generator's gradient flows back through those ``k`` updates, optimizer state included (the
surrogate loss f_K(theta_G, theta_D) of the paper, eq. 6-7). The updates run in a
``jax.lax.scan``, so the compiled program and its compile time do not grow with ``k`` (the
memory of the backward pass does: it keeps each update's residuals; ``remat=True`` trades that
for recomputation).

Differentiating through an optimizer needs its update to be differentiable where it is
evaluated. ``optax.adam`` divides by ``sqrt(v)``, whose derivative is infinite at ``v = 0``: a
parameter whose gradient is exactly 0 (e.g. the weights of a ReLU unit that never fires)
turns the generator's gradient into NaN. Use ``optax.adam(..., eps_root=1e-16)`` for the
discriminator, as optax documents for meta-gradients through Adam; ``jaxgan.build`` does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
PyTree = Any
Carry = TypeVar("Carry")


def scan_updates(
    update: Callable[[Carry, Array], Carry],
    carry: Carry,
    steps: int,
    *,
    first_order: bool = False,
    remat: bool = False,
) -> Carry:
    """Apply ``carry = update(carry, j)`` for ``j = 0 .. steps-1`` with ``lax.scan``.

    ``steps`` is static; ``steps == 0`` returns ``carry`` itself (no scan is traced).
    ``first_order=True`` stops the gradient at the result, so a caller differentiating through
    it sees the advanced values as constants (the paper's comparison without the second-order
    term). ``remat=True`` wraps the body in ``jax.checkpoint``: the backward pass recomputes
    each update instead of storing its intermediates, trading compute for memory that would
    otherwise grow with ``steps``.
    """
    if not isinstance(steps, int | np.integer) or isinstance(steps, bool):
        raise TypeError(f"unroll steps must be a Python int (it sets the scan length), got {steps!r}")
    if steps < 0:
        raise ValueError(f"unroll steps must be >= 0, got {steps}")
    if steps == 0:
        return carry

    def body(c, j):
        return update(c, j), None

    if remat:
        body = jax.checkpoint(body)
    carry, _ = jax.lax.scan(body, carry, jnp.arange(steps))
    if first_order:
        carry = jax.lax.stop_gradient(carry)
    return carry


def lookahead(
    d_update: Callable[[PyTree, PyTree, PyTree, Array], tuple[PyTree, PyTree]],
    d_params: PyTree,
    d_opt_state: PyTree,
    batch: PyTree,
    steps: int,
    *,
    key: Array | None = None,
    first_order: bool = False,
    remat: bool = False,
) -> tuple[PyTree, PyTree]:
    """Advance a discriminator ``steps`` updates ahead, differentiably: ``(d_params, d_opt_state)``.

    ``d_update(d_params, d_opt_state, batch, key) -> (d_params, d_opt_state)`` is the same
    function that trains D (one definition serves both); every update sees ``batch`` and
    update ``j`` receives ``fold_in(key, j)`` (or ``None`` when ``key`` is None). Use the result
    to compute the generator's loss; ``jax.grad`` of that loss w.r.t. generator parameters
    closed over by ``d_update`` differentiates through every update, optimizer state included
    (Metz et al. 2016, eq. 6-7). ``first_order`` and ``remat`` as in :func:`scan_updates`. The D
    passed in is not modified (JAX values are immutable): train D with your own ``d_update``
    call as usual. See the module docstring for the ``eps_root`` an Adam D needs.
    """

    def update(carry, j):
        params, opt_state = carry
        sub = None if key is None else jax.random.fold_in(key, j)
        return d_update(params, opt_state, batch, sub)

    return scan_updates(
        update, (d_params, d_opt_state), steps, first_order=first_order, remat=remat
    )
