"""Reading a model file's graph without its weights (what Session and the CLI plan from)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from opbridge._model import has_external_data, read_graph


def _model() -> onnx.ModelProto:
    weight = numpy_helper.from_array(np.arange(4096, dtype=np.float32).reshape(64, 64), "w")
    branch = helper.make_graph(
        [helper.make_node("Neg", ["y"], ["z"])], "then", [],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 64])],
    )  # fmt: skip
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["y"]),
            helper.make_node("If", ["c"], ["out"], then_branch=branch, else_branch=branch),
        ],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64]),
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 64])],
        initializer=[weight],
        value_info=[helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def test_read_graph_keeps_everything_but_weight_bytes(tmp_path: Path) -> None:
    model = _model()
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    graph = read_graph(path)
    (init,) = graph.graph.initializer
    assert (init.name, init.data_type, list(init.dims)) == ("w", TensorProto.FLOAT, [64, 64])
    assert not init.raw_data and not init.float_data
    expected = onnx.ModelProto()
    expected.CopyFrom(model)
    expected.graph.initializer[0].ClearField("raw_data")
    assert graph == expected  # nodes, subgraphs, value infos, opsets: byte for byte
    assert graph.ByteSize() < model.ByteSize() - 16000


def test_read_graph_keeps_external_data_references(tmp_path: Path) -> None:
    model = _model()
    path = tmp_path / "m.onnx"
    onnx.save(model, path, save_as_external_data=True, location="m.onnx.data", size_threshold=0)
    graph = read_graph(path)
    assert has_external_data(graph)
    (init,) = graph.graph.initializer
    assert {e.key: e.value for e in init.external_data}["location"] == "m.onnx.data"
    assert not has_external_data(_model())
