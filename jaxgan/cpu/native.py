"""Building jaxgan's C++ XLA FFI handlers (CPU only) with the machine's compiler, on first use.

Two libraries use it: the oneDNN convolutions (:mod:`jaxgan.cpu.onednn`) and the per-example
random draws (:mod:`jaxgan.cpu.draws`). A library is compiled once per source, jaxlib version,
compiler and extra flags, into ``$JAXGAN_CACHE_DIR`` (default ``~/.cache/jaxgan``); concurrent
builders (test workers) each build into a temporary file and rename it into place, so none loads
a half-written library.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import jax


class BuildError(RuntimeError):
    """No C++ compiler, not Linux, or the compiler failed (the message says which, and how)."""


def cache_dir() -> Path:
    base = os.environ.get("JAXGAN_CACHE_DIR")
    if base:
        return Path(base)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "jaxgan"


def compile_library(source: Path, *, what: str, extra: Sequence[str] = ()) -> Path:
    """Compile ``source`` (C++17, XLA FFI headers on the include path, ``extra`` flags after the
    source: more includes, libraries) into a cached shared library; return its path. ``what``
    names the library in errors. Raises :class:`BuildError`."""
    if not sys.platform.startswith("linux"):
        raise BuildError(f"{what} are built for Linux only, not {sys.platform}")
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if not cxx:
        raise BuildError(f"no C++ compiler found (c++ / g++ on PATH, or $CXX) to build {what}")
    import jaxlib

    key = hashlib.sha256(
        b"\0".join([source.read_bytes(), jaxlib.__version__.encode(), cxx.encode(), *(e.encode() for e in extra)])
    ).hexdigest()[:16]
    out = cache_dir() / f"{source.stem}-{key}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{source.stem}-", suffix=".so", dir=out.parent)
    os.close(fd)
    cmd = [cxx, "-O2", "-std=c++17", "-shared", "-fPIC", "-w", f"-I{jax.ffi.include_dir()}", str(source),
           "-o", tmp, *extra]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise BuildError(f"building {what} failed ({' '.join(cmd)}):\n{proc.stderr[-2000:]}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def register(path: Path, targets: dict[str, str]) -> ctypes.CDLL:
    """Load the library at ``path`` and register its handlers (FFI target name -> exported symbol)
    for the ``cpu`` platform. Returns the handle (keep it: it keeps the library loaded)."""
    lib = ctypes.CDLL(str(path))
    for target, symbol in targets.items():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
    return lib
