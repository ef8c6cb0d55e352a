"""The native kernel library that ships with opbridge (built on first use)."""

from __future__ import annotations

import pathlib
import threading

from ._build import build_library

__all__ = ["KERNEL_SOURCES", "LIBRARY_NAME", "SHIPPED_OPS", "library_path"]

LIBRARY_NAME = "opbridge_kernels"
#: The ``domain::op_type`` of every node the shipped library implements.
SHIPPED_OPS = (
    "mydomain::testgroupnorm",
    "test.customop::CustomOpOne",
    "test.customop::CustomOpTwo",
)
_KERNEL_DIR = pathlib.Path(__file__).resolve().parent / "kernels"
#: Sources of the shipped library, in link order.
KERNEL_SOURCES = tuple(sorted(_KERNEL_DIR.glob("*.cc")))

_lock = threading.Lock()
_path: pathlib.Path | None = None


def library_path(*, verbose: bool = False) -> pathlib.Path:
    """Returns the shipped custom-op library, building it on first use.

    The library provides ``mydomain::testgroupnorm`` (float32/float16) and
    ``test.customop::CustomOpOne`` / ``CustomOpTwo``. It depends only on the C++
    runtime, so it can be deployed next to a model and loaded by any ONNX Runtime
    (>= the header version, 1.29) with ``SessionOptions.register_custom_ops_library``.
    The build is cached on disk; within a process the path is computed once.

    Args:
        verbose: Print compiler commands to stderr if a build is needed.

    Returns:
        Path of the shared library.

    Raises:
        BuildError: The library could not be built.
    """
    global _path
    with _lock:
        if _path is None or not _path.is_file():
            _path = build_library(LIBRARY_NAME, KERNEL_SOURCES, verbose=verbose)
        return _path
