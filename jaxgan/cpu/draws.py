"""The per-row draws of :mod:`jaxgan.keys` as C++ handlers, lowered in place of XLA's on the CPU.

XLA's loop fusion evaluates each Threefry hash once per output word; the handlers
(``csrc/threefry_rows.cc``, built with the machine's C++ compiler on first use) evaluate it once,
vectorised and split over XLA's intra-op threads. The bits are the same; the normals are the same
transform of them with the handler's own logarithm, equal to XLA's to a few float32 ulps.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path

import jax

from jaxgan import keys
from jaxgan.cpu import native

SOURCE = Path(__file__).with_name("csrc") / "threefry_rows.cc"
# FFI target name -> exported handler symbol
TARGETS = {"jaxgan_threefry_rows": "JaxganThreefryRows", "jaxgan_threefry_normal": "JaxganThreefryNormal"}
_OPS = {"jaxgan_threefry_rows": keys.HASH_ROWS, "jaxgan_threefry_normal": keys.NORMAL_ROWS}

_lock = threading.Lock()
_state: dict = {"lib": None, "error": None}


def _load() -> bool:
    """Build (once) and register the handlers; whether they are there."""
    with _lock:
        if _state["lib"] is None and _state["error"] is None:
            try:
                path = native.compile_library(SOURCE, what="the native random draws",
                                              extra=["-O3", "-fno-math-errno", "-fno-trapping-math"])
                _state["lib"] = native.register(path, TARGETS)
            except (native.BuildError, OSError, AttributeError) as e:
                _state["error"] = str(e)
    return _state["lib"] is not None


def _rule(target: str, op):
    """The op's CPU lowering: the handler (which takes the op's leading batch axes as they are),
    or the op's own lowering for an empty draw."""
    ffi = jax.ffi.ffi_lowering(target)

    def rule(ctx, data, ids, *, n: int, batch_ndim: int):
        if math.prod(ctx.avals_out[0].shape) == 0:
            return op.default_lowering(ctx, data, ids, n=n, batch_ndim=batch_ndim)
        return ffi(ctx, data, ids)

    return rule


def plug(on: bool = True) -> bool:
    """Lower :data:`jaxgan.keys.HASH_ROWS` and :data:`jaxgan.keys.NORMAL_ROWS` on the CPU with the
    handlers (``on``, if they can be built) or with XLA's computation again. Affects programs
    compiled afterwards; returns whether the handlers are in use."""
    on = on and _load()
    for target, op in _OPS.items():
        op.lower_on("cpu", _rule(target, op) if on else None)
    return on


def unavailable_reason() -> str | None:
    """Why the handlers could not be built (None if they were, or were not asked for)."""
    return _state["error"]
