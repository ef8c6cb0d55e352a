"""localize() on hand-built models: which node is first, what its inputs say."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from opbridge.verification._localize import localize


def _chain() -> onnx.ModelProto:
    """x -> Neg(a) -> Abs(b) -> Neg(c) -> Abs(y), with a side branch Exp(e) from x into c."""
    nodes = [
        helper.make_node("Neg", ["x"], ["a"], name="neg_a"),
        helper.make_node("Abs", ["a"], ["b"], name="abs_b"),
        helper.make_node("Exp", ["x"], ["e"], name="exp_e"),
        helper.make_node("Add", ["b", "e"], ["c"], name="add_c"),
        helper.make_node("Abs", ["c"], ["y"], name="abs_y"),
    ]
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [3]) for n in "abec"]
    graph = helper.make_graph(
        nodes, "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
        value_info=vi,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10)


X = np.array([-1.0, 0.5, 2.0], dtype=np.float32)


def _truth() -> dict[str, np.ndarray]:
    a = -X
    b = np.abs(a)
    e = np.exp(X)
    c = b + e
    return {"a": a, "b": b, "e": e, "c": c, "y": np.abs(c)}


def _run(refs: dict[str, Any]) -> Any:
    origins = {k: f"origin of {k}" for k in refs}
    return localize(
        _chain(), [X], lambda graph: (refs, origins),
        rtol=None, atol=None, providers=None, libraries=(),
    )  # fmt: skip


def test_nothing_departs() -> None:
    loc = _run(_truth())
    assert loc.first_divergence is None and loc.compared == 5 and loc.nodes == 5
    assert loc.path() == []


def test_first_departing_node_in_topological_order() -> None:
    refs = _truth()
    refs["b"] = refs["b"] + np.float32(0.1)  # PyTorch says otherwise from b on
    refs["c"] = refs["c"] + np.float32(0.1)
    refs["y"] = refs["y"] + np.float32(0.1)
    loc = _run(refs)
    d = loc.first_divergence
    assert d is not None
    assert (d.node, d.op_type, d.domain, d.value) == ("abs_b", "Abs", "", "b")
    assert abs(d.max_abs_diff - 0.1) < 1e-6 and d.inputs_max_abs_diff == 0.0
    assert d.origin == "origin of b" and d.unchecked == ()
    assert [s.value for s in loc.path()] == ["a", "b"]
    assert [s.passed for s in loc.steps] == [True, False, True, False, False]


def test_uncompared_nodes_are_listed_and_inputs_diff_propagates() -> None:
    refs = _truth()
    del refs["b"], refs["c"]  # no PyTorch counterpart for abs_b and add_c
    refs["y"] = refs["y"] + np.float32(0.5)
    loc = _run(refs)
    d = loc.first_divergence
    assert d is not None and d.node == "abs_y"
    assert d.inputs_max_abs_diff < 1e-5  # Exp: ONNX Runtime and numpy differ by ulps
    assert set(d.unchecked) == {"abs_b", "add_c"}
    assert "not compared on the way" in str(d)


def test_user_model_is_left_alone() -> None:
    model = _chain()
    before = model.SerializeToString()
    localize(model, [X], lambda g: (_truth(), {}), rtol=None, atol=None, providers=None,
             libraries=())  # fmt: skip
    assert model.SerializeToString() == before
