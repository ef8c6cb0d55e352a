"""``opbridge.export``: one call, either exporter, every declared op and lowering."""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from collections.abc import Mapping, Sequence
from typing import IO, Any, Literal

import onnx
import torch

from opbridge._errors import ExportError, OpbridgeError
from opbridge._quiet import torch_noise_filtered
from opbridge._registry import REGISTRY
from opbridge.declaration._signature import overload_name
from opbridge.exporters._dynamo import export_dynamo
from opbridge.exporters._settings import ExportSettings
from opbridge.exporters._torchscript import export_torchscript
from opbridge.lowering._expand import PlaceholderTable, expand

__all__ = ["export"]

Exporter = Literal["dynamo", "torchscript"]
_BUILTIN_NAMESPACES = {"aten", "prims", "quantized_decomposed", "higher_order", "_operator"}


@functools.lru_cache(maxsize=1)
def _torchlib_registry() -> Any:
    from torch.onnx._internal.exporter._registration import ONNXRegistry

    return ONNXRegistry.from_torchlib()


def _how_to_fix(name: str) -> str:
    return (
        f"No ONNX lowering for torch op '{name}'. Declare it with "
        f"@opbridge.custom_op('{name.split('.')[0]}', domain='mydomain') to export it as a "
        f"custom node, or register one with opbridge.register_lowering('{name}', fn)."
    )


def _check_ops(program: torch.export.ExportedProgram, table: PlaceholderTable) -> None:
    """Names the first op neither opbridge nor torch's exporter can write."""
    registry = _torchlib_registry()
    for node in program.graph.nodes:
        target = node.target
        if node.op != "call_function" or not isinstance(target, torch._ops.OpOverload):
            continue
        if target.namespace in _BUILTIN_NAMESPACES:
            continue
        name = overload_name(target)
        if name in table.by_overload or registry.is_registered(target):
            continue
        raise ExportError(_how_to_fix(name))


def _unwrap(error: BaseException) -> OpbridgeError | None:
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OpbridgeError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


@torch_noise_filtered()
def export(
    model: torch.nn.Module | torch.export.ExportedProgram,
    args: Any,
    f: str | os.PathLike[str] | IO[bytes] | None = None,
    *,
    exporter: Exporter = "dynamo",
    opset_version: int | None = None,
    custom_opsets: Mapping[str, int] | None = None,
    dynamic_shapes: Any = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    contrib_ops: bool = False,
    kwargs: dict[str, Any] | None = None,
) -> onnx.ModelProto:
    """Exports ``model`` to ONNX, writing every declared op and lowering.

    Args:
        model: The module (or an ``ExportedProgram`` with ``exporter="dynamo"``).
        args: Example inputs: a tuple, or a single tensor.
        f: Where to save the model (path or binary file); not saved when ``None``.
        exporter: ``"dynamo"`` (``torch.export``-based) or ``"torchscript"`` (legacy).
        opset_version: Version of the default ONNX domain; torch's default when ``None``.
        custom_opsets: Versions of custom domains, e.g. ``{"com.microsoft": 5}``; a
            version below what the model's ops need is an error.
        dynamic_shapes: As in ``torch.export.export``; with ``"torchscript"`` give a
            list or dict of ``{dim: name}`` per input plus ``input_names``.
        input_names: Names of the graph inputs.
        output_names: Names of the graph outputs.
        contrib_ops: Also use the shipped ``com.microsoft`` lowerings that replace a
            standard ONNX form (``Gelu``, ``Trilu``, ``GridSample``).
        kwargs: Keyword inputs of ``model``.

    Returns:
        The ONNX model, checked to carry no placeholder and a schema for each custom op.

    Raises:
        ExportError: An op has no lowering (the message names it and how to add one),
            a custom opset is too low, or torch's exporter failed.
    """
    if exporter not in ("dynamo", "torchscript"):
        raise ExportError(f"exporter must be 'dynamo' or 'torchscript', got {exporter!r}")
    if not isinstance(args, tuple):
        args = (args,) if not isinstance(args, list) else tuple(args)
    table = PlaceholderTable(REGISTRY, contrib_ops=contrib_ops)
    settings = ExportSettings(
        args=args,
        kwargs=kwargs,
        opset_version=opset_version,
        dynamic_shapes=dynamic_shapes,
        input_names=list(input_names) if input_names else None,
        output_names=list(output_names) if output_names else None,
    )
    try:
        if exporter == "dynamo":
            if isinstance(model, torch.export.ExportedProgram):
                program = model
            else:
                program = torch.export.export(
                    model, args, kwargs=kwargs, dynamic_shapes=dynamic_shapes
                )
            _check_ops(program, table)
            # The program already carries the dynamic shapes.
            proto = export_dynamo(
                program, table, dataclasses.replace(settings, dynamic_shapes=None)
            )
        else:
            if isinstance(model, torch.export.ExportedProgram):
                raise ExportError(
                    "exporter='torchscript' needs an nn.Module, not an ExportedProgram"
                )
            proto = export_torchscript(model, table, settings)
    except OpbridgeError:
        raise
    except Exception as e:
        inner = _unwrap(e)
        if inner is not None:
            raise inner from e
        raise ExportError(_describe_failure(e, exporter)) from e
    proto = expand(proto, table, custom_opsets=custom_opsets)
    if f is not None:
        if hasattr(f, "write"):
            f.write(proto.SerializeToString())  # type: ignore[union-attr]
        else:
            onnx.save(proto, os.fspath(f))
    return proto


def _describe_failure(error: Exception, exporter: str) -> str:
    """Turns torch's export failure into one message naming the op and the fix."""
    text = str(error)
    first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    names = [
        m
        for m in re.findall(r"\b([A-Za-z_]\w*::[A-Za-z_]\w*(?:\.\w+)?)", text)
        if not m.startswith(("onnx::", "prim::", "torch::", "c10::", "std::"))
    ]
    if names:
        name = names[0] if "." in names[0] else names[0] + ".default"
        return _how_to_fix(name) + f" (exporter={exporter!r} said: {first})"
    return f"torch.onnx.export (exporter={exporter!r}) failed: {type(error).__name__}: {first}"
