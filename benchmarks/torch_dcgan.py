"""The PyTorch eager peer of jaxgan's training step, for benchmarks/throughput.py.

Models: the DCGAN of pytorch/examples (``dcgan/main.py``: ConvTranspose2d/Conv2d with 4x4
kernels, stride 2, padding 1, no biases, batch norm, ReLU/LeakyReLU(0.2), tanh; N(0, 0.02)
weights) laid out for image size ``s0 * 2**n`` exactly as :mod:`jaxgan.nets.dcgan` does (at 64
px it *is* the example's netG/netD), and the toy MLP GAN (two hidden layers of 128 units).

One step does the work of ``jaxgan.GAN.train_step`` with d_steps = g_steps = 1:
  D update: fakes from fresh latents (G in train mode, no graph), D on the real batch and on
  the fakes, the non-saturating (BCE) loss, Adam.
  G update: fakes from other fresh latents, D on them (D's weights frozen, so no D weight
  gradients are computed: cheaper than the example, which computes and discards them), Adam.
The scores (mean D output on real and fake) are kept as tensors: no host sync in the step, like
the jitted step. Data are drawn on the fly (uniform noise images, or the ring of Gaussians).
Requires ``pip install torch==2.13.0`` (the ``bench`` extra).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import nn


def _layout(image_size: int) -> tuple[int, int]:
    s0, n = image_size, 0
    while s0 % 2 == 0 and s0 // 2 >= 4:
        s0, n = s0 // 2, n + 1
    return s0, n


def dcgan_generator(image_size: int, nz: int = 100, ngf: int = 64, nc: int = 3) -> nn.Module:
    s0, n = _layout(image_size)
    layers = [nn.ConvTranspose2d(nz, ngf * 2 ** (n - 1), s0, 1, 0, bias=False), nn.BatchNorm2d(ngf * 2 ** (n - 1)),
              nn.ReLU(True)]
    for i in range(1, n):
        cin, cout = ngf * 2 ** (n - i), ngf * 2 ** (n - 1 - i)
        layers += [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]
    layers += [nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False), nn.Tanh()]
    return nn.Sequential(*layers)


def dcgan_discriminator(image_size: int, ndf: int = 64, nc: int = 3) -> nn.Module:
    s0, n = _layout(image_size)
    layers: list[nn.Module] = [nn.Conv2d(nc, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True)]
    for i in range(1, n):
        cin, cout = ndf * 2 ** (i - 1), ndf * 2**i
        layers += [nn.Conv2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2, inplace=True)]
    layers += [nn.Conv2d(ndf * 2 ** (n - 1), 1, s0, 1, 0, bias=False), nn.Flatten(0)]
    return nn.Sequential(*layers)


def weights_init(m: nn.Module) -> None:
    """The PyTorch example's init: conv weights N(0, 0.02), batch-norm weights N(1, 0.02)."""
    name = type(m).__name__
    if "Conv" in name:
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif "BatchNorm" in name:
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def mlp(n_in: int, n_out: int, hidden=(128, 128), act=nn.Tanh) -> nn.Module:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(n_in, h), act()]
        n_in = h
    layers.append(nn.Linear(n_in, n_out))
    return nn.Sequential(*layers)


class Peer:
    """G, D, their Adam optimisers and a step function doing jaxgan's round of work."""

    def __init__(self, kind: str, *, image_size: int = 32, batch: int = 64, nz: int = 100, width: int = 64,
                 lr_g: float = 2e-4, lr_d: float = 2e-4, b1: float = 0.5, channels_last: bool = False,
                 mlp_activation: str = "tanh", seed: int = 0):
        torch.manual_seed(seed)
        self.kind, self.batch, self.nz = kind, batch, nz
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if kind == "dcgan":
            self.g = dcgan_generator(image_size, nz, width, 3)
            self.d = dcgan_discriminator(image_size, width, 3)
            self.g.apply(weights_init)
            self.d.apply(weights_init)
            self.g = self.g.to(memory_format=self.memory_format)
            self.d = self.d.to(memory_format=self.memory_format)
            self.image_shape = (3, image_size, image_size)
        elif kind == "mlp":
            act = {"tanh": nn.Tanh, "relu": nn.ReLU}[mlp_activation]
            self.g = mlp(nz, 2, act=act)
            self.d = nn.Sequential(mlp(2, 1, act=act), nn.Flatten(0))
            angles = 2 * math.pi * torch.arange(8) / 8
            self.centers = 2.0 * torch.stack([torch.cos(angles), torch.sin(angles)], 1)
        else:
            raise ValueError(kind)
        self.opt_g = torch.optim.Adam(self.g.parameters(), lr=lr_g, betas=(b1, 0.999))
        self.opt_d = torch.optim.Adam(self.d.parameters(), lr=lr_d, betas=(b1, 0.999))
        self.bce = nn.BCEWithLogitsLoss()
        self.g.train()
        self.d.train()

    def real_batch(self) -> torch.Tensor:
        if self.kind == "dcgan":
            x = torch.rand(self.batch, *self.image_shape) * 2 - 1
            return x.contiguous(memory_format=self.memory_format)
        idx = torch.randint(0, 8, (self.batch,))
        return self.centers[idx] + 0.02 * torch.randn(self.batch, 2)

    def latents(self) -> torch.Tensor:
        shape = (self.batch, self.nz, 1, 1) if self.kind == "dcgan" else (self.batch, self.nz)
        return torch.randn(*shape)

    def step(self) -> dict[str, torch.Tensor]:
        real = self.real_batch()
        ones = torch.ones(self.batch)
        zeros = torch.zeros(self.batch)
        # D update: G held constant.
        with torch.no_grad():
            fake = self.g(self.latents())
        self.opt_d.zero_grad(set_to_none=True)
        out_real = self.d(real)
        out_fake = self.d(fake)
        loss_d = self.bce(out_real, ones) + self.bce(out_fake, zeros)
        loss_d.backward()
        self.opt_d.step()
        # G update: D held constant (its weights need no gradient).
        for p in self.d.parameters():
            p.requires_grad_(False)
        self.opt_g.zero_grad(set_to_none=True)
        out = self.d(self.g(self.latents()))
        loss_g = self.bce(out, ones)
        loss_g.backward()
        self.opt_g.step()
        for p in self.d.parameters():
            p.requires_grad_(True)
        with torch.no_grad():
            return {"d_loss": loss_d.detach(), "g_loss": loss_g.detach(),
                    "generator_score": torch.sigmoid(out_fake).mean(), "real_score": torch.sigmoid(out_real).mean()}

    def time_steps(self, n: int, warmup: int = 2) -> list[float]:
        """Wall seconds of ``n`` steps, one by one, after ``warmup`` steps."""
        for _ in range(warmup):
            self.step()
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            self.step()
            times.append(time.perf_counter() - t0)
        return times


def matmul_peak(n: int = 2048, repeats: int = 10) -> float:
    """Best achieved GFLOP/s of an n x n float32 matmul in torch."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best / 1e9


if __name__ == "__main__":
    import argparse
    import json

    p = argparse.ArgumentParser(description="PyTorch eager DCGAN / MLP GAN steps per second")
    p.add_argument("--kind", default="dcgan", choices=["dcgan", "mlp"])
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--channels-last", action="store_true")
    a = p.parse_args()
    peer = Peer(a.kind, image_size=a.image_size, channels_last=a.channels_last,
                **({"batch": 512, "nz": 256, "lr_g": 1e-3, "lr_d": 1e-4} if a.kind == "mlp" else {}))
    ts = peer.time_steps(a.steps)
    print(json.dumps({"kind": a.kind, "image_size": a.image_size, "channels_last": a.channels_last,
                      "steps_per_s": round(1 / float(np.median(ts)), 3), "threads": torch.get_num_threads(),
                      "torch": torch.__version__}))
