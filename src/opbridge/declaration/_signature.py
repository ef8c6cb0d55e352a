"""A torch op's signature seen from ONNX: which arguments are inputs, which attributes.

Tensor arguments become node inputs (``Tensor?`` optional, ``Tensor[]`` variadic);
``int``, ``float``, ``bool``, ``str``, ``Scalar`` and lists of them become attributes.
Both exporters and the declaration read the same :class:`OpLayout`.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import onnx
import torch

from opbridge._errors import DeclarationError

__all__ = [
    "AttrKind",
    "OpLayout",
    "Param",
    "call_arguments",
    "layout_of",
    "node_arguments",
    "overload_name",
]

ParamKind = Literal["input", "attribute"]


class AttrKind(enum.StrEnum):
    """An ONNX attribute kind, with every encoding opbridge needs in one place.

    A ``str`` enum: ``AttrKind.INTS == "ints"``, so it can stand where the kind's
    name is expected (the kernel host's ``AttrSpec.kind``). ``TENSOR`` is never a torch
    argument (tensors are node inputs); only kernels (``AttrSpec``) take it.
    """

    INT = "int"
    FLOAT = "float"
    STR = "str"
    INTS = "ints"
    FLOATS = "floats"
    STRS = "strs"
    TENSOR = "tensor"

    @property
    def onnx(self) -> int:
        """``onnx.AttributeProto.AttributeType``."""
        return _ENCODINGS[self][0]

    @property
    def python(self) -> Any:
        """The Python type of a value (the dynamo exporter reads it from annotations)."""
        return _ENCODINGS[self][1]

    @property
    def cpp(self) -> int:
        """The kernel host's code (``AttrKind`` in ``runtime/host/host.h``)."""
        return _ENCODINGS[self][2]

    @property
    def torchscript(self) -> tuple[str, str]:
        """``(g.op attribute suffix, symbolic_helper constant descriptor)``."""
        return _ENCODINGS[self][3]

    @property
    def is_list(self) -> bool:
        return self in (AttrKind.INTS, AttrKind.FLOATS, AttrKind.STRS)


_ENCODINGS: dict[AttrKind, tuple[int, Any, int, tuple[str, str]]] = {
    AttrKind.INT: (onnx.AttributeProto.INT, int, 0, ("i", "i")),
    AttrKind.FLOAT: (onnx.AttributeProto.FLOAT, float, 1, ("f", "f")),
    AttrKind.STR: (onnx.AttributeProto.STRING, str, 2, ("s", "s")),
    AttrKind.INTS: (onnx.AttributeProto.INTS, list[int], 3, ("i", "is")),
    AttrKind.FLOATS: (onnx.AttributeProto.FLOATS, list[float], 4, ("f", "fs")),
    AttrKind.STRS: (onnx.AttributeProto.STRINGS, list[str], 5, ("s", "s")),
    AttrKind.TENSOR: (onnx.AttributeProto.TENSOR, onnx.TensorProto, 6, ("t", "t")),
}

# torch schema type (str) -> ONNX attribute kind
_ATTR_KINDS: dict[str, AttrKind] = {
    "int": AttrKind.INT,
    "SymInt": AttrKind.INT,
    "bool": AttrKind.INT,
    "float": AttrKind.FLOAT,
    "Scalar": AttrKind.FLOAT,
    "number": AttrKind.FLOAT,  # how torch prints Scalar
    "str": AttrKind.STR,
    "ScalarType": AttrKind.INT,
    "List[int]": AttrKind.INTS,
    "List[SymInt]": AttrKind.INTS,
    "List[bool]": AttrKind.INTS,
    "List[float]": AttrKind.FLOATS,
    "List[str]": AttrKind.STRS,
}

SUPPORTED_TYPES = (
    "Tensor, Optional[Tensor], list[Tensor], int, float, bool, str, and lists of int, "
    "float, bool or str"
)


@dataclasses.dataclass(frozen=True)
class Param:
    """One argument of a torch op.

    Attributes:
        name: Argument name in the torch schema.
        kind: ``"input"`` for tensors, ``"attribute"`` otherwise.
        attr_kind: ONNX attribute kind (``"int"``, ``"floats"``, ...) for attributes.
        torch_type: The torch schema type, e.g. ``"Tensor?"``, ``"List[int]"``.
        optional: Input or attribute may be absent.
        variadic: A ``Tensor[]`` input.
        kwarg_only: Keyword-only in the torch schema.
        default: The torch default (meaningful when ``has_default``).
        has_default: Whether the torch schema gives a default.
    """

    name: str
    kind: ParamKind
    attr_kind: AttrKind | None
    torch_type: str
    optional: bool = False
    variadic: bool = False
    kwarg_only: bool = False
    default: Any = None
    has_default: bool = False

    @property
    def onnx_attr_type(self) -> int:
        assert self.attr_kind is not None
        return self.attr_kind.onnx

    @property
    def is_bool(self) -> bool:
        return self.torch_type.replace("?", "") in ("bool", "List[bool]")

    def to_onnx(self, value: Any) -> Any:
        """A torch argument as this attribute's ONNX value (bools as ints, dtypes as enums)."""
        if isinstance(value, torch.dtype):
            from opbridge._dtypes import torch_to_onnx

            return torch_to_onnx(value)
        if self.is_bool:
            return [int(v) for v in value] if isinstance(value, (list, tuple)) else int(value)
        if self.attr_kind is AttrKind.FLOAT:
            return float(value)
        if self.attr_kind is AttrKind.FLOATS:
            return [float(v) for v in value]
        return list(value) if isinstance(value, tuple) else value

    def from_onnx(self, value: Any) -> Any:
        """An ONNX attribute value as the torch argument (ints back to bools)."""
        if isinstance(value, bytes):
            value = value.decode()
        if isinstance(value, (list, tuple)):
            value = [v.decode() if isinstance(v, bytes) else v for v in value]
        if self.is_bool:
            return [bool(v) for v in value] if isinstance(value, list) else bool(value)
        if self.attr_kind is AttrKind.INT and isinstance(value, float):
            return int(value)
        return value


@dataclasses.dataclass(frozen=True)
class OpLayout:
    """How a torch op overload maps onto one ONNX node."""

    name: str  # "ns::name.overload"
    params: tuple[Param, ...]
    num_outputs: int
    unsupported: tuple[str, ...] = ()  # "param: type" the ONNX side cannot carry

    # Cached: the TorchScript symbolic reads them for every node it writes.
    @functools.cached_property
    def inputs(self) -> tuple[Param, ...]:
        return tuple(p for p in self.params if p.kind == "input")

    @functools.cached_property
    def attributes(self) -> tuple[Param, ...]:
        return tuple(p for p in self.params if p.kind == "attribute")

    def check_supported(self) -> None:
        if self.unsupported:
            raise DeclarationError(
                f"Op '{self.name}' has arguments ONNX cannot carry: {', '.join(self.unsupported)}. "
                f"Supported argument types: {SUPPORTED_TYPES}."
            )


def overload_name(overload: torch._ops.OpOverload) -> str:
    """``torch.ops.aten.add.Tensor`` -> ``"aten::add.Tensor"``."""
    return f"{overload.namespace}::{overload._opname}.{overload._overloadname}"


def _param_of(arg: Any) -> Param | str:
    type_str = str(arg.type)
    optional = type_str.startswith("Optional[")
    base = type_str[len("Optional[") : -1] if optional else type_str
    common = dict(
        name=arg.name,
        torch_type=type_str,
        optional=optional or arg.has_default_value(),
        kwarg_only=arg.kwarg_only,
        default=arg.default_value if arg.has_default_value() else None,
        has_default=arg.has_default_value(),
    )
    if base == "Tensor":
        return Param(kind="input", attr_kind=None, **common)
    if base == "List[Tensor]":
        return Param(kind="input", attr_kind=None, variadic=True, **common)
    if base in _ATTR_KINDS:
        return Param(kind="attribute", attr_kind=_ATTR_KINDS[base], **common)
    return f"{arg.name}: {type_str}"


@functools.cache
def layout_of(overload: torch._ops.OpOverload) -> OpLayout:
    """Reads a torch op overload's schema into an :class:`OpLayout`."""
    schema = overload._schema
    params: list[Param] = []
    unsupported: list[str] = []
    for arg in schema.arguments:
        param = _param_of(arg)
        if isinstance(param, str):
            unsupported.append(param)
        else:
            params.append(param)
    variadic = [p for p in params if p.variadic]
    if variadic and params.index(variadic[-1]) != max(
        i for i, p in enumerate(params) if p.kind == "input"
    ):
        unsupported.append(f"{variadic[-1].name}: a list of tensors must be the last tensor")
    for ret in schema.returns:
        if str(ret.type) != "Tensor":
            unsupported.append(f"return: {ret.type}")
    return OpLayout(
        name=overload_name(overload),
        params=tuple(params),
        num_outputs=len(schema.returns),
        unsupported=tuple(unsupported),
    )


# -- the one binding between a torch call and an ONNX node -------------------------------
def node_arguments(
    layout: OpLayout, arguments: Mapping[str, Any], *, to_onnx: bool = True
) -> tuple[list[Any], dict[str, Any]]:
    """A torch call's arguments (by name) as the node's inputs and attributes.

    Tensor parameters become inputs in schema order (a ``Tensor[]`` spread out, absent
    trailing optionals dropped); the others attributes by name (absent ones left out),
    converted to their ONNX values unless ``to_onnx`` is false.
    """
    inputs: list[Any] = []
    attrs: dict[str, Any] = {}
    for p in layout.params:
        value = arguments.get(p.name)
        if p.kind == "input":
            if p.variadic:
                inputs.extend(value or ())
            else:
                inputs.append(value)
        elif value is not None:
            attrs[p.name] = p.to_onnx(value) if to_onnx else value
    while inputs and inputs[-1] is None:
        inputs.pop()
    return inputs, attrs


def call_arguments(
    layout: OpLayout, inputs: Sequence[Any], attrs: Mapping[str, Any]
) -> tuple[list[Any], dict[str, Any]]:
    """A node's inputs and ONNX attribute values as the torch call's ``(args, kwargs)``.

    The reverse of :func:`node_arguments`: a ``Tensor[]`` takes every remaining
    input, a missing attribute its torch default; absent trailing positional and
    keyword-only arguments are left to the callee's defaults.
    """
    positional: list[Any] = []
    keyword: dict[str, Any] = {}
    cursor = 0
    for p in layout.params:
        if p.kind == "input":
            if p.variadic:
                arg: Any = list(inputs[cursor:])
                cursor = len(inputs)
            else:
                arg = inputs[cursor] if cursor < len(inputs) else None
                cursor += 1
        elif p.name in attrs:
            arg = p.from_onnx(attrs[p.name])
        elif p.has_default:
            arg = p.default
        else:
            arg = None
        if p.kwarg_only:
            keyword[p.name] = arg
        else:
            positional.append(arg)
    while positional and positional[-1] is None:
        positional.pop()
    return positional, {k: v for k, v in keyword.items() if v is not None}
