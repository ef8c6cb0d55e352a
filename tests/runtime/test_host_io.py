"""Kernel host: optional and variadic inputs/outputs, and output element types."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from opbridge.runtime._kernels import IOSpec

F, I64 = TensorProto.FLOAT, TensorProto.INT64


def _describe(*args):
    """What the kernel received: None or (dtype, shape) per positional argument."""
    return [None if a is None else (str(a.dtype), a.shape) for a in args]


@pytest.mark.parametrize(
    ("node_inputs", "expected"),
    [
        (["x", "b", "c"], [("float32", (2,)), ("float32", (2,)), ("int64", (1,))]),
        (["x", "", "c"], [("float32", (2,)), None, ("int64", (1,))]),  # absent in the middle
        (["x", "b"], [("float32", (2,)), ("float32", (2,)), None]),  # trailing ones omitted
        (["x"], [("float32", (2,)), None, None]),
    ],
    ids=["all", "middle-absent", "last-omitted", "only-required"],
)
def test_optional_inputs_arrive_as_none_when_absent(
    host, domain, make_model, make_spec, make_session, node_inputs, expected
):
    seen = []

    def compute(x, b, c):
        seen.append(_describe(x, b, c))
        return x if b is None else x + b

    node = helper.make_node("Op", node_inputs, ["y"], domain=domain)
    graph_inputs = [("x", F, [2]), ("b", F, [2]), ("c", I64, [1])]
    model = make_model(
        [node], [p for p in graph_inputs if p[0] in node_inputs], [("y", F, [2])], domain=domain
    )
    inputs = ["x", IOSpec("b", optional=True), IOSpec("c", ("int64",), optional=True)]
    session = make_session(model, [make_spec(domain, "Op", compute, inputs=inputs)])
    feeds = {"x": np.ones(2, np.float32), "b": np.ones(2, np.float32), "c": np.zeros(1, np.int64)}
    (y,) = session.run(None, {k: v for k, v in feeds.items() if k in node_inputs})
    assert seen == [expected]
    np.testing.assert_array_equal(y, 2.0 if "b" in node_inputs else 1.0)


@pytest.mark.parametrize("count", [1, 3])
def test_variadic_inputs_arrive_as_separate_arguments(
    host, domain, make_model, make_spec, make_session, count
):
    seen = []

    def compute(scale, *parts):
        seen.append(_describe(scale, *parts))
        return np.concatenate([p.astype(np.float32) for p in parts]) * scale

    # Heterogeneous element types within the variadic input.
    types = [F, I64, TensorProto.INT32][:count]
    names = [f"p{i}" for i in range(count)]
    node = helper.make_node("Cat", ["scale", *names], ["y"], domain=domain)
    model = make_model(
        [node],
        [("scale", F, []), *[(n, t, [2]) for n, t in zip(names, types, strict=True)]],
        [("y", F, [2 * count])],
        domain=domain,
    )
    spec = make_spec(domain, "Cat", compute, inputs=["scale", IOSpec("parts", variadic=True)])
    session = make_session(model, [spec])
    np_types = [np.float32, np.int64, np.int32]
    feeds = {"scale": np.array(2.0, np.float32)}
    feeds.update({n: np.array([i, i + 1], dtype=np_types[i]) for i, n in enumerate(names)})
    (y,) = session.run(None, feeds)
    assert seen == [[("float32", ())] + [(np.dtype(t).name, (2,)) for t in np_types[:count]]]
    np.testing.assert_array_equal(y, np.concatenate([[i, i + 1] for i in range(count)]) * 2)


def test_optional_variadic_input_may_be_empty(host, domain, make_model, make_spec, make_session):
    seen = []

    def compute(x, *rest):
        seen.append(len(rest))
        return x + sum(rest) if rest else x

    node = helper.make_node("Op", ["x"], ["y"], domain=domain)
    model = make_model([node], [("x", F, [2])], [("y", F, [2])], domain=domain)
    spec = make_spec(
        domain, "Op", compute, inputs=["x", IOSpec("rest", optional=True, variadic=True)]
    )
    (y,) = make_session(model, [spec]).run(None, {"x": np.ones(2, np.float32)})
    assert seen == [0]
    np.testing.assert_array_equal(y, [1.0, 1.0])


def test_outputs_the_node_does_not_use_are_dropped(
    host, domain, make_model, make_spec, make_session
):
    def compute(x):
        return x + 1, x + 2, x + 3

    outputs = ["a", IOSpec("b", optional=True), IOSpec("c", optional=True)]
    for node_outputs, graph_outputs in [(["a", "", "c"], ["a", "c"]), (["a"], ["a"])]:
        node = helper.make_node("Op", ["x"], node_outputs, domain=domain)
        model = make_model(
            [node], [("x", F, [2])], [(n, F, [2]) for n in graph_outputs], domain=domain
        )
        session = make_session(model, [make_spec(domain, "Op", compute, outputs=outputs)])
        results = session.run(None, {"x": np.zeros(2, np.float32)})
        expected = {"a": 1.0, "c": 3.0}
        for name, value in zip(graph_outputs, results, strict=True):
            np.testing.assert_array_equal(value, [expected[name]] * 2)


def test_none_for_an_unused_optional_output_is_accepted(
    host, domain, make_model, make_spec, make_session
):
    node = helper.make_node("Op", ["x"], ["a"], domain=domain)
    model = make_model([node], [("x", F, [2])], [("a", F, [2])], domain=domain)
    spec = make_spec(domain, "Op", lambda x: (x, None), outputs=["a", IOSpec("b", optional=True)])
    (a,) = make_session(model, [spec]).run(None, {"x": np.ones(2, np.float32)})
    np.testing.assert_array_equal(a, [1.0, 1.0])


def test_variadic_outputs(host, domain, make_model, make_spec, make_session):
    def compute(x):
        return tuple(x * k for k in range(1, 4))

    node = helper.make_node("Split3", ["x"], ["a", "b", "c"], domain=domain)
    model = make_model([node], [("x", F, [2])], [(n, F, [2]) for n in "abc"], domain=domain)
    spec = make_spec(domain, "Split3", compute, outputs=[IOSpec("parts", variadic=True)])
    a, b, c = make_session(model, [spec]).run(None, {"x": np.ones(2, np.float32)})
    np.testing.assert_array_equal(np.stack([a, b, c]), [[1, 1], [2, 2], [3, 3]])


def test_variadic_output_count_must_match_the_node(
    host, domain, make_model, make_spec, make_session
):
    node = helper.make_node("Split3", ["x"], ["a", "b", "c"], domain=domain, name="s")
    model = make_model([node], [("x", F, [2])], [(n, F, [2]) for n in "abc"], domain=domain)
    spec = make_spec(domain, "Split3", lambda x: (x, x), outputs=[IOSpec("parts", variadic=True)])
    session = make_session(model, [spec])
    with pytest.raises(Exception, match=r"returned 2 values, expected 3 \(one per node output\)"):
        session.run(None, {"x": np.ones(2, np.float32)})


# Output element types: ONNX Runtime copies the type of the op's last input that
# allows several types unless the host registers typed overloads for the model.
def _argmax_model(make_model, domain):
    node = helper.make_node("ArgMax", ["x"], ["i"], domain=domain)
    return make_model([node], [("x", F, [3])], [("i", I64, [1])], domain=domain)


def _take_model(make_model, domain, *, declare_t: bool):
    nodes = [
        helper.make_node("Take", ["x", "idx"], ["t"], domain=domain),
        helper.make_node("Take", ["t", "idx"], ["y"], domain=domain),
    ]
    return make_model(
        nodes,
        [("x", F, [3]), ("idx", I64, [2])],
        [("y", F, [2])],
        domain=domain,
        value_info=[("t", F, [2])] if declare_t else [],
    )


def test_output_types_follow_the_model_with_typed_overloads(
    host, domain, make_model, make_spec, make_session
):
    host.install(
        [
            make_spec(domain, "ArgMax", lambda x: np.argmax(x, keepdims=True)),
            make_spec(domain, "Take", lambda x, i: x[i], inputs=["x", "i"]),
        ]
    )
    (i,) = make_session(_argmax_model(make_model, domain)).run(
        None, {"x": np.array([1, 5, 2], np.float32)}
    )
    assert i.dtype == np.int64 and i.tolist() == [1]

    session = make_session(_take_model(make_model, domain, declare_t=True))
    (y,) = session.run(
        None, {"x": np.array([10, 20, 30], np.float32), "idx": np.array([1, 0], np.int64)}
    )
    assert y.dtype == np.float32 and y.tolist() == [10.0, 20.0]


def test_without_the_model_onnx_runtime_copies_the_last_generic_input_type(
    host, domain, make_model, make_spec, make_session
):
    """The documented limitation of plain register_custom_ops_library."""
    host.install([make_spec(domain, "ArgMax", lambda x: np.argmax(x, keepdims=True))])
    with pytest.raises(Exception, match=r"Type Error: Type \(tensor\(int64\)\).*tensor\(float\)"):
        make_session(_argmax_model(make_model, domain), with_model=False)


def test_single_declared_output_dtype_needs_no_model(
    host, domain, make_model, make_spec, make_session
):
    spec = make_spec(
        domain, "ArgMax", lambda x: np.argmax(x, keepdims=True), outputs=[IOSpec("i", ("int64",))]
    )
    session = make_session(_argmax_model(make_model, domain), [spec], with_model=False)
    (i,) = session.run(None, {"x": np.array([1, 5, 2], np.float32)})
    assert i.tolist() == [1]


def test_undeclared_intermediates_keep_the_generic_typing(
    host, domain, make_model, make_spec, make_session
):
    # t has no declared type, so neither node gets a typed overload and ORT types
    # the outputs from the last generic input (idx, int64), clashing with y.
    host.install([make_spec(domain, "Take", lambda x, i: x[i], inputs=["x", "i"])])
    with pytest.raises(
        Exception, match=r"Type Error: Type \(tensor\(float\)\) of output arg \(y\)"
    ):
        make_session(_take_model(make_model, domain, declare_t=False))
    assert host.node_overloads(_load(_take_model(make_model, domain, declare_t=False))) == {}
    assert host.node_overloads(_load(_take_model(make_model, domain, declare_t=True))) == {
        (domain, "Take"): [(F, I64)]
    }


def _load(model: bytes):
    import onnx

    return onnx.load_from_string(model)


def test_overloads_apply_only_to_their_registration(host, domain, make_model, make_spec):
    host.install([make_spec(domain, "ArgMax", lambda x: np.argmax(x, keepdims=True))])
    model = _argmax_model(make_model, domain)
    tailored = ort.SessionOptions()
    host.register(tailored, model=model)
    plain = ort.SessionOptions()
    plain.log_severity_level = 4
    plain.register_custom_ops_library(host.library_path())
    ort.InferenceSession(model, tailored, providers=["CPUExecutionProvider"])
    with pytest.raises(Exception, match="Type Error"):
        ort.InferenceSession(model, plain, providers=["CPUExecutionProvider"])
