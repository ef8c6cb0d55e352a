"""ONNX Runtime's ``com.microsoft`` contrib ops, as lowerings of ATen ops.

These are the forms ONNX Runtime's own PyTorch exporter helper registers. ``Inverse``
has no standard ONNX form and is always used; the others replace a standard form and
are used only when exporting with ``contrib_ops=True``.
"""

from __future__ import annotations

from typing import Any

import onnx

from opbridge.lowering._builder import Builder, Value
from opbridge.lowering._register import register_lowering

__all__ = ["gelu", "grid_sampler", "inverse", "linalg_inv_ex", "tril", "triu"]

DOMAIN = "com.microsoft"

_GRID_MODES = {0: "bilinear", 1: "nearest", 2: "bicubic"}
_GRID_PADDING = {0: "zeros", 1: "border", 2: "reflection"}


def inverse(op: Builder, self: Value) -> Value:
    """``aten::inverse`` / ``aten::linalg_inv`` -> ``com.microsoft::Inverse``."""
    return op.domain(DOMAIN).Inverse(self)


def linalg_inv_ex(op: Builder, A: Value, check_errors: bool = False) -> tuple[Value, Value]:
    """``aten::linalg_inv_ex`` -> ``Inverse`` plus an all-zero ``info`` (int32)."""
    batch = op.Slice(op.Shape(A), op.constant([0], "int64"), op.constant([-2], "int64"))
    zero = onnx.helper.make_tensor("zero", onnx.TensorProto.INT32, [1], [0])
    return op.domain(DOMAIN).Inverse(A), op.ConstantOfShape(batch, value=zero)


def gelu(op: Builder, self: Value, approximate: str = "none") -> Value:
    """``aten::gelu`` -> ``com.microsoft::Gelu`` (exact form only).

    The tanh approximation has no ``com.microsoft::Gelu`` form; it is written as
    ``com.microsoft::FastGelu``, ONNX Runtime's contrib op for exactly that formula.
    """
    if approximate == "none":
        return op.domain(DOMAIN).Gelu(self)
    return op.domain(DOMAIN).FastGelu(self)


def _trilu(op: Builder, self: Value, diagonal: int, upper: int) -> Value:
    k = op.constant(diagonal, "int64")
    return op.domain(DOMAIN).Trilu(self, k, upper=upper)


def triu(op: Builder, self: Value, diagonal: int = 0) -> Value:
    """``aten::triu`` -> ``com.microsoft::Trilu`` (upper=1)."""
    return _trilu(op, self, diagonal, 1)


def tril(op: Builder, self: Value, diagonal: int = 0) -> Value:
    """``aten::tril`` -> ``com.microsoft::Trilu`` (upper=0)."""
    return _trilu(op, self, diagonal, 0)


def grid_sampler(
    op: Builder,
    input: Value,
    grid: Value,
    interpolation_mode: int,
    padding_mode: int,
    align_corners: bool,
) -> Any:
    """``aten::grid_sampler`` (4-D) -> ``com.microsoft::GridSample``."""
    return op.domain(DOMAIN).GridSample(
        input,
        grid,
        mode=_GRID_MODES[int(interpolation_mode)],
        padding_mode=_GRID_PADDING[int(padding_mode)],
        align_corners=int(bool(align_corners)),
    )


for _target in ("aten::inverse", "aten::linalg_inv"):
    register_lowering(_target, inverse, _shipped=True)
register_lowering("aten::linalg_inv_ex", linalg_inv_ex, _shipped=True)
register_lowering("aten::gelu", gelu, contrib=True, _shipped=True)
register_lowering("aten::triu", triu, contrib=True, _shipped=True)
register_lowering("aten::tril", tril, contrib=True, _shipped=True)
for _target in ("aten::grid_sampler", "aten::grid_sampler_2d"):
    register_lowering(_target, grid_sampler, contrib=True, _shipped=True)
