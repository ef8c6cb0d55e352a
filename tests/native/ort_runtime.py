"""ONNX Runtime's C/C++ shared library for the C++ consumer test.

The onnxruntime wheel from PyPI ships ``onnxruntime/capi/libonnxruntime.so.<version>``
(the library its Python extension runs on); a C or C++ program can link it like any
ONNX Runtime release. Before it is used, the file is checked against the sha256 the
wheel's ``RECORD`` lists for it. Any runtime >= 1.29 serves libraries built against
opbridge's headers (ORT 1.29, API 29).
"""

from __future__ import annotations

import base64
import hashlib
import pathlib
from importlib import metadata

__all__ = ["MIN_RUNTIME", "ort_runtime_library"]

MIN_RUNTIME = (1, 29)


def ort_runtime_library() -> tuple[pathlib.Path, str]:
    """Returns the installed onnxruntime's ``libonnxruntime.so.*`` and its version.

    Raises:
        RuntimeError: onnxruntime is older than 1.29, ships no such file, or the file
            does not match its RECORD hash.
    """
    dist = metadata.distribution("onnxruntime")
    version = tuple(int(p) for p in dist.version.split(".")[:2])
    if version < MIN_RUNTIME:
        raise RuntimeError(f"onnxruntime {dist.version} is older than the headers (1.29)")
    for file in dist.files or ():
        if file.parent.as_posix() == "onnxruntime/capi" and file.name.startswith(
            "libonnxruntime.so"
        ):
            path = pathlib.Path(str(file.locate()))
            if file.hash is None or file.hash.mode != "sha256":
                raise RuntimeError(f"{file} has no sha256 in onnxruntime's RECORD")
            digest = hashlib.sha256(path.read_bytes()).digest()
            actual = base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
            if actual != file.hash.value:
                raise RuntimeError(f"{path} does not match onnxruntime's RECORD; reinstall it")
            return path, dist.version
    raise RuntimeError(f"onnxruntime {dist.version} ships no libonnxruntime.so")
