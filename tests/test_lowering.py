"""register_lowering and the builder ``op``, for both exporters."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import Tensor

import opbridge
from opbridge import LoweringError
from tests.conftest import EXPORTERS


class AddModel(torch.nn.Module):
    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return torch.add(x, y, alpha=2)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_replaces_builtin_lowering_and_gets_attributes(exporter: str) -> None:
    seen = {}

    @opbridge.register_lowering(torch.ops.aten.add.Tensor)
    def add(op, x, y, alpha=1.0):  # type: ignore[no-untyped-def]
        seen["alpha"] = alpha
        seen["dtype"] = x.dtype
        return op.Sub(x, op.Mul(y, -alpha))  # x - (-alpha * y), visibly not the built-in

    x, y = torch.randn(3), torch.randn(3)
    report = opbridge.verify(AddModel(), (x, y), exporter=exporter)
    assert report.passed, str(report)
    assert seen["alpha"] == pytest.approx(2.0)
    assert seen["dtype"] == np.float32
    assert [n.op_type for n in report.model.graph.node if n.op_type != "Constant"] == ["Mul", "Sub"]


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_function_domain_writes_local_function(exporter: str) -> None:
    def custom_aten_add(op, x, y, alpha=1.0):  # type: ignore[no-untyped-def]
        return op.Add(x, op.Mul(y, alpha))

    opbridge.register_lowering("aten::add.Tensor", custom_aten_add, function_domain="custom.aten")
    report = opbridge.verify(AddModel(), (torch.randn(2, 2), torch.randn(2, 2)), exporter=exporter)
    assert report.passed, str(report)
    model = report.model
    (call,) = model.graph.node
    assert (call.domain, call.op_type) == ("custom.aten", "custom_aten_add")
    (function,) = model.functions
    assert [n.op_type for n in function.node] == ["Constant", "Mul", "Add"]
    onnx.checker.check_model(model, full_check=True)


def test_registry_scope_restores_builtin() -> None:
    with opbridge.registry_scope():
        opbridge.register_lowering("aten::add.Tensor", lambda op, x, y, alpha=1.0: op.Sub(x, y))
        inside = opbridge.export(AddModel(), (torch.randn(2), torch.randn(2)))
    outside = opbridge.export(AddModel(), (torch.randn(2), torch.randn(2)))
    assert "Sub" in [n.op_type for n in inside.graph.node]
    assert "Sub" not in [n.op_type for n in outside.graph.node]


def test_user_lowering_wins_over_shipped_contrib() -> None:
    class Gelu(torch.nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return torch.nn.functional.gelu(x)

    opbridge.register_lowering("aten::gelu", lambda op, x, approximate="none": op.Gelu(x))
    model = opbridge.export(Gelu(), (torch.randn(3),), contrib_ops=True, opset_version=20)
    assert [(n.domain, n.op_type) for n in model.graph.node] == [("", "Gelu")]


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_value_of_constant_input(ns: str, exporter: str) -> None:
    torch.library.define(f"{ns}::shift", "(Tensor x, Tensor amount) -> Tensor")
    torch.library.impl(f"{ns}::shift", "CompositeExplicitAutograd")(lambda x, a: x + a)
    torch.library.register_fake(f"{ns}::shift")(lambda x, a: torch.empty_like(x))

    @opbridge.register_lowering(f"{ns}::shift")
    def shift(op, x, amount):  # type: ignore[no-untyped-def]
        return op.Add(x, op.constant(op.scalar_of(amount), like=x))

    class M(torch.nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return getattr(torch.ops, ns).shift(x, torch.tensor([1.5]))

    report = opbridge.verify(M(), (torch.randn(4),), exporter=exporter)
    assert report.passed, str(report)

    class FromInput(torch.nn.Module):
        def forward(self, x: Tensor, a: Tensor) -> Tensor:
            return getattr(torch.ops, ns).shift(x, a)

    with pytest.raises(LoweringError, match="needs the value of .* at export time"):
        opbridge.export(FromInput(), (torch.randn(4), torch.tensor([1.0])), exporter=exporter)


def test_lowering_that_raises_names_itself(ns: str) -> None:
    @opbridge.custom_op(f"{ns}::boom", domain="d")
    def boom(x: Tensor) -> Tensor:
        return x

    @boom.register_lowering
    def exploding(op, x):  # type: ignore[no-untyped-def]
        raise ValueError("no way")

    class M(torch.nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return boom(x)

    with pytest.raises(LoweringError, match=rf"'exploding' for {ns}::boom.*ValueError: no way"):
        opbridge.export(M(), (torch.randn(2),))


def test_builder_rejects_lowercase_op_type(ns: str) -> None:
    @opbridge.custom_op(f"{ns}::lower", domain="d")
    def lower(x: Tensor) -> Tensor:
        return x

    lower.register_lowering(lambda op, x: op.add(x, x))

    class M(torch.nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return lower(x)

    with pytest.raises(LoweringError, match="upper-case"):
        opbridge.export(M(), (torch.randn(2),))


@pytest.mark.parametrize(
    "target, message",
    [
        ("not an op", "not a torch op name"),
        ("aten::definitely_not_an_op", "torch has no op"),
        (42, "pass a torch op"),
    ],
)
def test_bad_targets(target: object, message: str) -> None:
    with pytest.raises(LoweringError, match=message):
        opbridge.register_lowering(target, lambda op, x: x)


def test_lowering_must_be_callable() -> None:
    with pytest.raises(LoweringError, match="callable"):
        opbridge.register_lowering("aten::relu", 3)  # type: ignore[arg-type]
