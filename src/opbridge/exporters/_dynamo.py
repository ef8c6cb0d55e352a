"""Adapter for the ``torch.export``-based exporter (``torch.onnx.export(dynamo=True)``).

It turns the registry into a ``custom_translation_table`` whose entries write one
placeholder node each; the lowerings themselves run later, in the expansion pass.
"""

from __future__ import annotations

import inspect
from typing import Any

import onnx_ir as ir
import onnxscript.values
import torch

from opbridge.declaration._schema import fake_infer
from opbridge.declaration._signature import node_arguments
from opbridge.exporters._settings import ExportSettings
from opbridge.lowering._expand import PLACEHOLDER_DOMAIN, Pending, PlaceholderTable

__all__ = ["export_dynamo"]


def _translation(pending: Pending, opset: onnxscript.values.Opset) -> Any:
    """A function with the torch op's signature that writes the placeholder node."""
    layout = pending.layout
    emit = getattr(opset, pending.key)
    parameters = []
    annotations: dict[str, Any] = {}
    for p in layout.params:
        kind = (
            inspect.Parameter.KEYWORD_ONLY
            if p.kwarg_only
            else (inspect.Parameter.POSITIONAL_OR_KEYWORD)
        )
        default = p.default if p.has_default else inspect.Parameter.empty
        parameters.append(inspect.Parameter(p.name, kind, default=default))
        if p.kind == "attribute":
            annotations[p.name] = p.attr_kind.python  # type: ignore[union-attr]
    signature = inspect.Signature(parameters)
    infer = fake_infer(layout, pending.overload)

    def translate(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        inputs, attrs = node_arguments(layout, bound.arguments)
        result = emit(*inputs, **attrs)
        _type_outputs(pending, infer, inputs, attrs, result)
        return result

    translate.__name__ = pending.key
    translate.__signature__ = signature  # type: ignore[attr-defined]
    translate.__annotations__ = annotations
    return translate


def _type_outputs(
    pending: Pending, infer: Any, inputs: list[Any], attrs: dict[str, Any], result: Any
) -> None:
    """Gives the placeholder's outputs the types torch's fake implementation computes.

    The exporter does not type outputs of custom-domain nodes; shape inference and
    ONNX Runtime need them.
    """
    outputs = list(result) if isinstance(result, (tuple, list)) else [result]
    if all(getattr(o, "dtype", None) is not None for o in outputs):
        return
    described: list[tuple[int, tuple[int, ...] | None] | None] = []
    for v in inputs:
        if v is None or getattr(v, "dtype", None) is None:
            described.append(None)
            continue
        shape = None
        if v.shape is not None and all(isinstance(d, int) for d in v.shape):
            shape = tuple(int(d) for d in v.shape)
        described.append((int(v.dtype), shape))
    try:
        types = infer(described, {k: v for k, v in attrs.items()})
    except Exception:  # unknown stays unknown; the expansion pass infers again
        return
    for out, (elem_type, shape) in zip(outputs, types, strict=False):
        if getattr(out, "dtype", None) is None:
            out.dtype = ir.DataType(elem_type)
        if shape is not None and out.shape is None:
            out.shape = ir.Shape(shape)


def export_dynamo(model: Any, table: PlaceholderTable, settings: ExportSettings) -> ir.Model:
    """Exports with ``dynamo=True``; placeholders stand for every lowered op.

    Returns the ``onnx_ir`` model torch's exporter builds, as is: its weights are
    still the module's tensors, nothing is serialized.
    """
    table.register_schemas()
    opset = onnxscript.values.Opset(PLACEHOLDER_DOMAIN, 1)
    translation_table = {p.overload: _translation(p, opset) for p in table.entries.values()}
    program = torch.onnx.export(
        model,
        settings.args,
        kwargs=settings.kwargs,
        dynamo=True,
        opset_version=settings.opset_version,
        dynamic_shapes=settings.dynamic_shapes,
        input_names=settings.input_names,
        output_names=settings.output_names,
        custom_translation_table=translation_table,
        verbose=False,
        report=False,
        optimize=True,
    )
    assert program is not None  # torch returns None only when asked not to build a program
    return program.model
