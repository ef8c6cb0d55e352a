"""``opbridge verify``: export, run in ONNX Runtime, compare with PyTorch."""

from __future__ import annotations

import argparse

from opbridge.cli._common import add_model_arguments, load_model

__all__ = ["register"]


def _run(args: argparse.Namespace) -> int:
    import opbridge

    model, inputs = load_model(args)
    report = opbridge.verify(
        model, inputs, exporter=args.exporter, rtol=args.rtol, atol=args.atol,
        opset_version=args.opset, contrib_ops=args.contrib_ops,
    )  # fmt: skip
    print(report)
    if args.output:
        import onnx

        onnx.save(report.model, args.output)
    return 0 if report.passed else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "verify", help="check that ONNX Runtime and PyTorch agree on MODULE:FACTORY"
    )
    add_model_arguments(parser)
    parser.add_argument("--rtol", type=float, default=None, help="default: by dtype")
    parser.add_argument("--atol", type=float, default=None, help="default: by dtype")
    parser.add_argument("-o", "--output", help="also save the exported model here")
    parser.set_defaults(func=_run)
