"""Locate (and on first use fetch) the ONNX Runtime C/C++ headers.

opbridge compiles custom-op libraries against ONNX Runtime's public headers only;
it never links ``libonnxruntime``. The onnxruntime wheel ships no headers, so by
default they come from a pinned npm package that carries the ORT 1.29 iOS
framework (whose ``Headers/`` directory is platform independent). The tarball is
checked against a pinned sha512 before anything is extracted.

This module must stay standard-library only: ``setup.py`` imports it by file path
before opbridge (or its dependencies) can be imported.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import tarfile
import tempfile

__all__ = [
    "HeaderError",
    "INCLUDE_DIR_ENV",
    "cache_root",
    "header_api_version",
    "ort_include_dir",
]

#: Environment variable that points at an existing ORT include directory.
INCLUDE_DIR_ENV = "OPBRIDGE_ORT_INCLUDE_DIR"
#: Environment variable that overrides the cache root (default ``~/.cache/opbridge``).
CACHE_DIR_ENV = "OPBRIDGE_CACHE_DIR"

_NPM_PACKAGE = "com.github.asus4.onnxruntime"
_NPM_VERSION = "0.4.9"
_NPM_INTEGRITY = (
    "sha512-"
    "BkzxduSZ9IkeDP6Q8lz2TFU2ie7hSSvS7ZIfzMooExoq0CNzJnuuGaUJ7IsojBgqO4ouD1jXah8OYyJbCN29Fg=="
)
_TAR_PREFIX = (
    "package/Plugins/iOS~/onnxruntime.xcframework/ios-arm64/onnxruntime.framework/Headers/"
)
# Headers a usable include directory must contain.
_REQUIRED = ("onnxruntime_c_api.h", "onnxruntime_cxx_api.h", "onnxruntime_lite_custom_op.h")
_API_VERSION_RE = re.compile(r"^\s*#\s*define\s+ORT_API_VERSION\s+(\d+)\s*$", re.MULTILINE)


class HeaderError(RuntimeError):
    """The ONNX Runtime headers could not be found, fetched or verified."""


def cache_root() -> pathlib.Path:
    """Returns opbridge's cache root (``$OPBRIDGE_CACHE_DIR`` or ``~/.cache/opbridge``)."""
    env = os.environ.get(CACHE_DIR_ENV)
    if env:
        return pathlib.Path(env).expanduser()
    return pathlib.Path.home() / ".cache" / "opbridge"


def header_api_version(include_dir: os.PathLike[str] | str) -> int:
    """Reads ``ORT_API_VERSION`` from ``onnxruntime_c_api.h``.

    Args:
        include_dir: Directory that contains ``onnxruntime_c_api.h``.

    Returns:
        The API version the headers declare (29 for ORT 1.29).

    Raises:
        HeaderError: The header is missing or declares no version.
    """
    header = pathlib.Path(include_dir) / "onnxruntime_c_api.h"
    try:
        text = header.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise HeaderError(f"cannot read {header}: {exc}") from exc
    match = _API_VERSION_RE.search(text)
    if match is None:
        raise HeaderError(f"{header} does not define ORT_API_VERSION")
    return int(match.group(1))


def ort_include_dir() -> pathlib.Path:
    """Returns a directory holding ONNX Runtime's C and C++ API headers.

    ``$OPBRIDGE_ORT_INCLUDE_DIR`` wins when set. Otherwise the pinned npm package is
    fetched once with ``npm pack``, verified and its headers cached under
    ``<cache>/ort-headers/<version>/``; later calls use the cache without network.

    Returns:
        The include directory (contains ``onnxruntime_c_api.h``).

    Raises:
        HeaderError: The override is invalid, npm is missing, the download fails or
            the tarball does not match the pinned integrity.
    """
    env = os.environ.get(INCLUDE_DIR_ENV)
    if env:
        path = pathlib.Path(env).expanduser().resolve()
        if not (path / "onnxruntime_c_api.h").is_file():
            raise HeaderError(
                f"{INCLUDE_DIR_ENV}={env!r} does not contain onnxruntime_c_api.h; point it at "
                "the directory holding the ONNX Runtime headers (or unset it to let opbridge "
                "fetch them)"
            )
        return path

    target = cache_root() / "ort-headers" / _NPM_VERSION
    if _is_complete(target):
        return target
    if target.exists():
        # Damaged or replaced since it was extracted: set it aside and fetch again.
        aside = target.with_name(f".{target.name}-damaged-{os.getpid()}")
        with contextlib.suppress(OSError):
            os.rename(target, aside)
        shutil.rmtree(aside, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    with (
        _progress(f"fetching ONNX Runtime headers ({_NPM_PACKAGE}@{_NPM_VERSION}, about 150 MB)"),
        tempfile.TemporaryDirectory(prefix="opbridge-npm-") as download_dir,
    ):
        tarball = _npm_pack(pathlib.Path(download_dir))
        _check_integrity(tarball)
        # Extract next to the target so the final rename stays on one filesystem.
        staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{_NPM_VERSION}-", dir=target.parent))
        try:
            _extract_headers(tarball, staging)
            try:
                os.rename(staging, target)
            except OSError:
                # Another process finished first; its copy is identical.
                if not _is_complete(target):
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    if not _is_complete(target):
        raise HeaderError(f"header cache {target} is incomplete after extraction")
    return target


_DIGESTS = "opbridge-sha256.json"


def _digests(path: pathlib.Path) -> dict[str, str]:
    return {
        f.name: hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(path.iterdir())
        if f.is_file() and f.name != _DIGESTS
    }


def _progress(message: str) -> contextlib.AbstractContextManager[None]:
    # setup.py loads this file alone, before opbridge is importable: no progress then.
    try:
        from opbridge._progress import progress
    except ImportError:
        return contextlib.nullcontext()
    return progress(message)


def _is_complete(path: pathlib.Path) -> bool:
    """Whether the cache holds every header, each with the digest recorded at extraction.

    A cache from before digests were recorded gets them now (its tarball was checked
    when it was extracted).
    """
    if not all((path / name).is_file() for name in _REQUIRED):
        return False
    try:
        actual = _digests(path)
        recorded_file = path / _DIGESTS
        if not recorded_file.is_file():
            recorded_file.write_text(json.dumps(actual, indent=1))
            return True
        recorded = json.loads(recorded_file.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(recorded, dict) and recorded == actual


def _npm_pack(dest: pathlib.Path) -> pathlib.Path:
    """Downloads the pinned tarball into ``dest`` and returns its path."""
    npm = shutil.which("npm")
    if npm is None:
        raise HeaderError(
            "opbridge needs the ONNX Runtime headers and fetches them with npm, which was not "
            "found on PATH. Install Node.js with npm (e.g. `apt-get install nodejs npm`), or "
            f"set {INCLUDE_DIR_ENV} to a directory containing onnxruntime_c_api.h."
        )
    spec = f"{_NPM_PACKAGE}@{_NPM_VERSION}"
    try:
        proc = subprocess.run(
            [npm, "pack", spec, "--json", "--silent"],
            cwd=dest,
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise HeaderError(f"`npm pack {spec}` failed: {exc}") from exc
    if proc.returncode != 0:
        raise HeaderError(
            f"`npm pack {spec}` failed (exit {proc.returncode}); set {INCLUDE_DIR_ENV} to use "
            f"local headers instead.\n{proc.stderr.strip()}"
        )
    try:
        filename = json.loads(proc.stdout)[0]["filename"]
    except (ValueError, LookupError, TypeError):
        tarballs = list(dest.glob("*.tgz"))
        if len(tarballs) != 1:
            raise HeaderError(f"`npm pack {spec}` produced no tarball") from None
        return tarballs[0]
    return dest / filename


def _check_integrity(tarball: pathlib.Path) -> None:
    digest = hashlib.sha512()
    with open(tarball, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    actual = "sha512-" + base64.b64encode(digest.digest()).decode("ascii")
    if actual != _NPM_INTEGRITY:
        raise HeaderError(
            f"integrity check failed for {_NPM_PACKAGE}@{_NPM_VERSION}: expected "
            f"{_NPM_INTEGRITY}, got {actual}; refusing to use these headers"
        )


def _extract_headers(tarball: pathlib.Path, dest: pathlib.Path) -> None:
    """Copies the regular files directly under the headers prefix into ``dest``."""
    count = 0
    with tarfile.open(tarball, "r:gz") as archive:
        for member in archive:
            if not member.name.startswith(_TAR_PREFIX) or not member.isfile():
                continue
            name = member.name[len(_TAR_PREFIX) :]
            # Flat directory of headers only; never follow paths out of dest.
            if not name or "/" in name or name in (".", ".."):
                continue
            source = archive.extractfile(member)
            if source is None:
                continue
            with source, open(dest / name, "wb") as out:
                shutil.copyfileobj(source, out)
            count += 1
    if count == 0:
        raise HeaderError(f"no headers under {_TAR_PREFIX} in {tarball.name}")
    missing = [name for name in _REQUIRED if not (dest / name).is_file()]
    if missing:
        raise HeaderError(f"{tarball.name} lacks {', '.join(missing)}")
    (dest / _DIGESTS).write_text(json.dumps(_digests(dest), indent=1))
