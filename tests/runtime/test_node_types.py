"""Types of custom nodes' values on the onnx-ir pipeline, on hand-built models.

``_host.node_overloads`` walks every node (subgraphs and local functions included)
and reads the model's own types; an untyped input is typed node-locally from its
producer, never by whole-model shape inference. ``Session`` types untyped custom
outputs the same way (``runtime/_types.py``).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch
from onnx import TensorProto, helper

import opbridge
from opbridge.declaration._signature import AttrKind
from opbridge.runtime import _host
from opbridge.runtime._kernels import AttrSpec
from opbridge.runtime._types import elem_type, infer_types

F, I64, B = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL


def _vi(name: str, elem: int, shape: list[int] | None = None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def _model(graph: onnx.GraphProto, domain: str) -> onnx.ModelProto:
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(domain, 1)]
    )
    model.ir_version = 10
    return model


def _take(domain: str) -> onnx.NodeProto:
    return helper.make_node("Take", ["x", "idx"], ["t"], domain=domain)


@pytest.fixture
def take(host, domain, make_spec):
    """``domain::Take(x: any, i: any) -> any``, installed without an ONNX schema."""
    host.install([make_spec(domain, "Take", lambda x, i: x[i], inputs=["x", "i"])])


@pytest.fixture
def no_shape_inference(monkeypatch):
    """Records every whole-model shape inference; the tests assert there is none."""
    calls: list[object] = []

    def record(*args, **kwargs):
        calls.append(args)
        raise AssertionError("whole-model shape inference ran")

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", record)
    return calls


def _value(model: ir.Model, name: str) -> ir.Value:
    from opbridge._model import all_nodes

    for node in all_nodes(model):
        for value in node.outputs:
            if value.name == name:
                return value
    raise KeyError(name)


def _if_model(domain: str) -> onnx.ModelProto:
    # then: Take(x, idx); else: Take(Neg(x), idx) with Neg's output untyped.
    then = helper.make_graph(
        [helper.make_node("Take", ["x", "idx"], ["t1"], domain=domain)], "then", [], [_vi("t1", F)]
    )
    other = helper.make_graph(
        [
            helper.make_node("Neg", ["x"], ["n"]),
            helper.make_node("Take", ["n", "idx"], ["t2"], domain=domain),
        ],
        "else",
        [],
        [_vi("t2", F)],
    )
    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)],
        "g",
        [_vi("c", B, []), _vi("x", F, [3]), _vi("idx", I64, [2])],
        [_vi("y", F)],
    )
    return _model(graph, domain)


def test_overloads_of_nodes_inside_if_branches(take, domain, make_session, no_shape_inference):
    model = _if_model(domain)
    assert _host.node_overloads(model) == {(domain, "Take"): [(F, I64)]}
    session = make_session(model.SerializeToString())
    x, idx = np.array([1, 2, 3], np.float32), np.array([2, 0], np.int64)
    for cond, want in ((True, [3, 1]), (False, [-3, -1])):
        (y,) = session.run(None, {"c": np.array(cond), "x": x, "idx": idx})
        assert y.dtype == np.float32 and y.tolist() == want
    assert no_shape_inference == []


def test_overloads_of_nodes_inside_a_loop_body(take, domain, make_session, no_shape_inference):
    # v <- Take(v, idx), twice; idx comes from the outer scope.
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Take", ["v_in", "idx"], ["v_out"], domain=domain),
        ],
        "body",
        [_vi("i", I64, []), _vi("cond_in", B, []), _vi("v_in", F, [3])],
        [_vi("cond_out", B, []), _vi("v_out", F, [3])],
    )
    graph = helper.make_graph(
        [helper.make_node("Loop", ["n", "", "x"], ["y"], body=body)],
        "g",
        [_vi("n", I64, []), _vi("x", F, [3]), _vi("idx", I64, [3])],
        [_vi("y", F, [3])],
    )
    model = _model(graph, domain)
    assert _host.node_overloads(model) == {(domain, "Take"): [(F, I64)]}
    (y,) = make_session(model.SerializeToString()).run(
        None,
        {
            "n": np.array(2, np.int64),
            "x": np.array([10, 20, 30], np.float32),
            "idx": np.array([1, 2, 0], np.int64),
        },
    )
    assert y.dtype == np.float32 and y.tolist() == [30, 10, 20]
    assert no_shape_inference == []


def test_overloads_of_nodes_inside_a_local_function(take, domain, no_shape_inference):
    # local::F(a, b) = Take(Neg(a), b), Neg's output untyped: typed at the function's opset.
    a = ir.Value(name="a", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([3]))
    b = ir.Value(name="b", type=ir.TensorType(ir.DataType.INT64), shape=ir.Shape([2]))
    neg = ir.Node("", "Neg", [a], num_outputs=1)
    neg.outputs[0].name = "n"
    take_node = ir.Node(domain, "Take", [neg.outputs[0], b], num_outputs=1)
    take_node.outputs[0].name = "c"
    take_node.outputs[0].dtype = ir.DataType.FLOAT
    body = ir.Graph(
        [a, b], [take_node.outputs[0]], nodes=[neg, take_node], opset_imports={"": 18, domain: 1}
    )
    function = ir.Function("local", "F", graph=body, attributes=[])
    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([3]))
    idx = ir.Value(name="idx", type=ir.TensorType(ir.DataType.INT64), shape=ir.Shape([2]))
    call = ir.Node("local", "F", [x, idx], num_outputs=1)
    call.outputs[0].name = "y"
    call.outputs[0].dtype = ir.DataType.FLOAT
    main = ir.Graph(
        [x, idx], [call.outputs[0]], nodes=[call], opset_imports={"": 17, domain: 1, "local": 1}
    )
    model = ir.Model(main, ir_version=10, functions=[function])

    assert _host.node_overloads(model) == {(domain, "Take"): [(F, I64)]}
    assert neg.outputs[0].dtype == ir.DataType.FLOAT
    assert no_shape_inference == []


def test_only_the_values_a_custom_node_needs_are_typed(take, domain, no_shape_inference):
    # x -> Neg -> n (untyped) -> Take; x -> Abs -> unused (untyped) is never looked at.
    graph = helper.make_graph(
        [
            helper.make_node("Neg", ["x"], ["n"]),
            helper.make_node("Take", ["n", "idx"], ["y"], domain=domain),
            helper.make_node("Abs", ["x"], ["unused"]),
        ],
        "g",
        [_vi("x", F, [3]), _vi("idx", I64, [2])],
        [_vi("y", F, [2]), _vi("unused", 0)],
    )
    model = ir.serde.deserialize_model(_model(graph, domain))
    assert _host.node_overloads(model) == {(domain, "Take"): [(F, I64)]}
    assert _value(model, "n").dtype == ir.DataType.FLOAT
    assert elem_type(_value(model, "unused")) == 0
    assert no_shape_inference == []


def test_producers_are_typed_before_their_users_in_a_diamond(take, domain):
    # n feeds both Abs and Add: Abs and Add must wait for Neg, whichever is reached first.
    graph = helper.make_graph(
        [
            helper.make_node("Neg", ["x"], ["n"]),
            helper.make_node("Abs", ["n"], ["m"]),
            helper.make_node("Add", ["n", "m"], ["z"]),
            helper.make_node("Take", ["z", "idx"], ["y"], domain=domain),
        ],
        "g",
        [_vi("x", F, [3]), _vi("idx", I64, [2])],
        [_vi("y", F, [2])],
    )
    model = ir.serde.deserialize_model(_model(graph, domain))
    assert _host.node_overloads(model) == {(domain, "Take"): [(F, I64)]}
    assert [elem_type(_value(model, name)) for name in "nmz"] == [F, F, F]


def test_element_types_from_schemas_agree_with_onnx_inference():
    # Type variables (Neg, Split), a fixed output type (Shape), an attribute-chosen
    # type (Cast: falls back to ONNX's inference), a Constant's tensor.
    graph = helper.make_graph(
        [
            helper.make_node("Neg", ["x"], ["n"]),
            helper.make_node("Shape", ["n"], ["s"]),
            helper.make_node("Cast", ["s"], ["c"], to=TensorProto.DOUBLE),
            helper.make_node(
                "Constant", [], ["k"], value=helper.make_tensor("k", TensorProto.INT32, [1], [2])
            ),
            helper.make_node("Split", ["n"], ["p", "q"], axis=0),
            helper.make_node("Equal", ["p", "q"], ["e"]),
        ],
        "g",
        [_vi("x", F, [4])],
        [_vi("e", 0)],
    )
    names = ["n", "s", "c", "k", "p", "q", "e"]
    found = {}
    for shapes in (False, True):
        model = ir.serde.deserialize_model(_model(graph, "unused.domain"))
        infer_types([_value(model, name) for name in names], model, shapes=shapes)
        found[shapes] = [elem_type(_value(model, name)) for name in names]
    assert found[False] == found[True] == [F, I64, TensorProto.DOUBLE, TensorProto.INT32, F, F, B]


def test_an_input_that_cannot_be_typed_locally_gets_no_overload(take, host, domain, make_spec):
    # n comes from Opaque, a custom op with no ONNX schema: it stays untyped, so
    # neither node gets an overload (Opaque's output, Take's input are unknown).
    host.install([make_spec(domain, "Opaque", lambda x: x)])
    graph = helper.make_graph(
        [
            helper.make_node("Opaque", ["x"], ["n"], domain=domain),
            helper.make_node("Take", ["n", "idx"], ["y"], domain=domain),
        ],
        "g",
        [_vi("x", F, [3]), _vi("idx", I64, [2])],
        [_vi("y", F, [2])],
    )
    model = ir.serde.deserialize_model(_model(graph, domain))
    assert _host.node_overloads(model) == {}
    assert elem_type(_value(model, "n")) == 0


# -- Session: untyped outputs of declared ops, typed node-locally -----------------------
@pytest.fixture
def inc(ns):
    domain = f"types.{ns}"

    @opbridge.custom_op(f"{ns}::inc", domain=domain)
    def inc(x: torch.Tensor) -> torch.Tensor:
        return x + 1

    return domain


def _inc_model(domain: str, *, declared_output: int) -> onnx.ModelProto:
    # x -> Inc -> t (no value_info) -> Neg -> z; Inc also feeds the graph output w,
    # declared with element type ``declared_output`` (0: none).
    graph = helper.make_graph(
        [
            helper.make_node("Inc", ["x"], ["t"], domain=domain),
            helper.make_node("Neg", ["t"], ["z"]),
            helper.make_node("Inc", ["z"], ["w"], domain=domain),
        ],
        "g",
        [_vi("x", F, [2])],
        [_vi("z", F, [2]), _vi("w", declared_output)],
    )
    return _model(graph, domain)


def test_infer_types_runs_the_declared_ops_schema_for_one_node(inc):
    model = ir.serde.deserialize_model(_inc_model(inc, declared_output=0))
    t, w = _value(model, "t"), _value(model, "w")
    infer_types([t], model)
    assert t.dtype == ir.DataType.FLOAT and list(t.shape or ()) == [2]
    assert elem_type(w) == 0  # not asked for


@pytest.mark.parametrize("source", ["proto", "path"])
def test_session_types_untyped_custom_outputs_without_shape_inference(
    inc, source, tmp_path, no_shape_inference
):
    model = _inc_model(inc, declared_output=0)
    if source == "path":
        onnx.save(model, tmp_path / "m.onnx")
        session = opbridge.Session(tmp_path / "m.onnx")
    else:
        session = opbridge.Session(model)
    z, w = session(np.ones(2, np.float32))
    assert z.tolist() == [-2, -2] and w.dtype == np.float32 and w.tolist() == [-1, -1]
    assert no_shape_inference == []


def test_session_options_and_the_host_read_a_path_without_its_weights(
    host, inc, tmp_path, monkeypatch
):
    import onnxruntime as ort

    model = _inc_model(inc, declared_output=F)
    weight = np.arange(2, dtype=np.float32)
    model.graph.initializer.append(onnx.numpy_helper.from_array(weight, "unused_weight"))
    onnx.save(model, tmp_path / "m.onnx")

    def refuse(*args, **kwargs):
        raise AssertionError("the whole model file was loaded")

    monkeypatch.setattr(onnx, "load", refuse)
    monkeypatch.setattr(onnx, "load_model", refuse)
    _host.register(ort.SessionOptions(), model=tmp_path / "m.onnx")  # the host alone, too
    options = opbridge.session_options(tmp_path / "m.onnx")
    session = ort.InferenceSession(
        str(tmp_path / "m.onnx"), options, providers=["CPUExecutionProvider"]
    )
    z, w = session.run(None, {"x": np.ones(2, np.float32)})
    assert z.tolist() == [-2, -2] and w.tolist() == [-1, -1]


# -- attribute kinds: one table ----------------------------------------------------------
def test_attr_kind_codes_are_the_kernel_hosts():
    header = Path(_host.__file__).parent / "host" / "host.h"
    body = re.search(r"enum class AttrKind : int \{(.*?)\};", header.read_text(), re.S)
    assert body is not None
    codes = {name.lower(): int(code) for name, code in re.findall(r"k(\w+) = (\d+)", body[1])}
    names = {"int": "int", "float": "float", "str": "string", "ints": "ints",
             "floats": "floats", "strs": "strings", "tensor": "tensor"}  # fmt: skip
    assert {kind.value: kind.cpp for kind in AttrKind} == {
        ours: codes[theirs] for ours, theirs in names.items()
    }
    assert _host._encode_attr(AttrSpec("t", "tensor"), "d::Op").kind == AttrKind.TENSOR.cpp


def test_an_unknown_attribute_kind_is_named():
    with pytest.raises(ValueError, match=r"d::Op: attribute 'a' has kind 'matrix'.*tensor"):
        _host._encode_attr(AttrSpec("a", "matrix"), "d::Op")  # type: ignore[arg-type]
