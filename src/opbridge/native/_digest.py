"""The digest of the shipped kernels' sources, shared by ``setup.py`` and the runtime.

``setup.py`` writes it next to the library it prebuilds; :func:`opbridge.library_path`
uses that library only while the sources still hash the same, so an edited kernel in a
source checkout is rebuilt instead of silently ignored. Standard library only:
``setup.py`` imports this file by path.
"""

from __future__ import annotations

import hashlib
import pathlib

__all__ = ["kernel_sources_digest"]

# Relative to the ``opbridge/native`` directory; sorted globs, so the order is stable.
_PATTERNS = ("kernels/*.cc", "kernels/*.h", "kernels/exports.map", "include/opbridge/*.h")


def kernel_sources_digest(native_dir: pathlib.Path) -> str:
    """Returns the sha256 over the shipped kernels' sources and opbridge's own header."""
    digest = hashlib.sha256()
    for pattern in _PATTERNS:
        for path in sorted(native_dir.glob(pattern)):
            data = path.read_bytes()
            for field in (path.relative_to(native_dir).as_posix().encode(), data):
                digest.update(len(field).to_bytes(8, "little"))
                digest.update(field)
    return digest.hexdigest()
