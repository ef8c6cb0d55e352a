"""Which kernels a model needs, and where each one comes from."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import onnx
import onnx_ir as ir

from opbridge._errors import SessionError
from opbridge._model import all_nodes
from opbridge._registry import REGISTRY
from opbridge.runtime._kernels import KernelSpec
from opbridge.runtime._types import as_ir, elem_type

__all__ = ["ORT_BUILTIN_DOMAINS", "KernelPlan", "KernelSource", "custom_nodes", "plan_kernels"]

# Domains whose ops ONNX Runtime implements itself.
ORT_BUILTIN_DOMAINS = frozenset({
    "", "ai.onnx", "ai.onnx.ml", "com.microsoft", "com.microsoft.nchwc",
    "com.microsoft.experimental", "ai.onnx.training", "ai.onnx.preview.training",
    "com.ms.internal.nhwc",
})  # fmt: skip

Provider = Literal["python", "native", "user-library", "missing"]


@dataclasses.dataclass(frozen=True)
class KernelSource:
    """Where the kernel of one custom node type comes from.

    Attributes:
        op: ``"domain::op_type"``.
        provider: ``"python"`` (a Python or torch kernel run by the kernel host),
            ``"native"`` (a C++ library), ``"user-library"`` (a library the caller
            passed; opbridge cannot see which ops it holds) or ``"missing"``.
        detail: The kernel's origin (``torch``, ``numpy``) or the library path.
    """

    op: str
    provider: Provider
    detail: str = ""


@dataclasses.dataclass
class KernelPlan:
    """Everything a session needs for a model's custom nodes."""

    sources: dict[str, KernelSource]
    specs: list[KernelSpec]
    libraries: list[Path]
    io_types: dict[str, tuple[tuple[int, ...], tuple[int, ...]]]

    @property
    def missing(self) -> list[str]:
        return [k for k, s in self.sources.items() if s.provider == "missing"]


ModelLike = onnx.ModelProto | ir.Model


def _custom_nodes(model: ir.Model) -> dict[str, list[ir.Node]]:
    local = {(f.domain, f.name) for f in model.functions.values()}
    found: dict[str, list[ir.Node]] = {}
    for node in all_nodes(model):
        if node.domain in ORT_BUILTIN_DOMAINS or (node.domain, node.op_type) in local:
            continue
        found.setdefault(f"{node.domain}::{node.op_type}", []).append(node)
    return found


def custom_nodes(model: ModelLike) -> dict[str, list[ir.Node]]:
    """Nodes no ONNX Runtime build implements, by ``"domain::op_type"``.

    Subgraphs (``If``/``Loop``/``Scan`` bodies) and local functions included.
    """
    return _custom_nodes(as_ir(model))


def _shipped_ops_in(libraries: Sequence[Path]) -> dict[str, Path]:
    """The ops of opbridge's shipped native library, when the caller passed it."""
    from opbridge.native import SHIPPED_OPS, is_shipped_library

    for library in libraries:
        if is_shipped_library(library):
            return {op: library for op in SHIPPED_OPS}
    return {}


def _io_types(nodes: list[ir.Node]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Element types of the first node's inputs and outputs, as the model declares them."""
    node = nodes[0]
    return (
        tuple(elem_type(v) for v in node.inputs if v is not None),
        tuple(elem_type(v) for v in node.outputs if v.name),
    )


def _make_fallback_ops(model: ir.Model, needed: Iterable[str]) -> None:
    """Adopts the torch ops of a model's ``opbridge.torch`` nodes (``fallback="torch"``)."""
    from opbridge.declaration._adopt import FALLBACK_DOMAIN, fallback_ops_of_model

    prefix = FALLBACK_DOMAIN + "::"
    op_types = sorted(key[len(prefix) :] for key in needed if key.startswith(prefix))
    if not op_types:
        return
    missing = fallback_ops_of_model(op_types, dict(model.metadata_props))
    if missing:
        raise SessionError("No kernel for " + "; ".join(missing) + ".")


def plan_kernels(
    model: ModelLike | None,
    *,
    libraries: Sequence[str | Path] = (),
) -> KernelPlan:
    """Finds a kernel for every custom node of ``model`` (every declared op if ``None``).

    A declared op's own native library wins, then its Python or torch kernel, then
    the libraries passed in ``libraries``. opbridge's shipped kernels serve the seeds'
    ops only when their library is among them (``libraries=[opbridge.library_path()]``):
    a node is never bound to them silently.

    Raises:
        SessionError: A node has no kernel anywhere; names the op and the fix.
    """
    user_libraries = [Path(p) for p in libraries]
    for p in user_libraries:
        if not p.is_file():
            raise SessionError(f"custom op library '{p}' does not exist")
    if model is None:
        needed: dict[str, list[ir.Node]] = {op.onnx_name: [] for op in REGISTRY.ops()}
    else:
        model_ir = as_ir(model)
        # Types come from the model's own value infos: no shape inference.
        needed = _custom_nodes(model_ir)
        _make_fallback_ops(model_ir, needed)  # fallback ops of the model, adopted from torch
    sources: dict[str, KernelSource] = {}
    specs: list[KernelSpec] = []
    libs: list[Path] = list(user_libraries)
    io_types: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    shipped = _shipped_ops_in(user_libraries)
    for key, nodes in sorted(needed.items()):
        domain, op_type = key.split("::", 1)
        declared = REGISTRY.ops_for_node(domain, op_type)
        if declared:
            op = max(declared, key=lambda o: o.version)
            if op.native_library is not None:
                sources[key] = KernelSource(key, "native", str(op.native_library))
                if op.native_library not in libs:
                    libs.append(op.native_library)
            else:
                spec = op.kernel_spec()
                if nodes:
                    io_types[key] = _io_types(nodes)
                specs.append(spec)
                sources[key] = KernelSource(key, "python", spec.origin)
            continue
        if key in shipped:
            sources[key] = KernelSource(key, "native", str(shipped[key]))
        elif user_libraries:
            sources[key] = KernelSource(key, "user-library", ", ".join(map(str, user_libraries)))
        else:
            sources[key] = KernelSource(key, "missing")
    return KernelPlan(sources, specs, libs, io_types)


def missing_kernel_message(plan: KernelPlan) -> str:
    ops = plan.missing
    first = ops[0]
    domain, op_type = first.split("::", 1)
    return (
        f"No kernel for custom op {', '.join(ops)} (domain '{domain}'). In this process, adopt "
        f"the torch op it stands for, opbridge.custom_op(torch.ops.ns.name, domain='{domain}', "
        f"op_type='{op_type}') (import or load the op first), or declare it with "
        f"@opbridge.custom_op('ns::name', domain='{domain}', op_type='{op_type}') on its "
        f"implementation; either way the torch implementation becomes the kernel. Or pass the "
        f"C++ library that implements it: opbridge.Session(model, libraries=['libmyops.so'])."
        + _shipped_hint(ops)
    )


def _shipped_hint(ops: Sequence[str]) -> str:
    from opbridge.native import SHIPPED_OPS

    seeds = [op for op in ops if op in SHIPPED_OPS]
    if not seeds:
        return ""
    return (
        f" opbridge ships C++ kernels for {', '.join(seeds)}, used only when asked: "
        "opbridge.Session(model, libraries=[opbridge.library_path()])."
    )
