"""A torch op's signature seen from ONNX: which arguments are inputs, which attributes.

Tensor arguments become node inputs (``Tensor?`` optional, ``Tensor[]`` variadic);
``int``, ``float``, ``bool``, ``str``, ``Scalar`` and lists of them become attributes.
Both exporters and the declaration read the same :class:`OpLayout`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Literal

import onnx
import torch

from opbridge._errors import DeclarationError

__all__ = ["OpLayout", "Param", "layout_of", "overload_name"]

ParamKind = Literal["input", "attribute"]

# torch schema type (str) -> ONNX attribute kind
_ATTR_KINDS: dict[str, str] = {
    "int": "int",
    "SymInt": "int",
    "bool": "int",
    "float": "float",
    "Scalar": "float",
    "number": "float",  # how torch prints Scalar
    "str": "str",
    "ScalarType": "int",
    "List[int]": "ints",
    "List[SymInt]": "ints",
    "List[bool]": "ints",
    "List[float]": "floats",
    "List[str]": "strs",
}

_ONNX_ATTR_TYPES = {
    "int": onnx.AttributeProto.INT,
    "float": onnx.AttributeProto.FLOAT,
    "str": onnx.AttributeProto.STRING,
    "ints": onnx.AttributeProto.INTS,
    "floats": onnx.AttributeProto.FLOATS,
    "strs": onnx.AttributeProto.STRINGS,
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
    attr_kind: str | None
    torch_type: str
    optional: bool = False
    variadic: bool = False
    kwarg_only: bool = False
    default: Any = None
    has_default: bool = False

    @property
    def onnx_attr_type(self) -> int:
        assert self.attr_kind is not None
        return _ONNX_ATTR_TYPES[self.attr_kind]

    @property
    def is_bool(self) -> bool:
        return self.torch_type.replace("?", "") in ("bool", "List[bool]")


@dataclasses.dataclass(frozen=True)
class OpLayout:
    """How a torch op overload maps onto one ONNX node."""

    name: str  # "ns::name.overload"
    params: tuple[Param, ...]
    num_outputs: int
    unsupported: tuple[str, ...] = ()  # "param: type" the ONNX side cannot carry

    @property
    def inputs(self) -> tuple[Param, ...]:
        return tuple(p for p in self.params if p.kind == "input")

    @property
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
