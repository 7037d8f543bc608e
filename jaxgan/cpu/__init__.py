"""Everything jaxgan does for XLA's CPU backend alone, plugged in by :func:`tune`.

:func:`tune` sets XLA flags and, when JAX's default backend is the CPU, registers CPU lowerings
(``jax.random``'s hash unrolled, :mod:`jaxgan.cpu.threefry`; the per-row draws of
:mod:`jaxgan.keys` as C++ handlers, :mod:`jaxgan.cpu.draws`) and loads oneDNN's convolutions
(:mod:`jaxgan.cpu.onednn`) when installed. The same random bits; other values differ by float
rounding at most. GPU and TPU programs are untouched: the lowerings are the CPU's, and on another
backend :func:`tune` does nothing but set the (CPU-only) flags.

The rest are explicit choices made at the edge (:mod:`jaxgan.build`, the loop): :func:`layers`
names the DCGAN layers for a CPU program (this package's convolution, transposed convolution and
batch norm: :mod:`jaxgan.cpu.conv`, :mod:`jaxgan.cpu.conv_transpose`,
:mod:`jaxgan.cpu.batch_norm`), and :func:`draw_in_round` where a chunk draws its real batches.
``docs/cpu.md`` describes it all.
"""

from __future__ import annotations

import os
import warnings

from jaxgan.cpu.threefry import threefry2x32

__all__ = [
    "COMPILER_OPTIONS",
    "XLA_FLAGS",
    "draw_in_round",
    "layers",
    "native_random",
    "native_random_unavailable_reason",
    "onednn_in_use",
    "set_xla_flags",
    "threefry2x32",
    "threefry_unrolled",
    "tune",
    "unroll_threefry",
    "use_native_random",
    "use_onednn",
]

# XLA debug options, as jax.jit(..., compiler_options=...) takes them and as XLA_FLAGS spells them:
# dots and convolutions go to Eigen rather than YNNPACK, whose strided convolutions and weight
# gradients are the slower ones in GAN steps (same math, another kernel library).
COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}
XLA_FLAGS = tuple(f"--{k}={v}" for k, v in COMPILER_OPTIONS.items())

# What tune() (or the use_* functions) plugged into this process; read by the edge, not by traced code.
_plugged = {"native_random": False, "onednn": False}


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


def unroll_threefry() -> None:
    """Lower ``jax.random``'s threefry2x32 on the CPU unrolled (:mod:`jaxgan.cpu.threefry`)."""
    from jaxgan.cpu import threefry

    threefry.unroll()


def threefry_unrolled() -> bool:
    """Whether :func:`unroll_threefry` has been applied in this process."""
    from jaxgan.cpu import threefry

    return threefry.unrolled()


def use_native_random(on: bool = True) -> bool:
    """Lower :func:`jaxgan.keys.bits` and :func:`jaxgan.keys.normal` in CPU programs compiled
    from now on with C++ handlers (:mod:`jaxgan.cpu.draws`; built by the machine's C++ compiler
    on first use), or (``on=False``) with XLA's computation. Returns whether the handlers are in
    use; if they cannot be built, :func:`native_random_unavailable_reason` says why."""
    from jaxgan.cpu import draws

    _plugged["native_random"] = draws.plug(on)
    return _plugged["native_random"]


def native_random() -> bool:
    """Whether CPU programs compiled now use the native draws."""
    return _plugged["native_random"]


def native_random_unavailable_reason() -> str | None:
    """Why :func:`use_native_random` could not build the handlers (None if it could or was not asked)."""
    from jaxgan.cpu import draws

    return draws.unavailable_reason()


def use_onednn(on: bool = True) -> bool:
    """Load oneDNN's convolutions (:mod:`jaxgan.cpu.onednn`; ``pip install "jaxgan[onednn]"`` and
    a C++ compiler) so that :func:`layers` names them (``on=False``: it names XLA's again).
    Returns whether they are in use; when oneDNN is unavailable,
    ``jaxgan.cpu.onednn.unavailable_reason()`` says why."""
    if on:
        from jaxgan.cpu import onednn as onednn_lib

        on = onednn_lib.available()
    _plugged["onednn"] = on
    return on


def onednn_in_use() -> bool:
    """Whether oneDNN's convolutions are loaded for :func:`layers` to name."""
    return _plugged["onednn"]


def layers() -> str:
    """The DCGAN layers for a CPU program (``jaxgan.nets.dcgan``'s ``layers``): ``"onednn"`` once
    :func:`use_onednn` has loaded oneDNN, else ``"cpu"`` (this package's layers, XLA's kernels)."""
    return "onednn" if _plugged["onednn"] else "cpu"


def draw_in_round(source) -> bool:
    """Whether a chunk (``jaxgan.runner.train_chunk(..., draw_in_round=)``) should draw each
    round's real batch in that round rather than carry it: for images on the CPU with the native
    draws and oneDNN's convolutions in use, where the draw is a call beside the convolutions
    rather than a computation XLA fuses into every reader of the batch."""
    import jax

    return (_plugged["native_random"] and _plugged["onednn"] and len(source.example_shape) >= 3
            and jax.default_backend() == "cpu")


def tune(*, warn: bool = True, onednn: bool = True) -> bool:
    """Set :data:`XLA_FLAGS` (:func:`set_xla_flags`, before JAX starts), then, when JAX's default
    backend is the CPU: :func:`unroll_threefry`, :func:`use_native_random` and (``onednn``)
    :func:`use_onednn`. Returns whether the flags took effect on a CPU backend; on another
    backend it builds and registers nothing and returns False. Asking for the default backend
    starts JAX's backends: call ``jax.distributed.initialize`` first, if at all."""
    import jax

    flags = set_xla_flags(warn=warn)
    if jax.default_backend() != "cpu":
        return False
    unroll_threefry()
    use_native_random()
    if onednn:
        use_onednn()
    return flags
