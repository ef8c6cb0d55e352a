"""opbridge: declare a PyTorch custom operator once; export it to ONNX with either
exporter, run it in ONNX Runtime with kernels in Python, torch or C++, and verify
that ONNX Runtime and PyTorch agree.
"""

import os as _os
import sys as _sys
from contextlib import AbstractContextManager

# torch's OpenMP threads busy-wait between parallel regions by default. When torch
# kernels run inside ONNX Runtime (or the machine is shared), the waiting threads take
# the cores the working ones need: on a loaded 2-core machine torch.neg on 1M floats
# took 20 ms with 2 threads instead of 1 ms. OpenMP reads this once, when torch loads,
# so it only applies when opbridge is imported first; a value you set wins.
if "torch" not in _sys.modules:
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

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
