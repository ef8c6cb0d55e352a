"""Build hooks for opbridge's native parts; all metadata lives in pyproject.toml.

This builds two shared libraries, both against ONNX Runtime's public headers only
(``src/opbridge/native/_headers.py`` locates or fetches and verifies them; nothing
links ``libonnxruntime``):

* the kernel host, ``opbridge.runtime._host_ext``: a CPython extension module that is
  also an ONNX Runtime custom-op library (it exports ``RegisterCustomOps``);
* the shipped native kernels, ``opbridge/native/_lib/libopbridge_kernels.so``, built
  from ``native/kernels/*.cc`` once here so that an installed wheel needs no compiler
  (``opbridge.library_path()`` returns it; a ``kernels.sha256`` beside it lets a
  source checkout notice edited sources and rebuild into the cache instead).

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
NATIVE_DIR = pathlib.Path("src", "opbridge", "native")
HEADERS_MODULE = ROOT / NATIVE_DIR / "_headers.py"
KERNELS_EXT = "opbridge.native._lib.libopbridge_kernels"

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


def _load_module(name: str, path: pathlib.Path) -> ModuleType:
    """Imports a standard-library-only module by path: opbridge is not importable yet."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise HostBuildError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    # dataclasses and friends look modules up in sys.modules while executing them.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class BuildHost(build_ext):
    """build_ext that resolves the include directories late and explains failures."""

    def finalize_options(self) -> None:
        super().finalize_options()
        if not self.parallel:
            # The two libraries (and their sources) compile side by side.
            self.parallel = os.cpu_count() or 1

    def get_ext_filename(self, fullname: str) -> str:
        # The kernel library is loaded by ONNX Runtime, not imported: a plain name.
        # (distutils also asks with the last component only.)
        if fullname in (KERNELS_EXT, KERNELS_EXT.rpartition(".")[2]):
            return str(pathlib.Path(*fullname.split("."))) + ".so"
        return super().get_ext_filename(fullname)

    def get_export_symbols(self, ext: Extension) -> list[str]:
        if ext.name == KERNELS_EXT:
            return ["RegisterCustomOps"]
        return list(super().get_export_symbols(ext))

    def build_extensions(self) -> None:
        # Resolved here, not at import time, so that metadata-only commands never
        # download headers.
        headers = _load_module("_opbridge_build_headers", HEADERS_MODULE)
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
        if self.inplace or getattr(self, "editable_mode", False):
            # Copied into the source tree afterwards, into a directory git ignores.
            (ROOT / NATIVE_DIR / "_lib").mkdir(exist_ok=True)
        print(
            f"opbridge: compiling the kernel host and the shipped kernels "
            f"({len(self.extensions)} libraries, about a minute) ...",
            file=sys.stderr,
            flush=True,
        )
        try:
            super().build_extensions()
        except (CCompilerError, CompileError, ExecError, LinkError, PlatformError) as exc:
            raise HostBuildError(
                f"compiling {HOST_DIR} failed ({exc}); the compiler output above has the "
                f"details. It needs a C++17 compiler and the Python headers: {_COMPILER_HINT}."
            ) from exc
        self._write_kernel_digest()

    def _write_kernel_digest(self) -> None:
        """Records which sources the prebuilt kernel library was compiled from."""
        if not any(ext.name == KERNELS_EXT for ext in self.extensions):
            return
        digest = _load_module("_opbridge_build_digest", ROOT / NATIVE_DIR / "_digest.py")
        text = digest.kernel_sources_digest(ROOT / NATIVE_DIR) + "\n"
        targets = [pathlib.Path(self.get_ext_fullpath(KERNELS_EXT)).parent]
        if getattr(self, "editable_mode", False):
            targets.append(ROOT / NATIVE_DIR / "_lib")
        for directory in targets:
            directory.mkdir(parents=True, exist_ok=True)
            (directory / "kernels.sha256").write_text(text)


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
        ),
        _kernels_extension(),
    ]


def _kernels_extension() -> Extension:
    """The shipped kernels as a plain shared library (same flags as ``build_library``)."""
    sources = sorted(str(path) for path in (NATIVE_DIR / "kernels").glob("*.cc"))
    compile_flags = ["-std=c++17", "-fvisibility=hidden", "-fvisibility-inlines-hidden", "-g0"]
    link_flags: list[str] = []
    if sys.platform.startswith("linux"):
        link_flags = [
            "-Wl,-z,defs",
            "-Wl,--require-defined=RegisterCustomOps",
            f"-Wl,--version-script={ROOT / NATIVE_DIR / 'kernels' / 'exports.map'}",
        ]
    return Extension(
        KERNELS_EXT,
        sources=sources,
        depends=[
            str(NATIVE_DIR / "kernels" / "kernels.h"),
            str(NATIVE_DIR / "include" / "opbridge" / "ort_kernel.h"),
        ],
        include_dirs=[str(NATIVE_DIR / "include")],
        define_macros=[("ORT_API_MANUAL_INIT", None)],
        extra_compile_args=compile_flags,
        extra_link_args=link_flags,
        language="c++",
    )


setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildHost})
