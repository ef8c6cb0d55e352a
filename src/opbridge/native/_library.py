"""The native kernel library that ships with opbridge (prebuilt in wheels)."""

from __future__ import annotations

import os
import pathlib
import threading

from ._build import build_library
from ._digest import kernel_sources_digest

__all__ = [
    "KERNEL_SOURCES",
    "LIBRARY_NAME",
    "SHIPPED_OPS",
    "is_shipped_library",
    "library_path",
    "prebuilt_library",
]

LIBRARY_NAME = "opbridge_kernels"
#: The ``domain::op_type`` of every node the shipped library implements.
SHIPPED_OPS = (
    "mydomain::testgroupnorm",
    "test.customop::CustomOpOne",
    "test.customop::CustomOpTwo",
)
_NATIVE_DIR = pathlib.Path(__file__).resolve().parent
_KERNEL_DIR = _NATIVE_DIR / "kernels"
#: Sources of the shipped library, in link order.
KERNEL_SOURCES = tuple(sorted(_KERNEL_DIR.glob("*.cc")))
# Written by setup.py at install (wheel build) time, with the digest of its sources.
_PREBUILT = _NATIVE_DIR / "_lib" / f"lib{LIBRARY_NAME}.so"
_PREBUILT_DIGEST = _PREBUILT.with_name("kernels.sha256")

_lock = threading.Lock()
_path: pathlib.Path | None = None


def prebuilt_library() -> pathlib.Path | None:
    """Returns the library compiled when opbridge was installed, if it matches the sources.

    ``None`` when there is none (an install with ``OPBRIDGE_BUILD_HOST=0``) or when
    the kernel sources changed since (a source checkout being edited).
    """
    try:
        recorded = _PREBUILT_DIGEST.read_text().strip()
    except OSError:
        return None
    if not _PREBUILT.is_file() or recorded != kernel_sources_digest(_NATIVE_DIR):
        return None
    return _PREBUILT


def library_path(*, verbose: bool = False) -> pathlib.Path:
    """Returns the shipped custom-op library.

    The library provides ``mydomain::testgroupnorm`` (float32/float16) and
    ``test.customop::CustomOpOne`` / ``CustomOpTwo``, the ops of the seed tutorials.
    ``opbridge.Session`` binds them to a model only when asked:
    ``opbridge.Session(model, libraries=[opbridge.library_path()])``. The library
    needs neither Python nor ``libonnxruntime``, so it can be deployed next to a model
    and loaded by any ONNX Runtime (>= the header version, 1.29) with
    ``SessionOptions.register_custom_ops_library``.

    Installed opbridge (a wheel, or ``pip install`` from source) carries the library
    prebuilt; a source checkout whose kernel sources were edited since builds it with
    :func:`build_library` (needs a C++ compiler; cached on disk).

    Args:
        verbose: Print compiler commands to stderr if a build is needed.

    Returns:
        Path of the shared library.

    Raises:
        BuildError: No prebuilt library, and it could not be built.
    """
    global _path
    with _lock:
        if _path is None or not _path.is_file():
            _path = prebuilt_library() or build_library(
                LIBRARY_NAME, KERNEL_SOURCES, verbose=verbose
            )
        return _path


def is_shipped_library(path: os.PathLike[str] | str) -> bool:
    """Whether ``path`` is opbridge's shipped kernel library (prebuilt or a cached build)."""
    candidate = pathlib.Path(path)
    if _path is not None and candidate.resolve() == _path.resolve():
        return True
    if candidate.resolve() == _PREBUILT.resolve():
        return True
    # build_library names it lib<name>-<hash>.so under the cache.
    return candidate.name.startswith(f"lib{LIBRARY_NAME}-") and candidate.suffix == ".so"
