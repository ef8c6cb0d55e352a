"""Compile ONNX Runtime custom-op libraries with the system C++ compiler, with a cache.

The compiler is invoked directly (no CMake): each source becomes an object file, then
one shared library is linked. Libraries never link ``libonnxruntime``; they receive the
API table from whichever ONNX Runtime loads them (see ``opbridge/ort_kernel.h``).

Cache layout, under ``$OPBRIDGE_CACHE_DIR/build`` (default ``~/.cache/opbridge/build``)::

    <name>-<key>/manifest.json      headers the last build read, with their hashes
    <name>-<key>/lib<name>-<full>.so

``key`` hashes the builder version, compiler identity, flags, ORT API version and the
sources' contents; ``full`` additionally hashes every header the compiler reported
reading (``-MMD``), so editing an included header produces a new library file instead
of silently reusing a stale one. Library files are written under a temporary name and
renamed into place, and a lock file serialises builds of the same key, so concurrent
processes are safe and an already loaded library is never overwritten.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence

from opbridge._progress import progress

from . import _headers

__all__ = ["BuildError", "build_library", "build_stats", "load_inline"]

# Bump when the layout or the flags change in a way the key would not capture.
_BUILDER_VERSION = "1"
_BASE_FLAGS = (
    "-O3",
    "-shared",
    "-fPIC",
    "-fvisibility=hidden",
    "-fvisibility-inlines-hidden",
    "-std=c++17",
    "-DORT_API_MANUAL_INIT",
)
# RegisterCustomOps is the only symbol ORT needs; everything else stays local so two
# libraries (or two builds of one) never interpose each other's inline functions.
_VERSION_SCRIPT = "{ global: RegisterCustomOps; local: *; };\n"
# A diagnostic line worth a one-line summary: "file:line:col: error: ..." or a link error.
_ERROR_LINE = re.compile(r"(\berror\b|undefined reference)", re.IGNORECASE)
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,99}")  # whole name: fullmatch
_INCLUDE_DIR = pathlib.Path(__file__).resolve().parent / "include"


class BuildError(RuntimeError):
    """A native library could not be built (compiler missing, compile or link error).

    The first line of the message is a one-line summary (for a compile error, the
    compiler's first ``file:line:col: error:`` line); the compiler's full output follows
    and is also available as :attr:`compiler_output`.

    Attributes:
        compiler_output: The compiler's or linker's stderr, empty when none ran.
    """

    def __init__(self, message: str, compiler_output: str = "") -> None:
        super().__init__(message)
        self.compiler_output = compiler_output


@dataclasses.dataclass
class BuildStats:
    """Counters for this process, used by tests and ``verbose`` output.

    Attributes:
        compiles: Number of compiler runs that produced a library.
        hits: Number of requests answered from the cache.
    """

    compiles: int = 0
    hits: int = 0


_STATS = BuildStats()
_STATS_LOCK = threading.Lock()
_COMPILER_IDS: dict[tuple[str, float], str] = {}


def build_stats() -> BuildStats:
    """Returns a snapshot of this process's build counters."""
    with _STATS_LOCK:
        return dataclasses.replace(_STATS)


def build_library(
    name: str,
    sources: Sequence[os.PathLike[str] | str],
    *,
    include_dirs: Iterable[os.PathLike[str] | str] = (),
    extra_cflags: Iterable[str] = (),
    extra_ldflags: Iterable[str] = (),
    verbose: bool = False,
) -> pathlib.Path:
    """Builds (or finds in the cache) an ONNX Runtime custom-op shared library.

    The sources are compiled with ``-O3 -shared -fPIC -fvisibility=hidden -std=c++17
    -DORT_API_MANUAL_INIT`` against the ONNX Runtime headers (see
    :func:`opbridge.native.ort_include_dir`) and opbridge's ``opbridge/ort_kernel.h``.
    Only ``RegisterCustomOps`` is exported and the link fails if it is missing or if
    anything would need ``libonnxruntime``.

    Args:
        name: Library name (letters, digits, ``_.-``); the file is ``lib<name>-<hash>.so``.
        sources: C++ source files.
        include_dirs: Extra ``-I`` directories.
        extra_cflags: Extra compiler flags (part of the cache key).
        extra_ldflags: Extra linker flags, e.g. ``-lm`` (part of the cache key).
        verbose: Print the compiler commands and cache decisions to stderr.

    Returns:
        Path of the shared library, ready for ``register_custom_ops_library``.

    Raises:
        BuildError: Bad arguments, no compiler, missing headers, or a compile/link
            error (the message contains the compiler's own diagnostics).
    """
    if not sys.platform.startswith("linux"):
        # The flags below (-z defs, --version-script, --require-defined) are GNU ld's.
        raise BuildError(f"opbridge builds native libraries on Linux only, not {sys.platform}")
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise BuildError(f"invalid library name {name!r}: use letters, digits, '_', '.', '-'")
    srcs = [pathlib.Path(s).expanduser().resolve() for s in sources]
    if not srcs:
        raise BuildError(f"{name}: no sources given")
    for src in srcs:
        if not src.is_file():
            raise BuildError(f"{name}: source file not found: {src}")
    cxx = _find_compiler()
    try:
        ort_dir = _headers.ort_include_dir()
        api_version = _headers.header_api_version(ort_dir)
    except _headers.HeaderError as exc:
        raise BuildError(f"{name}: {exc}") from exc
    user_dirs = [pathlib.Path(d).expanduser().resolve() for d in include_dirs]
    includes = [_INCLUDE_DIR, ort_dir, *user_dirs]
    cflags = [*_BASE_FLAGS, *(f"-I{d}" for d in includes), *extra_cflags]
    ldflags = ["-Wl,-z,defs", "-Wl,--require-defined=RegisterCustomOps", *extra_ldflags]

    key_hash = hashlib.sha256()
    for part in (
        _BUILDER_VERSION,
        name,
        _compiler_id(cxx),
        f"ORT_API_VERSION={api_version}",
        *cflags,
        "--",
        *ldflags,
    ):
        _update(key_hash, part.encode())
    for src in srcs:
        _update(key_hash, str(src).encode())
        _update(key_hash, src.read_bytes())
    key = key_hash.hexdigest()[:20]

    entry = _build_root() / f"{name}-{key}"
    entry.mkdir(parents=True, exist_ok=True)
    cached = _lookup(entry, name, key)
    if cached is not None:
        _count(hit=True)
        if verbose:
            print(f"opbridge: {name}: cache hit {cached}", file=sys.stderr)
        return cached
    with _file_lock(entry / ".lock"):
        # Another process may have finished the same build while we waited.
        cached = _lookup(entry, name, key)
        if cached is not None:
            _count(hit=True)
            return cached
        path = _compile(name, key, entry, cxx, srcs, cflags, ldflags, verbose)
    _count(hit=False)
    return path


def load_inline(
    name: str,
    cpp_source: str,
    *,
    include_dirs: Iterable[os.PathLike[str] | str] = (),
    extra_cflags: Iterable[str] = (),
    extra_ldflags: Iterable[str] = (),
    verbose: bool = False,
) -> pathlib.Path:
    """Builds a custom-op library from C++ source text.

    The text is written to ``<cache>/build/inline/<name>-<hash>.cc`` (so compiler
    diagnostics point at a real file and line) and passed to :func:`build_library`.

    Args:
        name: Library name.
        cpp_source: C++ source; include ``<opbridge/ort_kernel.h>`` and end with an
            ``OPBRIDGE_REGISTER_OPS`` list.
        include_dirs: Extra ``-I`` directories.
        extra_cflags: Extra compiler flags.
        extra_ldflags: Extra linker flags.
        verbose: Print the compiler commands to stderr.

    Returns:
        Path of the shared library.

    Raises:
        BuildError: As for :func:`build_library`.
    """
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise BuildError(f"invalid library name {name!r}: use letters, digits, '_', '.', '-'")
    data = cpp_source.encode()
    digest = hashlib.sha256(data).hexdigest()[:16]
    src = _build_root() / "inline" / f"{name}-{digest}.cc"
    if not src.is_file() or src.read_bytes() != data:
        _atomic_write(src, data)
    return build_library(
        name,
        [src],
        include_dirs=include_dirs,
        extra_cflags=extra_cflags,
        extra_ldflags=extra_ldflags,
        verbose=verbose,
    )


def _build_root() -> pathlib.Path:
    return _headers.cache_root() / "build"


def _update(digest: hashlib._Hash, data: bytes) -> None:
    # Length-prefix every field so ("ab", "c") and ("a", "bc") hash differently.
    digest.update(len(data).to_bytes(8, "little"))
    digest.update(data)


def _count(*, hit: bool) -> None:
    with _STATS_LOCK:
        if hit:
            _STATS.hits += 1
        else:
            _STATS.compiles += 1


def _find_compiler() -> list[str]:
    """The compiler command: ``$CXX`` split like a shell would (``"g++ -DX"`` keeps -DX)."""
    requested = os.environ.get("CXX", "g++")
    argv = shlex.split(requested)
    found = shutil.which(argv[0]) if argv else None
    if found is None:
        raise BuildError(
            f"C++ compiler {requested!r} not found; install g++ (e.g. `apt-get install g++` "
            "or `dnf install gcc-c++`) or set CXX to a C++17 compiler"
        )
    return [found, *argv[1:]]


def _compiler_id(cxx: list[str]) -> str:
    """Returns the compiler's command and ``--version`` banner (memoised per binary)."""
    stat = os.stat(cxx[0])
    cache_key = (" ".join(cxx), stat.st_mtime)
    if cache_key not in _COMPILER_IDS:
        proc = subprocess.run(
            [*cxx, "--version"], capture_output=True, text=True, check=False, timeout=60
        )
        if proc.returncode != 0:
            raise BuildError(f"`{' '.join(cxx)} --version` failed: {proc.stderr.strip()}")
        _COMPILER_IDS[cache_key] = f"{shlex.join(cxx)}\n{proc.stdout.strip()}"
    return _COMPILER_IDS[cache_key]


def _hash_files(key: str, paths: Iterable[str]) -> str | None:
    """Hashes ``key`` and the files' contents in order; ``None`` if one is unreadable."""
    digest = hashlib.sha256()
    _update(digest, key.encode())
    for path in paths:
        try:
            data = pathlib.Path(path).read_bytes()
        except OSError:
            return None
        _update(digest, path.encode())
        _update(digest, data)
    return digest.hexdigest()[:20]


def _lookup(entry: pathlib.Path, name: str, key: str) -> pathlib.Path | None:
    """Returns the cached library if the manifest's headers are unchanged."""
    try:
        manifest = json.loads((entry / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("key") != key:
        return None
    deps = manifest.get("deps")
    if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
        return None
    full = _hash_files(key, deps)
    if full is None:
        return None
    path = entry / f"lib{name}-{full}.so"
    # The library's own digest, recorded at build: a truncated copy (disk full, an
    # interrupted copy) would crash the process when loaded, and a replaced file
    # would run someone else's code. Either is rebuilt.
    recorded = manifest.get("library_sha256")
    try:
        actual = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None
    return path if recorded == actual else None


@contextlib.contextmanager
def _file_lock(path: pathlib.Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX; builds may then run twice.
        yield
        return
    with open(path, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _atomic_write(path: pathlib.Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; cache files are not secrets
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _run(cmd: list[str], name: str, verbose: bool) -> None:
    if verbose:
        print("opbridge: " + shlex.join(cmd), file=sys.stderr, flush=True)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise BuildError(f"{name}: could not run {cmd[0]}: {exc}") from exc
    if verbose and proc.stderr:
        print(proc.stderr, end="", file=sys.stderr)
    if proc.returncode != 0:
        output = proc.stderr.strip()
        if "RegisterCustomOps" in output:
            summary = (
                "the library does not define RegisterCustomOps: add a registration list, "
                "OPBRIDGE_REGISTER_OPS(ops) { ... } (from <opbridge/ort_kernel.h>)"
            )
        else:
            summary = next(
                (line for line in output.splitlines() if _ERROR_LINE.search(line)),
                f"build failed ({cmd[0]} exited with {proc.returncode})",
            )
        raise BuildError(f"{name}: {summary}\n{output}", compiler_output=output)


def _parse_depfile(text: str) -> list[str]:
    """Returns the prerequisites of a make-style depfile written by ``-MMD``."""
    body = text.replace("\\\n", " ")
    _, _, prereqs = body.partition(": ")
    deps: list[str] = []
    for line in prereqs.splitlines():
        # Phony targets (-MP) would appear as "header.h:" lines; -MP is not used.
        tokens = re.findall(r"(?:\\ |[^\s])+", line)
        # make's escapes: "\ " for a space, "$$" for "$", "\#" for "#".
        deps.extend(
            tok.replace("\\ ", " ").replace("$$", "$").replace("\\#", "#") for tok in tokens
        )
    return deps


def _compile(
    name: str,
    key: str,
    entry: pathlib.Path,
    cxx: list[str],
    srcs: list[pathlib.Path],
    cflags: list[str],
    ldflags: list[str],
    verbose: bool,
) -> pathlib.Path:
    # Shown only when the build takes over a second (a spinner on a terminal).
    with progress(f"building {name}"):
        with tempfile.TemporaryDirectory(prefix=".tmp-", dir=entry) as tmp_dir:
            tmp = pathlib.Path(tmp_dir)
            objects = []
            deps: set[str] = set()
            for index, src in enumerate(srcs):
                obj = tmp / f"{index}-{src.stem}.o"
                depfile = obj.with_suffix(".d")
                _run(
                    [*cxx, *cflags, "-MMD", "-MF", str(depfile), "-c", str(src), "-o", str(obj)],
                    name,
                    verbose,
                )
                deps.update(_parse_depfile(depfile.read_text()))
                objects.append(str(obj))
            version_script = tmp / "exports.map"
            version_script.write_text(_VERSION_SCRIPT)
            out = tmp / f"lib{name}.so"
            _run(
                [
                    *cxx,
                    *cflags,
                    *objects,
                    f"-Wl,--version-script={version_script}",
                    *ldflags,
                    "-o",
                    str(out),
                ],
                name,
                verbose,
            )
            dep_list = sorted(str(pathlib.Path(d).resolve()) for d in deps)
            full = _hash_files(key, dep_list)
            if full is None:
                raise BuildError(f"{name}: a header changed or vanished during the build")
            final = entry / f"lib{name}-{full}.so"
            os.replace(out, final)
            manifest = {
                "key": key,
                "deps": dep_list,
                "library_sha256": hashlib.sha256(final.read_bytes()).hexdigest(),
            }
            _atomic_write(entry / "manifest.json", json.dumps(manifest, indent=1).encode())
        return final
