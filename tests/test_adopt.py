"""Adopting ops that already exist: opbridge.custom_op(existing, domain=...).

The C++ extension form is in tests/native/test_adopt_cpp.py (its own process).
"""

from __future__ import annotations

import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import Tensor

import opbridge
from opbridge import DeclarationError, LoweringError
from tests.conftest import EXPORTERS


def _library_custom_op(ns: str) -> torch.library.CustomOpDef:
    @torch.library.custom_op(f"{ns}::swish", mutates_args=())
    def swish(x: Tensor, beta: float = 1.0) -> Tensor:
        return x * torch.sigmoid(beta * x)

    @swish.register_fake
    def _(x: Tensor, beta: float = 1.0) -> Tensor:
        return torch.empty_like(x)

    return swish


def _library_define_op(ns: str) -> torch.library.Library:
    lib = torch.library.Library(ns, "DEF")
    lib.define("clip_scale(Tensor x, Tensor scale, float lo=-1.0, float hi=1.0) -> Tensor")
    lib.impl(
        "clip_scale",
        lambda x, scale, lo=-1.0, hi=1.0: x.clamp(lo, hi) * scale,
        "CompositeExplicitAutograd",
    )
    lib.impl("clip_scale", lambda x, scale, lo=-1.0, hi=1.0: torch.empty_like(x), "Meta")
    return lib


def _run_plain(model: onnx.ModelProto, *inputs: Tensor) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), opbridge.session_options(model))
    feeds = {i.name: t.numpy() for i, t in zip(sess.get_inputs(), inputs, strict=True)}
    return sess.run(None, feeds)


class SwishModel(torch.nn.Module):
    def __init__(self, op: object) -> None:
        super().__init__()
        self.op = op

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x, 2.0) + 1  # type: ignore[operator]


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("form", ["custom_op_object", "packet", "overload", "name"])
def test_adopt_library_custom_op(ns: str, exporter: str, form: str) -> None:
    swish = _library_custom_op(ns)
    existing = {
        "custom_op_object": swish,
        "packet": getattr(torch.ops, ns).swish,
        "overload": getattr(torch.ops, ns).swish.default,
        "name": f"{ns}::swish",
    }[form]
    op = opbridge.custom_op(existing, domain="mydomain")
    assert op.adopted and op.onnx_name == "mydomain::Swish"
    x = torch.randn(3, 5)
    torch.testing.assert_close(op(x, 2.0), x * torch.sigmoid(2 * x))  # the op itself, unchanged
    report = opbridge.verify(SwishModel(swish), (x,), exporter=exporter)
    assert report.passed, str(report)
    node = next(n for n in report.model.graph.node if n.domain == "mydomain")
    assert node.op_type == "Swish"
    assert [(a.name, a.f) for a in node.attribute] == [("beta", 2.0)]
    (got,) = _run_plain(report.model, x)
    np.testing.assert_allclose(got, (x * torch.sigmoid(2 * x) + 1).numpy(), rtol=1e-6)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_adopt_library_define_op(ns: str, exporter: str) -> None:
    lib = _library_define_op(ns)
    op = opbridge.custom_op(f"{ns}::clip_scale", domain="mydomain", op_type="ClipScale")
    packet = getattr(torch.ops, ns).clip_scale

    class Model(torch.nn.Module):
        def forward(self, x: Tensor, s: Tensor) -> Tensor:
            return packet(x, s, hi=0.5) * 2

    x, s = torch.randn(4, 4) * 2, torch.rand(4)
    report = opbridge.verify(Model(), (x, s), exporter=exporter)
    assert report.passed, str(report)
    assert op.kernel_origin == "torch"
    assert any(n.op_type == "ClipScale" for n in report.model.graph.node)
    (got,) = _run_plain(report.model, x, s)
    np.testing.assert_allclose(got, (x.clamp(-1, 0.5) * s * 2).numpy(), rtol=1e-6)
    del lib


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_adopt_aten_op(exporter: str) -> None:
    with opbridge.registry_scope():
        op = opbridge.custom_op(torch.ops.aten.linalg_cholesky, domain="mydomain")
        assert op.onnx_name == "mydomain::LinalgCholesky"

        class Model(torch.nn.Module):
            def forward(self, x: Tensor) -> Tensor:
                return torch.linalg.cholesky(x @ x.transpose(0, 1) + torch.eye(4)) * 2

        report = opbridge.verify(Model(), (torch.randn(4, 4),), exporter=exporter)
        assert report.passed, str(report)
        assert [n.op_type for n in report.model.graph.node if n.domain == "mydomain"] == [
            "LinalgCholesky"
        ]
    # The scope forgets the adoption: the op is not written as mydomain afterwards.
    assert opbridge.REGISTRY.op("aten::linalg_cholesky") is None


def test_adopted_op_takes_a_numpy_kernel_and_a_lowering(ns: str) -> None:
    swish = _library_custom_op(ns)
    op = opbridge.custom_op(swish, domain="mydomain")
    calls = []

    @op.register_kernel
    def _(x: np.ndarray, beta: float = 1.0) -> np.ndarray:
        calls.append(beta)
        return (x / (1 + np.exp(-beta * x))).astype(x.dtype)

    x = torch.randn(3)
    report = opbridge.verify(SwishModel(swish), (x,))
    assert report.passed and calls == [2.0], str(report)

    @op.register_lowering
    def _(g: object, x: object, beta: float = 1.0) -> object:
        return g.Mul(x, g.Sigmoid(g.Mul(x, beta)))  # type: ignore[attr-defined]

    model = opbridge.export(SwishModel(swish), (x,))
    assert not [n for n in model.graph.node if n.domain == "mydomain"]
    assert opbridge.Session(model)(x).shape == (3,)


def test_decorating_an_existing_name_is_refused_and_the_op_unchanged(ns: str) -> None:
    _library_custom_op(ns)
    x = torch.randn(4)
    before = getattr(torch.ops, ns).swish(x)
    with pytest.raises(DeclarationError, match="already exists") as info:

        @opbridge.custom_op(f"{ns}::swish", domain="mydomain")
        def swish(x: Tensor) -> Tensor:
            return x * 100

    torch.testing.assert_close(getattr(torch.ops, ns).swish(x), before)
    assert opbridge.REGISTRY.op(f"{ns}::swish") is None  # nothing half-adopted
    with pytest.raises(DeclarationError, match="already exists"):
        opbridge.custom_op(f"{ns}::swish", lambda x: x, domain="mydomain")
    _follow_advice(str(info.value), expect_onnx="mydomain::Swish")


def _follow_advice(message: str, *, expect_onnx: str) -> None:
    """Runs the adopt statement an error message suggests, literally."""
    match = re.search(
        r"(?:(\w+) = )?(opbridge\.custom_op\(torch\.ops\.[\w.]+, domain='\w+'\))", message
    )
    assert match is not None, message
    scope: dict[str, object] = {"torch": torch, "opbridge": opbridge}
    adopted = eval(match[2], scope)
    assert isinstance(adopted, opbridge.CustomOpDef) and adopted.onnx_name == expect_onnx


def test_advice_runs_for_a_define_op_and_an_aten_op(ns: str) -> None:
    lib = _library_define_op(ns)
    with pytest.raises(DeclarationError) as info:
        opbridge.custom_op(f"{ns}::clip_scale", lambda x: x, domain="mydomain")
    _follow_advice(str(info.value), expect_onnx="mydomain::ClipScale")
    with opbridge.registry_scope():
        with pytest.raises(DeclarationError) as info:

            @opbridge.custom_op("aten::erfinv", domain="mydomain")
            def erfinv(x: Tensor) -> Tensor:
                return x

        _follow_advice(str(info.value), expect_onnx="mydomain::Erfinv")
    del lib


def test_export_error_advice_runs(ns: str) -> None:
    swish = _library_custom_op(ns)
    x = torch.randn(3)
    for exporter in EXPORTERS:
        with pytest.raises(opbridge.ExportError) as info:
            opbridge.export(SwishModel(swish), (x,), exporter=exporter)
        assert f"{ns}::swish" in str(info.value) and "fallback='torch'" in str(info.value)
        with opbridge.registry_scope():
            _follow_advice(str(info.value), expect_onnx="mydomain::Swish")
            assert opbridge.verify(SwishModel(swish), (x,), exporter=exporter).passed


def test_adopting_a_missing_name_names_it(ns: str) -> None:
    with pytest.raises(DeclarationError, match=f"no op '{ns}::nothing'"):
        opbridge.custom_op(f"{ns}::nothing", domain="d").register_kernel(lambda x: x)
    with pytest.raises(DeclarationError, match=f"no op '{ns}::nothing.other'"):
        opbridge.custom_op(f"{ns}::nothing.other", domain="d")
    with pytest.raises(DeclarationError, match="several overloads"):
        opbridge.custom_op(torch.ops.aten.searchsorted, domain="d")


@pytest.mark.parametrize(
    ("schema", "param", "fix"),
    [
        ("inplace(Tensor(a!) x, float v) -> Tensor(a!)", "x", "returning the new value"),
        ("on_device(Tensor x, Device device) -> Tensor", "device", "fixes 'device'"),
        ("noisy(Tensor x, Generator? generator=None) -> Tensor", "generator", "fixes 'generator'"),
        ("laid(Tensor x, Layout? layout=None) -> Tensor", "layout", "fixes 'layout'"),
    ],
)
def test_schema_that_cannot_be_a_node_is_refused(
    ns: str, schema: str, param: str, fix: str
) -> None:
    lib = torch.library.Library(ns, "DEF")
    lib.define(schema)
    name = schema.split("(")[0]
    with pytest.raises(DeclarationError, match=f"'{param}: ") as info:
        opbridge.custom_op(f"{ns}::{name}", domain="d")
    assert fix in str(info.value)
    del lib


def test_register_lowering_takes_every_form(ns: str) -> None:
    swish = _library_custom_op(ns)

    def lower(g: object, x: object, beta: float = 1.0) -> object:
        return g.Mul(x, g.Sigmoid(g.Mul(x, beta)))  # type: ignore[attr-defined]

    packet = getattr(torch.ops, ns).swish
    for target in (swish, packet, packet.default, f"{ns}::swish"):
        with opbridge.registry_scope():
            opbridge.register_lowering(target, lower)
            model = opbridge.export(SwishModel(swish), (torch.randn(3),))
            assert {n.op_type for n in model.graph.node} >= {"Sigmoid", "Mul"}


def test_register_lowering_refuses_python_ops() -> None:
    class Twice(torch.autograd.Function):
        @staticmethod
        def forward(ctx: object, x: Tensor) -> Tensor:
            return x * 2

    with pytest.raises(LoweringError, match="autograd.Function is not a torch op"):
        opbridge.register_lowering(Twice, lambda g, x: x)
    with pytest.raises(LoweringError, match="prim::PythonOp stands for a Python"):
        opbridge.register_lowering("prim::PythonOp", lambda g, x: x)


def test_a_lowering_writes_an_adopted_op_and_the_session_runs_it(ns: str) -> None:
    # The five-attempt case: another op's lowering writes the existing op's node.
    _library_custom_op(ns)
    swish = opbridge.custom_op(f"{ns}::swish", domain="mydomain")

    @torch.library.custom_op(f"{ns}::double_swish", mutates_args=())
    def double_swish(x: Tensor) -> Tensor:
        return getattr(torch.ops, ns).swish(x, 1.0) * 2

    double_swish.register_fake(lambda x: torch.empty_like(x))

    @opbridge.register_lowering(double_swish)
    def _(g: object, x: object) -> object:
        return g.Mul(g.call(swish, x, beta=1.0), 2.0)  # type: ignore[attr-defined]

    class Model(torch.nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return double_swish(x)

    for exporter in EXPORTERS:
        report = opbridge.verify(Model(), (torch.randn(6),), exporter=exporter)
        assert report.passed, str(report)
        assert "mydomain::Swish" in report.session
