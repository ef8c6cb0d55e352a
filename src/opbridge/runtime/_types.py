"""Element types of a model's values, without whole-model shape inference.

Exporters write the type of every value they create (onnx-ir ``Value.dtype``), so
the runtime reads types from the model itself. Only where a caller needs the type
of a value the model leaves untyped is anything inferred, node by node: the
value's producer is typed from its own inputs by ONNX's inference for that one
node (standard ops by ONNX's rules, declared ops by the schema opbridge registers
for them, which runs their fake implementation), walking back through producers
only as long as their inputs are untyped too. Nothing else of the model is
touched, and no weight is read.

Callers that need element types only (the kernel host's overloads) ask for
``shapes=False``: a node whose ONNX schema fixes its outputs' element types by its
type variables alone (``Add``: ``T`` in, ``T`` out; ``Shape``: ``int64`` out) is typed
from that, which costs a dictionary lookup instead of ONNX's inference of the node;
the others still get the full inference. A TorchScript file keeps no types for its
intermediates, so this is the common case there.

Best effort: a value whose producer has no schema in this process (a custom op
that is not declared, a call of a local function) or whose inference fails stays
untyped, and callers leave such values to ONNX Runtime. Inferred types are written
onto the values (``Value.dtype``/``Value.shape``), as an exporter would have.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Iterable, Sequence
from typing import Any

import onnx
import onnx_ir as ir

from opbridge._model import infer_node_outputs, read_graph

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


def infer_types(values: Iterable[ir.Value | None], model: ir.Model, *, shapes: bool = True) -> None:
    """Types the untyped ones among ``values`` node-locally, where ONNX can.

    Args:
        values: Values whose element types the caller needs (``None`` entries, for
            absent inputs, are skipped). Typed ones are left as they are.
        model: The model they belong to (for opset versions).
        shapes: Whether shapes are wanted too; without, element types are read from
            the producers' schemas where those decide them.
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
                _infer_one(node, model, shapes=shapes)
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


def _infer_one(node: ir.Node, model: ir.Model, *, shapes: bool) -> None:
    version = _opset(node, model)
    if version is None:
        return
    if not shapes and node.domain in _STANDARD_DOMAINS:
        signature = _standard_signature(node.op_type, node.domain, version)
        if signature is not None and _types_from_schema(node, signature):
            return
    for out in node.outputs:
        if out.type is not None and not elem_type(out):
            out.type = None  # declared without an element type: as good as untyped
    infer_node_outputs(node, version)


# Domains whose schemas never change in a process (declared ops' may be re-registered).
_STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})
_VARIADIC = onnx.defs.OpSchema.FormalParameterOption.Variadic
# "tensor(float)" -> TensorProto.FLOAT, for every element type.
_TENSOR_TYPES = {
    f"tensor({name.lower()})": code for name, code in onnx.TensorProto.DataType.items()
}


@dataclasses.dataclass(frozen=True)
class _Signature:
    """What an ONNX schema says about element types, read once into plain Python."""

    name: str
    inputs: tuple[tuple[str, bool], ...]  # (type variable or type, homogeneous)
    outputs: tuple[str, ...]
    variadic_input: bool
    variadic_output: bool
    fixed: dict[str, int]  # type variable -> its only allowed element type

    @staticmethod
    def formal(params: Sequence[Any], variadic: bool, index: int) -> Any:
        if index < len(params):
            return params[index]
        return params[-1] if params and variadic else None


@functools.cache
def _standard_signature(op_type: str, domain: str, version: int) -> _Signature | None:
    try:
        schema = onnx.defs.get_schema(op_type, version, domain)
    except onnx.defs.SchemaError:
        return None
    fixed = {
        c.type_param_str: _TENSOR_TYPES.get(c.allowed_type_strs[0], 0)
        for c in schema.type_constraints
        if len(c.allowed_type_strs) == 1
    }
    return _Signature(
        name=schema.name,
        inputs=tuple((f.type_str, f.is_homogeneous) for f in schema.inputs),
        outputs=tuple(f.type_str for f in schema.outputs),
        variadic_input=bool(schema.inputs) and schema.inputs[-1].option == _VARIADIC,
        variadic_output=bool(schema.outputs) and schema.outputs[-1].option == _VARIADIC,
        fixed=fixed,
    )


def _types_from_schema(node: ir.Node, signature: _Signature) -> bool:
    """Sets the output element types a schema fixes by its type variables alone.

    An output's type is fixed when its type variable is also an input's whose type
    is known (the same variable means the same type), when the variable allows one
    type only, or when the output names a type itself. Returns ``False``, changing
    nothing, when any output's type is not fixed that way.
    """
    if signature.name == "Constant":  # its tensor's type (TorchScript writes one per scalar)
        attr = next(iter(node.attributes.values()), None)
        if attr is None or attr.type != ir.AttributeType.TENSOR:
            return False
        node.outputs[0].dtype = attr.value.dtype
        return True
    bound: dict[str, int] = {}
    for i, value in enumerate(node.inputs):
        formal = _Signature.formal(signature.inputs, signature.variadic_input, i)
        if value is None or formal is None or not formal[1]:
            continue
        if isinstance(value.type, ir.TensorType) and elem_type(value):
            bound.setdefault(formal[0], elem_type(value))
    found: list[int] = []
    for j in range(len(node.outputs)):
        name = _Signature.formal(signature.outputs, signature.variadic_output, j)
        if name is None:
            return False
        code = bound.get(name) or signature.fixed.get(name) or _TENSOR_TYPES.get(name, 0)
        if not code:
            return False
        found.append(code)
    for value, code in zip(node.outputs, found, strict=True):
        if not elem_type(value):
            value.dtype = ir.DataType(code)
    return True
