"""oneDNN convolutions for JAX's CPU backend, through ``jax.ffi``.

oneDNN (Intel's library, the one PyTorch uses on CPU) runs DCGAN's strided convolutions and their
gradients faster than XLA's CPU kernels. This module compiles a small C++ file
(``csrc/onednn_conv.cc``: three XLA FFI handlers, forward / input gradient / kernel gradient)
against an installed oneDNN on first use, registers the handlers for the ``cpu`` platform, and
offers the three products to :mod:`jaxgan.cpu.conv`, which calls them where it is asked to
(``onednn=True``) for 2-D float32 convolutions with non-negative padding.

oneDNN comes from PyPI: ``pip install "jaxgan[onednn]"`` (the ``onednn-cpu-gomp`` library and the
``onednn-devel-cpu-gomp`` headers, x86-64 Linux), and a C++17 compiler (``c++``, or ``$CXX``).
The compiled library is cached under ``$JAXGAN_CACHE_DIR`` (default ``~/.cache/jaxgan``), keyed
by the source, jaxlib's version and the oneDNN found; ``$JAXGAN_ONEDNN_ROOT`` names another
oneDNN install (a directory with ``include/`` and ``lib/``).
"""

from __future__ import annotations

import glob
import os
import sys
import threading
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxgan.cpu import native

Array = jax.Array

SOURCE = Path(__file__).with_name("csrc") / "onednn_conv.cc"
# FFI target name -> exported handler symbol
TARGETS = {
    "jaxgan_conv_forward": "JaxganConvForward",
    "jaxgan_conv_backward_data": "JaxganConvBackwardData",
    "jaxgan_conv_backward_weights": "JaxganConvBackwardWeights",
}

_lock = threading.Lock()
_state: dict = {"loaded": False, "error": None}


class OneDNNUnavailable(RuntimeError):
    """oneDNN, its headers or a C++ compiler is missing, or the build failed (the message says which)."""


def _root() -> Path:
    """The oneDNN install: ``$JAXGAN_ONEDNN_ROOT``, else this Python environment's prefix (where the
    PyPI wheels put ``include/oneapi/dnnl`` and ``lib/libdnnl.so``)."""
    root = Path(os.environ.get("JAXGAN_ONEDNN_ROOT") or sys.prefix)
    header = root / "include" / "oneapi" / "dnnl" / "dnnl.hpp"
    libs = sorted(glob.glob(str(root / "lib" / "libdnnl.so*")))
    if not header.exists() or not libs:
        missing = "headers (include/oneapi/dnnl/dnnl.hpp)" if not header.exists() else "library (lib/libdnnl.so)"
        raise OneDNNUnavailable(
            f"oneDNN {missing} not found under {root}: pip install 'jaxgan[onednn]' "
            "(onednn-cpu-gomp and onednn-devel-cpu-gomp), or set JAXGAN_ONEDNN_ROOT to a oneDNN install"
        )
    return root


def build() -> Path:
    """Compile ``csrc/onednn_conv.cc`` into the cache (once per source, jaxlib and oneDNN) and
    return the shared library's path. Raises :class:`OneDNNUnavailable` with the reason."""
    root = _root()
    try:
        return native.compile_library(
            SOURCE, what="the oneDNN convolutions",
            extra=[f"-I{root / 'include'}", f"-L{root / 'lib'}", "-ldnnl", f"-Wl,-rpath,{root / 'lib'}"],
        )
    except native.BuildError as e:
        raise OneDNNUnavailable(str(e)) from e


def load() -> None:
    """Build (if needed), load and register the FFI handlers for the ``cpu`` platform. Idempotent.
    Raises :class:`OneDNNUnavailable`."""
    with _lock:
        if _state["loaded"]:
            return
        if _state["error"] is not None:
            raise OneDNNUnavailable(_state["error"])
        try:
            lib = native.register(build(), TARGETS)
        except (OneDNNUnavailable, OSError, AttributeError) as e:
            _state["error"] = str(e)
            raise OneDNNUnavailable(str(e)) from e
        _state.update(loaded=True, lib=lib)  # the handle keeps the library loaded


def available() -> bool:
    """Whether the oneDNN convolutions can be used here (building them on the first call)."""
    try:
        load()
    except OneDNNUnavailable:
        return False
    return True


def unavailable_reason() -> str | None:
    """Why :func:`available` is False (None if it is True or has not been asked)."""
    return _state["error"]


def eligible(*arrays: Array, pads=None) -> bool:
    """Whether oneDNN takes a convolution on these arrays: 2-D (rank-4 NHWC / HWIO), all float32,
    and ``pads`` non-negative."""
    if any(a.ndim != 4 or a.dtype != jnp.float32 for a in arrays):
        return False
    return pads is None or all(lo >= 0 and hi >= 0 for lo, hi in pads)


def _attrs(strides, pads, dilation) -> dict:
    return {
        "strides": np.asarray(strides, np.int64),
        "pads": np.asarray([p for lo_hi in pads for p in lo_hi], np.int64),
        "dilation": np.asarray(dilation, np.int64),
    }


def _call(target: str, shape, *args, strides, pads, dilation) -> Array:
    load()
    out = jax.ShapeDtypeStruct(tuple(shape), jnp.float32)
    ffi = jax.ffi.ffi_call(target, out, vmap_method="sequential")
    return ffi(*args, **_attrs(strides, pads, dilation))


def forward(u: Array, w: Array, strides, pads, dilation) -> Array:
    """``C_W(u)``: ``u [N, H, W, C]``, ``w [KH, KW, C, O]``."""
    spatial = [
        (h + lo + hi - (d * (k - 1) + 1)) // s + 1
        for h, k, s, (lo, hi), d in zip(u.shape[1:3], w.shape[:2], strides, pads, dilation, strict=True)
    ]
    return _call("jaxgan_conv_forward", (u.shape[0], *spatial, w.shape[3]), u, w, strides=strides, pads=pads,
                 dilation=dilation)


def backward_data(g: Array, w: Array, in_spatial, strides, pads, dilation) -> Array:
    """``C_W^T g`` ``[N, *in_spatial, C]``."""
    return _call("jaxgan_conv_backward_data", (g.shape[0], *in_spatial, w.shape[2]), g, w, strides=strides,
                 pads=pads, dilation=dilation)


def backward_weights(u: Array, g: Array, k_spatial, strides, pads, dilation) -> Array:
    """``d<g, C_W(u)>/dW`` ``[*k_spatial, C, O]``."""
    return _call("jaxgan_conv_backward_weights", (*k_spatial, u.shape[3], g.shape[3]), u, g, strides=strides,
                 pads=pads, dilation=dilation)
