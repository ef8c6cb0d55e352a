"""``opbridge.Session``: run an exported model in ONNX Runtime with its kernels."""

from __future__ import annotations

import os
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import torch
from onnx import helper

from opbridge._dtypes import as_numpy, as_torch
from opbridge._errors import KernelError, SessionError
from opbridge._model import has_external_data, read_graph
from opbridge.runtime import _plan
from opbridge.runtime._plan import KernelPlan, KernelSource, plan_kernels
from opbridge.runtime._types import as_ir, elem_type, infer_types

__all__ = ["Session", "kernel_provider", "session_options"]

ModelLike = onnx.ModelProto | bytes | str | os.PathLike[str]

# What opbridge registered on each SessionOptions it configured: ONNX Runtime
# refuses a second registration of the same library ("Domain already set in
# registry"), so a reused SessionOptions is checked against this instead.
_configured: weakref.WeakKeyDictionary[ort.SessionOptions, tuple[frozenset[str], frozenset[str]]]
_configured = weakref.WeakKeyDictionary()

# The kernel host's error text for a kernel interrupted by Ctrl-C (runtime/host/kernel.cc).
_INTERRUPTED = "[opbridge:interrupted]"
_BFLOAT16 = onnx.TensorProto.BFLOAT16
# numpy's dtype for it (ml_dtypes); compared by identity-like equality, since
# dtype.name is computed in Python and costs a microsecond per call.
_BFLOAT16_DTYPE = helper.tensor_dtype_to_np_dtype(_BFLOAT16)


def kernel_provider() -> Any:
    """The module that runs Python kernels: the kernel host, else the fallback.

    Raises:
        SessionError: Neither the kernel host nor onnxruntime-extensions is usable.
    """
    from opbridge.runtime import _ortx

    try:
        from opbridge.runtime import _host
    except ImportError as e:  # the host module itself is missing: a broken install
        reason: str | None = str(e)
    else:
        if _host.available():
            return _host
        reason = _host.unavailable_reason()
    if _ortx.available():
        return _ortx
    raise SessionError(
        "No runtime for Python kernels: opbridge's kernel host is not built "
        f"({reason}); reinstall opbridge with a C++ compiler "
        "(g++) and npm available, or pip install onnxruntime-extensions for the slow fallback."
    )


def _load(model: ModelLike) -> tuple[onnx.ModelProto, bytes | str]:
    """The model's graph (for planning kernels) and what ONNX Runtime should load.

    A path is given to ONNX Runtime as is, so it reads the weights itself (from
    the file or from external data beside it); opbridge only reads the graph.
    """
    if isinstance(model, onnx.ModelProto):
        if has_external_data(model):
            raise SessionError(
                "this model keeps its weights in external data files, which ONNX Runtime finds "
                "only next to the model file: pass the .onnx path instead of the proto, e.g. "
                "opbridge.Session('model.onnx')."
            )
        return model, model.SerializeToString()
    if isinstance(model, (bytes, bytearray)):
        data = bytes(model)
        return _parse(lambda: onnx.load_from_string(data), "the model bytes"), data
    path = Path(os.fspath(model))
    return read_model_graph(path), str(path)


def read_model_graph(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """The graph of a model file without its weights; errors name the file and the cause."""
    if not os.path.isfile(path):
        raise SessionError(f"model file '{os.fspath(path)}' does not exist")
    return _parse(lambda: read_graph(path), f"model file '{os.fspath(path)}'")


def _parse(load: Any, what: str) -> onnx.ModelProto:
    """Runs ``load``; a truncated or foreign file becomes an error naming it."""
    try:
        return load()  # type: ignore[no-any-return]
    except Exception as e:  # protobuf's DecodeError and friends say nothing about the file
        raise SessionError(
            f"{what} is not a readable ONNX model (truncated, or not ONNX): {type(e).__name__}: {e}"
        ) from e


# ONNX Runtime implements each of its own contrib domains at this version only.
_ORT_CONTRIB_VERSIONS = {"com.microsoft": 1}


def _runnable(proto: onnx.ModelProto, data: bytes | str) -> tuple[bytes | str, list[str]]:
    """Restamps ONNX Runtime's contrib domains at the version ORT implements.

    ``custom_opsets={"com.microsoft": 5}`` is legal ONNX, but ONNX Runtime resolves
    ``com.microsoft`` ops only at version 1 and rejects the node otherwise. All its
    contrib ops are defined since version 1, so running at 1 is the same model.
    """
    notes = []
    for opset in proto.opset_import:
        supported = _ORT_CONTRIB_VERSIONS.get(opset.domain)
        if supported is not None and opset.version > supported:
            notes.append(f"{opset.domain} opset {opset.version} run as {supported}")
    if not notes:
        return data, notes
    if isinstance(data, str):  # the whole model is needed to rewrite it
        full = onnx.load(data, load_external_data=False)
        if has_external_data(full):
            raise SessionError(
                f"{data}: ONNX Runtime only runs com.microsoft at version 1, and a model with "
                f"external data cannot be restamped in memory; export it without "
                f"custom_opsets={{'com.microsoft': ...}}."
            )
        proto = full
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    for opset in copy.opset_import:
        if opset.domain in _ORT_CONTRIB_VERSIONS:
            opset.version = min(opset.version, _ORT_CONTRIB_VERSIONS[opset.domain])
    for fn in copy.functions:
        for opset in fn.opset_import:
            if opset.domain in _ORT_CONTRIB_VERSIONS:
                opset.version = min(opset.version, _ORT_CONTRIB_VERSIONS[opset.domain])
    return copy.SerializeToString(), notes


def _configure(options: ort.SessionOptions, plan: KernelPlan, model: ir.Model | None) -> str | None:
    """Registers the plan's kernels with ``options``; returns the Python route's name."""
    if plan.missing:
        raise SessionError(_plan.missing_kernel_message(plan))
    ops = frozenset(spec.qualified_name for spec in plan.specs)
    libraries = frozenset(str(library) for library in plan.libraries)
    done = _configured.get(options)
    if done is not None:
        # These options were configured before (one SessionOptions, several sessions).
        if ops <= done[0] and libraries <= done[1]:
            return kernel_provider().name if ops else None
        raise SessionError(
            f"these SessionOptions were already set up by opbridge for other kernels "
            f"(kernels {sorted(done[0])}, libraries {sorted(done[1])}); this model also needs "
            f"{sorted((ops - done[0]) | (libraries - done[1]))}. ONNX Runtime registers a "
            f"library once per SessionOptions: pass new SessionOptions for this model."
        )
    # Custom domains may be stamped with any version (custom_opsets={"mydomain": 5}).
    options.add_session_config_entry("session.allow_released_opsets_only", "0")
    if plan.specs:
        _quiet_spinning(options)
    route = None
    if plan.specs:
        provider = kernel_provider()
        if provider.__name__.endswith("_ortx"):
            provider.install(plan.specs, io_types=plan.io_types)
            options.register_custom_ops_library(provider.library_path())
        else:
            # With the model, the host fixes each node's types and picks op versions
            # by the model's opsets.
            provider.register(options, plan.specs, model=model)
        route = provider.name
    for library in plan.libraries:
        options.register_custom_ops_library(str(library))
    if plan.specs and hasattr(provider, "installed"):  # the host registers every installed op
        ops = frozenset(f"{d}::{o}" for d, o, _ in provider.installed())
    _configured[options] = (ops, libraries)
    return route


def _typed_custom_outputs(
    proto: onnx.ModelProto, model: ir.Model, data: bytes | str
) -> tuple[onnx.ModelProto, bytes | str]:
    """Types the outputs of custom nodes that the model leaves untyped.

    ONNX Runtime cannot always infer the element type of a custom op's output (the
    host's ops allow any type), and reports that as a long list of candidate types.
    The schema opbridge registers for a declared op can (it runs the op's fake
    implementation), so each such output is typed node-locally from its node's input
    types (:func:`~opbridge.runtime._types.infer_types`; no whole-model shape
    inference) and written into the model: as ``value_info``, or onto a graph output
    that has no element type. ``model`` is ``proto`` as onnx-ir and gets the types too.

    Only the main graph's values are written (a subgraph's custom outputs keep
    ONNX Runtime's own typing). A model read from a file whose weights live beside
    it is left as it is (ONNX Runtime's own message follows); a self-contained one is
    then read whole to be rewritten, which only happens for such untyped outputs.
    """
    untyped = [
        value
        for nodes in _plan.custom_nodes(model).values()
        for node in nodes
        if node.graph is model.graph
        for value in node.outputs
        if value.name and not elem_type(value)
    ]
    if not untyped:
        return proto, data
    infer_types(untyped, model)
    found = {v.name: ir.serde.serialize_value(v) for v in untyped if v.name and elem_type(v)}
    if not found:
        return proto, data
    if isinstance(data, str):
        # Only the graph was read: the rewritten model needs the weights too.
        if has_external_data(proto):
            return proto, data
        proto = onnx.load(data)
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    for info in (*copy.graph.output, *copy.graph.value_info):  # declared without a type
        if info.name in found:
            info.CopyFrom(found.pop(info.name))
    copy.graph.value_info.extend(found.values())
    return copy, copy.SerializeToString()


def _quiet_spinning(options: ort.SessionOptions) -> None:
    """Stops ONNX Runtime's pools from spinning while Python kernels run.

    A Python kernel runs on the thread that called ``run`` (holding the GIL), and a
    torch kernel also runs torch's own OpenMP pool. ORT's intra-op threads spin-wait
    between ops by default and so take the very cores those need: on a 2-core
    machine the same 1M-element torch call varied from 0.2 ms to 9.5 ms, and a
    chain of 20 numpy kernels ran 13x slower than with one ORT thread. With spinning
    off, ORT's idle threads sleep. A value the user set on ``options`` is kept.
    """
    for key in ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning"):
        try:
            options.get_session_config_entry(key)
        except Exception:  # not set by the user
            options.add_session_config_entry(key, "0")


def session_options(
    model: ModelLike | None = None,
    *,
    libraries: Sequence[str | os.PathLike[str]] = (),
    options: ort.SessionOptions | None = None,
) -> ort.SessionOptions:
    """``onnxruntime.SessionOptions`` with every kernel a model needs registered.

    For users who create ``onnxruntime.InferenceSession`` themselves::

        sess = onnxruntime.InferenceSession("model.onnx", opbridge.session_options("model.onnx"))

    Args:
        model: The model whose custom nodes need kernels; ``None`` registers every
            op declared in this process.
        libraries: Extra C++ custom-op libraries to load.
        options: Options to add to; new ones by default.

    Raises:
        SessionError: A custom node has no kernel; the message names it.
    """
    proto = model if isinstance(model, onnx.ModelProto) or model is None else _load(model)[0]
    model_ir = None if proto is None else as_ir(proto)  # read once, for planning and the host
    options = options or ort.SessionOptions()
    _configure(options, plan_kernels(model_ir, libraries=[Path(p) for p in libraries]), model_ir)
    return options


class Session:
    """An ONNX Runtime session that loads the kernels of a model's custom ops.

    Call it with the model's inputs, positionally or by name: torch tensors give
    torch tensors back, numpy arrays give numpy arrays; one output is returned bare,
    several as a tuple.

    Args:
        model: ``onnx.ModelProto``, serialized bytes, or a path.
        providers: ONNX Runtime execution providers; CPU by default.
        libraries: Extra C++ custom-op libraries to load.
        options: Session options to start from.

    Raises:
        SessionError: The model cannot be loaded, or a custom node has no kernel.
    """

    def __init__(
        self,
        model: ModelLike,
        *,
        providers: Sequence[str] | None = None,
        libraries: Sequence[str | os.PathLike[str]] = (),
        options: ort.SessionOptions | None = None,
    ) -> None:
        proto, data = _load(model)
        model_ir = as_ir(proto)  # the one onnx-ir view of the graph (weights stay in the proto)
        proto, data = _typed_custom_outputs(proto, model_ir, data)
        data, self._notes = _runnable(proto, data)
        self._plan = plan_kernels(model_ir, libraries=[Path(p) for p in libraries])
        if options is None:
            options = ort.SessionOptions()
            # Failures reach the user as exceptions; ORT would also log them to stderr.
            options.log_severity_level = 4
        self._options = options
        self._route = _configure(self._options, self._plan, model_ir)
        try:
            self._session = ort.InferenceSession(
                data,
                sess_options=self._options,
                providers=list(providers or ["CPUExecutionProvider"]),
            )
        except Exception as e:
            raise SessionError(f"ONNX Runtime could not load the model: {e}") from e
        self._inputs = self._session.get_inputs()
        self._outputs = self._session.get_outputs()
        self._bfloat16 = any(o.type == "tensor(bfloat16)" for o in self._outputs)
        # A graph input without a shape (unknown rank) accepts any rank.
        self._input_types = {
            i.name: (
                i.type.tensor_type.elem_type,
                i.type.tensor_type.shape if i.type.tensor_type.HasField("shape") else None,
            )
            for i in proto.graph.input
        }

    # -- facts ---------------------------------------------------------------------
    @property
    def options(self) -> ort.SessionOptions:
        """The ``SessionOptions`` this session was made with."""
        return self._options

    @property
    def inner(self) -> ort.InferenceSession:
        """The underlying ``onnxruntime.InferenceSession``."""
        return self._session

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self._inputs]

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self._outputs]

    @property
    def kernel_sources(self) -> dict[str, KernelSource]:
        """Where each custom node's kernel comes from, by ``"domain::op_type"``."""
        return dict(self._plan.sources)

    @property
    def python_kernel_route(self) -> str | None:
        """The runtime of Python kernels (the kernel host or the fallback), if any."""
        return self._route

    def __repr__(self) -> str:
        kernels = ", ".join(
            f"{k}: {s.provider}" + (f" ({s.detail})" if s.provider == "python" else "")
            for k, s in self._plan.sources.items()
        )
        route = f", python kernels via {self._route}" if self._route else ""
        notes = f", notes={self._notes}" if self._notes else ""
        return (
            f"Session(inputs={self.input_names}, outputs={self.output_names}, "
            f"custom kernels=[{kernels}]{route}{notes})"
        )

    # -- running -------------------------------------------------------------------
    def _feeds(self, args: Sequence[Any], kwargs: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        names = self.input_names
        if len(args) > len(names):
            raise SessionError(
                f"the model takes {len(names)} inputs {names}, got {len(args)} positional ones"
            )
        given = dict(zip(names, args, strict=False))
        for k, v in kwargs.items():
            if k not in names:
                raise SessionError(f"the model has no input '{k}'; its inputs are {names}")
            if k in given:
                raise SessionError(f"input '{k}' given twice")
            given[k] = v
        missing = [n for n in names if n not in given]
        if missing:
            raise SessionError(f"missing model inputs {missing}; the model takes {names}")
        want_torch = any(isinstance(v, torch.Tensor) for v in given.values())
        feeds = {n: self._check(n, given[n]) for n in names}
        return feeds, want_torch

    def _check(self, name: str, value: Any) -> np.ndarray:
        if isinstance(value, torch.Tensor):
            array = as_numpy(value.detach().cpu().contiguous())
        elif isinstance(value, np.ndarray):
            array = value
        elif isinstance(value, (int, float, bool, list)):
            array = np.asarray(value)
        else:
            raise SessionError(
                f"input '{name}' must be a torch tensor or numpy array, got {type(value).__name__}"
            )
        elem_type, shape = self._input_types.get(name, (0, None))
        if elem_type:
            expected = helper.tensor_dtype_to_np_dtype(elem_type)
            if array.dtype.byteorder == ">" and array.dtype.newbyteorder("=") == expected:
                # Same type, other byte order ("must be float32, got float32" otherwise).
                array = array.astype(expected)
            if array.dtype != expected:
                raise SessionError(
                    f"input '{name}' must be {expected.name}, got {array.dtype.name}; convert it "
                    f"first (x.to(torch.{expected.name}) or x.astype(np.{expected.name}))"
                )
        if shape is not None and len(shape.dim) != array.ndim:
            dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in shape.dim]
            raise SessionError(
                f"input '{name}' must have rank {len(shape.dim)} (shape {dims}), got "
                f"shape {list(array.shape)}"
            )
        if shape is not None:
            for axis, (d, n) in enumerate(zip(shape.dim, array.shape, strict=True)):
                if d.HasField("dim_value") and d.dim_value != n:
                    raise SessionError(
                        f"input '{name}' must have size {d.dim_value} on axis {axis}, got shape "
                        f"{list(array.shape)}; export with dynamic_shapes to accept other sizes"
                    )
        return array

    def run(self, feeds: dict[str, Any]) -> list[np.ndarray]:
        """Runs with named inputs (numpy arrays); returns every output as numpy."""
        checked, _ = self._feeds((), feeds)
        return self._run(checked)

    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        try:
            if self._bfloat16 or any(a.dtype == _BFLOAT16_DTYPE for a in feeds.values()):
                return self._run_bfloat16(feeds)
            return self._session.run(None, feeds)  # type: ignore[no-any-return]
        except Exception as e:
            if _INTERRUPTED in str(e):  # Ctrl-C inside a Python kernel
                raise KeyboardInterrupt from None
            raise KernelError(f"ONNX Runtime failed: {e}") from e

    def _run_bfloat16(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """ONNX Runtime's ``run`` takes and returns no bfloat16 (no numpy type): pass the bits."""
        import ctypes

        import ml_dtypes

        def ort_value(array: np.ndarray) -> Any:
            if array.dtype != _BFLOAT16_DTYPE:
                return ort.OrtValue.ortvalue_from_numpy(array)
            bits = np.ascontiguousarray(array).view(np.uint16)
            return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(bits, onnx.TensorProto.BFLOAT16)

        values = self._session.run_with_ort_values(
            None, {k: ort_value(v) for k, v in feeds.items()}
        )
        arrays = []
        for value in values:
            if value.data_type() != "tensor(bfloat16)":
                arrays.append(value.numpy())
                continue
            shape = tuple(value.shape())
            count = int(np.prod(shape, dtype=np.int64))
            bits = np.ctypeslib.as_array((ctypes.c_uint16 * count).from_address(value.data_ptr()))
            arrays.append(bits.copy().view(ml_dtypes.bfloat16).reshape(shape))
        return arrays

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        feeds, want_torch = self._feeds(args, kwargs)
        outputs: list[Any] = self._run(feeds)
        if want_torch:
            # String tensors have no torch type: they stay numpy arrays of str.
            outputs = [
                o if o.dtype.kind in "OUS" else as_torch(np.ascontiguousarray(o)) for o in outputs
            ]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)
