"""ONNX schemas for declared ops, with type and shape inference from torch.

Registering an ``onnx.defs.OpSchema`` lets onnxscript build nodes of a custom domain
("No schema registered for ..." otherwise) and lets ``onnx.checker`` and
``onnx.shape_inference`` infer the outputs of custom nodes. The inference function
runs the op's fake (meta) implementation on the node's input types.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import onnx
import onnx.defs
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from opbridge._dtypes import onnx_to_torch, torch_to_onnx
from opbridge.declaration._signature import OpLayout

__all__ = ["ALL_TENSOR_TYPES", "make_schema", "register_schema"]

logger = logging.getLogger(__name__)

ALL_TENSOR_TYPES = [
    f"tensor({t})"
    for t in (
        "float", "double", "float16", "bfloat16", "int8", "int16", "int32", "int64",
        "uint8", "uint16", "uint32", "uint64", "bool", "string",
    )
]  # fmt: skip

_Param = onnx.defs.OpSchema.FormalParameter
_Option = onnx.defs.OpSchema.FormalParameterOption
_AttrType = onnx.defs.OpSchema.AttrType  # same numbering as AttributeProto's


def make_schema(
    layout: OpLayout,
    *,
    domain: str,
    op_type: str,
    version: int,
    infer: Callable[[list[tuple[int, tuple[int, ...] | None] | None], dict[str, Any]], Any]
    | None = None,
    doc: str = "",
) -> onnx.defs.OpSchema:
    """Builds the ONNX schema of one node type from a torch op layout.

    Args:
        layout: Which torch arguments are inputs and which attributes.
        domain: ONNX domain of the node.
        op_type: ONNX op type of the node.
        version: Opset version of the domain the node appears since.
        infer: ``infer(inputs, attrs) -> [(elem_type, shape), ...]`` where each input
            is ``(elem_type, shape)`` (shape ``None`` when unknown) or ``None`` when
            absent; used as the schema's type and shape inference.
        doc: Documentation string.
    """
    inputs = []
    constraints = []
    for i, p in enumerate(layout.inputs):
        option = (
            _Option.Variadic if p.variadic else (_Option.Optional if p.optional else _Option.Single)
        )
        inputs.append(_Param(p.name, f"T{i}", param_option=option, is_homogeneous=False))
        constraints.append((f"T{i}", ALL_TENSOR_TYPES, ""))
    outputs = []
    for j in range(layout.num_outputs):
        outputs.append(_Param(f"output_{j}", f"R{j}"))
        constraints.append((f"R{j}", ALL_TENSOR_TYPES, ""))
    attributes = [
        onnx.defs.OpSchema.Attribute(
            p.name,
            _AttrType(p.onnx_attr_type),  # type: ignore[call-arg]
            "",
            required=not p.optional,
        )
        for p in layout.attributes
    ]
    schema = onnx.defs.OpSchema(
        op_type, domain, version, doc,
        inputs=inputs, outputs=outputs, type_constraints=constraints, attributes=attributes,
    )  # fmt: skip
    if infer is not None:
        schema.set_type_and_shape_inference_function(_inference_function(layout, infer))
    return schema


def register_schema(schema: onnx.defs.OpSchema) -> None:
    """Registers ``schema`` in this process, replacing one of the same identity."""
    if onnx.defs.has(schema.name, schema.since_version, schema.domain):
        existing = onnx.defs.get_schema(schema.name, schema.since_version, schema.domain)
        if existing.since_version == schema.since_version:
            onnx.defs.deregister_schema(schema.name, schema.since_version, schema.domain)
    onnx.defs.register_schema(schema)


def _input_types(ctx: Any, count: int) -> list[tuple[int, tuple[int, ...] | None] | None]:
    result: list[tuple[int, tuple[int, ...] | None] | None] = []
    for i in range(count):
        if not ctx.has_input(i):
            result.append(None)
            continue
        type_proto = ctx.get_input_type(i)
        if type_proto is None or not type_proto.HasField("tensor_type"):
            result.append(None)
            continue
        tensor_type = type_proto.tensor_type
        shape: tuple[int, ...] | None = None
        if tensor_type.HasField("shape"):
            dims = tensor_type.shape.dim
            if all(d.HasField("dim_value") for d in dims):
                shape = tuple(d.dim_value for d in dims)
        result.append((tensor_type.elem_type, shape))
    return result


def _inference_function(layout: OpLayout, infer: Callable[..., Any]) -> Callable[[Any], None]:
    def inference(ctx: Any) -> None:
        # Never raise into ONNX's C++ inference: a failure only means "unknown".
        try:
            inputs = _input_types(ctx, ctx.get_num_inputs())
            attrs = {}
            for p in layout.attributes:
                proto = ctx.get_attribute(p.name)
                if proto is not None:
                    attrs[p.name] = onnx.helper.get_attribute_value(proto)
            results = infer(inputs, attrs)
        except Exception as e:  # pragma: no cover - diagnostic only
            logger.debug("shape inference for %s failed: %s", layout.name, e)
            return
        for j, (elem_type, shape) in enumerate(results or ()):
            if j >= ctx.get_num_outputs():
                break
            ctx.set_output_type(j, onnx.helper.make_tensor_type_proto(elem_type, shape))

    return inference


def fake_infer(
    layout: OpLayout, call: Callable[..., Any]
) -> Callable[[list[tuple[int, tuple[int, ...] | None] | None], dict[str, Any]], Any]:
    """An ``infer`` function that runs ``call(**kwargs)`` on fake tensors.

    When an input's shape is unknown only the output element types are reported,
    computed with a stand-in shape of ones.
    """

    def infer(inputs: list[Any], attrs: dict[str, Any]) -> list[tuple[int, Any]]:
        known_shapes = all(t is None or t[1] is not None for t in inputs)
        kwargs: dict[str, Any] = {}
        with FakeTensorMode(allow_non_fake_inputs=True):

            def fake(t: tuple[int, tuple[int, ...] | None]) -> torch.Tensor:
                return torch.empty(t[1] if t[1] is not None else (1,), dtype=onnx_to_torch(t[0]))

            for i, p in enumerate(layout.inputs):
                if p.variadic:  # the last tensor parameter takes every remaining input
                    kwargs[p.name] = [fake(t) for t in inputs[i:] if t is not None]
                    break
                if i < len(inputs) and inputs[i] is not None:
                    kwargs[p.name] = fake(inputs[i])
            for p in layout.attributes:
                if p.name in attrs:
                    kwargs[p.name] = p.from_onnx(attrs[p.name])
            out = call(**kwargs)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        return [
            (torch_to_onnx(o.dtype), tuple(int(d) for d in o.shape) if known_shapes else None)
            for o in outs
        ]

    return infer
