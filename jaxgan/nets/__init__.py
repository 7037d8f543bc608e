"""Networks: adapters to one calling convention, and reference models."""

from jaxgan.nets.adapters import Network, count_params, from_functions, from_linen, from_nnx
from jaxgan.nets.mlp import MLPDiscriminator, MLPGenerator, mlp_pair

# The CPU drop-ins for flax's layers live in jaxgan.cpu (DCGAN's layers="cpu"); importable here too.
_CPU_LAYERS = {
    "BatchNorm": "jaxgan.cpu.batch_norm",
    "ConvTranspose": "jaxgan.cpu.conv_transpose",
    "conv_transpose": "jaxgan.cpu.conv_transpose",
}


def __getattr__(name: str):
    if name in _CPU_LAYERS:
        import importlib

        return getattr(importlib.import_module(_CPU_LAYERS[name]), name)
    raise AttributeError(f"module 'jaxgan.nets' has no attribute {name!r}")


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
