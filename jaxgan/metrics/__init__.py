"""Sample quality and mode coverage, measured the way papers measure them.

``coverage`` is mode coverage on mixtures with known modes (the VEEGAN/PacGAN protocol);
``fid`` (Fréchet distance), ``kid`` (kernel distance), ``prdc`` (precision/recall, density/
coverage) work on any feature sets ``[N, D]``; ``features`` supplies extractors (a user-supplied
Inception, any function) and ``classifier`` one fitted on the real data; ``modes`` counts modes
from class predictions (the Stacked-MNIST protocol).
"""

from jaxgan.metrics import coverage, fid, kid, modes, prdc

__all__ = ["coverage", "fid", "kid", "modes", "prdc"]
