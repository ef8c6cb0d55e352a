"""The kernel host: opbridge's own ONNX Runtime custom-op library for Python kernels.

The host is one shared object, ``opbridge.runtime._host_ext``, built from
``runtime/host/*.cc`` when opbridge is installed. It is a CPython extension module
and, at the same time, an ONNX Runtime custom-op library: ``library_path()`` is the
module's own file, so ``SessionOptions.register_custom_ops_library`` loads the
image Python already loaded and both sides share one registry of kernels.

For every installed :class:`~opbridge.runtime.KernelSpec` the host registers an
ONNX Runtime kernel whose Compute takes the GIL, hands the inputs to
``spec.compute`` as read-only numpy views of ONNX Runtime's buffers (no copy),
checks what it returns (count, dtype, rank) and copies each output once into the
buffer ONNX Runtime allocates for it.

Conventions kernels see:

* Element types map to numpy dtypes of the same name; ``bool`` is ``numpy.bool_``.
  ``bfloat16`` uses ``ml_dtypes.bfloat16`` when ml_dtypes is installed (it comes
  with onnx) and otherwise raw ``uint16`` bit patterns, both ways.
* String tensors arrive as object arrays of ``str``; string outputs may be any
  numpy array of ``str``/``bytes`` (kinds ``U``, ``S``, ``O`` or ``T``).
* Input views are only valid during the call. A kernel that keeps one gets a
  private copy swapped in and a ``RuntimeWarning``; arrays derived from it are
  not protected, so copy what you keep.
* Attributes are read once per node when ONNX Runtime creates the kernel: ``int``,
  ``float``, ``str``, lists of those (a fresh list per call), or a read-only numpy
  array for a tensor attribute. A missing optional attribute passes its default.
* Output element types: an output whose spec allows exactly one dtype declares
  it to ONNX Runtime. Otherwise ONNX Runtime types it at session creation. Left
  alone, ONNX Runtime gives such an output the element type of the op's last
  input that allows several dtypes (and takes the model's declared type only if
  there is no such input). :func:`register` with ``model=`` avoids that: it adds
  overloads with the input types of the model's nodes (subgraphs and local
  functions included), so that ONNX Runtime keeps the output types the model
  declares. Types come from the model itself; no whole-model shape inference runs
  (see :func:`node_overloads`). The kernel's result must match the
  node's output type exactly; nothing is cast.
* Versions: ONNX Runtime cannot choose a custom kernel by the model's opset, so
  each registration carries one version per op: the newest installed, or with
  ``register(model=...)`` the newest not above the model's opset for the domain.

Threading: ONNX Runtime runs Compute without the GIL on the thread of
``session.run`` or on its inter-op pool; the host takes the GIL itself, so
concurrent ``run`` calls and parallel execution are safe (Python code in kernels
still runs one at a time).
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from opbridge._model import all_nodes
from opbridge.declaration._signature import AttrKind
from opbridge.runtime._kernels import AttrSpec, IOSpec, KernelSpec
from opbridge.runtime._types import as_ir, elem_type, infer_types

__all__ = [
    "DTYPE_NAMES",
    "available",
    "install",
    "installed",
    "library_path",
    "live_kernels",
    "name",
    "node_overloads",
    "register",
    "signature",
    "unavailable_reason",
]

#: Shown by ``Session`` and ``opbridge inspect`` for the route that runs Python kernels.
name = "kernel-host"

# ONNX TensorProto element types (identical to ORT's ONNXTensorElementDataType).
_FLOAT, _UINT8, _INT8, _UINT16, _INT16, _INT32, _INT64, _STRING, _BOOL = 1, 2, 3, 4, 5, 6, 7, 8, 9
_FLOAT16, _DOUBLE, _UINT32, _UINT64, _BFLOAT16 = 10, 11, 12, 13, 16

#: IOSpec dtype names the host accepts, and the element type each one means.
DTYPE_NAMES: dict[str, int] = {
    "float32": _FLOAT,
    "float64": _DOUBLE,
    "float16": _FLOAT16,
    "bfloat16": _BFLOAT16,
    "int8": _INT8,
    "int16": _INT16,
    "int32": _INT32,
    "int64": _INT64,
    "uint8": _UINT8,
    "uint16": _UINT16,
    "uint32": _UINT32,
    "uint64": _UINT64,
    "bool": _BOOL,
    "str": _STRING,
    "string": _STRING,
    "object": _STRING,
}

_lock = threading.Lock()
_ext: ModuleType | None = None
_import_error: str | None = None
# Every installed spec by (domain, op_type, version), for reading a model's nodes.
_specs: dict[tuple[str, str, int], KernelSpec] = {}


def _load() -> ModuleType | None:
    """Imports the extension once; remembers why it failed."""
    global _ext, _import_error
    with _lock:
        if _ext is None and _import_error is None:
            try:
                from opbridge.runtime import _host_ext  # type: ignore[attr-defined]  # built by setup.py
            except ImportError as exc:
                _import_error = (
                    f"the kernel host extension opbridge.runtime._host_ext is not importable "
                    f"({exc}); reinstall opbridge with a C++17 compiler and npm available"
                )
            else:
                _ext = _host_ext
        return _ext


def _require() -> ModuleType:
    ext = _load()
    if ext is None:
        raise RuntimeError(_import_error)
    return ext


def available() -> bool:
    """Whether the kernel host extension is built and importable."""
    return _load() is not None


def unavailable_reason() -> str | None:
    """Why the host is unavailable, or ``None`` when it is available."""
    _load()
    return _import_error


def library_path() -> str:
    """Path for ``SessionOptions.register_custom_ops_library``: the extension itself.

    Raises:
        RuntimeError: The extension is not available.
    """
    path = _require().__file__
    if path is None:  # pragma: no cover - extension modules always have a file
        raise RuntimeError("the kernel host extension has no file path")
    return path


def install(specs: Sequence[KernelSpec]) -> None:
    """Makes ``specs`` available to every ONNX Runtime session created afterwards.

    Idempotent; installing the same ``(domain, op_type, version)`` again replaces its
    kernel for sessions created later (existing sessions keep the one they were
    created with). Either every spec is installed or, on error, none.

    Args:
        specs: Kernels to install.

    Raises:
        ValueError: A spec uses an unknown dtype name or attribute kind, or marks an
            input or output other than the last one variadic.
        TypeError: A spec's ``compute`` is not callable.
        RuntimeError: The extension is not available.
    """
    ext = _require()
    specs = list(specs)
    ext.install([_encode(spec) for spec in specs])
    with _lock:
        for spec in specs:
            _specs[(spec.domain, spec.op_type, int(spec.version))] = spec


def register(
    session_options: Any,
    specs: Sequence[KernelSpec] = (),
    *,
    model: ir.Model | onnx.ModelProto | bytes | str | os.PathLike[str] | None = None,
) -> None:
    """Installs ``specs`` and registers the host on ``session_options``.

    Equivalent to ``install(specs)`` followed by
    ``session_options.register_custom_ops_library(library_path())``, which gives
    every op its newest installed version. When ``model`` is given, the
    registration is tailored to it: each op uses the newest installed version not
    newer than the model's opset for its domain (the oldest if all are newer, as
    a registration without the model would accept too), and typed overloads for its
    custom nodes make ONNX Runtime keep the output element types the model
    declares (see the module docstring). That only affects this registration, even
    with other threads registering the host at the same time.

    Args:
        session_options: An ``onnxruntime.SessionOptions``.
        specs: Kernels to install first (may be empty if installed earlier).
        model: The model the session will run: onnx-ir, proto, serialized bytes or a
            path (read without its weights).

    Raises:
        RuntimeError: The extension is not available.
    """
    ext = _require()
    if specs:
        install(specs)
    overloads: dict[tuple[str, str], list[tuple[int, ...]]] = {}
    versions: dict[tuple[str, str], int] = {}
    if model is not None:
        model_ir = as_ir(model)
        versions = _model_versions(model_ir)
        overloads = node_overloads(model_ir)
    # Applies to this thread's next RegisterCustomOps call, which ONNX Runtime makes
    # synchronously inside register_custom_ops_library below.
    ext.set_next_registration(overloads or None, versions or None)
    try:
        session_options.register_custom_ops_library(library_path())
    finally:
        ext.set_next_registration(None, None)


def _model_versions(model: ir.Model) -> dict[tuple[str, str], int]:
    """The model's opset for the domain of every installed op it imports."""
    opsets = model.opset_imports
    with _lock:
        keys = {(domain, op_type) for domain, op_type, _ in _specs}
    return {key: opsets[key[0]] for key in keys if key[0] in opsets}


def _specs_for(model: ir.Model) -> dict[tuple[str, str], KernelSpec]:
    """Per op, the installed spec a session for ``model`` uses."""
    versions = _model_versions(model)
    chosen: dict[tuple[str, str], KernelSpec] = {}
    with _lock:
        for (domain, op_type, version), spec in sorted(_specs.items(), key=lambda kv: kv[0]):
            key = (domain, op_type)
            limit = versions.get(key)
            # Same rule as the host's registration: newest fitting, else the oldest.
            if key not in chosen or limit is None or version <= limit:
                chosen[key] = spec
    return chosen


def node_overloads(
    model: ir.Model | onnx.ModelProto,
) -> dict[tuple[str, str], list[tuple[int, ...]]]:
    """Input element types of ``model``'s nodes that need a typed overload.

    Every node counts: the main graph's, those of ``If``/``Loop``/``Scan`` bodies at
    any depth and those of local functions. A node qualifies when it runs an
    installed kernel with an input that allows several dtypes, all its inputs have
    known types, and every output that allows several dtypes has a known type.
    Types are the model's own (exporters write them); an input the model leaves
    untyped is typed node-locally from its producer where ONNX can (standard ops,
    declared ops' schemas; see :mod:`opbridge.runtime._types`), never by whole-model
    shape inference. A node with an input that stays untyped gets no overload, and
    ONNX Runtime types its outputs its own way. Nodes of which ONNX Runtime keeps the
    declared output types anyway (absent inputs, repeated variadic inputs) are left
    out, and so are input type combinations that also occur on a node with an
    undeclared output.

    Args:
        model: The model (onnx-ir, or a proto, which is wrapped without copying
            weights). Types inferred for an onnx-ir model are written onto its values.

    Returns:
        ``{(domain, op_type): [input element types padded with 0, ...]}``.
    """
    model = as_ir(model)
    specs = _specs_for(model)
    if not specs:
        return {}
    nodes = [
        (node, spec)
        for node in all_nodes(model)
        if (spec := specs.get((node.domain, node.op_type))) is not None
    ]
    infer_types((v for node, _ in nodes for v in node.inputs), model, shapes=False)
    good: dict[tuple[str, str], set[tuple[int, ...]]] = {}
    bad: dict[tuple[str, str], set[tuple[int, ...]]] = {}
    for node, spec in nodes:
        combo = _input_combo(node, spec)
        if combo is None:
            continue
        target = good if _outputs_declared(node, spec) else bad
        target.setdefault((node.domain, node.op_type), set()).add(combo)
    result = {}
    for key, combos in good.items():
        kept = sorted(combos - bad.get(key, set()))
        if kept:
            result[key] = kept
    return result


def _spec_port(ports: Sequence[IOSpec], index: int) -> IOSpec | None:
    if index < len(ports):
        return ports[index]
    return ports[-1] if ports and ports[-1].variadic else None


def _input_combo(node: ir.Node, spec: KernelSpec) -> tuple[int, ...] | None:
    inputs = node.inputs
    n_formal = len(spec.inputs)
    # More inputs than formal parameters (a repeated variadic input) or an absent
    # input in the middle: ORT keeps the declared output types by itself.
    if len(inputs) > n_formal or any(value is None for value in inputs):
        return None
    combo = [elem_type(value) for value in inputs if value is not None]
    if 0 in combo:
        return None
    if all(len(spec.inputs[i].dtypes) == 1 for i in range(len(inputs))):
        return None  # no input allows several types: nothing to fix
    return (*combo, *([0] * (n_formal - len(inputs))))


def _outputs_declared(node: ir.Node, spec: KernelSpec) -> bool:
    for j, value in enumerate(node.outputs):
        port = _spec_port(spec.outputs, j)
        if value.name and port is not None and len(port.dtypes) != 1 and not elem_type(value):
            return False
    return True


def installed() -> list[tuple[str, str, int]]:
    """``(domain, op_type, version)`` of every installed kernel."""
    return sorted(_require().installed())


def live_kernels() -> int:
    """How many kernel instances (one per node of a live session) exist right now."""
    return int(_require().live_kernels())


def signature(spec: KernelSpec) -> str:
    """Human-readable signature used in error messages.

    Example: ``"my.ops::Scale(x: float32|float64, bias?: any, *rest: any) ->
    (y: float32|float64) [alpha: float = 1.0]"``.
    """
    inputs = ", ".join(_port_text(io) for io in spec.inputs)
    outputs = ", ".join(_port_text(io) for io in spec.outputs)
    text = f"{spec.domain}::{spec.op_type}({inputs}) -> ({outputs})"
    if spec.attributes:
        attrs = ", ".join(_attr_text(a) for a in spec.attributes)
        text += f" [{attrs}]"
    return text


def _port_text(io: IOSpec) -> str:
    prefix = "*" if io.variadic else ""
    suffix = "?" if io.optional else ""
    types = "|".join(io.dtypes) if io.dtypes else "any"
    return f"{prefix}{io.name}{suffix}: {types}"


def _attr_text(attr: AttrSpec) -> str:
    if attr.required:
        return f"{attr.name}: {attr.kind}"
    return f"{attr.name}: {attr.kind} = {attr.default!r}"


@dataclasses.dataclass(frozen=True)
class HostPort:
    """One input or output as the extension reads it (by field name)."""

    name: str
    types: tuple[int, ...]  # ONNX element types; empty: any
    optional: bool
    variadic: bool


@dataclasses.dataclass(frozen=True)
class HostAttr:
    """One attribute as the extension reads it."""

    name: str
    kind: int  # AttrKind.cpp: the extension's AttrKind (runtime/host/host.h)
    default: Any
    required: bool


@dataclasses.dataclass(frozen=True)
class HostOpDef:
    """A kernel definition as ``_host_ext.install`` reads it: the one declaration of the
    interface between this module and the extension, which reads these fields by name."""

    domain: str
    op_type: str
    version: int
    inputs: tuple[HostPort, ...]
    outputs: tuple[HostPort, ...]
    attributes: tuple[HostAttr, ...]
    compute: Any
    signature: str
    writes_out: bool


def _encode_port(io: IOSpec, where: str) -> HostPort:
    types: list[int] = []
    for dtype in io.dtypes:
        key = dtype.name if isinstance(dtype, np.dtype) else str(dtype)
        if key not in DTYPE_NAMES:
            raise ValueError(
                f"{where}: '{io.name}' allows dtype {dtype!r}, which the kernel host does not "
                f"support; use one of {', '.join(sorted(DTYPE_NAMES))}"
            )
        if DTYPE_NAMES[key] not in types:
            types.append(DTYPE_NAMES[key])
    return HostPort(io.name, tuple(types), bool(io.optional), bool(io.variadic))


def _encode_attr(attr: AttrSpec, where: str) -> HostAttr:
    try:
        kind = AttrKind(attr.kind)
    except ValueError:
        raise ValueError(
            f"{where}: attribute '{attr.name}' has kind {attr.kind!r}; expected one of "
            f"{', '.join(kind.value for kind in AttrKind)}"
        ) from None
    return HostAttr(attr.name, kind.cpp, attr.default, bool(attr.required))


def _encode(spec: KernelSpec) -> HostOpDef:
    """The extension's view of a KernelSpec."""
    where = spec.qualified_name
    if not callable(spec.compute):
        raise TypeError(f"{where}: compute is not callable")
    return HostOpDef(
        spec.domain,
        spec.op_type,
        int(spec.version),
        tuple(_encode_port(io, where) for io in spec.inputs),
        tuple(_encode_port(io, where) for io in spec.outputs),
        tuple(_encode_attr(attr, where) for attr in spec.attributes),
        spec.compute,
        signature(spec),
        bool(spec.writes_out),
    )
