"""Threefry-2x32-20 written out round by round, and as the CPU lowering of ``jax.random``'s hash.

JAX lowers its ``threefry2x32`` primitive on the CPU as a rolled loop; unrolled, XLA fuses the
hash into one loop. Same rounds, rotations and key schedule as the specification (Salmon et al.
2011, "Parallel random numbers: as easy as 1, 2, 3"), so the same bits.
"""

from __future__ import annotations

import numpy as np

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = 0x1BD11BDA
_state = {"unrolled": False}


def _rotate_left(x, r: int):
    return (x << np.uint32(r)) | (x >> np.uint32(32 - r))


def threefry2x32(k1, k2, x1, x2):
    """Threefry-2x32 with 20 rounds on uint32 arrays (numpy or JAX): keys ``(k1, k2)``, counters
    ``(x1, x2)``; returns the two output words."""
    ks = (k1, k2, k1 ^ k2 ^ np.uint32(_PARITY))
    a, b = x1 + ks[0], x2 + ks[1]
    for i in range(5):  # 5 groups of 4 rounds, a key injection after each group
        for r in _ROTATIONS[i % 2]:
            a = a + b
            b = _rotate_left(b, r) ^ a
        a = a + ks[(i + 1) % 3]
        b = b + ks[(i + 2) % 3] + np.uint32(i + 1)
    return a, b


def unroll() -> None:
    """Lower ``jax.random``'s threefry2x32 primitive on the CPU with :func:`threefry2x32`.
    Idempotent; affects programs compiled afterwards."""
    if _state["unrolled"]:
        return
    from jax.extend.random import threefry2x32_p
    from jax.interpreters import mlir

    mlir.register_lowering(threefry2x32_p, mlir.lower_fun(threefry2x32, multiple_results=True), platform="cpu")
    _state["unrolled"] = True


def unrolled() -> bool:
    """Whether :func:`unroll` has been applied in this process."""
    return _state["unrolled"]
