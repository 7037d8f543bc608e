"""The standard 2-D mode-collapse benchmarks, as pure samplers that run inside jit.

* ``ring8``: 8 Gaussians evenly spaced on a circle of radius 2, std 0.02 (Metz et al. 2016
  use radius 1, std 0.01 in their notebook; PacGAN and VEEGAN keep the same std/radius ratio).
* ``grid25``: 25 Gaussians on the grid {-4, -2, 0, 2, 4}^2, std 0.05 (VEEGAN, PacGAN).

Example ``i`` of a batch drawn with key ``k`` is a function of ``fold_in(k, i)`` only, so a
device holding examples ``ids`` draws exactly its share of the global batch.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxgan.keys import per_example

Array = jax.Array


@dataclasses.dataclass(frozen=True, eq=False)
class MixtureOfGaussians:
    """An equal-weight mixture of isotropic Gaussians. ``centers: [K, D]`` (numpy, static)."""

    name: str
    centers: np.ndarray
    std: float

    @property
    def example_shape(self) -> tuple[int, ...]:
        return (self.centers.shape[1],)

    @property
    def num_modes(self) -> int:
        return self.centers.shape[0]

    def sample_ids(self, key: Array, ids: Array) -> Array:
        """Examples ``[len(ids), D]``; row r depends only on ``(key, ids[r])``."""
        centers = jnp.asarray(self.centers, jnp.float32)

        def one(k):
            kc, kn = jax.random.split(k)
            c = jax.random.randint(kc, (), 0, self.num_modes)
            return centers[c] + self.std * jax.random.normal(kn, centers.shape[1:])

        return per_example(key, ids, one)

    def sample(self, key: Array, n: int) -> Array:
        """``n`` examples ``[n, D]``."""
        return self.sample_ids(key, jnp.arange(n, dtype=jnp.uint32))

    def log_density(self, x: np.ndarray) -> np.ndarray:
        """log p(x) for ``x: [N, D]`` (numpy; for plots and tests)."""
        d = self.centers.shape[1]
        sq = np.sum((x[:, None, :] - self.centers[None]) ** 2, axis=-1)
        log_comp = -0.5 * sq / self.std**2 - 0.5 * d * np.log(2 * np.pi * self.std**2)
        m = log_comp.max(axis=1, keepdims=True)
        return (m + np.log(np.mean(np.exp(log_comp - m), axis=1, keepdims=True)))[:, 0]


def ring(num_modes: int = 8, radius: float = 2.0, std: float = 0.02) -> MixtureOfGaussians:
    angles = 2.0 * np.pi * np.arange(num_modes) / num_modes  # distinct modes: no repeated endpoint
    centers = radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return MixtureOfGaussians(f"ring{num_modes}", centers.astype(np.float32), std)


def grid(side: int = 5, spacing: float = 2.0, std: float = 0.05) -> MixtureOfGaussians:
    ticks = (np.arange(side) - (side - 1) / 2.0) * spacing
    xx, yy = np.meshgrid(ticks, ticks, indexing="ij")
    centers = np.stack([xx.ravel(), yy.ravel()], axis=1)
    return MixtureOfGaussians(f"grid{side * side}", centers.astype(np.float32), std)


def gaussian(mean: float = 1.0, std: float = 0.5, dim: int = 1) -> MixtureOfGaussians:
    """A single Gaussian N(mean, std^2 I) in ``dim`` dimensions (the simplest sanity check)."""
    return MixtureOfGaussians(f"gaussian{dim}d", np.full((1, dim), mean, np.float32), std)


TOY: dict[str, MixtureOfGaussians] = {
    "ring8": ring(8, 2.0, 0.02),
    "grid25": grid(5, 2.0, 0.05),
    "gaussian1d": gaussian(1.0, 0.5, 1),
    "gaussian2d": gaussian(1.0, 0.5, 2),
}
