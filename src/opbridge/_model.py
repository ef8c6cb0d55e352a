"""The model as the whole pipeline holds it: onnx-ir, one traversal, files of any size.

* :func:`all_nodes` is the one walk over a model: the main graph, every subgraph
  (``If``/``Loop``/``Scan`` bodies) and every local function. Expansion, pruning and
  kernel planning all use it.
* :func:`read_graph` reads a model file's graph without its weights, so that a
  session can plan kernels for a model of any size and let ONNX Runtime load the
  weights itself.
* :class:`DetachedWeights` takes a serialized model's weights out and puts them
  back at the wire level, so that a model read from bytes is edited and written
  again without its weights being parsed or copied on the way.
* :data:`EXTERNAL_DATA_THRESHOLD` is where ``opbridge.export`` starts writing weights
  beside the model file, as ``torch.onnx.export`` does.
"""

from __future__ import annotations

import functools
import mmap
import os
from collections.abc import Iterator
from typing import Any, NamedTuple

import onnx
import onnx_ir as ir

__all__ = [
    "EXTERNAL_DATA_THRESHOLD",
    "DetachedWeights",
    "all_nodes",
    "has_external_data",
    "infer_node_outputs",
    "initializer_nbytes",
    "read_graph",
]

# torch.onnx's own threshold (ONNXProgram.save): a protobuf cannot exceed 2 GB.
EXTERNAL_DATA_THRESHOLD = 1536 * 1024 * 1024


def all_nodes(model: ir.Model) -> Iterator[ir.Node]:
    """Every node of ``model``: main graph, subgraphs at any depth, local functions."""
    yield from ir.traversal.RecursiveGraphIterator(model.graph)
    for function in model.functions.values():
        yield from ir.traversal.RecursiveGraphIterator(function)


def initializer_nbytes(model: ir.Model) -> int:
    """Bytes of the main graph's initializers, read from their metadata only."""
    total = 0
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if tensor is not None:
            total += tensor.nbytes
    return total


def has_external_data(model: onnx.ModelProto) -> bool:
    """Whether any initializer of ``model``'s main graph lives in a separate file."""
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


# -- reading a model file's graph without its weights ----------------------------------
# Protobuf wire format: each field is a varint key (number << 3 | wire type), then
# its payload. Only the fields named here are touched; everything else is copied.
_MODEL_GRAPH = 7
_GRAPH_INITIALIZER = 5
_TENSOR_METADATA = {1, 2, 8, 12, 13, 14}  # dims, data_type, name, doc, external_data, location


def _varint(buf: Any, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _fields(buf: Any, start: int, end: int) -> Iterator[tuple[int, int, int, int, int]]:
    """Yields ``(number, wire_type, field_start, payload_start, field_end)``."""
    pos = start
    while pos < end:
        field_start = pos
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _varint(buf, pos)
            payload = pos
        elif wire == 1:
            payload, pos = pos, pos + 8
        elif wire == 2:
            length, payload = _varint(buf, pos)
            pos = payload + length
        elif wire == 5:
            payload, pos = pos, pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, wire, field_start, payload, pos


def _delimited(number: int, payload: bytes) -> bytes:
    return _encode_varint(number << 3 | 2) + _encode_varint(len(payload)) + payload


def _tensor_metadata(buf: Any, start: int, end: int) -> bytes:
    parts = [
        bytes(buf[fs:fe])
        for number, _, fs, _, fe in _fields(buf, start, end)
        if number in _TENSOR_METADATA
    ]
    return b"".join(parts)


def _graph_without_weights(
    buf: Any, start: int, end: int, weights: dict[str, _Field] | None = None
) -> bytes:
    """The graph's fields, its initializers reduced to their metadata.

    With ``weights``, each initializer's field in ``buf`` is recorded by name.
    """
    parts: list[bytes] = []
    for number, wire, fs, payload, fe in _fields(buf, start, end):
        if number == _GRAPH_INITIALIZER and wire == 2:
            metadata = _tensor_metadata(buf, payload, fe)
            parts.append(_delimited(number, metadata))
            if weights is not None:
                view = memoryview(buf)
                name = onnx.TensorProto.FromString(metadata).name
                weights[name] = _Field(view[fs:fe], view[payload:fe])
        else:
            parts.append(bytes(buf[fs:fe]))
    return b"".join(parts)


def _model_without_weights(
    buf: Any, size: int, weights: dict[str, _Field] | None = None
) -> onnx.ModelProto:
    parts: list[bytes] = []
    for number, wire, fs, payload, fe in _fields(buf, 0, size):
        if number == _MODEL_GRAPH and wire == 2:
            parts.append(_delimited(number, _graph_without_weights(buf, payload, fe, weights)))
        else:
            parts.append(bytes(buf[fs:fe]))
    return onnx.ModelProto.FromString(b"".join(parts))


class _Field(NamedTuple):
    whole: memoryview  # key, length and payload: what is written back
    payload: memoryview  # the serialized TensorProto


class DetachedWeights:
    """A serialized model's weights, kept out of its onnx-ir model until it is written.

    :meth:`read` parses the model without its main graph's initializer data; each
    initializer reads its value from the original bytes only when asked
    (``op.value_of``). :meth:`write` serializes the edited model without the
    initializers it did not change and puts their original bytes back at the wire
    level: the weights are never parsed, converted or serialized again.
    """

    def __init__(self, data: bytes) -> None:
        self._fields: dict[str, _Field] = {}
        self._proto = _model_without_weights(data, len(data), self._fields)
        self._lazy: dict[str, ir.LazyTensor] = {}
        self._metadata: dict[str, Any] = {}

    @property
    def proto(self) -> onnx.ModelProto:
        """The model without the data of its main graph's initializers."""
        return self._proto

    def read(self) -> ir.Model:
        """The model in onnx-ir, its initializers read lazily from the original bytes."""
        model = ir.serde.deserialize_model(self._proto)
        for name, value in model.graph.initializers.items():
            metadata, field = value.const_value, self._fields.get(name)
            if metadata is None or field is None:
                continue
            lazy = ir.LazyTensor(
                functools.partial(_parse_tensor, field.payload),
                metadata.dtype,
                ir.Shape(metadata.shape.numpy()),
                name=name,
            )
            value.const_value = lazy
            self._lazy[name] = lazy
            self._metadata[name] = metadata
        return model

    def write(self, model: ir.Model) -> tuple[list[bytes | memoryview], onnx.ModelProto]:
        """Serializes ``model`` (read with :meth:`read`) with the original weights.

        Returns:
            The parts of the serialized model, to be written one after the other,
            and the model as a proto. Each holds the weights once; neither copies
            the other's.
        """
        kept: list[tuple[ir.Value, str]] = []
        for name, value in model.graph.initializers.items():
            lazy = self._lazy.get(name)
            if lazy is not None and value.const_value is lazy:
                value.const_value = self._metadata[name]
                kept.append((value, name))
        try:
            data = ir.serde.serialize_model(model).SerializeToString()
        finally:
            for value, name in kept:
                value.const_value = self._lazy[name]
        names = {name for _, name in kept}
        parts: list[bytes | memoryview] = []
        for number, wire, fs, payload, fe in _fields(data, 0, len(data)):
            if number != _MODEL_GRAPH or wire != 2:
                parts.append(data[fs:fe])
                continue
            graph: list[bytes | memoryview] = []
            for inner, inner_wire, gs, gpayload, ge in _fields(data, payload, fe):
                name = ""
                if inner == _GRAPH_INITIALIZER and inner_wire == 2:
                    name = onnx.TensorProto.FromString(_tensor_metadata(data, gpayload, ge)).name
                graph.append(self._fields[name].whole if name in names else data[gs:ge])
            length = sum(len(part) for part in graph)
            parts.append(_encode_varint(_MODEL_GRAPH << 3 | 2) + _encode_varint(length))
            parts.extend(graph)
        proto = onnx.ModelProto.FromString(data)
        for tensor in proto.graph.initializer:
            if tensor.name in names:
                tensor.ParseFromString(self._fields[tensor.name].payload)
        return parts, proto


def _parse_tensor(payload: memoryview) -> ir.TensorProtocol:
    return ir.serde.TensorProtoTensor(onnx.TensorProto.FromString(payload))


def read_graph(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Reads a model file without the data of its main graph's initializers.

    The initializers keep their names, types, shapes and external-data references;
    their values are neither read nor copied, whether they are stored in the file or
    beside it. Enough to plan kernels and register them; ONNX Runtime reads the
    weights itself from ``path``.
    """
    with open(os.fspath(path), "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return onnx.ModelProto()
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _model_without_weights(buf, size)


def infer_node_outputs(node: ir.Node, version: int) -> None:
    """Types the outputs of one node from its inputs (ONNX's inference for that node).

    Standard ops use ONNX's own rules, declared ops their fake implementation (via
    the schema opbridge registers). Node by node, never the whole model: the
    builder types what a lowering writes, the runtime the producers of untyped
    custom-op inputs. A node ONNX cannot infer keeps untyped outputs.

    Args:
        node: The node; its outputs that already have a type are left alone.
        version: The opset version of the node's domain.
    """
    if all(o.type is not None for o in node.outputs):
        return
    try:
        schema = onnx.defs.get_schema(node.op_type, version, node.domain)
        types = {
            v.name: ir.serde.serialize_value(v).type
            for v in node.inputs
            if v is not None and v.name and v.type is not None
        }
        inferred = onnx.shape_inference.infer_node_outputs(
            schema, ir.serde.serialize_node(node), types
        )
    except Exception:  # inference only adds facts
        return
    for out in node.outputs:
        type_proto = inferred.get(out.name or "")
        if type_proto is None or not type_proto.HasField("tensor_type"):
            continue
        tensor_type = type_proto.tensor_type
        if tensor_type.elem_type:
            out.dtype = ir.DataType(tensor_type.elem_type)
        if tensor_type.HasField("shape"):
            out.shape = ir.Shape(
                [
                    d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                    for d in tensor_type.shape.dim
                ]
            )
