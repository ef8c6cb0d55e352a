"""Build hooks for opbridge's native parts; all metadata lives in pyproject.toml.

This builds the kernel host, ``opbridge.runtime._host_ext``: a CPython extension
module that is also an ONNX Runtime custom-op library (it exports
``RegisterCustomOps``). It compiles against ONNX Runtime's public headers, which
``src/opbridge/native/_headers.py`` locates or fetches and verifies, and against
numpy's; it never links ``libonnxruntime``.

Environment:
    OPBRIDGE_BUILD_HOST=0: install without the kernel host (opbridge then uses its
        onnxruntime-extensions fallback). Any other value, or unset, builds it and
        fails the install with one clear message if that is impossible.
    OPBRIDGE_ORT_INCLUDE_DIR: use ONNX Runtime headers from this directory instead
        of fetching them (handled by ``_headers.py``).
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import shutil
import sys
from types import ModuleType

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CCompilerError, CompileError, ExecError, LinkError, PlatformError

ROOT = pathlib.Path(__file__).resolve().parent
HOST_DIR = pathlib.Path("src", "opbridge", "runtime", "host")
HEADERS_MODULE = ROOT / "src" / "opbridge" / "native" / "_headers.py"

_COMPILER_HINT = (
    "Install a C++17 compiler and the Python development headers, e.g. "
    "`apt-get install g++ python3-dev` (Debian/Ubuntu), `dnf install gcc-c++ python3-devel` "
    "(Fedora) or `xcode-select --install` (macOS)"
)


class HostBuildError(SystemExit):
    """The kernel host cannot be built; the message says what to install."""

    def __init__(self, message: str) -> None:
        super().__init__(
            f"error: opbridge could not build its kernel host: {message}\n"
            "(set OPBRIDGE_BUILD_HOST=0 to install without it and use the slower "
            "onnxruntime-extensions fallback)"
        )


def _load_headers_module() -> ModuleType:
    """Imports ``opbridge/native/_headers.py`` by path: opbridge is not importable yet."""
    spec = importlib.util.spec_from_file_location("_opbridge_build_headers", HEADERS_MODULE)
    if spec is None or spec.loader is None:
        raise HostBuildError(f"cannot load {HEADERS_MODULE}")
    module = importlib.util.module_from_spec(spec)
    # dataclasses and friends look modules up in sys.modules while executing them.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class BuildHost(build_ext):
    """build_ext that resolves the include directories late and explains failures."""

    def build_extensions(self) -> None:
        # Resolved here, not at import time, so that metadata-only commands never
        # download headers.
        headers = _load_headers_module()
        try:
            ort_include = headers.ort_include_dir()
        except headers.HeaderError as exc:
            raise HostBuildError(f"ONNX Runtime headers are unavailable: {exc}") from exc
        try:
            import numpy
        except ImportError as exc:  # pyproject's build requirements include numpy
            raise HostBuildError("numpy is needed to build; `pip install numpy`") from exc
        for ext in self.extensions:
            ext.include_dirs.extend([str(ort_include), numpy.get_include()])

        compiler = getattr(self.compiler, "compiler_so", None)
        if compiler and shutil.which(compiler[0]) is None:
            raise HostBuildError(f"the compiler `{compiler[0]}` was not found. {_COMPILER_HINT}.")
        try:
            super().build_extensions()
        except (CCompilerError, CompileError, ExecError, LinkError, PlatformError) as exc:
            raise HostBuildError(
                f"compiling {HOST_DIR} failed ({exc}); the compiler output above has the "
                f"details. It needs a C++17 compiler and the Python headers: {_COMPILER_HINT}."
            ) from exc


def _extensions() -> list[Extension]:
    if os.environ.get("OPBRIDGE_BUILD_HOST", "1").strip().lower() in ("0", "false", "no", "off"):
        return []
    sources = sorted(str(path) for path in HOST_DIR.glob("*.cc"))
    compile_flags: list[str] = ["/std:c++17"]
    link_flags: list[str] = []
    if os.name != "nt":
        # Only PyInit__host_ext and RegisterCustomOps are exported (both are marked
        # visible in the sources); everything else stays private to the library.
        # -g0: no debug info (Python's own flags add -g), a tenth of the size.
        compile_flags = ["-std=c++17", "-fvisibility=hidden", "-fvisibility-inlines-hidden", "-g0"]
        if sys.platform.startswith("linux"):
            # Also hides the C++ runtime's template instances that default visibility
            # would otherwise export.
            link_flags = [f"-Wl,--version-script={ROOT / HOST_DIR / 'exports.map'}"]
    return [
        Extension(
            "opbridge.runtime._host_ext",
            sources=sources,
            depends=[*map(str, sorted(HOST_DIR.glob("*.h"))), str(HOST_DIR / "exports.map")],
            include_dirs=[str(HOST_DIR)],
            define_macros=[
                # Never call OrtGetApiBase (no libonnxruntime link): the API table
                # comes from the OrtApiBase that ORT passes to RegisterCustomOps.
                ("ORT_API_MANUAL_INIT", None),
                ("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"),
            ],
            extra_compile_args=compile_flags,
            extra_link_args=link_flags,
            language="c++",
        )
    ]


setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildHost})
