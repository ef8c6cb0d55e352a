"""``opbridge build``: compile a custom-op library from C++ sources and print its path."""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from opbridge.cli._output import say, stderr

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds the ``build`` sub-command to the opbridge CLI.

    Args:
        subparsers: The object returned by ``ArgumentParser.add_subparsers``.
    """
    parser = subparsers.add_parser(
        "build",
        help="compile an ONNX Runtime custom-op library from C++ sources",
        description=(
            "Compile C++ kernels written against <opbridge/ort_kernel.h> into a shared "
            "library that any ONNX Runtime can load with register_custom_ops_library "
            "(Python, or the C/C++ API's RegisterCustomOpsLibrary). Builds are cached; with "
            "-o DIR the library is also copied to DIR/libNAME.so, ready to deploy. The "
            "library path is printed on stdout."
        ),
    )
    parser.add_argument("name", help="library name (letters, digits, '_', '.', '-')")
    parser.add_argument("sources", nargs="+", help="C++ source files")
    parser.add_argument(
        "-I",
        dest="include_dirs",
        action="append",
        default=[],
        metavar="DIR",
        help="add an include directory (repeatable)",
    )
    parser.add_argument(
        "--cflag",
        dest="cflags",
        action="append",
        default=[],
        metavar="FLAG",
        help="extra compiler flag, e.g. --cflag=-march=native (repeatable)",
    )
    parser.add_argument(
        "--ldflag",
        dest="ldflags",
        action="append",
        default=[],
        metavar="FLAG",
        help="extra linker flag, e.g. --ldflag=-lm (repeatable)",
    )
    parser.add_argument(
        "-o",
        "--output-dir",
        metavar="DIR",
        help="copy the library to DIR/libNAME.so (created if needed) and print that path",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="print compiler commands and output"
    )
    parser.set_defaults(func=_handler)


def _handler(args: argparse.Namespace) -> int:
    # Imported here so `opbridge --help` does not pay for the native package.
    from opbridge.native import BuildError, build_library

    try:
        path = build_library(
            args.name,
            args.sources,
            include_dirs=args.include_dirs,
            extra_cflags=args.cflags,
            extra_ldflags=args.ldflags,
            verbose=args.verbose,
        )
    except BuildError as exc:
        # The CLI's error line is a one-line summary; the compiler's own diagnostics
        # (every file:line) go to stderr first. With -v they were already shown.
        if exc.compiler_output and not args.verbose:
            stderr().print(exc.compiler_output)
        raise
    if args.output_dir:
        path = _install(path, Path(args.output_dir) / f"lib{args.name}.so")
    say(str(path))
    return 0


def _install(library: Path, target: Path) -> Path:
    """Copies ``library`` to ``target`` atomically (a running process may have it loaded)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    try:
        shutil.copy2(library, tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target.resolve()
