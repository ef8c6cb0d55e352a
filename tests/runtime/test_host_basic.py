"""Kernel host: loading, zero-copy inputs, several inputs/outputs, the registry."""

from __future__ import annotations

import gc
import pathlib

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from opbridge.runtime import _host
from opbridge.runtime._kernels import AttrSpec, IOSpec

F = TensorProto.FLOAT


def test_host_is_available_and_is_its_own_library(host):
    from opbridge.runtime import _host_ext

    assert host.available()
    assert host.unavailable_reason() is None
    assert host.name == "kernel-host"
    path = pathlib.Path(host.library_path())
    assert path.is_file()
    assert path == pathlib.Path(_host_ext.__file__)


def test_inputs_are_read_only_views_of_the_callers_buffer(identity_session):
    seen = {}

    def compute(x):
        seen["address"] = x.__array_interface__["data"][0]
        seen["writeable"] = x.flags.writeable
        seen["owns"] = x.flags.owndata
        return x

    session = identity_session(compute, shape=[None])
    x = np.arange(1000, dtype=np.float32)
    (y,) = session.run(None, {"x": x})
    # ONNX Runtime feeds the caller's array as is and the host wraps that memory.
    assert seen["address"] == x.__array_interface__["data"][0]
    assert seen["writeable"] is False
    assert seen["owns"] is False
    np.testing.assert_array_equal(y, x)
    assert y.__array_interface__["data"][0] != x.__array_interface__["data"][0]


def test_several_inputs_and_outputs(host, domain, make_model, make_spec, make_session):
    def compute(a, b):
        return a + b, a * b, (a - b).astype(np.int64)

    node = helper.make_node("Three", ["a", "b"], ["s", "p", "d"], domain=domain)
    model = make_model(
        [node],
        [("a", F, [2, 3]), ("b", F, [2, 3])],
        [("s", F, [2, 3]), ("p", F, [2, 3]), ("d", TensorProto.INT64, [2, 3])],
        domain=domain,
    )
    session = make_session(
        model,
        [
            make_spec(
                domain,
                "Three",
                compute,
                inputs=["a", "b"],
                outputs=["s", "p", IOSpec("d", ("int64",))],
            )
        ],
    )
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.full((2, 3), 2.0, dtype=np.float32)
    s, p, d = session.run(None, {"a": a, "b": b})
    np.testing.assert_array_equal(s, a + b)
    np.testing.assert_array_equal(p, a * b)
    np.testing.assert_array_equal(d, (a - b).astype(np.int64))
    assert d.dtype == np.int64


def test_strided_and_transposed_results_are_copied_correctly(identity_session):
    session = identity_session(lambda x: x.T[::-1], shape=[3, 4], out_shape=[4, 3])
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    (y,) = session.run(None, {"x": x})
    np.testing.assert_array_equal(y, x.T[::-1])


def test_reinstalling_replaces_the_kernel_for_new_sessions_only(
    host, domain, make_model, make_spec, make_session
):
    node = helper.make_node("Op", ["x"], ["y"], domain=domain)
    model = make_model([node], [("x", F, [2])], [("y", F, [2])], domain=domain)
    first = make_session(model, [make_spec(domain, "Op", lambda x: x + 1)])
    second = make_session(model, [make_spec(domain, "Op", lambda x: x + 2)])
    x = np.zeros(2, dtype=np.float32)
    np.testing.assert_array_equal(first.run(None, {"x": x})[0], x + 1)
    np.testing.assert_array_equal(second.run(None, {"x": x})[0], x + 2)
    assert [k for k in host.installed() if k[0] == domain] == [(domain, "Op", 1)]


def test_with_the_model_each_node_runs_the_newest_version_not_above_its_opset(
    host, domain, make_model, make_spec, make_session
):
    host.install(
        [
            make_spec(domain, "Op", lambda x: x + 1, version=1),
            make_spec(domain, "Op", lambda x: x + 3, version=3),
        ]
    )
    x = np.zeros(2, dtype=np.float32)
    for opset, expected in [(1, 1), (2, 1), (3, 3), (7, 3)]:
        node = helper.make_node("Op", ["x"], ["y"], domain=domain)
        model = make_model([node], [("x", F, [2])], [("y", F, [2])], domain=domain, opset=opset)
        (y,) = make_session(model).run(None, {"x": x})
        np.testing.assert_array_equal(y, x + expected, err_msg=f"opset {opset}")
        # Without the model the host cannot see the opset: the newest version runs.
        (y,) = make_session(model, with_model=False).run(None, {"x": x})
        np.testing.assert_array_equal(y, x + 3, err_msg=f"opset {opset}, no model")
    assert [k for k in host.installed() if k[0] == domain] == [
        (domain, "Op", 1),
        (domain, "Op", 3),
    ]


def test_an_opset_below_every_installed_version_runs_the_oldest_one(
    host, domain, make_model, make_spec, make_session
):
    host.install(
        [
            make_spec(domain, "Op", lambda x: x + 2, version=2),
            make_spec(domain, "Op", lambda x: x + 4, version=4),
        ]
    )
    node = helper.make_node("Op", ["x"], ["y"], domain=domain)
    model = make_model([node], [("x", F, [2])], [("y", F, [2])], domain=domain, opset=1)
    (y,) = make_session(model).run(None, {"x": np.zeros(2, np.float32)})
    np.testing.assert_array_equal(y, [2, 2])


def test_install_is_all_or_nothing(host, domain, make_spec):
    good = make_spec(domain, "Good", lambda x: x)
    bad = make_spec(domain, "Bad", lambda x: x, inputs=[IOSpec("x", ("float128",))])
    with pytest.raises(ValueError, match="float128"):
        host.install([good, bad])
    assert not [k for k in host.installed() if k[0] == domain]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"inputs": [IOSpec("x", ("complex64",))]}, ValueError, "complex64"),
        ({"inputs": [IOSpec("xs", variadic=True), "y"]}, ValueError, "only the last input"),
        ({"attributes": [AttrSpec("a", "graph")]}, ValueError, "kind 'graph'"),
        ({"outputs": []}, ValueError, "declares no outputs"),
    ],
)
def test_install_rejects_bad_specs(host, domain, make_spec, kwargs, error, match):
    with pytest.raises(error, match=match):
        host.install([make_spec(domain, "Op", lambda x: x, **kwargs)])


def test_install_rejects_non_callable_compute(host, domain, make_spec):
    with pytest.raises(TypeError, match="not callable"):
        host.install([make_spec(domain, "Op", "not a function")])  # type: ignore[arg-type]


def test_signature_text(domain, make_spec):
    s = make_spec(
        domain,
        "Scale",
        lambda x: x,
        inputs=[
            IOSpec("x", ("float32", "float64")),
            IOSpec("bias", optional=True),
            IOSpec("rest", variadic=True),
        ],
        outputs=[IOSpec("y", ("float32", "float64"))],
        attributes=[AttrSpec("alpha", "float", 1.0), AttrSpec("mode", "str", required=True)],
    )
    assert _host.signature(s) == (
        f"{domain}::Scale(x: float32|float64, bias?: any, *rest: any) -> "
        "(y: float32|float64) [alpha: float = 1.0, mode: str]"
    )


def test_kernels_are_released_with_their_session(host, domain, make_model, make_spec, make_session):
    nodes = [
        helper.make_node("Op", ["x"], ["t"], domain=domain),
        helper.make_node("Op", ["t"], ["y"], domain=domain),
    ]
    model = make_model(
        nodes, [("x", F, [2])], [("y", F, [2])], domain=domain, value_info=[("t", F, [2])]
    )
    gc.collect()
    before = host.live_kernels()
    session = make_session(model, [make_spec(domain, "Op", lambda x: x)])
    assert host.live_kernels() == before + 2
    del session
    gc.collect()
    assert host.live_kernels() == before


def test_signature_change_after_registration_is_reported(host, domain, make_model, make_spec):
    node = helper.make_node("Op", ["x"], ["y"], domain=domain)
    model = make_model([node], [("x", F, [2])], [("y", F, [2])], domain=domain)
    host.install([make_spec(domain, "Op", lambda x: x)])
    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.register_custom_ops_library(host.library_path())
    # Same op re-declared with an extra optional input before the session exists.
    host.install(
        [make_spec(domain, "Op", lambda x, z=None: x, inputs=["x", IOSpec("z", optional=True)])]
    )
    with pytest.raises(Exception, match="re-installed with a different signature"):
        ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def test_python_errors_do_not_leak_into_the_caller(identity_session):
    def compute(x):
        raise ValueError("inside")

    session = identity_session(compute, shape=[2])
    with pytest.raises(Exception, match="inside"):
        session.run(None, {"x": np.zeros(2, dtype=np.float32)})
    # No Python exception may be left pending on this thread.
    assert sum(range(3)) == 3


def test_a_missing_extension_is_reported_not_raised(monkeypatch):
    import importlib.util
    import sys

    import opbridge.runtime

    # A fresh copy of the module, in a process state where the extension is absent.
    monkeypatch.setitem(sys.modules, "opbridge.runtime._host_ext", None)
    monkeypatch.delattr(opbridge.runtime, "_host_ext", raising=False)
    spec = importlib.util.spec_from_file_location("_host_copy", _host.__file__)
    copy = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "_host_copy", copy)  # dataclasses look their module up
    spec.loader.exec_module(copy)
    assert copy.available() is False
    assert "opbridge.runtime._host_ext is not importable" in copy.unavailable_reason()
    with pytest.raises(RuntimeError, match="not importable"):
        copy.library_path()
    with pytest.raises(RuntimeError, match="not importable"):
        copy.install([])
