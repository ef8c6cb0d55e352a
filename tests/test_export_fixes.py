"""Export and session fixes: names, torch's registry, opsets, in-place and complex ops."""

from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import Tensor

import opbridge
from opbridge import ExportError


def test_session_accepts_input_of_unknown_rank() -> None:
    graph = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],  # no shape at all
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    session = opbridge.Session(model)
    for shape in ((), (3,), (2, 3, 4)):
        x = np.ones(shape, np.float32)
        np.testing.assert_array_equal(session(x), -x)
    with pytest.raises(opbridge.SessionError, match="must be float32"):
        session(np.ones(3, np.int64))


def test_torchscript_keeps_torch_input_names(ns: str) -> None:
    @opbridge.custom_op(f"{ns}::scaled_tanh", domain=f"{ns}.d")
    def scaled_tanh(x: Tensor, scale: float) -> Tensor:
        return torch.tanh(x) * scale

    class M(torch.nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return scaled_tanh(x, 2.0)

    x = torch.randn(2, 3)
    proto = opbridge.export(M(), (x,), exporter="torchscript")
    names = [v.name for v in (*proto.graph.input, *proto.graph.output)]
    assert not any("opbridge" in n for n in names), names
    assert proto.graph.input[0].name == f"{ns}.d::ScaledTanh_0"  # torch's own scheme
    session = opbridge.Session(proto)
    out = session.inner.run(None, {proto.graph.input[0].name: x.numpy()})[0]
    np.testing.assert_allclose(out, M()(x).numpy(), rtol=1e-6)


def _torch_library_op(ns: str) -> object:
    """An op defined with torch.library only (not declared with opbridge)."""

    @torch.library.custom_op(f"{ns}::twice", mutates_args=())
    def twice(x: Tensor) -> Tensor:
        return x * 2

    @twice.register_fake
    def _(x: Tensor) -> Tensor:
        return torch.empty_like(x)

    return twice


def test_torch_symbolic_registry_restored_after_torchscript_export(ns: str) -> None:
    from torch.onnx._internal.torchscript_exporter import registration

    twice = _torch_library_op(ns)

    class M(torch.nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return twice(x) + 1  # type: ignore[operator]

    def user_symbolic(g, x):  # type: ignore[no-untyped-def]
        return g.op("user.domain::Twice", x).setType(x.type())

    x = torch.randn(3)
    with opbridge.registry_scope():
        opbridge.register_lowering(f"{ns}::twice", lambda op, x: op.Mul(x, 2.0))
        proto = opbridge.export(M(), (x,), exporter="torchscript")
    assert [n.op_type for n in proto.graph.node if n.op_type in ("Mul", "Add")] == ["Mul", "Add"]
    # torch knows nothing of the op again: its own error, not "min() arg is an empty sequence".
    assert registration.registry.get_function_group(f"{ns}::twice") is None
    with pytest.raises(Exception) as info:
        torch.onnx.export(M(), (x,), io.BytesIO(), dynamo=False)
    assert not isinstance(info.value, ValueError), info.value
    # A user's own symbolic survives an opbridge export of the same op.
    torch.onnx.register_custom_op_symbolic(f"{ns}::twice", user_symbolic, 17)
    try:
        with opbridge.registry_scope():
            opbridge.register_lowering(f"{ns}::twice", lambda op, x: op.Mul(x, 2.0))
            opbridge.export(M(), (x,), exporter="torchscript", opset_version=17)
        buffer = io.BytesIO()
        torch.onnx.export(M(), (x,), buffer, dynamo=False, opset_version=17)
        plain = onnx.load_from_string(buffer.getvalue())
        assert any(n.op_type == "Twice" for n in plain.graph.node)
    finally:
        torch.onnx.unregister_custom_op_symbolic(f"{ns}::twice", 17)


@pytest.mark.parametrize("version", [3, 17, 99])
def test_dynamo_refuses_opset_it_cannot_write(ns: str, version: int) -> None:
    class M(torch.nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return x * 2

    with pytest.raises(ExportError, match=f"opset_version={version} is not supported"):
        opbridge.export(M(), (torch.randn(3),), opset_version=version)


def test_dynamo_honours_opset_version(ns: str) -> None:
    @opbridge.custom_op(f"{ns}::sc", domain=f"{ns}.d")
    def sc(x: Tensor) -> Tensor:
        return x * 2

    class M(torch.nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return sc(x) + 1

    proto = opbridge.export(M(), (torch.randn(3),), opset_version=20)
    assert {o.domain: o.version for o in proto.opset_import}[""] == 20


def test_torchscript_refuses_op_that_mutates_its_input(ns: str) -> None:
    @opbridge.custom_op(f"{ns}::add_to", domain=f"{ns}.d", mutates_args=("out",))
    def add_to(x: Tensor, out: Tensor) -> Tensor:
        out.add_(x)
        return x.clone()

    class M(torch.nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            y = torch.ones_like(x)
            add_to(x, y)
            return y

    with pytest.raises(ExportError, match=rf"{ns}::add_to.default \(writes out\).*mutates_args"):
        opbridge.export(M(), (torch.ones(3),), exporter="torchscript")


def test_torchscript_complex_input_names_the_op(ns: str) -> None:
    @opbridge.custom_op(f"{ns}::mag", domain=f"{ns}.d")
    def mag(x: Tensor) -> Tensor:
        return x.abs()

    class M(torch.nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return mag(x)

    x = torch.randn(3, dtype=torch.complex64)
    with pytest.raises(ExportError, match=rf"{ns}::mag.default: argument 'x' is a complex"):
        opbridge.export(M(), (x,), exporter="torchscript")
