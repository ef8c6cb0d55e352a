"""``opbridge verify``: export, run in ONNX Runtime, compare with PyTorch."""

from __future__ import annotations

import argparse

from opbridge.cli._common import add_model_arguments, load_model
from opbridge.cli._output import say

__all__ = ["register"]


def _run(args: argparse.Namespace) -> int:
    import opbridge

    model, inputs = load_model(args)
    report = opbridge.verify(
        model,
        inputs,
        exporter=args.exporter,
        rtol=args.rtol,
        atol=args.atol,
        opset_version=args.opset,
        contrib_ops=args.contrib_ops,
        localize=args.localize,
        random_inputs=args.random_inputs,
        seed=args.seed,
        f=args.output,
    )
    say(str(report))  # verify() shows its own progress
    if args.html:
        report.save_html(args.html)
        say(f"report written to {args.html}")
    return 0 if report.passed else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "verify", help="check that ONNX Runtime and PyTorch agree on MODULE:FACTORY"
    )
    add_model_arguments(parser)
    parser.add_argument("--rtol", type=float, default=None, help="default: by dtype")
    parser.add_argument("--atol", type=float, default=None, help="default: by dtype")
    parser.add_argument("-o", "--output", help="also save the exported model here")
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--localize",
        dest="localize",
        action="store_true",
        default=None,
        help="find the first node where ONNX Runtime and PyTorch part (default: when it fails)",
    )
    where.add_argument(
        "--no-localize", dest="localize", action="store_false", help="never localise"
    )
    parser.add_argument(
        "--random-inputs",
        type=int,
        default=0,
        metavar="N",
        help="also check N random input sets shaped like the example inputs (--seed)",
    )
    parser.add_argument("--html", metavar="PATH", help="also write the report as one HTML page")
    parser.set_defaults(func=_run)
