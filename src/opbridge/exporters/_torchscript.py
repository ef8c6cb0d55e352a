"""Adapter for the legacy TorchScript exporter (``torch.onnx.export(dynamo=False)``).

It registers, for the duration of one export, a symbolic function per lowered op
namespace/name. A declared op without a lowering is written there as its own
``domain::op_type`` node; every other op as a placeholder node whose lowering runs
later, in the expansion pass. A model with no placeholder is final as torch wrote it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import re
from collections.abc import Iterator, Mapping
from typing import Any

import onnx
import onnx_ir as ir
import torch
from torch.onnx import symbolic_helper
from torch.overrides import TorchFunctionMode

from opbridge._errors import ExportError
from opbridge._model import EXTERNAL_DATA_THRESHOLD, DetachedWeights
from opbridge.declaration._signature import node_arguments
from opbridge.exporters._settings import ExportSettings
from opbridge.lowering._expand import PLACEHOLDER_DOMAIN, Pending, PlaceholderTable

__all__ = ["TorchScriptOutput", "export_torchscript", "restore_names", "weights_nbytes"]

_SCHEMA_NAME = re.compile(r"^([\w:]+)(?:\.(\w+))?\(")


def _is_tensor(value: Any) -> bool:
    return isinstance(value, torch._C.Value) and isinstance(value.type(), torch._C.TensorType)


def _has_dtype(value: Any) -> bool:
    kind = value.type()
    return isinstance(kind, torch._C.TensorType) and kind.scalarType() is not None


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
    desc: Any = (
        "b" if param.is_bool and param.attr_kind == "int" else param.attr_kind.torchscript[1]
    )
    result = symbolic_helper._maybe_get_const(value, desc)
    if isinstance(result, torch._C.Value):
        result = symbolic_helper._get_const(value, desc, param.name)
    if isinstance(result, torch.Tensor):
        result = result.tolist()
    return result


class _Written:
    """What the symbolics wrote during one export."""

    def __init__(self, requested: Mapping[str, int]) -> None:
        self.placeholders = False
        self.direct: dict[str, Pending] = {}  # ops written as their own node, by overload
        # The custom_opsets torch stamps; filled as ops are written (torch reads the
        # dict when it serializes, after every symbolic ran, and warns of unused ones).
        self.opsets: dict[str, int] = {}
        self._requested = requested

    def wrote(self, overload: str, pending: Pending) -> None:
        domain, _, version = pending.single_node  # type: ignore[misc]
        self.direct[overload] = pending
        needed = max(version, self.opsets.get(domain, 1))
        self.opsets[domain] = self._requested.get(domain, needed)


def _symbolic(
    table: PlaceholderTable, builtin: dict[str, Any], packet: str, written: _Written
) -> Any:
    # A packet whose one overload is lowered needs no schema lookup per node.
    lowered = [p for n, p in table.by_overload.items() if n.rsplit(".", 1)[0] == packet]
    only = (
        lowered[0]
        if len(lowered) == 1 and len(lowered[0].overload.overloadpacket.overloads()) == 1
        else None
    )

    def symbolic(g: Any, *args: Any) -> Any:
        if only is not None and g.original_node.kind() == packet:
            overload = only.layout.name
        else:
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
        arguments: dict[str, Any] = {}
        for p, arg in zip(layout.params, args, strict=False):
            if p.kind == "attribute":
                arguments[p.name] = _constant(arg, p, overload)
            elif p.variadic:
                arguments[p.name] = symbolic_helper._unpack_list(arg)
            elif not symbolic_helper._is_none(arg):
                arguments[p.name] = arg
        inputs, values = node_arguments(layout, arguments)
        _refuse_complex(overload, layout, inputs)
        if any(i is None for i in inputs):
            raise ExportError(
                f"{overload}: an absent optional tensor before a present one is not supported "
                f"by the TorchScript exporter; use exporter='dynamo'."
            )
        attrs = {
            f"{p.name}_{p.attr_kind.torchscript[0]}": values[p.name]  # type: ignore[union-attr]
            for p in layout.attributes
            if p.name in values
        }
        # A declared op without a lowering is its own node: written here, nothing is
        # left for expansion (which would read the whole model into onnx-ir). Unless
        # torch does not know its output types (in a scripted loop): expansion infers them.
        node = pending.single_node
        original = g.original_node
        # outputsAt: iterating outputs() costs ~100 us per node in torch 2.13.
        originals = [original.outputsAt(i) for i in range(original.outputsSize())]
        if node is not None and all(_has_dtype(o) for o in originals):
            written.wrote(overload, pending)
            kind = f"{node[0]}::{node[1]}"
        else:
            written.placeholders = True
            kind = f"{PLACEHOLDER_DOMAIN}::{pending.key}"
        outputs = g.op(kind, *inputs, outputs=layout.num_outputs, **attrs)
        results = outputs if isinstance(outputs, (tuple, list)) else [outputs]
        for result, original in zip(results, originals, strict=False):
            result.setType(original.type())
        return outputs if layout.num_outputs > 1 else results[0]

    return symbolic


def _refuse_complex(overload: str, layout: Any, inputs: list[Any]) -> None:
    for p, value in zip(layout.inputs, inputs, strict=False):
        if value is None or not _is_tensor(value):
            continue
        scalar = value.type().scalarType()  # cheaper than dtype(), called per node
        if scalar is not None and scalar.startswith("Complex"):
            dtype = value.type().dtype()
            raise ExportError(
                f"{overload}: argument '{p.name}' is a complex tensor ({dtype}); ONNX has no "
                f"complex element types and the TorchScript exporter cannot carry them. Pass "
                f"torch.view_as_real(...) (a float tensor with a last dimension of 2) instead."
            )


@contextlib.contextmanager
def _symbolics(table: PlaceholderTable, opset_version: int, written: _Written) -> Iterator[None]:
    """Registers a placeholder symbolic per lowered packet; torch's registry as it was after.

    ``unregister_custom_op_symbolic`` drops every override and leaves an empty group
    behind for a packet torch had no symbolic for (a later export then fails inside
    torch), so the previous state is put back by hand.
    """
    from torch.onnx._internal.torchscript_exporter import registration

    registry = registration.registry
    packets = sorted({name.rsplit(".", 1)[0] for name in table.by_overload})
    builtin: dict[str, Any] = {}
    before: dict[str, tuple[bool, Any]] = {}
    for packet in packets:
        group = registry.get_function_group(packet)
        if group is not None:
            builtin[packet] = group.get(opset_version)
            before[packet] = (True, group._functions._overrides.get(opset_version))
        else:
            before[packet] = (False, None)
    try:
        for packet in packets:
            torch.onnx.register_custom_op_symbolic(
                packet, _symbolic(table, builtin, packet, written), opset_version
            )
        yield
    finally:
        for packet in packets:
            existed, override = before[packet]
            group = registry.get_function_group(packet)
            if group is None:
                continue
            if group._functions.overridden(opset_version):
                group.remove_custom(opset_version)
            if override is not None:
                group.add_custom(override, opset_version)
            if not existed and not group._functions:
                registry._registry.pop(packet, None)


class _MutationRecorder(TorchFunctionMode):
    """Sees, while torch traces the model, calls of declared ops that write their inputs."""

    def __init__(self, mutating: dict[Any, str]) -> None:
        super().__init__()
        self._mutating = mutating
        self.seen: dict[Any, str] = {}

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func in self._mutating:
            self.seen[func] = self._mutating[func]
        return func(*args, **(kwargs or {}))


def _mutating_ops(table: PlaceholderTable) -> dict[Any, str]:
    """Declared ops that write an input; torch's own in-place and ``out=`` overloads aside."""
    found: dict[Any, str] = {}
    for pending in table.by_overload.values():
        if pending.overload.namespace in ("aten", "prims"):
            continue  # the exporter functionalizes these itself
        written = [
            a.name
            for a in pending.overload._schema.arguments
            if a.alias_info is not None and a.alias_info.is_write and not a.kwarg_only
        ]
        if written:
            found[pending.overload] = f"{pending.layout.name} (writes {', '.join(written)})"
    return found


@contextlib.contextmanager
def _quiet_onnx_log() -> Iterator[None]:
    """Keeps torch's C++ ONNX log off during the export.

    torch 2.13's ``setup_onnx_logging`` tests the function ``_jit_is_onnx_log_enabled``
    instead of calling it, so it always turns the log on, and a failed export prints
    the whole TorchScript graph to stdout from C++ (no Python redirect catches it).
    """
    from torch.onnx._internal.torchscript_exporter import utils

    original = utils.setup_onnx_logging
    utils.setup_onnx_logging = lambda verbose: contextlib.nullcontext()  # type: ignore[assignment,return-value]
    try:
        yield
    finally:
        utils.setup_onnx_logging = original


class _Capture:
    """A write-only file that keeps the bytes torch writes to it, uncopied."""

    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> int:
        self.data = data if not self.data else self.data + data
        return len(data)

    def flush(self) -> None:
        pass


@dataclasses.dataclass
class TorchScriptOutput:
    """The legacy exporter's model, as torch wrote it.

    Attributes:
        data: The serialized model, when it was exported in memory.
        path: The model file torch wrote, with its weights beside it, one file per
            tensor, when the weights were too big for memory.
        placeholders: Whether it holds placeholder nodes, left for expansion.
        direct: The ops written as their own ``domain::op_type`` node, by overload.
        weights: The in-memory model's weights, once :meth:`to_ir` read it.
    """

    data: bytes | None
    path: str | None
    placeholders: bool
    direct: dict[str, Pending]
    weights: DetachedWeights | None = None  # set by to_ir() for an in-memory model

    @property
    def final(self) -> bool:
        """Whether torch's model is opbridge's as it is: nothing left to expand."""
        return not self.placeholders

    def to_ir(self) -> ir.Model:
        """Reads the model into onnx-ir without copying its tensors.

        An in-memory model's weights stay in torch's bytes (:attr:`weights` puts
        them back when the model is written); a spilled model's stay in their
        files, memory-mapped by onnx-ir.
        """
        if self.path is not None:
            proto = onnx.load(self.path, load_external_data=False)
            _drop_incomplete_types(proto.graph)
            model = ir.serde.deserialize_model(proto)
            ir.external_data.set_base_dir(model.graph, os.path.dirname(self.path))
            return model
        assert self.data is not None
        self.weights = DetachedWeights(self.data)
        _drop_incomplete_types(self.weights.proto.graph)
        return self.weights.read()


def export_torchscript(
    model: Any,
    table: PlaceholderTable,
    settings: ExportSettings,
    spill: str | None,
    custom_opsets: Mapping[str, int] | None = None,
) -> TorchScriptOutput:
    """Exports with ``dynamo=False``.

    A declared op without a lowering is written as its own node; every other
    lowered op as a placeholder for expansion. A model whose weights fit a
    protobuf is exported in memory; a bigger one is written to ``spill`` with its
    weights beside it (as torch does for a file path): they are never copied when
    ``spill`` is in the directory the model is saved to.

    Args:
        model: The module.
        table: The ops to write as placeholders or as their own node.
        settings: Example inputs, names, opset and dynamic shapes.
        spill: Where a model too big for memory is written (the caller refuses such
            a model when there is nowhere to write it).
        custom_opsets: The user's versions of custom domains; the domain of an op
            written as its own node otherwise gets the op's version.
    """
    opset = settings.opset_version or 20
    dynamic_axes = _dynamic_axes(settings.dynamic_shapes, settings.input_names)
    big = weights_nbytes(model) > EXTERNAL_DATA_THRESHOLD
    if big and spill is None:  # pragma: no cover - export() refuses it first
        raise ExportError("a model over 1.5 GB needs a destination path")
    target: Any = spill if big else _Capture()
    mutating = _mutating_ops(table)
    # Only watched when such an op is declared: the mode costs every traced call.
    recorder = _MutationRecorder(mutating) if mutating else contextlib.nullcontext()
    written = _Written(custom_opsets or {})
    # The legacy exporter prints its whole graph on failure; the error says enough. Its
    # deprecation warnings are filtered around export() (opbridge._quiet); the user's
    # own warnings, and the tracer's about the user's code, still show.
    with (
        _symbolics(table, opset, written),
        _quiet_onnx_log(),
        contextlib.redirect_stdout(io.StringIO()),
        recorder,
    ):
        torch.onnx.export(
            model,
            settings.args,
            target,
            kwargs=settings.kwargs,
            dynamo=False,
            opset_version=opset,
            input_names=settings.input_names,
            output_names=settings.output_names,
            dynamic_axes=dynamic_axes,
            custom_opsets=written.opsets,
        )
    if isinstance(recorder, _MutationRecorder) and recorder.seen:
        ops = ", ".join(recorder.seen.values())
        raise ExportError(
            f"{ops}: an op declared with mutates_args writes its input in place; ONNX has "
            f"no in-place ops and the TorchScript exporter drops such a call "
            f"without a trace (the model would compute something else). Declare a functional "
            f"op that returns the new value instead."
        )
    return TorchScriptOutput(
        data=None if big else target.data,
        path=spill if big else None,
        placeholders=written.placeholders,
        direct=written.direct,
    )


def _incomplete(type_proto: onnx.TypeProto) -> bool:
    kind = type_proto.WhichOneof("value")
    if kind == "sequence_type":
        elem = type_proto.sequence_type.elem_type
        return elem.WhichOneof("value") is None or _incomplete(elem)
    if kind == "optional_type":
        elem = type_proto.optional_type.elem_type
        return elem.WhichOneof("value") is None or _incomplete(elem)
    return False


def _drop_incomplete_types(graph: onnx.GraphProto) -> None:
    """Forgets the sequence types the legacy exporter leaves without an element type.

    Scripted loops give list values a ``sequence_type`` with an empty element type;
    ONNX allows reading past it, onnx-ir does not. Unknown is what they are.
    """
    kept = [vi for vi in graph.value_info if not _incomplete(vi.type)]
    if len(kept) != len(graph.value_info):
        del graph.value_info[:]
        graph.value_info.extend(kept)
    for vi in (*graph.input, *graph.output):
        if _incomplete(vi.type):
            vi.ClearField("type")
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _drop_incomplete_types(attr.g)
            for sub in attr.graphs:
                _drop_incomplete_types(sub)


def restore_names(model: ir.Model) -> None:
    """Gives back torch's naming to graph inputs and outputs named after a placeholder.

    The legacy exporter names an unnamed input after its first consumer
    (``onnx::Add_1``); for a placeholder that is ``opbridge.lowering::<key>_0``,
    which the user never sees elsewhere. It becomes ``<domain>::<OpType>_0`` of the
    node now consuming it, as torch would have named it had it written that node.
    """
    prefix = PLACEHOLDER_DOMAIN + "::"
    graph = model.graph
    taken = {v.name for v in (*graph.inputs, *graph.outputs) if v.name}
    for value in (*graph.inputs, *graph.outputs):
        if not value.name or not value.name.startswith(prefix):
            continue
        suffix = value.name.rsplit("_", 1)[-1]
        uses = list(value.uses())
        node = uses[0].node if uses else value.producer()
        kind = f"{node.domain or 'onnx'}::{node.op_type}" if node is not None else "onnx::Identity"
        name = f"{kind}_{suffix}"
        while name in taken:
            name += "_"
        taken.add(name)
        value.name = name


def weights_nbytes(model: Any) -> int:
    """Bytes of a module's parameters and buffers (0 for anything else)."""
    if not isinstance(model, torch.nn.Module):
        return 0
    # One walk over the modules (parameters() and buffers() walk them once each).
    seen: dict[int, int] = {}
    for module in model.modules():
        for tensors in (module._parameters, module._buffers):
            for t in tensors.values():
                if t is not None:
                    seen[id(t)] = t.nbytes
    return sum(seen.values())


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
