"""Random images sampled inside jit: ``dataset=random:HxWxC`` (for benchmarks and smoke tests).

Pixels are uniform in [-1, 1); example ``i`` of a draw with key ``k`` depends only on
``(k, i)`` (:func:`jaxgan.keys.uniform`, as every on-device source), so the data costs no host
work and the benchmark measures the training step alone.
"""

from __future__ import annotations

import dataclasses
import re

import jax

from jaxgan import keys

Array = jax.Array

PATTERN = re.compile(r"^random:(\d+)x(\d+)x(\d+)$")


@dataclasses.dataclass(frozen=True)
class RandomImages:
    """Uniform noise images of ``shape`` = (H, W, C) in [-1, 1]."""

    shape: tuple[int, int, int]

    @property
    def name(self) -> str:
        return "random:{}x{}x{}".format(*self.shape)

    @property
    def example_shape(self) -> tuple[int, int, int]:
        return self.shape

    def sample_ids(self, key: Array, ids: Array) -> Array:
        """``[len(ids), H, W, C]``; row r depends only on ``(key, ids[r])``."""
        return keys.uniform(key, ids, self.shape, -1.0, 1.0)


def parse(name: str) -> RandomImages | None:
    """``'random:32x32x3'`` -> RandomImages((32, 32, 3)); None if ``name`` is not of that form."""
    m = PATTERN.match(name)
    if m is None:
        return None
    shape = tuple(int(g) for g in m.groups())
    if min(shape) < 1:
        return None
    return RandomImages(shape)
