"""opbridge: declare a PyTorch custom operator once; export it to ONNX with either
exporter, run it in ONNX Runtime with kernels in Python, torch or C++, and verify
that ONNX Runtime and PyTorch agree.
"""

from contextlib import AbstractContextManager

from opbridge._errors import (
    DeclarationError,
    ExportError,
    KernelError,
    LoweringError,
    OpbridgeError,
    SessionError,
)
from opbridge._registry import REGISTRY, Registry
from opbridge.declaration import CustomOpDef, custom_op
from opbridge.exporters import export
from opbridge.lowering import Builder, Value, register_lowering
from opbridge.native import BuildError, build_library, library_path, load_inline
from opbridge.runtime import Session, session_options
from opbridge.verification import VerificationReport, verify

__version__ = "0.1.0"


def registry_scope() -> AbstractContextManager[Registry]:
    """Context manager undoing every lowering registered and op adopted inside it (for
    tests and demos).

    Example::

        with opbridge.registry_scope():
            opbridge.register_lowering("aten::add.Tensor", my_add)
            opbridge.export(model, args)
        # aten::add.Tensor is exported as before here
    """
    return REGISTRY.scope()


__all__ = [
    "BuildError",
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
    "VerificationReport",
    "build_library",
    "custom_op",
    "export",
    "library_path",
    "load_inline",
    "register_lowering",
    "registry_scope",
    "session_options",
    "verify",
]
