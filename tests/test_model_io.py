"""Reading a model file's graph without its weights (what Session and the CLI plan from)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from opbridge._model import DetachedWeights, has_external_data, read_graph


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


def _with_weights() -> onnx.ModelProto:
    model = _model()
    model.graph.initializer.extend(
        [
            numpy_helper.from_array(np.full(300, 2.5, np.float32), "unused"),
            numpy_helper.from_array(np.array([3, 4], np.int64), "small"),
        ]
    )
    return model


def test_detached_weights_are_read_only_when_asked() -> None:
    data = _with_weights().SerializeToString()
    weights = DetachedWeights(data)
    assert all(not t.raw_data for t in weights.proto.graph.initializer)
    model = weights.read()
    small = model.graph.initializers["small"].const_value
    assert isinstance(small, ir.LazyTensor)
    assert small.dtype == ir.DataType.INT64 and list(small.shape) == [2]
    np.testing.assert_array_equal(small.numpy(), [3, 4])  # read from the original bytes


def test_detached_weights_put_back_only_what_the_model_still_has() -> None:
    original = _with_weights()
    weights = DetachedWeights(original.SerializeToString())
    model = weights.read()
    model.graph.initializers.pop("unused")
    model.graph.initializers["small"].const_value = ir.tensor(np.array([7], np.int64), name="small")
    extra = ir.Value(name="extra", const_value=ir.tensor(np.ones(2, np.float32), name="extra"))
    model.graph.register_initializer(extra)
    parts, proto = weights.write(model)
    assert any(isinstance(p, memoryview) for p in parts)  # "w" is written from torch's bytes
    assert onnx.ModelProto.FromString(b"".join(parts)) == proto
    found = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    assert set(found) == {"w", "small", "extra"}
    np.testing.assert_array_equal(found["w"], numpy_helper.to_array(original.graph.initializer[0]))
    np.testing.assert_array_equal(found["small"], [7])
    np.testing.assert_array_equal(found["extra"], [1, 1])
    # The model is left as it was, still reading its weights lazily.
    assert isinstance(model.graph.initializers["w"].const_value, ir.LazyTensor)
    onnx.checker.check_model(proto)
