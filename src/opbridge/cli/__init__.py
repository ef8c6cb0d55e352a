"""The ``opbridge`` command line: export, run, verify, inspect, build, demo.

Each sub-command lives in its own module with ``register(subparsers)``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from collections.abc import Sequence

__all__ = ["main"]

_COMMANDS = ("export", "verify", "run", "inspect", "build", "demo")


def _version() -> str:
    from opbridge import __version__

    return __version__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="opbridge",
        description="Declare PyTorch custom ops once; export to ONNX, run in ONNX Runtime, verify.",
    )
    parser.add_argument(
        "--import", dest="imports", action="append", default=[], metavar="MODULE",
        help="import a module (or a .py file) that declares ops before the command runs; "
        "repeatable",
    )  # fmt: skip
    parser.add_argument("--traceback", action="store_true", help="show the full traceback on error")
    parser.add_argument("--version", action="version", version=f"opbridge {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _COMMANDS:
        module = importlib.import_module(f"opbridge.cli.{name}")
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        from opbridge.cli._common import import_target

        for module in args.imports:
            import_target(module)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("opbridge: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if args.traceback:
            traceback.print_exc()
        from opbridge._errors import OpbridgeError

        text = str(e).strip()
        # opbridge's own messages are written for the user (a list of ops and fixes may
        # take several lines); other exceptions show their first line.
        message = (text if isinstance(e, OpbridgeError) else text.splitlines()[0]) if text else ""
        message = message or type(e).__name__
        print(f"opbridge {args.command}: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
