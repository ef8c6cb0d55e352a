"""Adopting ops that already exist in torch, and the torch fallback built on it.

An adopted op is a :class:`~opbridge.declaration.CustomOpDef` made from an existing
torch op overload instead of a Python function: its ONNX node comes from the op's
own schema, its ONNX Runtime kernel is a call of the overload (whatever dispatch key
implements it: Python, C++ extension, ATen) and ``torch.export`` uses the op's own
fake/meta implementation. Nothing about the torch op changes.

The torch fallback (``opbridge.export(..., fallback="torch")``) adopts every op that
no lowering and no exporter can write into one domain, :data:`FALLBACK_DOMAIN`, with
an op type naming the op and overload, so that a fresh process finds the torch op
from the model alone.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import torch

from opbridge._errors import DeclarationError
from opbridge._registry import REGISTRY
from opbridge.declaration._signature import SUPPORTED_TYPES, overload_name

__all__ = [
    "FALLBACK_DOMAIN",
    "FALLBACK_METADATA_KEY",
    "adopt",
    "adopt_advice",
    "existing_overload",
    "fallback_op",
    "fallback_op_type",
    "fallback_ops_of_model",
    "find_existing",
]

#: The ONNX domain of ops written by ``fallback="torch"``.
FALLBACK_DOMAIN = "opbridge.torch"
#: ``metadata_props`` key of an exported model: JSON ``{op_type: "ns::name.overload"}``.
FALLBACK_METADATA_KEY = "opbridge.torch_fallback"

_QUALIFIED_RE = re.compile(
    r"^(?P<ns>[A-Za-z_]\w*)::(?P<name>[A-Za-z_]\w*)(?:\.(?P<overload>[A-Za-z_]\w*))?$"
)
# Schema types that become neither a node input nor an attribute, with the fix.
_UNCARRIABLE = {
    "Device": "the device is fixed at export time",
    "Generator": "a random generator has no ONNX form",
    "Layout": "the tensor layout is fixed at export time",
    "MemoryFormat": "the memory format is fixed at export time",
}


def _wrap_fix(overload: torch._ops.OpOverload, param: str) -> str:
    ns, name = overload.namespace, overload._opname
    return (
        f"wrap the call in an op of your own that fixes '{param}' and has only tensor, "
        f"int, float, bool and str arguments (a @torch.library.custom_op function calling "
        f"torch.ops.{ns}.{name}(..., {param}=...)), and adopt that op instead"
    )


def check_adoptable(overload: torch._ops.OpOverload) -> None:
    """Refuses an op whose schema cannot become one ONNX node, naming the parameter.

    Raises:
        DeclarationError: An argument is written in place (``Tensor(a!)``) or has a
            type with no ONNX form (``Device``, ``Generator``, ``Layout``, ...).
    """
    name = overload_name(overload)
    problems: list[str] = []
    for arg in overload._schema.arguments:
        alias = arg.alias_info
        real = str(getattr(arg, "real_type", arg.type))
        base = real[len("Optional[") : -1] if real.startswith("Optional[") else real
        if alias is not None and alias.is_write:
            problems.append(
                f"'{arg.name}: {arg.type}(a!)' is written in place, and an ONNX node cannot "
                f"change its inputs: {_wrap_fix(overload, arg.name)} returning the new value "
                f"as an output (out= overloads: adopt the functional overload instead)"
            )
        elif base in _UNCARRIABLE:
            problems.append(
                f"'{arg.name}: {real}': {_UNCARRIABLE[base]}, so it cannot be a node "
                f"attribute: {_wrap_fix(overload, arg.name)}"
            )
    for ret in overload._schema.returns:
        if str(ret.type) != "Tensor":
            problems.append(
                f"it returns {ret.type}; ONNX nodes return tensors only: {_wrap_fix(overload, 'x')}"
                f" returning Tensor or tuple[Tensor, ...]"
            )
    from opbridge.declaration._signature import layout_of

    layout = layout_of(overload)
    for item in layout.unsupported:
        param = item.split(":", 1)[0]
        if any(f"'{param}:" in p for p in problems) or param == "return":
            continue
        problems.append(f"'{item}' has no ONNX form (supported: {SUPPORTED_TYPES})")
    if problems:
        raise DeclarationError(
            f"Cannot make torch op {name} one ONNX node: " + "; ".join(problems) + "."
        )


def find_existing(name: str) -> list[torch._ops.OpOverload]:
    """The overloads of the registered torch op ``"ns::name"`` (all) or ``"ns::name.ov"``.

    An empty list when torch has no such op (Python or C++) in this process.
    """
    match = _QUALIFIED_RE.match(name)
    if match is None:
        return []
    ns, op_name, overload = match["ns"], match["name"], match["overload"]
    if not torch._C._jit_get_schemas_for_operator(f"{ns}::{op_name}"):
        return []
    try:
        packet = getattr(getattr(torch.ops, ns), op_name)
        if overload is None:
            return [getattr(packet, o) for o in packet.overloads()]
        return [getattr(packet, overload)]
    except (AttributeError, RuntimeError):
        return []


def _packet_choice(packet: torch._ops.OpOverloadPacket) -> torch._ops.OpOverload:
    overloads = packet.overloads()
    if "default" in overloads:
        return packet.default
    if len(overloads) == 1:
        return getattr(packet, overloads[0])
    ns, name = packet._qualified_op_name.split("::")
    choices = ", ".join(f"torch.ops.{ns}.{name}.{o}" for o in overloads)
    raise DeclarationError(
        f"torch op {ns}::{name} has several overloads and none is 'default'; adopt one of "
        f"them: {choices}."
    )


def existing_overload(existing: Any) -> torch._ops.OpOverload:
    """The torch op overload ``existing`` names.

    Args:
        existing: An ``OpOverload``, an ``OpOverloadPacket`` (its ``default``
            overload, or its only one), the object ``torch.library.custom_op``
            returns, or a name ``"ns::name"`` / ``"ns::name.overload"``.

    Raises:
        DeclarationError: ``existing`` is not a torch op, or torch has no such op.
    """
    if isinstance(existing, torch._ops.OpOverload):
        return existing
    if isinstance(existing, torch._ops.OpOverloadPacket):
        return _packet_choice(existing)
    if isinstance(existing, torch._library.custom_ops.CustomOpDef):
        return _packet_choice(_packet_of(existing._qualname))
    if isinstance(existing, str):
        match = _QUALIFIED_RE.match(existing)
        if match is None:
            raise DeclarationError(
                f"{existing!r} is not a torch op name; write 'namespace::name' or "
                f"'namespace::name.overload', e.g. 'mylib::swish'."
            )
        overloads = find_existing(existing)
        if not overloads:
            raise DeclarationError(
                f"torch has no op '{existing}' to adopt in this process. Check the spelling "
                f"(torch.ops.{match['ns']} lists the namespace's ops), or first import the "
                f"module or load the library that registers it (torch.ops.load_library(...)). "
                f"To declare a new op, decorate its implementation: "
                f"@opbridge.custom_op('{match['ns']}::{match['name']}', domain='mydomain')."
            )
        if match["overload"] is not None:
            return overloads[0]
        return _packet_choice(_packet_of(f"{match['ns']}::{match['name']}"))
    raise DeclarationError(
        f"Cannot adopt {existing!r}: pass a torch op (torch.ops.mylib.swish, "
        f"torch.ops.mylib.swish.default), the object torch.library.custom_op returned, or "
        f"the op's name 'mylib::swish'."
    )


def _packet_of(qualified: str) -> torch._ops.OpOverloadPacket:
    ns, name = qualified.split("::")
    packet: torch._ops.OpOverloadPacket = getattr(getattr(torch.ops, ns), name)
    return packet


def adopt_advice(existing: Any, domain: str = "mydomain") -> str:
    """The runnable statement that adopts ``existing`` (an overload or a name)."""
    if isinstance(existing, str):
        overloads = find_existing(existing)
        if not overloads:
            return f"opbridge.custom_op('{existing}', domain='{domain}')"
        existing = overloads[0] if "." in existing else overloads[0].overloadpacket
    if isinstance(existing, torch._ops.OpOverload):
        packet = existing.overloadpacket
        try:
            unambiguous = _packet_choice(packet) is existing
        except DeclarationError:
            unambiguous = False
        if not unambiguous:
            ns, name = existing.namespace, existing._opname
            return (
                f"opbridge.custom_op(torch.ops.{ns}.{name}.{existing._overloadname}, "
                f"domain='{domain}')"
            )
        existing = packet
    if isinstance(existing, torch._ops.OpOverloadPacket):
        try:
            overload = _packet_choice(existing)
        except DeclarationError:
            overload = getattr(existing, existing.overloads()[0])
            return adopt_advice(overload, domain)
        ns, name = overload.namespace, overload._opname
        return f"opbridge.custom_op(torch.ops.{ns}.{name}, domain='{domain}')"
    return f"opbridge.custom_op(<the op>, domain='{domain}')"


def adopt(
    existing: Any,
    *,
    domain: str,
    op_type: str | None = None,
    version: int = 1,
    _register: bool = True,
) -> Any:
    """Adopts an existing torch op as an opbridge op (see :func:`opbridge.custom_op`)."""
    from opbridge.declaration._custom_op import CustomOpDef, _camel_case, check_node_identity

    if isinstance(existing, CustomOpDef):
        raise DeclarationError(
            f"{existing.qualified_name} is already an opbridge op ({existing.onnx_name}); use it "
            f"as it is."
        )
    overload = existing_overload(existing)
    name = overload_name(overload)
    is_default = overload._overloadname == "default"
    resolved_type = op_type or _camel_case(overload._opname) + (
        "" if is_default else _camel_case(overload._overloadname)
    )
    check_node_identity(name, domain, resolved_type, version)
    check_adoptable(overload)
    if isinstance(existing, (torch._ops.OpOverloadPacket, torch._library.custom_ops.CustomOpDef)):
        call: Any = existing
    else:
        call = overload
    op = CustomOpDef(
        call,
        namespace=overload.namespace,
        name=overload._opname,
        domain=domain,
        op_type=resolved_type,
        version=version,
        adopted=overload,
    )
    if _register:
        REGISTRY.add_op(op)
    return op


# -- torch fallback --------------------------------------------------------------------
def fallback_op_type(overload: torch._ops.OpOverload) -> str:
    """``aten::linalg_cholesky.default`` -> ``"aten_linalg_cholesky_default"``."""
    return f"{overload.namespace}_{overload._opname}_{overload._overloadname}"


def fallback_op(overload: torch._ops.OpOverload) -> Any:
    """The ``opbridge.torch`` op that runs ``overload``'s torch kernel (made once).

    Fallback ops are kept apart from declared ones: they are written only by
    exports that ask for ``fallback="torch"``, and read by sessions of such models.
    """
    op_type = fallback_op_type(overload)
    op = REGISTRY.fallback_op(op_type)
    if op is None:
        op = adopt(overload, domain=FALLBACK_DOMAIN, op_type=op_type, _register=False)
        REGISTRY.add_fallback_op(op)
    return op


def _overload_for_type(op_type: str, recorded: Mapping[str, str]) -> torch._ops.OpOverload | None:
    name = recorded.get(op_type)
    if name is not None:
        found = find_existing(name)
        return found[0] if found else None
    # Not recorded (an edited model): try every split of ns_name_overload.
    parts = op_type.split("_")
    for i in range(1, len(parts) - 1):
        for j in range(len(parts) - 1, i, -1):
            candidate = f"{'_'.join(parts[:i])}::{'_'.join(parts[i:j])}.{'_'.join(parts[j:])}"
            found = find_existing(candidate)
            if found:
                return found[0]
    return None


def recorded_fallbacks(metadata: Mapping[str, str]) -> dict[str, str]:
    """``{op_type: torch op name}`` recorded in a model's ``metadata_props``."""
    text = metadata.get(FALLBACK_METADATA_KEY)
    if not text:
        return {}
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def fallback_ops_of_model(op_types: list[str], metadata: Mapping[str, str]) -> list[str]:
    """Makes the fallback ops a model's ``opbridge.torch`` nodes need, in this process.

    Returns:
        The op types whose torch op this process does not have (each message names
        the torch op and the fix).
    """
    recorded = recorded_fallbacks(metadata)
    missing: list[str] = []
    for op_type in op_types:
        if REGISTRY.fallback_op(op_type) is not None:
            continue
        overload = _overload_for_type(op_type, recorded)
        if overload is None:
            missing.append(
                f"{FALLBACK_DOMAIN}::{op_type}: it runs torch op "
                f"{recorded.get(op_type, '(unrecorded)')}, which this process does not have: "
                f"import the module or load the library that registers it before creating "
                f"the session"
            )
            continue
        fallback_op(overload)
    return missing


def fallback_metadata(op_types: Mapping[str, str]) -> str:
    """The ``metadata_props`` value recording ``{op_type: torch op name}``."""
    return json.dumps(dict(sorted(op_types.items())))
