"""The runtime: ONNX Runtime sessions with the kernels a model's custom nodes need."""

from opbridge.runtime._kernels import AttrSpec, IOSpec, KernelSpec
from opbridge.runtime._plan import KernelSource, custom_nodes, plan_kernels
from opbridge.runtime._session import Session, session_options

__all__ = [
    "AttrSpec",
    "IOSpec",
    "KernelSource",
    "KernelSpec",
    "Session",
    "custom_nodes",
    "plan_kernels",
    "session_options",
]
