"""opbridge: declare a PyTorch custom operator once; export it to ONNX with either
exporter, run it in ONNX Runtime with kernels in Python, torch or C++, and verify
that ONNX Runtime and PyTorch agree.
"""

from opbridge._errors import (
    DeclarationError,
    ExportError,
    KernelError,
    LoweringError,
    OpbridgeError,
    SessionError,
)
from opbridge.declaration import CustomOpDef, custom_op
from opbridge.exporters import export
from opbridge.lowering import Builder, Value, register_lowering
from opbridge.runtime import Session, session_options

__version__ = "0.1.0"

__all__ = [
    "Builder",
    "CustomOpDef",
    "DeclarationError",
    "ExportError",
    "KernelError",
    "LoweringError",
    "OpbridgeError",
    "Session",
    "SessionError",
    "Value",
    "custom_op",
    "export",
    "register_lowering",
    "session_options",
]
