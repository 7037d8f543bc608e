"""Data: toy distributions sampled inside jit, arrays from disk, TFDS images fed from the host,
checks at the boundary."""

from jaxgan.data.checks import DataError, DataWarning, check_batch, check_image_layout, check_range
from jaxgan.data.host import HostSource, IndexedImages, Prefetcher, epoch_permutation
from jaxgan.data.synthetic import RandomImages
from jaxgan.data.toy import TOY, MixtureOfGaussians, gaussian, grid, ring

__all__ = [
    "TOY", "DataError", "DataWarning", "HostSource", "IndexedImages", "MixtureOfGaussians", "Prefetcher",
    "RandomImages", "check_batch", "check_image_layout", "check_range", "epoch_permutation",
    "gaussian", "grid", "ring",
]
