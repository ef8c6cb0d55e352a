"""``opbridge.export``: one call, either exporter, every declared op and lowering."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from typing import IO, Any, Literal

import onnx
import onnx_ir as ir
import torch

from opbridge._errors import ExportError, OpbridgeError
from opbridge._model import EXTERNAL_DATA_THRESHOLD, DetachedWeights, initializer_nbytes
from opbridge._quiet import torch_noise_filtered
from opbridge._registry import REGISTRY
from opbridge.declaration._adopt import (
    FALLBACK_DOMAIN,
    FALLBACK_METADATA_KEY,
    fallback_metadata,
    find_existing,
)
from opbridge.exporters._dynamo import export_dynamo
from opbridge.exporters._fallback import (
    Unwritable,
    failing_ops,
    fallback_ops,
    static_unwritable,
    unwritable_message,
)
from opbridge.exporters._settings import ExportSettings
from opbridge.exporters._torchscript import (
    TorchScriptOutput,
    export_torchscript,
    restore_names,
    weights_nbytes,
)
from opbridge.lowering._expand import PlaceholderTable, check_requested_opsets, expand

__all__ = ["export"]

Exporter = Literal["dynamo", "torchscript"]
Fallback = Literal["torch"]
_MAX_ROUNDS = 64  # exports while finding unwritable ops one by one (TorchScript)


def _how_to_fix(name: str) -> str:
    packet = name.split(".")[0]
    overloads = find_existing(name) or find_existing(packet)
    if overloads:
        found = Unwritable(name, overloads)
        return f"No ONNX lowering for torch op '{name}': {found.fix()}."
    return (
        f"No ONNX lowering for torch op '{name}': register one with "
        f"opbridge.register_lowering('{name}', fn)."
    )


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
    external_data: bool | None = None,
    fallback: Fallback | None = None,
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
        external_data: Where the weights go when ``f`` is a path. ``None`` (default):
            beside the file, in ``<f>.data``, when they exceed 1.5 GB (a protobuf
            cannot hold 2 GB), else inside it; ``True``: always beside it (tensors
            over 256 bytes), as ``torch.onnx.export`` does; ``False``: always inside.
        fallback: ``"torch"`` writes every op that no lowering and no exporter can
            write as an ``opbridge.torch`` node run by the op's own torch kernel (the
            model records which, in ``metadata_props``); ``None`` makes such ops an
            error listing each one with its fix.
        kwargs: Keyword inputs of ``model``.

    Returns:
        The ONNX model, checked to carry no placeholder and a schema for each custom op.
        When the weights were written to external data, the returned proto holds no
        weights: its initializers refer to ``<f>.data``, and it is run from the path
        (``opbridge.Session("m.onnx")``) or loaded with
        ``onnx.load("m.onnx")`` (which reads the data back).

    Raises:
        ExportError: Ops have no lowering (the message names every one and how to
            fix it), a custom opset is too low, the model is over 2 GB and ``f`` is
            not a path, or torch's exporter failed.
    """
    if exporter not in ("dynamo", "torchscript"):
        raise ExportError(f"exporter must be 'dynamo' or 'torchscript', got {exporter!r}")
    if not isinstance(args, tuple):
        args = (args,) if not isinstance(args, list) else tuple(args)
    if fallback not in (None, "torch"):
        raise ExportError(f"fallback must be None or 'torch', got {fallback!r}")
    settings = ExportSettings(
        args=args,
        kwargs=kwargs,
        opset_version=opset_version,
        dynamic_shapes=dynamic_shapes,
        input_names=list(input_names) if input_names else None,
        output_names=list(output_names) if output_names else None,
    )
    if exporter == "torchscript" and isinstance(model, torch.export.ExportedProgram):
        raise ExportError("exporter='torchscript' needs an nn.Module, not an ExportedProgram")
    # Where the TorchScript exporter writes a model too big for memory: beside the
    # destination, so that its weight files become the saved model's, uncopied.
    spill = None
    if isinstance(f, (str, os.PathLike)):
        where, name = os.path.split(os.path.abspath(os.fspath(f)))
        spill = os.path.join(where, f".{name}.opbridge-tmp")
    elif exporter == "torchscript" and weights_nbytes(model) > EXTERNAL_DATA_THRESHOLD:
        raise _needs_a_path(weights_nbytes(model))  # before a long export, not after
    try:
        exported, table = _export_ir(
            model, exporter, settings, spill,
            contrib_ops=contrib_ops, fallback=fallback, custom_opsets=custom_opsets,
        )  # fmt: skip
        if isinstance(exported, TorchScriptOutput):
            used: dict[str, int] = {}
            for pending in exported.direct.values():
                domain, _, version = pending.single_node  # type: ignore[misc]
                used[domain] = max(version, used.get(domain, 1))
            check_requested_opsets(used, custom_opsets or {})
            if exported.final:
                saved = _save_as_written(exported, f, external_data)
                if saved is not None:
                    return saved
            model_ir = exported.to_ir()
            weights = exported.weights
        else:
            model_ir, weights = exported, None
        expand(model_ir, table, custom_opsets=custom_opsets)
        if exporter == "torchscript":
            restore_names(model_ir)
        _record_fallback(model_ir)
        return _save(model_ir, f, external_data, weights)
    finally:
        if spill is not None and os.path.exists(spill):
            os.remove(spill)


def _needs_a_path(size: int) -> ExportError:
    return ExportError(
        f"The model's weights ({size / 2**30:.2f} GiB) must be written as external data "
        f"beside the model file (a protobuf cannot hold 2 GB), which needs a path: "
        f"opbridge.export(model, args, 'model.onnx')."
    )


def _export_ir(
    model: Any,
    exporter: str,
    settings: ExportSettings,
    spill: str | None,
    *,
    contrib_ops: bool,
    fallback: Fallback | None,
    custom_opsets: Mapping[str, int] | None,
) -> tuple[ir.Model | TorchScriptOutput, PlaceholderTable]:
    """Runs torch's exporter; the model it returns holds placeholders.

    The dynamo exporter's is its onnx-ir model; the TorchScript exporter's is left
    as torch wrote it, to be read into onnx-ir only when something is left to expand.

    Ops that nothing can write are collected (the dynamo program is read once; the
    TorchScript exporter names one per failed export) so that the error lists every
    one, or, with ``fallback="torch"``, so that each becomes a placeholder of its own
    torch kernel and the export runs again.
    """
    program: torch.export.ExportedProgram | None = None
    exported: ir.Model | TorchScriptOutput
    found: dict[str, Unwritable] = {}  # ops nothing writes, found so far
    for _ in range(_MAX_ROUNDS):
        table = PlaceholderTable(
            REGISTRY, contrib_ops=contrib_ops, fallback=fallback_ops(found.values())
        )
        try:
            if exporter == "dynamo":
                _check_dynamo_opset(settings.opset_version)
                if program is None:
                    program = (
                        model
                        if isinstance(model, torch.export.ExportedProgram)
                        else torch.export.export(
                            model, settings.args, kwargs=settings.kwargs,
                            dynamic_shapes=settings.dynamic_shapes,
                        )
                    )  # fmt: skip
                new = [u for u in static_unwritable(program, table) if u.name not in found]
                if new:
                    found.update((u.name, u) for u in new)
                    if all(u.overloads for u in new):
                        continue  # write them as placeholders and look further
                    raise ExportError(
                        unwritable_message(list(found.values()), exporter, complete=False)
                    )
                # The program already carries the dynamic shapes.
                exported = export_dynamo(
                    program, table, dataclasses.replace(settings, dynamic_shapes=None)
                )
                _check_written_opset(exported, settings.opset_version)
            else:
                exported = export_torchscript(model, table, settings, spill, custom_opsets)
        except OpbridgeError:
            raise
        except Exception as e:
            inner = _unwrap(e)
            if inner is not None:
                raise inner from e
            failing = failing_ops(e, exporter)
            if found and "ScalarType Complex" in str(e):
                raise ExportError(
                    unwritable_message(list(found.values()), exporter, complete=True)
                    + "\nSome of them pass complex tensors between nodes, which the "
                    "TorchScript exporter cannot write (and ONNX Runtime's custom kernels cannot "
                    "carry); exporter='dynamo' writes FFTs with standard ONNX ops."
                ) from e
            if failing is None or failing.name in found:
                if found:
                    raise ExportError(
                        unwritable_message(list(found.values()), exporter, complete=False)
                        + f"\nThen torch's exporter failed: {_describe_failure(e, exporter)}"
                    ) from e
                raise ExportError(_describe_failure(e, exporter)) from e
            found[failing.name] = failing
            if failing.overloads:
                continue
            raise ExportError(
                unwritable_message(list(found.values()), exporter, complete=False)
            ) from e
        break
    else:
        raise ExportError(unwritable_message(list(found.values()), exporter, complete=False))
    if found and fallback is None:
        raise ExportError(unwritable_message(list(found.values()), exporter, complete=True))
    return exported, table


def _save_as_written(
    output: TorchScriptOutput,
    f: str | os.PathLike[str] | IO[bytes] | None,
    external_data: bool | None,
) -> onnx.ModelProto | None:
    """Saves torch's own model as it is; ``None`` when :func:`_save` must write it.

    The model is never parsed and serialized again on the way (only parsed once,
    for the returned proto), so this costs what ``torch.onnx.export`` costs.
    """
    is_path = isinstance(f, (str, os.PathLike))
    if output.path is not None:  # the weights already lie beside the destination
        if external_data is False or not is_path:
            return None  # refused by _save, with the reason
        path = os.fspath(f)  # type: ignore[arg-type]
        os.replace(output.path, path)
        return onnx.load(path, load_external_data=False)
    if external_data:
        return None
    assert output.data is not None
    _write([output.data], f)
    return onnx.load_from_string(output.data)


def _save(
    model: ir.Model,
    f: str | os.PathLike[str] | IO[bytes] | None,
    external_data: bool | None,
    weights: DetachedWeights | None = None,
) -> onnx.ModelProto:
    """Writes ``model`` to ``f`` and returns its proto, with external data when asked or big.

    ``weights``, when the model was read from bytes, puts the unchanged initializers'
    original bytes back instead of serializing them again.
    """
    is_path = isinstance(f, (str, os.PathLike))
    size = initializer_nbytes(model)
    if external_data is None:
        external_data = size > EXTERNAL_DATA_THRESHOLD
    if external_data:
        if not is_path:
            raise _needs_a_path(size)
        path = os.fspath(f)  # type: ignore[arg-type]
        if _external_beside(model, path):  # TorchScript's weight files, already in place
            ir.save(model, path)
        else:  # written straight from the tensors, never as one proto
            ir.save(model, path, external_data=os.path.basename(path) + ".data")
        return onnx.load(path, load_external_data=False)
    if size > EXTERNAL_DATA_THRESHOLD:
        raise ExportError(
            f"The model's weights ({size / 2**30:.2f} GiB) do not fit in one protobuf (2 GB); "
            f"export to a path with external_data=None or True."
        )
    if weights is None:
        proto = ir.serde.serialize_model(model)
        parts: list[bytes | memoryview] = [proto.SerializeToString()] if f is not None else []
    else:
        parts, proto = weights.write(model)
    _write(parts, f)
    return proto


def _write(
    parts: Sequence[bytes | memoryview], f: str | os.PathLike[str] | IO[bytes] | None
) -> None:
    """Writes a serialized model, given in parts, to a path or a binary file."""
    if isinstance(f, (str, os.PathLike)):
        with open(os.fspath(f), "wb") as out:
            out.writelines(parts)
    elif f is not None:
        for part in parts:
            f.write(part)


def _external_beside(model: ir.Model, path: str) -> bool:
    """Whether every big initializer already lives in a file in ``path``'s directory."""
    where = os.path.dirname(os.path.abspath(path))
    found = False
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if isinstance(tensor, ir.ExternalTensor):
            if os.path.dirname(os.path.abspath(tensor.path)) != where:
                return False
            found = True
        elif tensor is not None and tensor.nbytes > 1024:
            return False
    return found


def _check_dynamo_opset(opset_version: int | None) -> None:
    """The dynamo exporter writes opset 18 and converts up from there, never down."""
    if opset_version is None:
        return
    newest = onnx.defs.onnx_opset_version()
    if not 18 <= opset_version <= newest:
        raise ExportError(
            f"opset_version={opset_version} is not supported by exporter='dynamo' (it writes "
            f"opsets 18 to {newest}); use exporter='torchscript' for opsets 7 to 17, or "
            f"choose a version in 18..{newest}."
        )


def _check_written_opset(model: ir.Model, opset_version: int | None) -> None:
    written = model.opset_imports.get("")
    if opset_version is not None and written is not None and written != opset_version:
        raise ExportError(
            f"exporter='dynamo' was asked for opset_version={opset_version} but wrote opset "
            f"{written} (torch's version converter could not convert this model); export with "
            f"opset_version={written} or exporter='torchscript'."
        )


def _record_fallback(model: ir.Model) -> None:
    """Writes which torch ops fell back into the model, for sessions in other processes."""
    from opbridge.runtime._plan import custom_nodes

    used = {
        key.split("::", 1)[1]
        for key in custom_nodes(model)
        if key.startswith(FALLBACK_DOMAIN + "::")
    }
    names = {}
    for op_type in used:
        op = REGISTRY.fallback_op(op_type)
        if op is not None:
            names[op_type] = op.layout.name
    if names:
        model.metadata_props[FALLBACK_METADATA_KEY] = fallback_metadata(names)


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
