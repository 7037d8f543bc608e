"""Transposed-convolution layer timings: flax.linen.ConvTranspose vs jaxgan.nets.ConvTranspose
(and PyTorch's ConvTranspose2d when torch is installed), forward, input gradient and kernel
gradient, timed interleaved in one process so machine load hits them alike.

The default layer is DCGAN-64's generator's (64x8x8x256 -> 64x16x16x128, k=4, s=2, PyTorch
padding 1 = flax 'SAME'). Runs with ``jaxgan.cpu.tune()``, as ``jaxgan train`` does: with oneDNN
installed, jaxgan's layer is oneDNN's (``--xla-convolutions``: XLA's kernels, the sub-pixel form).
Prints one JSON line per layer. Run::

    python benchmarks/conv_transpose.py
    python benchmarks/conv_transpose.py --repeats 9 --layer 64,4,512,256 --layer 64,32,64,3
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgan import cpu
from jaxgan.nets import ConvTranspose


def _time(fn, *args) -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - t0


def jax_fns(cls, batch: int, size: int, cin: int, cout: int, **kwargs):
    """Jitted forward, input-gradient and kernel-gradient of a ``cls`` layer, and their inputs."""
    layer = cls(cout, (4, 4), strides=(2, 2), padding="SAME", use_bias=False, **kwargs)
    x = jax.random.normal(jax.random.key(0), (batch, size, size, cin))
    params = layer.init(jax.random.key(1), x)
    g = jax.random.normal(jax.random.key(2), layer.apply(params, x).shape)

    def loss(p, x):
        return jnp.vdot(layer.apply(p, x), g)

    return {
        "forward": (jax.jit(layer.apply), (params, x)),
        "input_grad": (jax.jit(jax.grad(loss, argnums=1)), (params, x)),
        "kernel_grad": (jax.jit(jax.grad(loss)), (params, x)),
    }


def torch_fns(batch: int, size: int, cin: int, cout: int):
    try:
        import torch
    except ImportError:
        return None
    m = torch.nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False)
    x = torch.randn(batch, cin, size, size)
    g = torch.randn(batch, cout, 2 * size, 2 * size)

    def forward():
        with torch.no_grad():
            return m(x)

    def input_grad():
        xr = x.detach().requires_grad_()
        return torch.autograd.grad(m(xr), xr, g)

    def kernel_grad():
        return torch.autograd.grad(m(x), m.weight, g)

    return {"forward": forward, "input_grad": input_grad, "kernel_grad": kernel_grad}


def run_layer(batch: int, size: int, cin: int, cout: int, repeats: int) -> dict:
    impls = {"flax": jax_fns(nn.ConvTranspose, batch, size, cin, cout),
             "jaxgan": jax_fns(ConvTranspose, batch, size, cin, cout, onednn=cpu.onednn_in_use())}
    peer = torch_fns(batch, size, cin, cout)
    times: dict[str, dict[str, list[float]]] = {}
    for name, fns in impls.items():
        for what, (fn, args) in fns.items():
            _time(fn, *args)  # compile + warm up
            times.setdefault(what, {})[name] = []
    if peer is not None:
        for what, fn in peer.items():
            fn()
            times[what]["torch"] = []
    for _ in range(repeats):
        for what in times:
            for name, fns in impls.items():
                fn, args = fns[what]
                times[what][name].append(_time(fn, *args))
            if peer is not None:
                t0 = time.perf_counter()
                peer[what]()
                times[what]["torch"].append(time.perf_counter() - t0)
    ms = {what: {k: round(1e3 * float(np.median(v)), 2) for k, v in per.items()} for what, per in times.items()}
    return {
        "benchmark": "conv_transpose",
        "layer": f"{batch}x{size}x{size}x{cin} -> {batch}x{2 * size}x{2 * size}x{cout}, k=4, s=2, SAME",
        "median_ms": ms,
        "flax_over_jaxgan": {what: round(v["flax"] / v["jaxgan"], 2) for what, v in ms.items()},
        "repeats": repeats,
        "command": " ".join(["python", *sys.argv]),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "onednn_convolutions": cpu.onednn_in_use(),
        "jax": jax.__version__,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layer", action="append", metavar="B,H,CIN,COUT",
                   help="input [B, H, H, CIN] -> [B, 2H, 2H, COUT] (default: 64,8,256,128)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-cpu-tuning", action="store_true", help="leave XLA's CPU defaults (see jaxgan.cpu)")
    p.add_argument("--xla-convolutions", action="store_true",
                   help="jaxgan.cpu.tune() without the oneDNN convolutions (XLA's own kernels for jaxgan's layer)")
    a = p.parse_args(argv)
    if not a.no_cpu_tuning:
        cpu.tune(onednn=not a.xla_convolutions)  # what `jaxgan train` runs with; applies to flax's layer as well
    for spec in a.layer or ["64,8,256,128"]:
        batch, size, cin, cout = (int(v) for v in spec.split(","))
        print(json.dumps(run_layer(batch, size, cin, cout, a.repeats)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
