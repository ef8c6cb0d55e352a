"""Element types of a model's values, without whole-model shape inference.

Exporters write the type of every value they create (onnx-ir ``Value.dtype``), so
the runtime reads types from the model itself. Only where a caller needs the type
of a value the model leaves untyped is anything inferred, node by node: the
value's producer is typed from its own inputs by ONNX's inference for that one
node (standard ops by ONNX's rules, declared ops by the schema opbridge registers
for them, which runs their fake implementation), walking back through producers
only as long as their inputs are untyped too. Nothing else of the model is
touched, and no weight is read.

Best effort: a value whose producer has no schema in this process (a custom op
that is not declared, a call of a local function) or whose inference fails stays
untyped, and callers leave such values to ONNX Runtime. Inferred types are written
onto the values (``Value.dtype``/``Value.shape``), as an exporter would have.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import onnx
import onnx_ir as ir

from opbridge._model import read_graph

__all__ = ["as_ir", "elem_type", "infer_types"]


def elem_type(value: ir.Value) -> int:
    """``value``'s ONNX element type; 0 when the model leaves it unknown."""
    dtype = value.dtype
    return 0 if dtype is None else int(dtype)  # UNDEFINED is 0 too


def as_ir(model: ir.Model | onnx.ModelProto | bytes | str | os.PathLike[str]) -> ir.Model:
    """``model`` as onnx-ir; a path is read without its weights.

    A proto's tensors stay in the proto (no copy): only the graph is wrapped.
    """
    if isinstance(model, ir.Model):
        return model
    if isinstance(model, (bytes, bytearray)):
        model = onnx.load_from_string(bytes(model))
    elif not isinstance(model, onnx.ModelProto):
        model = read_graph(model)
    return ir.serde.deserialize_model(model)


def _opset(node: ir.Node, model: ir.Model) -> int | None:
    """The opset version ``node`` is read at: its own, its function's, or the model's."""
    if node.version is not None:
        return node.version
    graph = node.graph
    if graph is not None and node.domain in graph.opset_imports:
        return graph.opset_imports[node.domain]  # a function's (or the main graph's) import
    return model.opset_imports.get(node.domain)


def infer_types(values: Iterable[ir.Value | None], model: ir.Model) -> None:
    """Types the untyped ones among ``values`` node-locally, where ONNX can.

    Args:
        values: Values whose element types the caller needs (``None`` entries, for
            absent inputs, are skipped). Typed ones are left as they are.
        model: The model they belong to (for opset versions).
    """
    # Depth-first over producers of untyped values, each node inferred after the
    # producers of its inputs. State per node id: 1 on the current path, 2 done.
    state: dict[int, int] = {}
    for value in values:
        if value is None or elem_type(value):
            continue
        first = value.producer()
        if first is None:  # a graph input or outer-scope value without a type
            continue
        stack: list[tuple[ir.Node, bool]] = [(first, False)]
        while stack:
            node, inputs_done = stack.pop()
            if state.get(id(node)) == 2:
                continue
            if inputs_done:
                state[id(node)] = 2
                _infer_one(node, model)
                continue
            if state.get(id(node)) == 1:  # a cycle (malformed model): stop there
                continue
            state[id(node)] = 1
            stack.append((node, True))
            for inp in node.inputs:
                if inp is None or elem_type(inp):
                    continue
                producer = inp.producer()
                if producer is not None and producer is not node and id(producer) not in state:
                    stack.append((producer, False))


def _infer_one(node: ir.Node, model: ir.Model) -> None:
    from opbridge.lowering._builder import _infer as infer_node

    version = _opset(node, model)
    if version is None:
        return
    for out in node.outputs:
        if out.type is not None and not elem_type(out):
            out.type = None  # declared without an element type: as good as untyped
    infer_node(node, version)
