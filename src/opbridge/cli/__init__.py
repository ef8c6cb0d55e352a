"""The ``opbridge`` command line: export, run, verify, inspect, build, demo.

Each sub-command lives in its own module with ``register(subparsers)``; terminal
output goes through :mod:`opbridge.cli._output` (rich).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from collections.abc import Sequence

__all__ = ["main"]

_COMMANDS = ("export", "verify", "run", "inspect", "build", "demo")
# Distributions whose versions `opbridge --version` reports, in this order.
_STACK = ("torch", "onnx", "onnxscript", "onnx-ir", "onnxruntime", "numpy")


def _version() -> str:
    """``opbridge X (Python Y, torch Z, ...)``, read from metadata without importing torch."""
    from importlib import metadata

    from opbridge import __version__

    parts = [f"Python {sys.version.split()[0]}"]
    for dist in _STACK:
        try:
            parts.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{dist} not installed")
    return f"opbridge {__version__} ({', '.join(parts)})"


class _ShowVersion(argparse.Action):
    """``--version`` on one line, unwrapped (argparse's own action wraps it)."""

    def __init__(
        self, option_strings: Sequence[str], dest: str, help: str | None = None, **_: object
    ) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        print(_version())
        parser.exit()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="opbridge",
        description="Declare PyTorch custom ops once; export to ONNX, run in ONNX Runtime, verify.",
    )
    parser.add_argument(
        "--import", dest="imports", action="append", default=[], metavar="MODULE",
        help="import a module (or a .py file) that declares ops before the command runs; "
        "repeatable, accepted anywhere on the command line",
    )  # fmt: skip
    parser.add_argument(
        "--traceback", action="store_true", help="show the full traceback on error (anywhere)"
    )
    parser.add_argument(
        "--version", action=_ShowVersion, help="show opbridge's version and its stack's, then exit"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _COMMANDS:
        module = importlib.import_module(f"opbridge.cli.{name}")
        module.register(subparsers)
    return parser


def _global_options(argv: Sequence[str]) -> tuple[list[str], list[str], bool]:
    """Takes ``--import MODULE`` / ``--import=MODULE`` and ``--traceback`` from anywhere.

    Returns:
        The remaining arguments, the imports in order, and whether ``--traceback`` was given.
    """
    rest: list[str] = []
    imports: list[str] = []
    show_traceback = False
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":  # everything after it belongs to the command
            rest.extend(args[i:])
            break
        if arg == "--import" and i + 1 < len(args):
            imports.append(args[i + 1])
            i += 2
            continue
        if arg.startswith("--import="):
            imports.append(arg.partition("=")[2])
        elif arg == "--traceback":
            show_traceback = True
        else:
            rest.append(arg)
        i += 1
    return rest, imports, show_traceback


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit code."""
    from opbridge._quiet import torch_noise_filtered
    from opbridge.cli import _output

    rest, imports, show_traceback = _global_options(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(rest)
    args.imports = [*imports, *args.imports]
    args.traceback = show_traceback or args.traceback
    try:
        from opbridge.cli._common import CliError, import_target

        with torch_noise_filtered():
            for module in args.imports:
                try:
                    import_target(module)
                except CliError as e:
                    raise CliError(f"--import {module}: {e}") from e
            return int(args.func(args) or 0)
    except KeyboardInterrupt:
        _output.error(args.command, "interrupted")
        return 130
    except Exception as e:
        if args.traceback:
            traceback.print_exc()
        from opbridge._errors import OpbridgeError

        text = str(e).strip()
        # opbridge's own messages are written for the user (a list of ops and fixes may
        # take several lines); other exceptions show their first line.
        message = (text if isinstance(e, OpbridgeError) else text.splitlines()[0]) if text else ""
        _output.error(args.command, message or type(e).__name__)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
