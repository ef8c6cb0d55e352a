"""opbridge.export with both exporters: custom nodes, attributes, schemas, errors."""

from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
import torch
from onnx import helper
from torch import Tensor

import opbridge
from opbridge import ExportError
from tests.conftest import EXPORTERS


def _custom(model: onnx.ModelProto, domain: str) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.domain == domain]


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_declared_op_becomes_one_node_with_attributes(ns: str, exporter: str) -> None:
    @opbridge.custom_op(f"{ns}::mix", domain="test.mix", version=2)
    def mix(
        x: Tensor,
        y: Tensor,
        n: int,
        f: float,
        flag: bool,
        mode: str,
        dims: list[int],
        weights: list[float],
    ) -> Tensor:
        return x * f + y * n + (1.0 if flag else 0.0)

    class M(torch.nn.Module):
        def forward(self, x: Tensor, y: Tensor) -> Tensor:
            return mix(x, y, 3, 0.5, True, "fast", [1, 2], [0.25, 0.75]) - 1

    x, y = torch.randn(2, 3), torch.randn(2, 3)
    model = opbridge.export(M(), (x, y), exporter=exporter)
    (node,) = _custom(model, "test.mix")
    assert node.op_type == "Mix"
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["n"] == 3 and attrs["flag"] == 1 and attrs["mode"] == b"fast"
    assert attrs["f"] == pytest.approx(0.5)
    assert list(attrs["dims"]) == [1, 2]
    assert list(attrs["weights"]) == pytest.approx([0.25, 0.75])
    assert {o.domain: o.version for o in model.opset_import}["test.mix"] == 2
    assert not any(o.domain == "opbridge.lowering" for o in model.opset_import)
    onnx.checker.check_model(model, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    types = {v.name: v.type.tensor_type for v in inferred.graph.value_info}
    out = types[node.output[0]]
    assert out.elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_value for d in out.shape.dim] == [2, 3]
    got = opbridge.Session(model)(x, y)
    torch.testing.assert_close(got, M()(x, y))


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_multiple_outputs_and_optional_input(ns: str, exporter: str) -> None:
    @opbridge.custom_op(f"{ns}::split_sum", domain="d")
    def split_sum(x: Tensor, bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
        total = x.sum(-1, keepdim=True)
        if bias is not None:
            total = total + bias
        return total, x - total

    class M(torch.nn.Module):
        def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
            return split_sum(x)

    x = torch.randn(3, 4)
    model = opbridge.export(M(), (x,), exporter=exporter)
    onnx.checker.check_model(model, full_check=True)
    session = opbridge.Session(model)
    a, b = session(x)
    ea, eb = M()(x)
    torch.testing.assert_close(a, ea)
    torch.testing.assert_close(b, eb)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_custom_opsets_sets_and_checks_versions(ns: str, exporter: str) -> None:
    @opbridge.custom_op(f"{ns}::v3", domain="versioned", version=3)
    def v3(x: Tensor) -> Tensor:
        return x + 1

    class M(torch.nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return v3(x)

    x = torch.randn(2)
    model = opbridge.export(M(), (x,), exporter=exporter, custom_opsets={"versioned": 7})
    assert {o.domain: o.version for o in model.opset_import}["versioned"] == 7
    model = opbridge.export(M(), (x,), exporter=exporter)
    assert {o.domain: o.version for o in model.opset_import}["versioned"] == 3
    with pytest.raises(ExportError, match="versioned version 2.*need version 3"):
        opbridge.export(M(), (x,), exporter=exporter, custom_opsets={"versioned": 2})


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_op_without_lowering_names_op_and_fix(ns: str, exporter: str) -> None:
    torch.library.define(f"{ns}::mystery", "(Tensor x) -> Tensor")
    torch.library.impl(f"{ns}::mystery", "CompositeExplicitAutograd")(lambda x: x * 3)
    torch.library.register_fake(f"{ns}::mystery")(lambda x: torch.empty_like(x))

    class M(torch.nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return getattr(torch.ops, ns).mystery(x)

    with pytest.raises(ExportError) as info:
        opbridge.export(M(), (torch.randn(2),), exporter=exporter)
    message = str(info.value)
    assert f"{ns}::mystery" in message
    assert "opbridge.custom_op" in message and "register_lowering" in message


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_lowering_for_plain_torch_library_op(ns: str, exporter: str) -> None:
    torch.library.define(f"{ns}::cube", "(Tensor x) -> Tensor")
    torch.library.impl(f"{ns}::cube", "CompositeExplicitAutograd")(lambda x: x * x * x)
    torch.library.register_fake(f"{ns}::cube")(lambda x: torch.empty_like(x))

    @opbridge.register_lowering(f"{ns}::cube")
    def cube(op, x):  # type: ignore[no-untyped-def]
        return op.Mul(x, op.Mul(x, x))

    class M(torch.nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return getattr(torch.ops, ns).cube(x)

    x = torch.randn(5)
    report = opbridge.verify(M(), (x,), exporter=exporter)
    assert report.passed, str(report)
    assert [n.op_type for n in report.model.graph.node] == ["Mul", "Mul"]


def test_bad_exporter_name() -> None:
    with pytest.raises(ExportError, match="'dynamo' or 'torchscript'"):
        opbridge.export(torch.nn.ReLU(), (torch.randn(2),), exporter="onnxscript")  # type: ignore[arg-type]


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_saves_to_path_and_file(tmp_path, exporter: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "relu.onnx"
    model = opbridge.export(torch.nn.ReLU(), (torch.randn(2),), path, exporter=exporter)
    assert onnx.load(str(path)).graph.node[0].op_type == model.graph.node[0].op_type
    buffer = io.BytesIO()
    opbridge.export(torch.nn.ReLU(), torch.randn(2), buffer, exporter=exporter)
    assert onnx.load_from_string(buffer.getvalue()).graph.node


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_dynamic_shapes(ns: str, exporter: str) -> None:
    @opbridge.custom_op(f"{ns}::double", domain="d")
    def double(x: Tensor) -> Tensor:
        return x * 2

    class M(torch.nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return double(x)

    batch = torch.export.Dim("batch")
    dyn = {"x": {0: batch}} if exporter == "dynamo" else [{0: "batch"}]
    model = opbridge.export(
        M(), (torch.randn(3, 2),), exporter=exporter, dynamic_shapes=dyn, input_names=["x"]
    )
    session = opbridge.Session(model)
    out = session(np.ones((5, 2), np.float32))
    np.testing.assert_array_equal(out, np.full((5, 2), 2, np.float32))


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_variadic_tensor_list(ns: str, exporter: str) -> None:
    @opbridge.custom_op(f"{ns}::weighted_sum", domain="d")
    def weighted_sum(xs: list[Tensor], weight: float) -> Tensor:
        return sum(xs) * weight  # type: ignore[return-value]

    class M(torch.nn.Module):
        def forward(self, a: Tensor, b: Tensor, c: Tensor) -> Tensor:
            return weighted_sum([a, b, c], 0.5)

    inputs = (torch.randn(3), torch.randn(3), torch.randn(3))
    report = opbridge.verify(M(), inputs, exporter=exporter)
    assert report.passed, str(report)
    (node,) = [n for n in report.model.graph.node if n.domain == "d"]
    assert len(node.input) == 3
    onnx.checker.check_model(report.model, full_check=True)
