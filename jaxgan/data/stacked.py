"""Stacked-MNIST: three independent digits as the three channels of one image (1000 modes).

Metz et al. (2016, section 3.3.1) and, after them, VEEGAN (Srivastava et al. 2017, section 5)
and PacGAN (Lin et al. 2018, section 5) build each example by drawing ``channels`` digit images
independently and uniformly from a digit dataset and stacking them; the example's mode is the
triple of their labels. This source draws them on device, keyed by position like the toy
samplers: example ``i`` of a batch drawn with key ``k`` depends only on ``fold_in(k, i)``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxgan.data.labeled import LabeledImages, to_float
from jaxgan.keys import per_example

Array = jax.Array


@dataclasses.dataclass(frozen=True, eq=False)
class StackedDigits:
    """``digits: float32 [N, H, W]`` in [-1, 1] with ``labels: int32 [N]``; examples are
    ``[H, W, channels]`` with ``num_classes ** channels`` modes."""

    name: str
    digits: np.ndarray
    labels: np.ndarray
    num_classes: int = 10
    channels: int = 3

    @property
    def example_shape(self) -> tuple[int, ...]:
        return (*self.digits.shape[1:3], self.channels)

    @property
    def num_modes(self) -> int:
        return self.num_classes**self.channels

    def draw_indices(self, key: Array, ids: Array) -> Array:
        """Which digit fills each channel: ``[len(ids), channels]`` indices into ``digits``."""
        n = self.digits.shape[0]
        return per_example(key, ids, lambda k: jax.random.randint(k, (self.channels,), 0, n))

    def compose(self, idx: Array) -> Array:
        """Images ``[B, H, W, channels]`` from digit indices ``[B, channels]``."""
        return jnp.moveaxis(jnp.asarray(self.digits)[idx], 1, -1)

    def sample_ids(self, key: Array, ids: Array) -> Array:
        """Examples ``[len(ids), H, W, channels]``; row r depends only on ``(key, ids[r])``."""
        return self.compose(self.draw_indices(key, ids))

    def sample_with_labels(self, key: Array, n: int) -> tuple[Array, Array]:
        """``n`` examples and their per-channel labels ``[n, channels]``."""
        idx = self.draw_indices(key, jnp.arange(n, dtype=jnp.uint32))
        return self.compose(idx), jnp.asarray(self.labels)[idx]


def from_labeled(data: LabeledImages, channels: int = 3) -> StackedDigits:
    """Stacked digits over a single-channel labelled image set (e.g. MNIST's train split)."""
    if data.images.shape[-1] != 1:
        raise ValueError(
            f"stacking needs single-channel digit images; {data.name} has {data.images.shape[-1]} channels"
        )
    return StackedDigits(f"stacked_{data.name}", to_float(data.images)[..., 0], data.labels,
                         data.num_classes, channels)


def load(name: str, *, data_dir: str | None = None, image_size: int | None = None, split: str = "train",
         channels: int = 3) -> StackedDigits:
    """Stacked digits over TFDS dataset ``name`` (``mnist``, or ``sklearn_digits`` offline)."""
    from jaxgan.data import labeled

    return from_labeled(labeled.load(name, split=split, data_dir=data_dir, image_size=image_size), channels)
