"""Adapter for the legacy TorchScript exporter (``torch.onnx.export(dynamo=False)``).

It registers, for the duration of one export, a symbolic function per lowered op
namespace/name that writes the placeholder node; lowerings run later, in the
expansion pass.
"""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Iterator
from typing import Any

import onnx
import torch
from torch.onnx import symbolic_helper

from opbridge._errors import ExportError
from opbridge.exporters._settings import ExportSettings
from opbridge.lowering._expand import PLACEHOLDER_DOMAIN, PlaceholderTable

__all__ = ["export_torchscript"]

_SUFFIX = {"int": "i", "float": "f", "str": "s", "ints": "i", "floats": "f", "strs": "s"}
_CONST_DESC = {"int": "i", "float": "f", "str": "s", "ints": "is", "floats": "fs", "strs": "s"}
_SCHEMA_NAME = re.compile(r"^([\w:]+)(?:\.(\w+))?\(")


def _is_tensor(value: Any) -> bool:
    return isinstance(value, torch._C.Value) and isinstance(value.type(), torch._C.TensorType)


def _is_constant(value: Any) -> bool:
    return isinstance(value, torch._C.Value) and value.node().kind() in (
        "onnx::Constant",
        "prim::Constant",
        "prim::ListConstruct",
    )


def _fits(param: Any, arg: Any) -> bool:
    # The ONNX pass turns scalar constants into tensor constants, so an attribute
    # matches any constant and an input any tensor.
    if symbolic_helper._is_none(arg):
        return param.optional
    if param.kind == "input":
        return _is_tensor(arg) or param.variadic
    return _is_constant(arg) or not isinstance(arg, torch._C.Value)


def _overload_of(node: Any, args: tuple[Any, ...], table: PlaceholderTable) -> str:
    """The overload a traced node calls.

    Traced nodes usually carry their schema; when they do not, the overload of
    ``table`` whose inputs and attributes line up with ``args`` is taken.
    """
    try:
        match = _SCHEMA_NAME.match(node.schema())
    except RuntimeError:
        match = None
    if match is not None:
        return f"{match.group(1)}.{match.group(2) or 'default'}"
    packet = node.kind()
    for name, pending in table.by_overload.items():
        if not name.startswith(packet + "."):
            continue
        params = pending.layout.params
        if len(params) != len(args):
            continue
        if all(_fits(p, a) for p, a in zip(params, args, strict=True)):
            return name
    return f"{packet}.default"


def _constant(value: Any, param: Any, op_name: str) -> Any:
    if symbolic_helper._is_none(value):
        return None
    if not isinstance(value, torch._C.Value):
        return value
    kind = value.node().kind()
    if kind not in ("onnx::Constant", "prim::Constant", "prim::ListConstruct"):
        raise ExportError(
            f"{op_name}: argument '{param.name}' becomes an ONNX attribute and must be known at "
            f"export time, but it is computed in the graph."
        )
    desc: Any = "b" if param.is_bool and param.attr_kind == "int" else _CONST_DESC[param.attr_kind]
    result = symbolic_helper._maybe_get_const(value, desc)
    if isinstance(result, torch._C.Value):
        result = symbolic_helper._get_const(value, desc, param.name)
    if isinstance(result, torch.Tensor):
        result = result.tolist()
    return result


def _symbolic(table: PlaceholderTable, builtin: dict[str, Any], packet: str) -> Any:
    def symbolic(g: Any, *args: Any) -> Any:
        overload = _overload_of(g.original_node, args, table)
        pending = table.by_overload.get(overload)
        if pending is None:
            fallback = builtin.get(packet)
            if fallback is None:
                raise ExportError(
                    f"No ONNX lowering for '{overload}'. Register one with "
                    f"opbridge.register_lowering('{overload}', fn)."
                )
            return fallback(g, *args)
        layout = pending.layout
        inputs: list[Any] = []
        attrs: dict[str, Any] = {}
        for p, arg in zip(layout.params, args, strict=False):
            if p.kind == "input":
                if p.variadic:
                    inputs.extend(symbolic_helper._unpack_list(arg))
                elif symbolic_helper._is_none(arg):
                    inputs.append(None)
                else:
                    inputs.append(arg)
            else:
                value = _constant(arg, p, overload)
                if value is not None:
                    if p.is_bool:
                        value = [int(v) for v in value] if isinstance(value, list) else int(value)
                    attrs[f"{p.name}_{_SUFFIX[p.attr_kind or '']}"] = value
        while inputs and inputs[-1] is None:
            inputs.pop()
        if any(i is None for i in inputs):
            raise ExportError(
                f"{overload}: an absent optional tensor before a present one is not supported "
                f"by the TorchScript exporter; use exporter='dynamo'."
            )
        outputs = g.op(
            f"{PLACEHOLDER_DOMAIN}::{pending.key}", *inputs, outputs=layout.num_outputs, **attrs
        )
        results = outputs if isinstance(outputs, (tuple, list)) else [outputs]
        for result, original in zip(results, g.original_node.outputs(), strict=False):
            result.setType(original.type())
        return outputs if layout.num_outputs > 1 else results[0]

    return symbolic


@contextlib.contextmanager
def _symbolics(table: PlaceholderTable, opset_version: int) -> Iterator[None]:
    from torch.onnx._internal.torchscript_exporter import registration

    packets = sorted({name.rsplit(".", 1)[0] for name in table.by_overload})
    builtin: dict[str, Any] = {}
    for packet in packets:
        group = registration.registry.get_function_group(packet)
        if group is not None:
            builtin[packet] = group.get(opset_version)
    try:
        for packet in packets:
            torch.onnx.register_custom_op_symbolic(
                packet, _symbolic(table, builtin, packet), opset_version
            )
        yield
    finally:
        for packet in packets:
            torch.onnx.unregister_custom_op_symbolic(packet, opset_version)


def export_torchscript(
    model: Any, table: PlaceholderTable, settings: ExportSettings
) -> onnx.ModelProto:
    """Exports with ``dynamo=False``; placeholders stand for every lowered op."""
    opset = settings.opset_version or 20
    dynamic_axes = _dynamic_axes(settings.dynamic_shapes, settings.input_names)
    buffer = io.BytesIO()
    # The legacy exporter prints its whole graph on failure; the error says enough. Its
    # deprecation warnings are filtered around export() (opbridge._quiet); the user's
    # own warnings, and the tracer's about the user's code, still show.
    with (
        _symbolics(table, opset),
        contextlib.redirect_stdout(io.StringIO()),
    ):
        torch.onnx.export(
            model,
            settings.args,
            buffer,  # type: ignore[arg-type]  # torch accepts a binary file too
            kwargs=settings.kwargs,
            dynamo=False,
            opset_version=opset,
            input_names=settings.input_names,
            output_names=settings.output_names,
            dynamic_axes=dynamic_axes,
        )
    return onnx.load_from_string(buffer.getvalue())


def _dynamic_axes(dynamic_shapes: Any, input_names: list[str] | None) -> Any:
    """Maps torch.export-style ``dynamic_shapes`` to the legacy ``dynamic_axes``."""
    if dynamic_shapes is None:
        return None
    specs = (
        list(dynamic_shapes.values()) if isinstance(dynamic_shapes, dict) else list(dynamic_shapes)
    )
    axes: dict[str, Any] = {}
    for i, spec in enumerate(specs):
        if not spec:
            continue
        name = input_names[i] if input_names and i < len(input_names) else None
        if name is None:
            raise ExportError(
                "dynamic_shapes with exporter='torchscript' needs input_names to name the inputs."
            )
        dims = spec.keys() if isinstance(spec, dict) else [j for j, d in enumerate(spec) if d]
        axes[name] = {int(d): f"{name}_dim{int(d)}" for d in dims}
    return axes
