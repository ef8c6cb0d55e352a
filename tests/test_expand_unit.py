"""Expansion and the builder on hand-built onnx-ir models: no torch export, milliseconds."""

from __future__ import annotations

import types
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch

from opbridge._errors import LoweringError
from opbridge._model import all_nodes
from opbridge._registry import Lowering
from opbridge.declaration._signature import layout_of
from opbridge.lowering._expand import PLACEHOLDER_DOMAIN, Pending, expand

F32 = ir.DataType.FLOAT


def _table(overload: Any, fn: Any, *, function_domain: str | None = None) -> Any:
    layout = layout_of(overload)
    pending = Pending("L0", overload, layout, Lowering(layout.name, fn, function_domain))
    return types.SimpleNamespace(entries={"L0": pending})


def _value(name: str, shape: tuple[int, ...] = (2, 3)) -> ir.Value:
    return ir.Value(name=name, type=ir.TensorType(F32), shape=ir.Shape(shape))


def _model(graph: ir.Graph) -> ir.Model:
    graph.name = graph.name or "g"
    return ir.Model(graph, ir_version=10)


def _placeholder(inputs: list[ir.Value], *, outputs: int = 1, **attrs: Any) -> ir.Node:
    outs = [_value(f"ph_out{i}") for i in range(outputs)]
    return ir.Node(
        PLACEHOLDER_DOMAIN, "L0", inputs, ir.convenience.convert_attributes(attrs),
        outputs=outs, name="ph",
    )  # fmt: skip


def _run(model: ir.Model, *feeds: np.ndarray) -> list[np.ndarray]:
    import onnxruntime as ort

    proto = ir.serde.serialize_model(model)
    onnx.checker.check_model(proto)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return session.run(None, dict(zip(names, feeds, strict=True)))  # type: ignore[return-value]


def test_main_graph_placeholder_becomes_lowered_nodes() -> None:
    x = _value("x")
    ph = _placeholder([x], approximate="tanh")
    neg = ir.Node("", "Neg", ph.outputs, outputs=[_value("y")])
    opsets = {"": 18, PLACEHOLDER_DOMAIN: 1}
    graph = ir.Graph([x], neg.outputs, nodes=[ph, neg], opset_imports=opsets)
    seen: dict[str, Any] = {}

    def gelu(op: Any, self: Any, approximate: str = "none") -> Any:
        seen["approximate"], seen["dtype"], seen["shape"] = approximate, self.dtype, self.shape
        return op.Mul(op.Relu(self), 0.5)

    model = expand(_model(graph), _table(torch.ops.aten.gelu.default, gelu))
    assert seen == {"approximate": "tanh", "dtype": np.dtype("float32"), "shape": (2, 3)}
    assert [n.op_type for n in model.graph] == ["Relu", "Constant", "Mul", "Neg"]
    mul = model.graph.node(2)
    assert mul.outputs[0].name == "ph_out0"  # the placeholder's name, type and users
    assert mul.outputs[0].dtype == F32 and list(mul.outputs[0].shape) == [2, 3]
    assert PLACEHOLDER_DOMAIN not in model.opset_imports
    a = np.array([[-1, 2, 3], [4, -5, 6]], np.float32)
    np.testing.assert_allclose(_run(model, a)[0], -np.maximum(a, 0) * 0.5)


def test_placeholder_inside_loop_body_and_if_branch() -> None:
    """Subgraphs at any depth are expanded; the builder's constant sees outer values."""
    x = _value("x")
    k = ir.Value(name="k", type=ir.TensorType(F32), shape=ir.Shape([]))
    k.const_value = ir.tensor(np.array(3.0, np.float32), name="k")
    inner_x = _value("inner_x")
    ph = _placeholder([inner_x, k])
    then = ir.Graph([], ph.outputs, nodes=[ph], name="then")
    other = ir.Node("", "Identity", [inner_x], outputs=[_value("e")])
    otherwise = ir.Graph([], other.outputs, nodes=[other], name="else")
    cond = ir.Value(name="c", type=ir.TensorType(ir.DataType.BOOL), shape=ir.Shape([]))
    pick = ir.Node(
        "", "If", [cond],
        [ir.AttrGraph("then_branch", then), ir.AttrGraph("else_branch", otherwise)],
        outputs=[_value("picked")],
    )  # fmt: skip
    identity = ir.Node("", "Identity", [x], outputs=[inner_x])
    graph = ir.Graph(
        [x, cond], pick.outputs, nodes=[identity, pick], initializers=[k],
        opset_imports={"": 18, PLACEHOLDER_DOMAIN: 1},
    )  # fmt: skip
    seen: dict[str, Any] = {}

    def add(op: Any, self: Any, other: Any, alpha: float = 1.0) -> Any:
        seen["k"] = op.scalar_of(other)
        return op.Add(self, seen["k"])

    model = expand(_model(graph), _table(torch.ops.aten.add.Tensor, add))
    assert seen["k"] == 3.0
    assert all(n.domain != PLACEHOLDER_DOMAIN for n in all_nodes(model))
    assert "k" not in model.graph.initializers  # only the placeholder read it: pruned
    a = np.ones((2, 3), np.float32)
    np.testing.assert_allclose(_run(model, a, np.array(True))[0], a + 3)
    np.testing.assert_allclose(_run(model, a, np.array(False))[0], a)


def test_value_of_a_run_time_value_names_the_op() -> None:
    x, y = _value("x"), _value("y")
    ph = _placeholder([x, y])
    graph = ir.Graph([x, y], ph.outputs, nodes=[ph], opset_imports={"": 18})

    def add(op: Any, self: Any, other: Any, alpha: float = 1.0) -> Any:
        return op.Add(self, float(op.scalar_of(other)))

    with pytest.raises(LoweringError, match=r"aten::add.Tensor needs the value of 'y'"):
        expand(_model(graph), _table(torch.ops.aten.add.Tensor, add))


def test_returned_graph_value_goes_through_identity_and_counts_checked() -> None:
    x = _value("x")
    ph = _placeholder([x])
    graph = ir.Graph([x], ph.outputs, nodes=[ph], opset_imports={"": 18})
    model = expand(_model(graph), _table(torch.ops.aten.gelu.default, lambda op, s, **_: s))
    assert [n.op_type for n in model.graph] == ["Identity"]
    assert model.graph.outputs[0].name == "ph_out0"

    ph2 = _placeholder([_value("z")])
    graph2 = ir.Graph([ph2.inputs[0]], ph2.outputs, nodes=[ph2], opset_imports={"": 18})  # type: ignore[list-item]
    with pytest.raises(LoweringError, match="returned 2 values, expected 1"):
        expand(_model(graph2), _table(torch.ops.aten.gelu.default, lambda op, s, **_: (s, s)))


def test_function_lowering_writes_one_local_function() -> None:
    x = _value("x")
    first = _placeholder([x])
    second = ir.Node(PLACEHOLDER_DOMAIN, "L0", first.outputs, outputs=[_value("out2")], name="ph2")
    graph = ir.Graph([x], second.outputs, nodes=[first, second], opset_imports={"": 18})

    def gelu(op: Any, self: Any, approximate: str = "none") -> Any:
        return op.Sigmoid(self)

    model = expand(
        _model(graph), _table(torch.ops.aten.gelu.default, gelu, function_domain="my.fns")
    )
    assert list(model.functions) == [("my.fns", "gelu", "")]
    assert [(n.domain, n.op_type) for n in model.graph] == [("my.fns", "gelu")] * 2
    assert model.opset_imports["my.fns"] == 1
    a = np.zeros((2, 3), np.float32)
    expected = 1 / (1 + np.exp(-0.5))
    np.testing.assert_allclose(_run(model, a)[0], np.full_like(a, expected), rtol=1e-6)


def test_builder_types_its_nodes_and_constants() -> None:
    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.DOUBLE), shape=ir.Shape([4]))
    ph = _placeholder([x])
    graph = ir.Graph([x], ph.outputs, nodes=[ph], opset_imports={"": 18})
    seen: dict[str, Any] = {}

    def gelu(op: Any, self: Any, approximate: str = "none") -> Any:
        t = op.Exp(self)
        seen["t"] = (t.dtype, t.shape)
        c = op.constant([1, 2, 3, 4], like=t)
        seen["c"] = (c.dtype, op.value_of(c).tolist(), op.is_constant(c), op.is_constant(t))
        return op.Add(t, c)

    expand(_model(graph), _table(torch.ops.aten.gelu.default, gelu))
    assert seen["t"] == (np.dtype("float64"), (4,))  # ONNX's inference of that one node
    assert seen["c"] == (np.dtype("float64"), [1.0, 2.0, 3.0, 4.0], True, False)
