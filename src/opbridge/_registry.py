"""The one registry at the centre of opbridge: declared ops and lowerings.

Both exporter adapters, the runtime and the CLI read this registry; nothing else keeps
its own table of ops. Lowerings are keyed by a canonical torch op name:
``"ns::name.overload"`` for one overload, ``"ns::name"`` for every overload.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch

from opbridge._errors import LoweringError

if TYPE_CHECKING:
    from opbridge.declaration._custom_op import CustomOpDef

__all__ = ["REGISTRY", "Lowering", "Registry", "canonical_target", "resolve_torch_target"]

_TARGET_RE = re.compile(
    r"^(?P<ns>[A-Za-z_][A-Za-z0-9_]*)::(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"(?:\.(?P<overload>[A-Za-z0-9_]+))?$"
)


@dataclasses.dataclass(frozen=True)
class Lowering:
    """How one torch op is written in ONNX.

    Attributes:
        target: Canonical torch op name, ``"ns::name"`` or ``"ns::name.overload"``.
        fn: ``fn(op, *args, **kwargs)`` writing ONNX nodes with the builder ``op``.
        function_domain: When set, the lowering becomes an ONNX local function of
            this domain named after ``fn`` instead of being inlined.
        contrib: Used only when the export asks for ``contrib_ops=True``.
        shipped: Shipped by opbridge; a user's lowering for the same target wins.
        node: ``(domain, op_type, version)`` when ``fn`` writes exactly one node of
            that type, with the op's arguments bound as
            :func:`~opbridge.declaration._signature.node_arguments` binds them (a
            declared op without a lowering of its own). An exporter may then write
            that node itself instead of a placeholder.
    """

    target: str
    fn: Callable[..., Any]
    function_domain: str | None = None
    contrib: bool = False
    shipped: bool = False
    node: tuple[str, str, int] | None = None

    @property
    def name(self) -> str:
        return getattr(self.fn, "__name__", "lowering")


def canonical_target(target: Any) -> str:
    """Returns the canonical name of a torch op given as an object or a string.

    Args:
        target: An ``OpOverload`` (``torch.ops.aten.add.Tensor``), an
            ``OpOverloadPacket`` (``torch.ops.aten.add``), an opbridge custom op, or a
            string ``"aten::add.Tensor"`` / ``"aten::add"`` / ``"::inverse"``.

    Raises:
        LoweringError: The target is not a torch op or a well-formed name.
    """
    if isinstance(target, torch._ops.OpOverload):
        return f"{target.namespace}::{target._opname}.{target._overloadname}"
    if isinstance(target, torch._ops.OpOverloadPacket):
        return target._qualified_op_name
    qualified = getattr(target, "qualified_name", None)  # an opbridge CustomOpDef
    if isinstance(qualified, str):
        return qualified
    if isinstance(target, torch._library.custom_ops.CustomOpDef):  # torch.library.custom_op
        return target._qualname
    if isinstance(target, str):
        name = "aten" + target if target.startswith("::") else target
        match = _TARGET_RE.match(name)
        if match is None:
            raise LoweringError(
                f"'{target}' is not a torch op name; write it as 'namespace::op' or "
                f"'namespace::op.overload', e.g. 'aten::add.Tensor'."
            )
        return name
    raise LoweringError(
        f"Cannot register a lowering for {target!r}: pass a torch op "
        f"(torch.ops.aten.add.Tensor, torch.ops.mynamespace.op, the object "
        f"torch.library.custom_op returned, an opbridge op) or its name ('aten::add.Tensor')."
    )


def resolve_torch_target(name: str) -> list[torch._ops.OpOverload]:
    """Returns the op overloads a canonical target name covers.

    Raises:
        LoweringError: No such op is registered with torch (typo, or library not loaded).
    """
    match = _TARGET_RE.match(name)
    if match is None:
        raise LoweringError(f"'{name}' is not a torch op name.")
    ns, op_name, overload = match["ns"], match["name"], match["overload"]
    try:
        packet = getattr(getattr(torch.ops, ns), op_name)
        if overload is None:
            return [getattr(packet, o) for o in packet.overloads()]
        return [getattr(packet, overload)]
    except (AttributeError, RuntimeError) as e:
        raise LoweringError(
            f"torch has no op '{name}'. Check the spelling, or load the library that "
            f"defines it first (torch.ops.load_library(...) or import the module)."
        ) from e


class Registry:
    """Declared custom ops and lowerings, thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._ops: dict[str, CustomOpDef] = {}
        self._user: dict[str, Lowering] = {}
        self._shipped: dict[str, Lowering] = {}
        self._fallback: dict[str, CustomOpDef] = {}  # by op_type, domain opbridge.torch

    # -- declared ops -------------------------------------------------------------
    def add_op(self, op: CustomOpDef) -> None:
        with self._lock:
            self._ops[op.qualified_name] = op

    def remove_op(self, op: CustomOpDef | str) -> None:
        """Forgets a declared op (its torch op stays registered with torch).

        Given a name, whichever op has it; given an op, only if it is still the one
        declared under its name.
        """
        with self._lock:
            if isinstance(op, str):
                self._ops.pop(op, None)
            elif self._ops.get(op.qualified_name) is op:
                del self._ops[op.qualified_name]

    def ops(self) -> list[CustomOpDef]:
        with self._lock:
            return list(self._ops.values())

    def op(self, qualified_name: str) -> CustomOpDef | None:
        with self._lock:
            return self._ops.get(qualified_name)

    def ops_for_node(self, domain: str, op_type: str) -> list[CustomOpDef]:
        """Declared ops written as ``domain::op_type`` nodes."""
        with self._lock:
            found = [o for o in self._ops.values() if o.domain == domain and o.op_type == op_type]
            fallback = self._fallback.get(op_type)
            if not found and fallback is not None and fallback.domain == domain:
                found.append(fallback)
            return found

    # -- torch fallback ops (written only by exports asking for fallback="torch") ----
    def add_fallback_op(self, op: CustomOpDef) -> None:
        with self._lock:
            self._fallback[op.op_type] = op

    def fallback_op(self, op_type: str) -> CustomOpDef | None:
        with self._lock:
            return self._fallback.get(op_type)

    # -- lowerings ----------------------------------------------------------------
    def add_lowering(self, lowering: Lowering) -> None:
        table = self._shipped if lowering.shipped else self._user
        with self._lock:
            table[lowering.target] = lowering

    def remove_lowering(self, target: str) -> None:
        with self._lock:
            self._user.pop(target, None)

    def lowerings(self) -> Iterator[Lowering]:
        with self._lock:
            yield from list(self._user.values())
            yield from list(self._shipped.values())

    def resolve(self, overload_name: str, *, contrib_ops: bool) -> Lowering | None:
        """Finds the lowering for one overload ``"ns::name.overload"``.

        A user's lowering wins over a shipped one, an exact overload over a packet,
        and any lowering over a declared op's default single-node form.
        """
        packet = overload_name.rsplit(".", 1)[0]
        with self._lock:
            for key in (overload_name, packet):
                if key in self._user:
                    return self._user[key]
            for key in (overload_name, packet):
                shipped = self._shipped.get(key)
                if shipped is not None and (contrib_ops or not shipped.contrib):
                    return shipped
            declared = self._ops.get(overload_name) or self._ops.get(packet)
        if declared is None:
            return None
        # A declared op is one overload; an adopted packet name must not cover the others.
        own = declared.overload
        if f"{own.namespace}::{own._opname}.{own._overloadname}" != overload_name:
            return None
        return declared.lowering()

    @contextlib.contextmanager
    def scope(self) -> Iterator[Registry]:
        """Restores the registry's lowerings and adopted ops on exit.

        Ops declared with a function stay declared: their torch op exists for good.
        """
        with self._lock:
            saved = (dict(self._user), dict(self._shipped))
            ops = dict(self._ops)
        try:
            yield self
        finally:
            with self._lock:
                self._user, self._shipped = saved
                for key, op in list(self._ops.items()):
                    if op.adopted and ops.get(key) is not op:
                        if key in ops:
                            self._ops[key] = ops[key]
                        else:
                            del self._ops[key]

    def targets(self, *, contrib_ops: bool) -> list[str]:
        """Every target name that has a lowering or a declared op, for the exporters."""
        with self._lock:
            names = set(self._ops) | set(self._user)
            names |= {k for k, v in self._shipped.items() if contrib_ops or not v.contrib}
        return sorted(names)


REGISTRY = Registry()
