"""DCGAN: the architecture against PyTorch's definition (an independent numpy forward pass) with
each choice of layers, the same parameters whatever the layers, initialisation, spectral norm
and batch statistics held constant, sync batch norm across devices, EMA sampling, and the CPU
layers' fast path inside compiled chunks."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxgan as jg
from jaxgan.nets.dcgan import LAYERS, DCGANDiscriminator, DCGANGenerator, dcgan_pair, layout
from tests.conftest import require_onednn


def _gan(size=16, channels=3, width=4, latent=8, **kw):
    d_norm = kw.pop("d_norm", "batch")
    d_dropout = kw.pop("d_dropout", 0.0)
    g, d = dcgan_pair((size, size, channels), latent, g_width=width, d_width=width, d_norm=d_norm,
                      d_dropout=d_dropout, axis_name=kw.pop("net_axis", None), layers=kw.pop("layers", "flax"))
    return jg.GAN(g, d, optax.adam(2e-4, b1=0.5), optax.adam(2e-4, b1=0.5), **kw)


def _images(n, size=16, channels=3, seed=1):
    return jax.random.uniform(jax.random.key(seed), (n, size, size, channels), minval=-1.0, maxval=1.0)


# ---------------------------------------------------------------------- architecture


def _pytorch_example_param_count(nz=100, ngf=64, ndf=64, nc=3):
    """netG / netD of pytorch/examples dcgan/main.py, counted by hand (weights + BN affine)."""
    g_convs = [(nz, ngf * 8), (ngf * 8, ngf * 4), (ngf * 4, ngf * 2), (ngf * 2, ngf), (ngf, nc)]
    g = sum(16 * a * b for a, b in g_convs) + sum(2 * c for c in (ngf * 8, ngf * 4, ngf * 2, ngf))
    d_convs = [(nc, ndf), (ndf, ndf * 2), (ndf * 2, ndf * 4), (ndf * 4, ndf * 8), (ndf * 8, 1)]
    d = sum(16 * a * b for a, b in d_convs) + sum(2 * c for c in (ndf * 2, ndf * 4, ndf * 8))
    return g, d


def test_64px_has_the_pytorch_examples_parameters():
    gan = _gan(size=64, width=64, latent=100)
    state = jax.eval_shape(lambda: gan.init(jax.random.key(0), jnp.zeros((2, 64, 64, 3))))
    def count(tree):
        return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))

    assert (count(state.g.params), count(state.d.params)) == _pytorch_example_param_count()


@pytest.mark.parametrize("size,channels", [(28, 1), (32, 3), (64, 3)])
def test_sizes_make_images_and_one_logit_each(size, channels):
    gan = _gan(size=size, channels=channels)
    state = jax.eval_shape(lambda: gan.init(jax.random.key(0), jnp.zeros((2, size, size, channels))))
    assert gan.data_shape(state) == (size, size, channels)
    assert layout(28) == (7, 2) and layout(32) == (4, 3) and layout(64) == (4, 4)


def test_unfit_image_sizes_are_refused():
    for bad in ((6, 6, 3), (5, 5, 1), (32, 16, 3)):
        with pytest.raises(ValueError, match=r"DCGAN|image_size"):
            dcgan_pair(bad, 8)


# --- independent reference: PyTorch's layer definitions, written in numpy (float64)


def _np_conv(x, k, stride, pad):
    """torch.nn.Conv2d (cross-correlation), x [B,H,W,Ci], k [kh,kw,Ci,Co]."""
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    kh, kw = k.shape[:2]
    ho, wo = (xp.shape[1] - kh) // stride + 1, (xp.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], ho, wo, k.shape[3]))
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, i : i + stride * ho : stride, j : j + stride * wo : stride]
            out += patch @ k[i, j]
    return out


def _np_conv_transpose(x, w_torch, stride, pad):
    """torch.nn.ConvTranspose2d: y[s*i + a - p] += x[i] * W[a], W [kh,kw,Ci,Co] in torch's orientation."""
    b, h, wd, _ = x.shape
    kh, kw = w_torch.shape[:2]
    full = np.zeros((b, (h - 1) * stride + kh, (wd - 1) * stride + kw, w_torch.shape[3]))
    for i in range(h):
        for j in range(wd):
            full[:, i * stride : i * stride + kh, j * stride : j * stride + kw] += np.einsum(
                "bc,hwcd->bhwd", x[:, i, j], w_torch
            )
    ho, wo = (h - 1) * stride - 2 * pad + kh, (wd - 1) * stride - 2 * pad + kw
    return full[:, pad : pad + ho, pad : pad + wo]


def _np_bn(x, scale, bias, eps=1e-5):
    mean = x.mean(axis=(0, 1, 2))
    var = x.var(axis=(0, 1, 2))
    return (x - mean) / np.sqrt(var + eps) * scale + bias


@pytest.fixture(params=LAYERS)
def layers(request):
    if request.param == "onednn":
        require_onednn()
    return request.param


def test_generator_equals_pytorch_definition_in_numpy(layers):
    size, width, latent = 16, 4, 8
    g = DCGANGenerator(image_size=size, channels=3, width=width, layers=layers)
    z = np.asarray(jax.random.normal(jax.random.key(3), (3, latent)))
    variables = g.init(jax.random.key(0), z)
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
    ours, _ = g.apply(variables, z, train=True, mutable=["batch_stats"])

    def torch_w(kernel):  # flax's lax.conv_transpose kernel is PyTorch's weight spatially flipped
        return kernel[::-1, ::-1]

    _, n = layout(size)
    h = _np_conv_transpose(z.astype(np.float64)[:, None, None, :], torch_w(p["ConvTranspose_0"]["kernel"]), 1, 0)
    h = np.maximum(_np_bn(h, p["BatchNorm_0"]["scale"], p["BatchNorm_0"]["bias"]), 0)
    for i in range(1, n):
        h = _np_conv_transpose(h, torch_w(p[f"ConvTranspose_{i}"]["kernel"]), 2, 1)
        h = np.maximum(_np_bn(h, p[f"BatchNorm_{i}"]["scale"], p[f"BatchNorm_{i}"]["bias"]), 0)
    ref = np.tanh(_np_conv_transpose(h, torch_w(p[f"ConvTranspose_{n}"]["kernel"]), 2, 1))
    assert ref.shape == (3, size, size, 3)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)


def test_discriminator_equals_pytorch_definition_in_numpy(layers):
    size, width = 16, 4
    d = DCGANDiscriminator(image_size=size, width=width, layers=layers)
    x = np.asarray(_images(3, size))
    variables = d.init(jax.random.key(0), x)
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
    ours, _ = d.apply(variables, x, train=True, mutable=["batch_stats"])

    def lrelu(v):
        return np.where(v > 0, v, 0.2 * v)

    _, n = layout(size)
    h = lrelu(_np_conv(x.astype(np.float64), p["Conv_0"]["kernel"], 2, 1))
    for i in range(1, n):
        h = _np_conv(h, p[f"Conv_{i}"]["kernel"], 2, 1)
        h = lrelu(_np_bn(h, p[f"BatchNorm_{i - 1}"]["scale"], p[f"BatchNorm_{i - 1}"]["bias"]))
    ref = _np_conv(h, p[f"Conv_{n}"]["kernel"], 1, 0).reshape(-1)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)


def test_the_layers_share_parameters_and_a_training_step():
    """Flax's layers and the CPU drop-ins have the same parameter and variable trees (a
    checkpoint moves between backends) and take the same training step, to float rounding."""
    x = _images(8)
    states = {}
    for layers in ("flax", "cpu"):
        gan = _gan(layers=layers)
        state = gan.init(jax.random.key(0), x)
        states[layers] = (state, jax.jit(gan.train_step)(state, x))
    (start_flax, _), (start_cpu, _) = states["flax"], states["cpu"]
    jax.tree.map(np.testing.assert_array_equal, (start_flax.g, start_flax.d), (start_cpu.g, start_cpu.d))
    (_, (after_flax, m_flax)), (_, (after_cpu, m_cpu)) = states["flax"], states["cpu"]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 (after_flax.g.params, after_flax.d.params, after_flax.g.model_state, after_flax.d.model_state),
                 (after_cpu.g.params, after_cpu.d.params, after_cpu.g.model_state, after_cpu.d.model_state))
    for name in ("d_loss", "g_loss"):
        np.testing.assert_allclose(m_flax[name], m_cpu[name], rtol=1e-5)


def test_unknown_layers_are_refused():
    with pytest.raises(ValueError, match="layers='gpu': choose one of flax, cpu, onednn"):
        dcgan_pair((16, 16, 3), 8, layers="gpu")


def test_initialisation_follows_the_pytorch_example():
    gan = _gan(size=64, width=16, latent=100)
    state = jax.jit(gan.init)(jax.random.key(0), jnp.zeros((2, 64, 64, 3)))
    kernels, scales, biases = [], [], []
    for params in (state.g.params, state.d.params):
        for path, leaf in jax.tree_util.tree_leaves_with_path(params):
            name = jax.tree_util.keystr(path)
            (kernels if "kernel" in name else scales if "scale" in name else biases).append(np.ravel(leaf))
    k, s, b = (np.concatenate(v) for v in (kernels, scales, biases))
    assert k.size > 10**5 and abs(k.mean()) < 1e-3 and abs(k.std() - 0.02) < 1e-3
    assert abs(s.mean() - 1.0) < 5e-3 and abs(s.std() - 0.02) < 5e-3
    assert np.all(b == 0.0)


# ---------------------------------------------------------------------- model state in the GAN


def test_batch_stats_of_the_held_player_do_not_move():
    gan = _gan()
    x = _images(8)
    state = gan.init(jax.random.key(0), x)
    after_d, _ = jax.jit(gan.d_step)(state, x)
    after_g, _ = jax.jit(gan.g_step)(state, x)
    jax.tree.map(np.testing.assert_array_equal, after_d.g.model_state, state.g.model_state)
    jax.tree.map(np.testing.assert_array_equal, after_g.d.model_state, state.d.model_state)
    # ... while each player's own statistics do move in its own update.
    moved = jax.tree.map(lambda a, b: not np.array_equal(a, b), after_d.d.model_state, state.d.model_state)
    assert all(jax.tree.leaves(moved))
    moved = jax.tree.map(lambda a, b: not np.array_equal(a, b), after_g.g.model_state, state.g.model_state)
    assert all(jax.tree.leaves(moved))


def test_spectral_norm_state_is_threaded_and_estimates_the_top_singular_value():
    gan = _gan(d_norm="spectral")
    x = _images(8)
    state = gan.init(jax.random.key(0), x)
    stats = state.d.model_state["batch_stats"]
    assert not any("BatchNorm" in k for k in stats)  # spectral norm replaces batch norm in D
    step = jax.jit(gan.train_step)
    for _ in range(40):
        state, _ = step(state, x)
    after_g, _ = jax.jit(gan.g_step)(state, x)
    jax.tree.map(np.testing.assert_array_equal, after_g.d.model_state, state.d.model_state)  # held constant
    layer = state.d.model_state["batch_stats"]["SpectralNorm_1"]
    sigma = float(layer["Conv_1/kernel/sigma"])
    kernel = np.asarray(state.d.params["Conv_1"]["kernel"])
    true = np.linalg.svd(kernel.reshape(-1, kernel.shape[-1]), compute_uv=False)[0]
    # 80 power iterations (two D passes per update) on slowly moving weights.
    assert abs(sigma - true) / true < 0.02


def test_dropout_in_d_is_random_in_training_and_off_in_eval():
    d = dcgan_pair((16, 16, 3), 8, d_dropout=0.5)[1]
    x = _images(4)
    params, state = d.init(jax.random.key(0), x)
    a, _ = d.apply(params, state, x, key=jax.random.key(1), train=True)
    b, _ = d.apply(params, state, x, key=jax.random.key(2), train=True)
    c, _ = d.apply(params, state, x, key=jax.random.key(1), train=False)
    e, _ = d.apply(params, state, x, key=jax.random.key(2), train=False)
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(c, e)


def test_ema_sampling_uses_ema_params_with_the_live_batch_stats():
    gan = _gan(ema_decay=0.5)
    x = _images(8)
    state = gan.init(jax.random.key(0), x)
    step = jax.jit(gan.train_step)
    s1, _ = step(state, x)
    s2, _ = step(s1, x)
    expected = jax.tree.map(lambda p0, p1, p2: 0.25 * p0 + 0.25 * p1 + 0.5 * p2,
                            state.g.params, s1.g.params, s2.g.params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), s2.ema_params, expected)
    key = jax.random.key(5)
    z = gan.latents(key, jnp.arange(6, dtype=jnp.uint32))
    ref, _ = gan.generator.apply(s2.ema_params, s2.g.model_state, z, key=key, train=False)
    np.testing.assert_allclose(gan.sample(s2, key, 6), ref, rtol=1e-6)
    assert not np.allclose(gan.sample(s2, key, 6, use_ema=False), ref)


# ---------------------------------------------------------------------- the CPU layers' fast path


def test_compiled_chunk_has_only_canonical_convolutions():
    """XLA CPU runs a convolution fast only in the canonical layout and canonicalises only the
    entry computation; the training chunk is a while loop, so every convolution in it (forward
    and both gradients, of both players) must already be canonical with the CPU layers."""
    from jaxgan.data.synthetic import RandomImages
    from jaxgan.runner import train_chunk

    gan = _gan(size=16, width=4, layers="cpu", penalties=(jg.penalties.R1(gamma=1.0),))
    state = gan.init(jax.random.key(0), _images(4))
    hlo = jax.jit(lambda s: train_chunk(gan, RandomImages((16, 16, 3)), s, 4, 3)).lower(state).compile().as_text()
    labels = [line.split("dim_labels=")[1].split(",")[0] for line in hlo.splitlines()
              if " convolution(" in line and "dim_labels=" in line]
    assert len(labels) >= 20
    assert set(labels) == {"b01f_01io->b01f"}, sorted(set(labels))


# ---------------------------------------------------------------------- sync batch norm

SYNC_SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np, optax, json
    import jaxgan as jg
    from jaxgan.nets.dcgan import dcgan_pair
    assert jax.device_count() == 2
    def make(axis, net_axis):
        g, d = dcgan_pair((16, 16, 3), 8, g_width=4, d_width=4, axis_name=net_axis)
        return jg.GAN(g, d, optax.adam(1e-2, b1=0.5), optax.adam(1e-2, b1=0.5), axis_name=axis)
    x = jax.random.uniform(jax.random.key(1), (8, 16, 16, 3), minval=-1, maxval=1)
    single = make(None, None)
    s = single.init(jax.random.key(0), x)
    rep = jax.tree.map(lambda a: jnp.stack([a, a]), s)
    for _ in range(2):
        s, _ = jax.jit(single.train_step)(s, x)
    out = {}
    for name, net_axis in (("sync", "d"), ("local", None)):
        gan = make("d", net_axis)
        r = rep
        for _ in range(2):
            r, _ = jax.pmap(gan.train_step, axis_name="d")(r, x.reshape(2, 4, 16, 16, 3))
        diffs = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a[0] - b))), (r.g.params, r.d.params),
                             (s.g.params, s.d.params))
        spread = jax.tree.map(lambda a: float(jnp.max(jnp.abs(a[0] - a[1]))), r.d.model_state)
        out[name] = [max(jax.tree.leaves(diffs)), max(jax.tree.leaves(spread))]
    print(json.dumps(out))
""")


def test_sync_batch_norm_makes_two_devices_equal_one():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    res = subprocess.run([sys.executable, "-c", SYNC_SCRIPT], capture_output=True, text=True, env=env, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    import json

    out = json.loads(res.stdout.strip().splitlines()[-1])
    sync_diff, sync_spread = out["sync"]
    local_diff, _ = out["local"]
    # Sync BN: 2 devices x 4 examples compute what 1 device computes with 8 (to float rounding),
    # and the replicas' running statistics agree.
    assert sync_diff < 1e-4 and sync_spread < 1e-6
    # Per-device BN normalises with 4-example statistics: a different trajectory.
    assert local_diff > 100 * max(sync_diff, 1e-6)


# ---------------------------------------------------------------------- bench


def test_bench_dcgan32_prints_one_json_object_last():
    """`jaxgan bench --preset dcgan32` (narrowed so it compiles quickly) times the DCGAN chunk and
    reports XLA's FLOPs per step: a DCGAN round is far more than a toy one."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    res = subprocess.run([sys.executable, "-m", "jaxgan", "bench", "--preset", "dcgan32", "--steps", "2", "--set",
                          "g_width=8", "d_width=8", "batch_size=8", "log_every=1"],
                         capture_output=True, text=True, env=env, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    out = __import__("json").loads(res.stdout.strip().splitlines()[-1])
    assert out["preset"] == "dcgan32" and out["model"] == "dcgan" and out["steps"] == 2
    assert out["steps_per_s"] > 0 and 0.0 < out["final_generator_score"] < 1.0
    # G and D convolutions at width 8 on 8 images of 32x32: tens of MFLOP per round at least.
    assert out["gflop_per_step"] > 0.01
