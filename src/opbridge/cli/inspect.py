"""``opbridge inspect``: domains, custom nodes and where their kernels come from."""

from __future__ import annotations

import argparse
import collections
import os

__all__ = ["register"]


def _run(args: argparse.Namespace) -> int:

    from opbridge.runtime._plan import custom_nodes, plan_kernels
    from opbridge.runtime._session import kernel_provider, read_model_graph

    model = read_model_graph(args.model)  # the graph only: no weights read
    print(
        f"{args.model}: IR {model.ir_version}, producer {model.producer_name} "
        f"{model.producer_version}".rstrip()
    )
    print(
        "opsets: " + ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in model.opset_import)
    )
    counts = collections.Counter(n.domain or "ai.onnx" for n in model.graph.node)
    print("nodes by domain: " + ", ".join(f"{d} {c}" for d, c in sorted(counts.items())))
    if model.functions:
        print("functions: " + ", ".join(f"{f.domain}::{f.name}" for f in model.functions))
    nodes = custom_nodes(model)
    if not nodes:
        print("custom nodes: none (ONNX Runtime runs this model as is)")
        return 0
    plan = plan_kernels(model, libraries=args.library)
    route = None
    if plan.specs:
        try:
            route = kernel_provider().name
        except Exception as e:
            route = f"unavailable: {e}"
    print("custom nodes:")
    for key, found in sorted(nodes.items()):
        source = plan.sources[key]
        where = {
            "python": f"Python kernel ({source.detail}) via {route}",
            "native": f"native library {source.detail}",
            "user-library": f"one of {source.detail}",
            "missing": "NO KERNEL: declare it with opbridge.custom_op or pass --library",
        }
        print(f"  {key} x{len(found)}: {where[source.provider]}")
    return 1 if plan.missing else 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "inspect", help="list a model's domains, custom nodes and which have kernels"
    )
    parser.add_argument("model", help="the .onnx file")
    parser.add_argument(
        "--library",
        action="append",
        default=[],
        help="a C++ custom-op library the model will run with (repeatable)",
    )
    parser.set_defaults(func=_run)
