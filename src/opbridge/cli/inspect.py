"""``opbridge inspect``: domains, custom nodes and where their kernels come from."""

from __future__ import annotations

import argparse
import collections
from typing import Any

from opbridge.cli._common import NO_KERNEL_HINT, add_library_arguments, libraries, read_model
from opbridge.cli._output import print_table, say

__all__ = ["register"]


def _run(args: argparse.Namespace) -> int:
    from opbridge.runtime._plan import custom_nodes, plan_kernels
    from opbridge.runtime._session import kernel_provider

    model = read_model(args.model)  # the graph only: no weights read
    say(
        f"{args.model}: IR {model.ir_version}, producer {model.producer_name} "
        f"{model.producer_version}".rstrip(),
        "opsets: " + ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in model.opset_import),
    )
    counts = collections.Counter(n.domain or "ai.onnx" for n in model.graph.node)
    say("nodes by domain: " + ", ".join(f"{d} {c}" for d, c in sorted(counts.items())))
    if model.functions:
        say("functions: " + ", ".join(f"{f.domain}::{f.name}" for f in model.functions))
    nodes = custom_nodes(model)
    _print_fallback(model, nodes)
    if not nodes:
        say("custom nodes: none (ONNX Runtime runs this model as is)")
        return 0
    plan = plan_kernels(model, libraries=libraries(args))
    route = None
    if plan.specs:
        try:
            route = kernel_provider().name
        except Exception as e:
            route = f"unavailable: {e}"
    rows = []
    for key, found in sorted(nodes.items()):
        source = plan.sources[key]
        where = {
            "python": f"Python kernel ({source.detail}) via {route}",
            "native": f"native library {source.detail}",
            "user-library": f"one of {source.detail}",
            "missing": "NO KERNEL",
        }
        rows.append([key, str(len(found)), where[source.provider]])
    print_table(["custom node", "count", "kernel"], rows)
    if plan.missing:
        say(f"{len(plan.missing)} custom node type(s) have no kernel. {NO_KERNEL_HINT}")
    return 1 if plan.missing else 0


def _print_fallback(model: Any, nodes: dict[str, list[Any]]) -> None:
    """Lists the torch ops written with ``fallback="torch"``, with their node counts."""
    from opbridge.declaration._adopt import FALLBACK_DOMAIN, recorded_fallbacks

    metadata = {p.key: p.value for p in model.metadata_props}
    recorded = recorded_fallbacks(metadata)
    counts = {
        key.split("::", 1)[1]: len(found)
        for key, found in nodes.items()
        if key.startswith(FALLBACK_DOMAIN + "::")
    }
    if not counts:
        return
    total = sum(counts.values())
    print(
        f"torch fallback: {total} node{'s' if total != 1 else ''} run torch kernels "
        f"({FALLBACK_DOMAIN}, needs Python and torch at run time):"
    )
    for op_type, count in sorted(counts.items()):
        print(f"  {recorded.get(op_type, op_type + ' (unrecorded)')} x{count}")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "inspect", help="list a model's domains, custom nodes and which have kernels"
    )
    parser.add_argument("model", help="the .onnx file")
    add_library_arguments(parser)
    parser.set_defaults(func=_run)
