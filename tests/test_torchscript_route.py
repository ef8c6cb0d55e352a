"""The TorchScript route pays only for what is lowered.

A declared op without a lowering is written by the adapter as its own node, so a
model with nothing else to lower is torch's own output: saved as torch wrote it,
never read into onnx-ir and serialized again. A lowering sends the model through
expansion on onnx-ir.
"""

from __future__ import annotations

import io
from pathlib import Path

import onnx
import onnx_ir as ir
import pytest
import torch
from torch import Tensor

import opbridge


@pytest.fixture
def ir_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the models read into onnx-ir."""
    calls: list[int] = []
    original = ir.serde.deserialize_model

    def counting(proto: onnx.ModelProto) -> ir.Model:
        calls.append(1)
        return original(proto)

    monkeypatch.setattr(ir.serde, "deserialize_model", counting)
    return calls


def _declared(ns: str) -> opbridge.CustomOpDef:
    @opbridge.custom_op(f"{ns}::scale", domain=f"{ns}.d", version=2)
    def scale(x: Tensor, k: float, flag: bool = True) -> Tensor:
        return x * k if flag else x

    return scale


class _Uses(torch.nn.Module):
    def __init__(self, op: opbridge.CustomOpDef) -> None:
        super().__init__()
        self.op = op
        self.w = torch.nn.Parameter(torch.randn(32, 32), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x @ self.w, 3.0)


def test_declared_op_alone_is_saved_as_torch_wrote_it(
    ns: str, tmp_path: Path, ir_reads: list[int], capfd: pytest.CaptureFixture[str]
) -> None:
    _declared(ns + "_unused")  # declared, not in the model: torch is not told of its domain
    model, x = _Uses(_declared(ns)), torch.randn(2, 32)
    path = tmp_path / "m.onnx"
    buffer = io.BytesIO()
    from_path = opbridge.export(model, (x,), str(path), exporter="torchscript")
    from_buffer = opbridge.export(model, (x,), buffer, exporter="torchscript")
    unsaved = opbridge.export(model, (x,), exporter="torchscript")
    assert ir_reads == []
    assert "not used in the model" not in capfd.readouterr().err
    assert path.read_bytes() == buffer.getvalue() == from_path.SerializeToString()
    assert from_buffer == unsaved == from_path
    (node,) = [n for n in from_path.graph.node if n.domain == f"{ns}.d"]
    assert node.op_type == "Scale"
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs == {"k": pytest.approx(3.0), "flag": 1}
    assert {o.domain: o.version for o in from_path.opset_import}[f"{ns}.d"] == 2
    out = {v.name: v for v in (*from_path.graph.output, *from_path.graph.value_info)}
    assert out[node.output[0]].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    torch.testing.assert_close(opbridge.Session(str(path))(x), model(x))


def test_a_lowering_goes_through_expansion(ns: str, ir_reads: list[int]) -> None:
    op = _declared(ns)

    @op.register_lowering
    def scale(o: object, x: object, k: float, flag: bool = True) -> object:
        return o.Mul(x, k) if flag else x  # type: ignore[attr-defined]

    model, x = _Uses(op), torch.randn(2, 32)
    proto = opbridge.export(model, (x,), exporter="torchscript")
    assert ir_reads == [1]
    assert "Mul" in [n.op_type for n in proto.graph.node]
    assert not any(o.domain.startswith("opbridge") for o in proto.opset_import)
    torch.testing.assert_close(opbridge.Session(proto)(x), model(x))


def test_external_data_from_memory_goes_through_onnx_ir(ns: str, tmp_path: Path) -> None:
    model, x = _Uses(_declared(ns)), torch.randn(2, 32)
    path = tmp_path / "m.onnx"
    proto = opbridge.export(model, (x,), str(path), exporter="torchscript", external_data=True)
    assert (tmp_path / "m.onnx.data").exists()
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    torch.testing.assert_close(opbridge.Session(str(path))(x), model(x))


def test_too_big_for_memory_without_a_path_fails_before_exporting(
    ns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from opbridge.exporters import _export

    monkeypatch.setattr(_export, "EXTERNAL_DATA_THRESHOLD", 1024)  # the 4 KB weight is "big"
    exported: list[int] = []
    monkeypatch.setattr(torch.onnx, "export", lambda *a, **k: exported.append(1))
    model, x = _Uses(_declared(ns)), torch.randn(2, 32)
    with pytest.raises(opbridge.ExportError, match="needs a path"):
        opbridge.export(model, (x,), io.BytesIO(), exporter="torchscript")
    assert exported == []


def test_weights_size_counts_shared_tensors_once() -> None:
    from opbridge.exporters._torchscript import weights_nbytes

    model = torch.nn.Sequential(
        torch.nn.Linear(8, 8), torch.nn.Linear(8, 8), torch.nn.BatchNorm1d(8)
    )
    model[1].weight = model[0].weight  # tied: stored once
    model[2].register_buffer("unset", None)
    expected = sum(t.nbytes for t in (*model.parameters(), *model.buffers()))
    assert weights_nbytes(model) == expected == (8 * 8 + 2 * 8 + 4 * 8) * 4 + 8
    assert weights_nbytes(lambda x: x) == 0
