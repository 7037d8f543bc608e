"""XLA CPU settings that make GAN training steps faster without changing what they compute
(beyond float rounding: the oneDNN convolutions and the native normal draws round differently).

Slow paths of XLA's CPU backend (jax/jaxlib 0.10), measured on this project's 2-core CPU
(``benchmarks/README.md``, "CPU settings"):

* Dots and convolutions go to YNNPACK by default. The training steps ran slower with it than
  with Eigen (threefry unrolled in both): toy GAN 296 vs 329 steps/s, DCGAN-32 4.77 vs 5.45,
  DCGAN-64 0.68 vs 0.84. Its strided convolutions and weight gradients are the slow part (DCGAN-64,
  8x8x256 -> 4x4x512: forward 35.9 vs 21.8 ms, weight gradient 35.2 vs 24.0 ms); some lone ops are
  faster with it (a 512x128 @ 128x128 dot, 96 vs 175 us), not the steps.
  ``--xla_cpu_experimental_ynn_fusion_type=`` (no YNNPACK fusion types) hands them back to Eigen:
  same math, another kernel library (float sums may associate differently).
* JAX lowers the threefry2x32 hash behind ``jax.random`` on CPU as a rolled while loop (a
  compile-time choice), each of its 5 iterations its own kernels and array copies: 0.74 ms for
  the 512x256 random bits of a toy-GAN latent draw. :func:`unroll_threefry` registers the
  unrolled hash (the same rounds, constants and key schedule as the Threefry-2x32-20 spec,
  Salmon et al. 2011, "Parallel random numbers: as easy as 1, 2, 3"), which XLA fuses into one
  loop: 0.10 ms for the bits (0.31 ms for the whole normal draw, 0.75 before), the same bits
  (tested against JAX's own lowering and the Random123 known answers).

Even unrolled, XLA's loop fusion evaluates the hash once for each of its two output words:
:func:`use_native_random` computes :func:`jaxgan.keys.bits` and :func:`jaxgan.keys.normal` (the
latents, instance noise and synthetic data of every update) with C++ FFI handlers instead, each
hash once, vectorised and split over XLA's intra-op threads: the same bits, 0.043 instead of
0.13 ms for a 512 x 256 draw; normals equal to XLA's to a few float32 ulps.

Another, the convolutions: XLA's CPU kernels (Eigen) run DCGAN's strided convolutions and their
weight gradients at 150-195 GFLOP/s here, oneDNN's at 215-240. :func:`use_onednn` loads oneDNN
(:mod:`jaxgan.cpu.onednn`; an optional dependency, ``pip install "jaxgan[onednn]"``) and
:func:`layers` then names the DCGAN layers that run their 2-D float32 convolutions with it.

``jaxgan train`` (the CLI) and the throughput benchmarks call :func:`tune` first. Library users who want the
same on CPU call :func:`tune` before their first JAX computation, or pass
``compiler_options=jaxgan.cpu.COMPILER_OPTIONS`` to ``jax.jit`` and call :func:`unroll_threefry`.
Nothing here changes GPU or TPU programs (the options are CPU-only; the lowering is registered for
the ``cpu`` platform; the native draws are picked by ``lax.platform_dependent``; the oneDNN layers
are an explicit choice made when the GAN is built).
"""

from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path

import numpy as np

# XLA debug options, as jax.jit(..., compiler_options=...) takes them and as XLA_FLAGS spells them.
COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}
XLA_FLAGS = tuple(f"--{k}={v}" for k, v in COMPILER_OPTIONS.items())

_THREEFRY_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_THREEFRY_PARITY = 0x1BD11BDA
_installed = False


def _rotate_left(x, r: int):
    return (x << np.uint32(r)) | (x >> np.uint32(32 - r))


def threefry2x32(k1, k2, x1, x2):
    """Threefry-2x32 with 20 rounds on uint32 arrays: keys ``(k1, k2)``, counters ``(x1, x2)``;
    returns the two output words. Written out round by round (no loop) so XLA fuses it."""
    ks = (k1, k2, k1 ^ k2 ^ np.uint32(_THREEFRY_PARITY))
    a, b = x1 + ks[0], x2 + ks[1]
    for i in range(5):  # 5 groups of 4 rounds, a key injection after each group
        for r in _THREEFRY_ROTATIONS[i % 2]:
            a = a + b
            b = _rotate_left(b, r) ^ a
        a = a + ks[(i + 1) % 3]
        b = b + ks[(i + 2) % 3] + np.uint32(i + 1)
    return a, b


def unroll_threefry() -> None:
    """Lower ``jax.random``'s threefry2x32 primitive on CPU with :func:`threefry2x32` (unrolled)
    instead of JAX's rolled loop. Idempotent; affects programs compiled afterwards."""
    global _installed
    if _installed:
        return
    from jax.extend.random import threefry2x32_p
    from jax.interpreters import mlir

    mlir.register_lowering(threefry2x32_p, mlir.lower_fun(threefry2x32, multiple_results=True), platform="cpu")
    _installed = True


def threefry_unrolled() -> bool:
    """Whether :func:`unroll_threefry` has been applied in this process."""
    return _installed


def _backends_initialized() -> bool:
    try:
        from jax._src import xla_bridge
    except ImportError:  # pragma: no cover - a JAX without the private module: assume the worst
        return True
    return bool(xla_bridge.backends_are_initialized())


def set_xla_flags(*, warn: bool = True) -> bool:
    """Append :data:`XLA_FLAGS` to the ``XLA_FLAGS`` environment variable (a flag the user set
    already is left as set). Returns whether they take effect, i.e. JAX has not started its
    backends yet; if it has, changes nothing (and warns, with ``warn``)."""
    current = os.environ.get("XLA_FLAGS", "")
    have = {f.split("=", 1)[0] for f in current.split()}
    extra = [f for f in XLA_FLAGS if f.split("=", 1)[0] not in have]
    if not extra:
        return True
    if _backends_initialized():
        if not warn:
            return False
        warnings.warn(
            "jaxgan.cpu: JAX's backends are already running, so XLA_FLAGS can no longer change; "
            "call jaxgan.cpu.tune() before the first JAX computation, or pass "
            "compiler_options=jaxgan.cpu.COMPILER_OPTIONS to jax.jit",
            stacklevel=2,
        )
        return False
    os.environ["XLA_FLAGS"] = " ".join([current, *extra]).strip()
    return True


_onednn = {"in_use": False}  # read by the edge (layers()), not by traced code


def use_onednn(on: bool = True) -> bool:
    """Load oneDNN's convolutions (:mod:`jaxgan.cpu.onednn`; ``pip install "jaxgan[onednn]"`` and
    a C++ compiler) so that :func:`layers` names them (``on=False``: it names XLA's again).
    Returns whether they are in use; when oneDNN is unavailable,
    ``jaxgan.cpu.onednn.unavailable_reason()`` says why."""
    if on:
        from jaxgan.cpu import onednn as onednn_lib

        on = onednn_lib.available()
    _onednn["in_use"] = on
    return on


def onednn_in_use() -> bool:
    """Whether oneDNN's convolutions are loaded for :func:`layers` to name."""
    return _onednn["in_use"]


def layers() -> str:
    """The DCGAN layers for a CPU program (``jaxgan.nets.dcgan``'s ``layers``): ``"onednn"`` once
    :func:`use_onednn` has loaded oneDNN, else ``"cpu"`` (this package's layers, XLA's kernels)."""
    return "onednn" if _onednn["in_use"] else "cpu"


_native: dict = {"lib": None, "error": None, "enabled": False}
_native_lock = threading.Lock()
NATIVE_SOURCE = Path(__file__).with_name("csrc") / "threefry_rows.cc"
# FFI target name -> exported handler symbol
NATIVE_TARGETS = {"jaxgan_threefry_rows": "JaxganThreefryRows", "jaxgan_threefry_normal": "JaxganThreefryNormal"}


def use_native_random(on: bool = True) -> bool:
    """Compute :func:`jaxgan.keys.bits` and :func:`jaxgan.keys.normal` (the latents, noise and
    synthetic data of every update) in CPU programs traced from now on with C++ FFI handlers
    (``csrc/threefry_rows.cc``, built with the machine's C++ compiler on first use). The bits are
    the same, each Threefry hash evaluated once where XLA's fusion evaluates it once per output
    word; the normals are the same transform of them, equal to XLA's to a few float32 ulps (its
    own logarithm). Returns whether it is on; if it cannot be built,
    :func:`native_random_unavailable_reason` says why and XLA computes the draws."""
    with _native_lock:
        if on and _native["lib"] is None and _native["error"] is None:
            from jaxgan.cpu import native

            try:
                path = native.compile_library(NATIVE_SOURCE, what="the native random draws",
                                              extra=["-O3", "-fno-math-errno", "-fno-trapping-math"])
                _native["lib"] = native.register(path, NATIVE_TARGETS)
            except (native.BuildError, OSError, AttributeError) as e:
                _native["error"] = str(e)
    _native["enabled"] = bool(on) and _native["lib"] is not None
    return _native["enabled"]


def native_random() -> bool:
    """Whether :mod:`jaxgan.keys` draws traced now use the native handlers on the CPU."""
    return _native["enabled"]


def native_random_unavailable_reason() -> str | None:
    """Why :func:`use_native_random` could not turn the handlers on (None if it could or was not asked)."""
    return _native["error"]


def tune(*, warn: bool = True, onednn: bool = True) -> bool:
    """:func:`set_xla_flags`, :func:`unroll_threefry`, :func:`use_native_random` and (``onednn``,
    when available) :func:`use_onednn`; returns whether the flags took effect."""
    unroll_threefry()
    use_native_random()
    if onednn:
        use_onednn()
    return set_xla_flags(warn=warn)
