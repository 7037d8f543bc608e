"""Data: toy distributions sampled inside jit, arrays from disk, checks at the boundary."""

from jaxgan.data.checks import DataError, check_batch
from jaxgan.data.toy import TOY, MixtureOfGaussians, gaussian, grid, ring

__all__ = ["TOY", "DataError", "MixtureOfGaussians", "check_batch", "gaussian", "grid", "ring"]
