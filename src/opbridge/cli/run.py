"""``opbridge run``: run an ONNX model with its custom-op kernels."""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
from onnx import helper

from opbridge._errors import SessionError
from opbridge.cli._common import (
    NO_KERNEL_HINT,
    CliError,
    add_library_arguments,
    libraries,
    parse_shape,
    random_array,
    read_model,
)
from opbridge.cli._output import print_table, say

__all__ = ["register"]


def _run(args: argparse.Namespace) -> int:
    import opbridge

    graph_inputs = {i.name: i for i in _graph_inputs(args.model)}  # checks the file first
    try:
        session = opbridge.Session(args.model, libraries=libraries(args))
    except SessionError as e:
        if "No kernel for custom op" not in str(e):
            raise
        raise CliError(f"{e} {NO_KERNEL_HINT}") from e
    rng = np.random.default_rng(args.seed)
    if args.inputs:
        with np.load(args.inputs) as data:
            feeds = {name: data[name] for name in session.input_names if name in data}
        missing = [n for n in session.input_names if n not in feeds]
        if missing:
            raise CliError(f"{args.inputs} lacks inputs {missing}")
    else:
        shapes = [parse_shape(s) for s in args.input_shape]
        feeds = {}
        for k, name in enumerate(session.input_names):
            t = graph_inputs[name].type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
            if k < len(shapes):
                shape = shapes[k]
            elif any(d is None for d in dims):
                raise CliError(f"input '{name}' has symbolic dims {dims}: give --input-shape")
            else:
                shape = tuple(d for d in dims if d is not None)
            feeds[name] = random_array(shape, helper.tensor_dtype_to_np_dtype(t.elem_type), rng)
    say(str(session))
    outputs = session.run(feeds)
    rows = []
    for name, value in zip(session.output_names, outputs, strict=False):
        stats = ["", "", ""]
        if value.dtype.kind in "fiu" and value.size:
            stats = [f"{value.min():.4g}", f"{value.max():.4g}", f"{value.mean():.4g}"]
        rows.append([name, f"{value.dtype.name}{list(value.shape)}", *stats])
    print_table(["output", "type", "min", "max", "mean"], rows)
    if args.output:
        arrays: dict[str, Any] = dict(zip(session.output_names, outputs, strict=False))
        np.savez(args.output, **arrays)
    return 0


def _graph_inputs(path: str) -> list:  # type: ignore[type-arg]
    model = read_model(path)  # the graph only: no weights read
    initializers = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initializers]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("run", help="run an ONNX model with random or given inputs")
    parser.add_argument("model", help="the .onnx file")
    parser.add_argument(
        "--input-shape",
        action="append",
        default=[],
        metavar="SHAPE",
        help="shape of each input whose dims are symbolic (repeat per input)",
    )
    parser.add_argument("--inputs", help="an .npz file with an array per input name")
    add_library_arguments(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--output", help="save the outputs to this .npz file")
    parser.set_defaults(func=_run)
