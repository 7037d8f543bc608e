"""Networks: adapters to one calling convention, and reference models."""

from jaxgan.nets.adapters import Network, count_params, from_functions, from_linen, from_nnx
from jaxgan.nets.mlp import MLPDiscriminator, MLPGenerator, mlp_pair

__all__ = [
    "MLPDiscriminator",
    "MLPGenerator",
    "Network",
    "count_params",
    "from_functions",
    "from_linen",
    "from_nnx",
    "mlp_pair",
]
