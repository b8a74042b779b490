"""The only package that touches kp: devices, buffers, kernels, recorded graphs, barriers."""
from .device import Device  # noqa: F401
from .graph import Graph, grid  # noqa: F401
from .tensor import Buffer, Tensor, check_tensor, output, require  # noqa: F401
