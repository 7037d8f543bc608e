"""Networks: adapters to one calling convention, and reference models."""

from jaxgan.cpu.batch_norm import BatchNorm
from jaxgan.cpu.conv_transpose import ConvTranspose, conv_transpose
from jaxgan.nets.adapters import Network, count_params, from_functions, from_linen, from_nnx
from jaxgan.nets.mlp import MLPDiscriminator, MLPGenerator, mlp_pair

__all__ = [
    "BatchNorm",
    "ConvTranspose",
    "MLPDiscriminator",
    "MLPGenerator",
    "Network",
    "conv_transpose",
    "count_params",
    "from_functions",
    "from_linen",
    "from_nnx",
    "mlp_pair",
]
