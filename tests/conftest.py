"""Strict test session: accidental rank promotion raises, warnings are errors (pyproject).

Multi-device tests start subprocesses with XLA_FLAGS set before JAX starts
(see tests/helpers.py); this session itself sees one CPU device.
"""

import atexit
import os
import shutil
import tempfile


def _share_compilations() -> None:
    """One XLA compilation cache for the whole session: many tests (and the subprocesses they
    start, which inherit the environment, as xdist's workers do) compile the same programs. The
    cache is keyed by the program, the compile options and XLA_FLAGS, so a hit is the executable
    the compile would have produced. It lives in a new directory removed at the end of the
    session (a clean run compiles everything once); a JAX_COMPILATION_CACHE_DIR already set is
    used as it is. Set before JAX starts."""
    if "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return
    path = tempfile.mkdtemp(prefix="jaxgan-tests-xla-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = path
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")
    atexit.register(shutil.rmtree, path, ignore_errors=True)


_share_compilations()

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture(autouse=True)
def _restore_cpu_plugins():
    """An in-process ``jaxgan`` command calls ``jaxgan.cpu.tune()``, which plugs the native random
    draws and oneDNN's convolutions into the rest of the process: put both back after each test,
    so no test's numbers depend on which tests its worker ran before."""
    from jaxgan import cpu

    native, conv = cpu.native_random(), cpu.onednn_in_use()
    yield
    if cpu.native_random() != native:
        cpu.use_native_random(native)
    if cpu.onednn_in_use() != conv:
        cpu.use_onednn(conv)


@pytest.fixture
def key():
    return jax.random.key(0)


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory):
    """A TFDS data_dir holding the offline ``sklearn_digits`` dataset (built once per session)."""
    from jaxgan.data import sklearn_digits

    path = tmp_path_factory.mktemp("tfds")
    sklearn_digits.prepare(str(path))
    return str(path)


def require_onednn():
    """Skip when oneDNN is not installed (the ``onednn`` extra); fail when it is but the
    convolutions cannot be built or loaded (a broken install should not pass as a skip)."""
    from jaxgan.cpu import onednn

    try:
        onednn._root()
    except onednn.OneDNNUnavailable as e:
        pytest.skip(str(e))
    assert onednn.available(), onednn.unavailable_reason()


@pytest.fixture(params=["xla", "onednn"])
def conv_backend(request):
    """Run a convolution test with XLA's kernels and with oneDNN's (``onednn=True``; skips as
    :func:`require_onednn` does)."""
    if request.param == "onednn":
        require_onednn()
    return request.param
