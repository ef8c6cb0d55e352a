"""Native ONNX Runtime custom-op libraries: build your own, or use opbridge's kernels.

* :func:`build_library` / :func:`load_inline` compile C++ kernels written against
  ``<opbridge/ort_kernel.h>`` into a shared library (cached on disk).
* :func:`library_path` returns opbridge's shipped kernel library (prebuilt in wheels);
  sessions use it only when passed it: ``Session(model, libraries=[library_path()])``.
* :func:`ort_include_dir` locates the ONNX Runtime headers the builds use.
"""

from ._build import BuildError, build_library, load_inline
from ._headers import HeaderError, header_api_version, ort_include_dir
from ._library import SHIPPED_OPS, is_shipped_library, library_path

__all__ = [
    "BuildError",
    "HeaderError",
    "SHIPPED_OPS",
    "build_library",
    "header_api_version",
    "is_shipped_library",
    "library_path",
    "load_inline",
    "ort_include_dir",
]
