"""``opbridge export``: export a model to ONNX."""

from __future__ import annotations

import argparse

from opbridge._progress import progress
from opbridge.cli._common import add_model_arguments, load_model
from opbridge.cli._output import say

__all__ = ["register"]


def _run(args: argparse.Namespace) -> int:
    import opbridge

    model, inputs = load_model(args)
    with progress(f"exporting {args.target} with the {args.exporter} exporter"):
        proto = opbridge.export(
            model, inputs, args.output, exporter=args.exporter, opset_version=args.opset,
            contrib_ops=args.contrib_ops, fallback=args.fallback,
        )  # fmt: skip
    custom = sorted({f"{n.domain}::{n.op_type}" for n in proto.graph.node if n.domain})
    say(
        f"wrote {args.output}: {len(proto.graph.node)} nodes"
        + (f", custom: {', '.join(custom)}" if custom else "")
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help="export MODULE:FACTORY to an ONNX file")
    add_model_arguments(parser)
    parser.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    parser.add_argument(
        "--fallback",
        choices=("torch",),
        default=None,
        help="write ops nothing else can write as opbridge.torch nodes run by their torch "
        "kernel (needs Python and torch at run time)",
    )
    parser.set_defaults(func=_run)
