"""The model as the whole pipeline holds it: onnx-ir, one traversal, files of any size.

* :func:`all_nodes` is the one walk over a model: the main graph, every subgraph
  (``If``/``Loop``/``Scan`` bodies) and every local function. Expansion, pruning and
  kernel planning all use it.
* :func:`read_graph` reads a model file's graph without its weights, so that a
  session can plan kernels for a model of any size and let ONNX Runtime load the
  weights itself.
* :data:`EXTERNAL_DATA_THRESHOLD` is where ``opbridge.export`` starts writing weights
  beside the model file, as ``torch.onnx.export`` does.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from typing import Any

import onnx
import onnx_ir as ir

__all__ = [
    "EXTERNAL_DATA_THRESHOLD",
    "all_nodes",
    "has_external_data",
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


def _graph_without_weights(buf: Any, start: int, end: int) -> bytes:
    parts: list[bytes] = []
    for number, wire, fs, payload, fe in _fields(buf, start, end):
        if number == _GRAPH_INITIALIZER and wire == 2:
            parts.append(_delimited(number, _tensor_metadata(buf, payload, fe)))
        else:
            parts.append(bytes(buf[fs:fe]))
    return b"".join(parts)


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
            parts: list[bytes] = []
            for number, wire, fs, payload, fe in _fields(buf, 0, size):
                if number == _MODEL_GRAPH and wire == 2:
                    parts.append(_delimited(number, _graph_without_weights(buf, payload, fe)))
                else:
                    parts.append(bytes(buf[fs:fe]))
    return onnx.ModelProto.FromString(b"".join(parts))
