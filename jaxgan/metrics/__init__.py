"""Sample quality and mode coverage, measured the way papers measure them.

``fid`` (Fréchet distance), ``kid`` (kernel distance), ``prdc`` (precision/recall, density/
coverage) work on any feature sets ``[N, D]``; ``features`` supplies extractors (a user-supplied
Inception, a classifier trained on the real data); ``modes`` counts modes from class predictions
(the Stacked-MNIST protocol).
"""

from jaxgan.metrics import fid, kid, prdc

__all__ = ["fid", "kid", "prdc"]
