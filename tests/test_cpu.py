"""jaxgan.cpu: the unrolled threefry gives JAX's bits; tune() sets the XLA flag without
overriding a user's own, takes effect (no YNNPACK fusion, no threefry loop) in a fresh process,
and on another backend builds, registers and imports nothing; what it plugs in lowers the CPU's
programs only (a GPU or TPU export of a training step calls nothing of jaxgan's)."""

import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.interpreters import mlir

from jaxgan import build, configs, cpu
from jaxgan.cpu import draws, threefry

# Threefry-2x32 with 20 rounds, known-answer vectors of the Random123 library (kat_vectors:
# key, counter -> output), as JAX's own tests use them.
KAT = [
    ((0x00000000, 0x00000000), (0x00000000, 0x00000000), (0x6B200159, 0x99BA4EFE)),
    ((0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
    ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0)),
]


@pytest.mark.parametrize("key, count, expected", KAT)
def test_threefry_known_answers(key, count, expected):
    u32 = lambda v: np.array([v], np.uint32)
    with np.errstate(over="ignore"):
        out = cpu.threefry2x32(u32(key[0]), u32(key[1]), u32(count[0]), u32(count[1]))
    assert (int(out[0][0]), int(out[1][0])) == expected


def test_threefry_matches_jax_primitive_on_many_counters():
    """numpy evaluation of the unrolled hash vs JAX's threefry2x32 primitive (compiled)."""
    rng = np.random.default_rng(0)
    k1, k2 = (np.uint32(v) for v in rng.integers(0, 2**32, 2))
    x1, x2 = (rng.integers(0, 2**32, 1000).astype(np.uint32) for _ in range(2))
    with np.errstate(over="ignore"):
        ours = cpu.threefry2x32(k1, k2, x1, x2)
    theirs = jax.jit(jax.extend.random.threefry_2x32)(np.array([k1, k2], np.uint32), np.concatenate([x1, x2]))
    np.testing.assert_array_equal(np.concatenate(ours), np.asarray(theirs))


DRAW = """
import json, sys
import jax, jax.numpy as jnp, numpy as np
tuned = sys.argv[1] == "tuned"
if tuned:
    from jaxgan import cpu
    assert cpu.tune()
key = jax.random.fold_in(jax.random.key(7), 3)
f = jax.jit(lambda k: (jax.random.normal(k, (33, 5)), jax.random.uniform(jax.random.split(k)[1], (17,)),
                       jax.random.key_data(jax.random.split(k, 4)), jax.random.bits(k, (9,))))
hlo = f.lower(key).compile().as_text()
dot = jax.jit(lambda a: a @ a).lower(jnp.ones((64, 64))).compile().as_text()
from jaxgan.cpu import COMPILER_OPTIONS
dot_opts = jax.jit(lambda a: a @ a, compiler_options=COMPILER_OPTIONS).lower(jnp.ones((64, 64))).compile().as_text()
print(json.dumps({"out": [np.asarray(x).tolist() for x in f(key)], "while": " while(" in hlo,
                  "ynn": "ynn" in dot, "ynn_with_options": "ynn" in dot_opts,
                  "xla_flags": __import__("os").environ.get("XLA_FLAGS", "")}))
"""


def _draw(mode: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run([sys.executable, "-c", DRAW, mode], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_tune_in_a_fresh_process_same_random_numbers():
    plain, tuned = _draw("plain"), _draw("tuned")
    assert plain["out"] == tuned["out"]  # bit for bit: normal, uniform, split, bits
    assert plain["while"] and not tuned["while"]  # JAX's rolled threefry loop is gone
    assert "--xla_cpu_experimental_ynn_fusion_type=" in tuned["xla_flags"]
    if plain["ynn"]:  # this jaxlib routes dots to YNNPACK by default; tuned, it does not
        assert not tuned["ynn"]
    assert not plain["ynn_with_options"]  # the per-jit alternative to the flag


def test_set_xla_flags_keeps_the_users_setting(monkeypatch):
    monkeypatch.setattr(cpu, "_backends_initialized", lambda: False)
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
    assert cpu.set_xla_flags()
    assert os.environ["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=4", *cpu.XLA_FLAGS]
    mine = "--xla_cpu_experimental_ynn_fusion_type=individual_dot"
    monkeypatch.setenv("XLA_FLAGS", mine)
    assert cpu.set_xla_flags()
    assert os.environ["XLA_FLAGS"] == mine


def test_set_xla_flags_after_jax_started_warns_and_changes_nothing(monkeypatch):
    monkeypatch.setattr(cpu, "_backends_initialized", lambda: True)
    monkeypatch.setenv("XLA_FLAGS", "")
    with pytest.warns(UserWarning, match="compiler_options=jaxgan.cpu.COMPILER_OPTIONS"):
        assert not cpu.set_xla_flags()
    assert os.environ["XLA_FLAGS"] == ""
    assert not cpu.set_xla_flags(warn=False)


def test_native_draws_that_cannot_be_built_say_why_and_stay_off(monkeypatch, tmp_path):
    monkeypatch.setattr(draws, "_state", {"lib": None, "error": None})
    monkeypatch.setenv("JAXGAN_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CXX", "false")  # a compiler that always fails
    assert not cpu.use_native_random()
    assert not cpu.native_random()
    assert "building the native random draws failed (false " in cpu.native_random_unavailable_reason()
    assert not list(tmp_path.iterdir())  # no half-written library left in the cache


def test_tune_on_another_backend_builds_registers_and_imports_nothing(monkeypatch):
    """What `jaxgan train` does on a GPU or TPU: tune() sets the (CPU-only) XLA flag, since that
    must happen before JAX starts, and nothing else; the GAN it builds has flax's layers."""
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(cpu, "_backends_initialized", lambda: False)
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.setattr(threefry, "_state", {"unrolled": False})
    cpu_only = ("jaxgan.cpu.onednn", "jaxgan.cpu.draws", "jaxgan.cpu.native",
                "jaxgan.cpu.conv", "jaxgan.cpu.conv_transpose", "jaxgan.cpu.batch_norm")
    for name in cpu_only:
        monkeypatch.delitem(sys.modules, name, raising=False)
    calls = []
    monkeypatch.setattr(mlir, "register_lowering", lambda *a, **k: calls.append(("lowering", a)))
    monkeypatch.setattr(jax.ffi, "register_ffi_target", lambda *a, **k: calls.append(("ffi", a)))
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(("compiler", a)))

    assert cpu.tune() is False
    assert os.environ["XLA_FLAGS"].split() == list(cpu.XLA_FLAGS)
    assert build.default_layers() == "flax"
    gan = build.gan(configs.preset("dcgan32"), (32, 32, 3))
    jax.eval_shape(gan.init, jax.random.key(0), jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32))
    assert calls == []
    assert not (cpu.native_random() or cpu.onednn_in_use() or threefry.unrolled())
    assert [name for name in cpu_only if name in sys.modules] == []


def _gpu_export(config, platforms=("cuda", "tpu")):
    """The training step of ``config`` as built for a GPU and exported for ``platforms``."""
    shape = tuple(build.data_source(config).example_shape)
    gan = build.gan(config, shape, layers=build.default_layers(platforms[0]))
    state = jax.eval_shape(gan.init, jax.random.key(0), jax.ShapeDtypeStruct((config.batch_size, *shape),
                                                                               jnp.float32))
    batch = jax.ShapeDtypeStruct((config.d_steps, config.batch_size, *shape), jnp.float32)
    return gan, state, batch, jax.export.export(jax.jit(gan.train_step), platforms=platforms)(state, batch)


@pytest.mark.parametrize("preset, overrides", [
    ("ring8", {"batch_size": 16, "g_hidden": (8, 8), "d_hidden": (8, 8), "instance_noise": 0.1}),
    ("dcgan32", {"batch_size": 4, "g_width": 4, "d_width": 4, "r1": 1.0}),
])
def test_a_gpu_or_tpu_export_of_the_training_step_calls_nothing_of_jaxgans(preset, overrides):
    """With the native draws plugged in (as tune() leaves a CPU process), the CPU program of the
    step calls them while its GPU/TPU export holds no custom call of jaxgan's (jax.export refuses
    custom calls it does not know, so exporting is itself a check)."""
    if not cpu.use_native_random(True):
        pytest.skip(f"native draws unavailable: {cpu.native_random_unavailable_reason()}")
    config = configs.apply_overrides(configs.preset(preset), overrides)
    gan, state, batch, exported = _gpu_export(config)
    assert [t for t in _custom_calls(exported.mlir_module()) if t.startswith("jaxgan")] == []
    on_cpu = jax.jit(lambda s, b: gan.train_step(s, b)).trace(state, batch).lower(lowering_platforms=("cpu",))
    assert "jaxgan_threefry_normal" in _custom_calls(on_cpu.as_text())


def _custom_calls(mlir: str) -> set[str]:
    return set(re.findall(r"stablehlo\.custom_call @([\w.]+)", mlir))
