"""Data: toy distributions sampled inside jit, arrays from disk, checks at the boundary."""

from jaxgan.data.checks import DataError, DataWarning, check_batch, check_image_layout, check_range
from jaxgan.data.toy import TOY, MixtureOfGaussians, gaussian, grid, ring

__all__ = [
    "TOY", "DataError", "DataWarning", "MixtureOfGaussians", "check_batch", "check_image_layout",
    "check_range", "gaussian", "grid", "ring",
]
