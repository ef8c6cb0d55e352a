"""Finding every op an export cannot write, and the torch fallback for them.

An op is *unwritable* when no opbridge lowering and no exporter can write it. Both
exporters stop at the first one; opbridge finds them all, so the error lists each
with its fix, and ``fallback="torch"`` writes each as an ``opbridge.torch`` node run
by the op's own torch kernel (see :mod:`opbridge.declaration._adopt`).

How they are found:

* dynamo: the ``ExportedProgram`` is decomposed as torch's exporter would do it
  (only when some op has no ONNX function before decomposition), and every op left
  without an ONNX function is unwritable; the op it came from (``original_aten``)
  is what falls back, so one node replaces the whole decomposition. An op with an
  ONNX function that still fails (``aten::histc`` with a computed range) is found
  when the conversion names it.
* TorchScript: the legacy exporter names the op it has no symbolic for; it is
  written as a fallback placeholder and the export runs again, until none is left.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Iterable
from typing import Any

import torch

from opbridge._errors import DeclarationError
from opbridge.declaration._adopt import (
    FALLBACK_DOMAIN,
    adopt_advice,
    check_adoptable,
    fallback_op,
    find_existing,
)
from opbridge.declaration._signature import overload_name
from opbridge.lowering._expand import PlaceholderTable

__all__ = ["Unwritable", "failing_ops", "static_unwritable", "unwritable_message"]

# Ops torch's exporter removes or handles itself before looking for ONNX functions.
_IGNORED = {
    "aten::sym_constrain_range_for_size.default",
    "aten::sym_constrain_range.default",
    "aten::_assert_async.msg",
    "aten::_assert_async.default",
    "aten::_assert_scalar.default",
    "aten::_assert_tensor_metadata.default",
    "aten::_functional_assert_async.msg",
}
_TS_FAILURE = (
    re.compile(r"Exporting the operator '(\w+::\w+)'"),
    re.compile(r"unrecognized namespace (\w+::\w+)"),
    re.compile(r"node has kind '(\w+::\w+)'"),
    re.compile(r"export of operator (\w+)"),
)
_DYNAMO_FAILURE = re.compile(r"target=torch\.ops\.(\w+)\.(\w+)\.(\w+)\]")


@dataclasses.dataclass
class Unwritable:
    """One op the export cannot write.

    Attributes:
        name: ``"ns::name.overload"`` (or ``"ns::name"`` when the exporter named the packet).
        overloads: The overloads the torch fallback can adopt (empty: it cannot).
        reason: Why it cannot fall back, when it cannot.
    """

    name: str
    overloads: list[torch._ops.OpOverload]
    reason: str = ""

    def fix(self) -> str:
        if not self.overloads:
            return self.reason
        target = self.overloads[0] if "." in self.name else self.overloads[0].overloadpacket
        lowering = f"opbridge.register_lowering('{self.name}', fn) writes it with ONNX ops"
        adopt = f"{adopt_advice(target)} runs its torch kernel as a mydomain node"
        if self.name.startswith(("aten::", "prims::")):
            return f"{lowering}, or {adopt}"
        return f"{adopt}, or {lowering}"


@functools.lru_cache(maxsize=1)
def _torchlib_registry() -> Any:
    from torch.onnx._internal.exporter._registration import ONNXRegistry

    return ONNXRegistry.from_torchlib()


def _unwritable_overloads(overloads: Iterable[torch._ops.OpOverload], name: str) -> Unwritable:
    adoptable: list[torch._ops.OpOverload] = []
    reasons: list[str] = []
    for overload in overloads:
        try:
            check_adoptable(overload)
        except DeclarationError as e:
            reasons.append(str(e))
        else:
            adoptable.append(overload)
    reason = reasons[0] if reasons and not adoptable else ""
    return Unwritable(name, adoptable, reason)


def _graph_modules(program: torch.export.ExportedProgram) -> Iterable[torch.fx.GraphModule]:
    for module in program.graph_module.modules():
        if isinstance(module, torch.fx.GraphModule):
            yield module


def _op_of(node: torch.fx.Node) -> torch._ops.OpOverload | None:
    target: Any = node.target
    if target is torch.ops.higher_order.with_effects and len(node.args) > 1:
        target = node.args[1]  # an effectful op (e.g. aten::_linalg_check_errors)
    return target if isinstance(target, torch._ops.OpOverload) else None


def _without_function(
    program: torch.export.ExportedProgram, table: PlaceholderTable
) -> list[tuple[torch.fx.Node, torch._ops.OpOverload]]:
    registry = _torchlib_registry()
    nodes = []
    for module in _graph_modules(program):
        for node in module.graph.nodes:
            target = _op_of(node) if node.op == "call_function" else None
            if target is None:
                continue
            name = overload_name(target)
            if name in table.by_overload or name in _IGNORED or registry.is_registered(target):
                continue
            nodes.append((node, target))
    return nodes


def _origin(node: torch.fx.Node, before: dict[str, torch.fx.Node]) -> torch.fx.Node | None:
    """The node of the program before decomposition that ``node`` came from."""
    sources = node.meta.get("from_node") or []
    source = sources[-1] if sources else None
    while source is not None:
        original = before.get(source.name)
        if original is not None and _op_of(original) is not None:
            return original
        parents = getattr(source, "from_node", None) or []
        source = parents[-1] if parents else None
    return None


def static_unwritable(
    program: torch.export.ExportedProgram, table: PlaceholderTable
) -> list[Unwritable]:
    """The ops of ``program`` that neither ``table`` nor torch's ONNX functions write."""
    if not _without_function(program, table):
        return []
    from torch.onnx._internal.exporter import _decomp

    registry = _torchlib_registry()
    supported = set(_decomp.get_onnx_implemented_overloads(registry))
    supported |= {p.overload for p in table.entries.values()}
    decomposed = program.run_decompositions(
        _decomp.create_onnx_friendly_decomposition_table(supported)
    )
    before = {n.name: n for m in _graph_modules(program) for n in m.graph.nodes}
    found: dict[str, Unwritable] = {}
    for node, target in _without_function(decomposed, table):
        original = _origin(node, before)
        original_op = _op_of(original) if original is not None else None
        if original_op is not None and original_op is not target:
            try:  # fall back on the op the user wrote, not on its decomposition
                check_adoptable(original_op)
                target = original_op
            except DeclarationError:
                pass
        name = overload_name(target)
        if name not in found:
            found[name] = _unwritable_overloads([target], name)
    return list(found.values())


def failing_ops(error: BaseException, exporter: str) -> Unwritable | None:
    """The op an exporter's failure names, if it is a torch op (else ``None``)."""
    texts: list[str] = []
    seen: BaseException | None = error
    while seen is not None and len(texts) < 8:
        texts.append(str(seen))
        seen = seen.__cause__ or seen.__context__
    text = "\n".join(texts)
    if exporter == "dynamo":
        match = _DYNAMO_FAILURE.search(text)
        if match is None:
            return None
        name = f"{match[1]}::{match[2]}.{match[3]}"
        overloads = find_existing(name)
        return _unwritable_overloads(overloads, name) if overloads else None
    for pattern in _TS_FAILURE:
        match = pattern.search(text)
        if match is None:
            continue
        name = match[1] if "::" in match[1] else f"aten::{match[1]}"
        if name == "prim::PythonOp":
            return Unwritable(
                name,
                [],
                "a Python torch.autograd.Function without a symbolic: give it a staticmethod "
                "symbolic(g, ...), or wrap its call in @torch.library.custom_op and declare or "
                "adopt that op with opbridge.custom_op",
            )
        overloads = find_existing(name)
        if overloads:
            return _unwritable_overloads(overloads, name)
    return None


def fallback_ops(found: Iterable[Unwritable]) -> list[Any]:
    """The ``opbridge.torch`` ops that write ``found``."""
    return [fallback_op(o) for u in found for o in u.overloads]


def unwritable_message(found: list[Unwritable], exporter: str, *, complete: bool) -> str:
    """The export error naming every unwritable op with its fix."""
    lines = [
        f"{len(found)} op{'s' if len(found) != 1 else ''} of this model cannot be written to "
        f"ONNX by opbridge or torch's exporter (exporter={exporter!r}):"
    ]
    lines += [f"  - {u.name}: {u.fix()}" for u in found]
    if all(u.overloads for u in found):
        lines.append(
            "Or export with fallback='torch' to write each one as a "
            f"{FALLBACK_DOMAIN} node that ONNX Runtime runs with the op's own torch kernel "
            "(needs Python and torch where the model runs)."
        )
    if not complete:
        lines.append("The export stopped there; more ops may follow once these are fixed.")
    return "\n".join(lines)
