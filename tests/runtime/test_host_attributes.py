"""Kernel host: attributes of every ONNX kind, read per node at kernel creation."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from opbridge.runtime._kernels import AttrSpec

F = TensorProto.FLOAT

ALL_KINDS = [
    AttrSpec("i", "int", required=True),
    AttrSpec("f", "float", required=True),
    AttrSpec("s", "str", required=True),
    AttrSpec("ints", "ints", required=True),
    AttrSpec("floats", "floats", required=True),
    AttrSpec("strs", "strs", required=True),
    AttrSpec("t", "tensor", required=True),
]


def _one_node_model(make_model, domain, **attrs):
    node = helper.make_node("Op", ["x"], ["y"], domain=domain, name="n", **attrs)
    return make_model([node], [("x", F, [2])], [("y", F, [2])], domain=domain)


def test_every_attribute_kind_arrives_as_a_python_value(
    host, domain, make_model, make_spec, make_session
):
    seen = {}

    def compute(x, **attrs):
        seen.update(attrs)
        return x

    tensor = np.array([[1, 2], [3, 4]], dtype=np.int32)
    model = _one_node_model(
        make_model,
        domain,
        i=-7,
        f=0.25,
        s="héllo",
        ints=[1, -2, 3],
        floats=[0.5, 1.5],
        strs=["a", "bé", ""],
        t=numpy_helper.from_array(tensor),
    )
    session = make_session(model, [make_spec(domain, "Op", compute, attributes=ALL_KINDS)])
    session.run(None, {"x": np.zeros(2, dtype=np.float32)})

    assert seen["i"] == -7 and type(seen["i"]) is int
    assert seen["f"] == 0.25 and type(seen["f"]) is float
    assert seen["s"] == "héllo"
    assert seen["ints"] == [1, -2, 3] and all(type(v) is int for v in seen["ints"])
    assert seen["floats"] == [0.5, 1.5] and type(seen["floats"]) is list
    assert seen["strs"] == ["a", "bé", ""]
    assert isinstance(seen["t"], np.ndarray) and seen["t"].dtype == np.int32
    np.testing.assert_array_equal(seen["t"], tensor)
    assert not seen["t"].flags.writeable


def test_string_tensor_attribute(host, domain, make_model, make_spec, make_session):
    seen = {}

    def compute(x, t):
        seen["t"] = t
        return x

    value = helper.make_tensor("t", TensorProto.STRING, [2], [b"ab", b"c"])
    model = _one_node_model(make_model, domain, t=value)
    session = make_session(
        model, [make_spec(domain, "Op", compute, attributes=[AttrSpec("t", "tensor")])]
    )
    session.run(None, {"x": np.zeros(2, dtype=np.float32)})
    assert seen["t"].tolist() == ["ab", "c"]


def test_each_node_gets_its_own_attributes(host, domain, make_model, make_spec, make_session):
    def compute(x, scale):
        return x * scale

    nodes = [
        helper.make_node("Op", ["x"], ["t"], domain=domain, scale=2.0),
        helper.make_node("Op", ["t"], ["y"], domain=domain, scale=5.0),
    ]
    model = make_model(
        nodes, [("x", F, [2])], [("y", F, [2])], domain=domain, value_info=[("t", F, [2])]
    )
    session = make_session(
        model, [make_spec(domain, "Op", compute, attributes=[AttrSpec("scale", "float", 1.0)])]
    )
    (y,) = session.run(None, {"x": np.ones(2, dtype=np.float32)})
    np.testing.assert_array_equal(y, [10.0, 10.0])


def test_missing_optional_attributes_get_their_defaults(
    host, domain, make_model, make_spec, make_session
):
    seen = {}

    def compute(x, **attrs):
        seen.update(attrs)
        return x

    attributes = [
        AttrSpec("alpha", "float", 0.5),
        AttrSpec("mode", "str", "fast"),
        AttrSpec("axes", "ints", [0, 1]),
        AttrSpec("maybe", "int", None),
    ]
    model = _one_node_model(make_model, domain)
    session = make_session(model, [make_spec(domain, "Op", compute, attributes=attributes)])
    session.run(None, {"x": np.zeros(2, dtype=np.float32)})
    assert seen == {"alpha": 0.5, "mode": "fast", "axes": [0, 1], "maybe": None}


def test_empty_list_attribute(host, domain, make_model, make_spec, make_session):
    seen = {}

    def compute(x, axes):
        seen["axes"] = axes
        return x

    node = helper.make_node("Op", ["x"], ["y"], domain=domain)
    node.attribute.append(helper.make_attribute("axes", [], attr_type=helper.AttributeProto.INTS))
    model = make_model([node], [("x", F, [2])], [("y", F, [2])], domain=domain)
    session = make_session(
        model, [make_spec(domain, "Op", compute, attributes=[AttrSpec("axes", "ints", [9])])]
    )
    session.run(None, {"x": np.zeros(2, dtype=np.float32)})
    assert seen["axes"] == []


def test_list_attributes_are_fresh_each_call(host, domain, make_model, make_spec, make_session):
    seen = []

    def compute(x, axes, default_axes):
        seen.append((list(axes), list(default_axes)))
        axes.append(99)  # must not leak into the next call
        default_axes.append(99)
        return x

    model = _one_node_model(make_model, domain, axes=[1, 2])
    spec = make_spec(
        domain,
        "Op",
        compute,
        attributes=[AttrSpec("axes", "ints", required=True), AttrSpec("default_axes", "ints", [3])],
    )
    session = make_session(model, [spec])
    for _ in range(3):
        session.run(None, {"x": np.zeros(2, dtype=np.float32)})
    assert seen == [([1, 2], [3])] * 3


def test_missing_required_attribute_fails_at_session_creation(
    host, domain, make_model, make_spec, make_session
):
    model = _one_node_model(make_model, domain)
    spec = make_spec(domain, "Op", lambda x, k: x, attributes=[AttrSpec("k", "int", required=True)])
    with pytest.raises(Exception, match=r"node 'n'.*lacks required attribute 'k' \(int\)"):
        make_session(model, [spec])


@pytest.mark.parametrize(
    ("value", "declared", "present"),
    [
        (1.5, "int", "float"),
        (3, "str", "int"),
        ([1, 2], "floats", "ints"),
        ("x", "strs", "str"),
        (["a"], "tensor", "strs"),
    ],
)
def test_attribute_of_the_wrong_kind_fails_at_session_creation(
    host, domain, make_model, make_spec, make_session, value, declared, present
):
    model = _one_node_model(make_model, domain, a=value)
    spec = make_spec(domain, "Op", lambda x, a: x, attributes=[AttrSpec("a", declared)])
    with pytest.raises(
        Exception,
        match=f"attribute 'a' is {present} on the node, but the op declares it {declared}",
    ):
        make_session(model, [spec])
