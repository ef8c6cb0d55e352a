"""Kernel host: every element type, strings, bfloat16, scalars and empty tensors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import ml_dtypes
import numpy as np
import pytest
from onnx import TensorProto, helper

from opbridge.runtime._kernels import IOSpec

NUMERIC = [
    ("float32", TensorProto.FLOAT),
    ("float64", TensorProto.DOUBLE),
    ("float16", TensorProto.FLOAT16),
    ("int8", TensorProto.INT8),
    ("int16", TensorProto.INT16),
    ("int32", TensorProto.INT32),
    ("int64", TensorProto.INT64),
    ("uint8", TensorProto.UINT8),
    ("uint16", TensorProto.UINT16),
    ("uint32", TensorProto.UINT32),
    ("uint64", TensorProto.UINT64),
    ("bool", TensorProto.BOOL),
]


def _values(dtype: str) -> np.ndarray:
    if dtype == "bool":
        return np.array([[True, False, True], [False, False, True]])
    return np.arange(6).reshape(2, 3).astype(dtype)


@pytest.mark.parametrize(("dtype", "elem_type"), NUMERIC, ids=[n for n, _ in NUMERIC])
@pytest.mark.parametrize("declared", [False, True], ids=["any", "declared"])
def test_numeric_types_round_trip(
    host, domain, make_model, make_spec, make_session, dtype, elem_type, declared
):
    seen = {}

    def compute(x):
        seen["dtype"] = x.dtype
        return x[:, ::-1]  # a strided view: exercises the gathering copy

    dtypes = (dtype,) if declared else ()
    node = helper.make_node("Op", ["x"], ["y"], domain=domain)
    model = make_model(
        [node], [("x", elem_type, [2, 3])], [("y", elem_type, [2, 3])], domain=domain
    )
    session = make_session(
        model,
        [
            make_spec(
                domain, "Op", compute, inputs=[IOSpec("x", dtypes)], outputs=[IOSpec("y", dtypes)]
            )
        ],
    )
    x = _values(dtype)
    (y,) = session.run(None, {"x": x})
    assert seen["dtype"] == np.dtype(dtype)
    assert y.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(y, x[:, ::-1])


def test_bfloat16_is_ml_dtypes_bfloat16(host, domain, make_model, make_spec, make_session):
    seen = {}

    def compute(x):
        seen["dtype"] = x.dtype
        return (x.astype(np.float32) * 2).astype(ml_dtypes.bfloat16)

    # ONNX Runtime's Python API has no bfloat16 arrays: cast around the node.
    nodes = [
        helper.make_node("Cast", ["x"], ["xb"], to=TensorProto.BFLOAT16),
        helper.make_node("Op", ["xb"], ["yb"], domain=domain),
        helper.make_node("Cast", ["yb"], ["y"], to=TensorProto.FLOAT),
    ]
    model = make_model(
        nodes,
        [("x", TensorProto.FLOAT, [4])],
        [("y", TensorProto.FLOAT, [4])],
        domain=domain,
        value_info=[("xb", TensorProto.BFLOAT16, [4]), ("yb", TensorProto.BFLOAT16, [4])],
    )
    session = make_session(
        model,
        [
            make_spec(
                domain,
                "Op",
                compute,
                inputs=[IOSpec("x", ("bfloat16",))],
                outputs=[IOSpec("y", ("bfloat16",))],
            )
        ],
    )
    x = np.array([1.0, -2.5, 0.0, 3.0], dtype=np.float32)
    (y,) = session.run(None, {"x": x})
    assert seen["dtype"] == np.dtype(ml_dtypes.bfloat16)
    assert host._require().bfloat16_dtype == np.dtype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(y, x * 2)


def test_bfloat16_without_ml_dtypes_uses_uint16_bits(host, tmp_path):
    """In a process where ml_dtypes cannot be imported, bfloat16 is raw uint16."""
    model = helper.make_model(
        helper.make_graph(
            [
                helper.make_node("Cast", ["x"], ["xb"], to=TensorProto.BFLOAT16),
                helper.make_node("Op", ["xb"], ["yb"], domain="test.nomldtypes"),
                helper.make_node("Cast", ["yb"], ["y"], to=TensorProto.FLOAT),
            ],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
            value_info=[helper.make_tensor_value_info("yb", TensorProto.BFLOAT16, [3])],
        ),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("test.nomldtypes", 1)],
    )
    model.ir_version = 10
    path = tmp_path / "model.onnx"
    path.write_bytes(model.SerializeToString())
    # Loads the extension directly (opbridge's own imports pull in onnx, which
    # imports ml_dtypes) with ml_dtypes blocked.
    script = textwrap.dedent(
        f"""
        import importlib.util, json, sys
        sys.modules["ml_dtypes"] = None
        import numpy as np, onnxruntime as ort
        spec = importlib.util.spec_from_file_location(
            "opbridge.runtime._host_ext", {host.library_path()!r})
        ext = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(ext)
        seen = {{}}
        def compute(x):
            seen["dtype"] = str(x.dtype)
            seen["bits"] = x.tolist()
            return x
        from types import SimpleNamespace as N  # the fields of _host.HostOpDef
        port = lambda name: N(name=name, types=[16], optional=False, variadic=False)
        ext.install([N(domain="test.nomldtypes", op_type="Op", version=1, inputs=[port("x")],
                       outputs=[port("y")], attributes=[], compute=compute,
                       signature="Op(x) -> y", writes_out=False)])
        so = ort.SessionOptions()
        so.register_custom_ops_library(ext.__file__)
        sess = ort.InferenceSession({str(path)!r}, so, providers=["CPUExecutionProvider"])
        (y,) = sess.run(None, {{"x": np.array([1.0, -2.0, 0.5], dtype=np.float32)}})
        print(json.dumps({{"dtype": seen["dtype"], "bits": seen["bits"], "y": y.tolist(),
                          "bf16": str(ext.bfloat16_dtype)}}))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["dtype"] == "uint16"
    assert result["bf16"] == "uint16"
    # bfloat16 is the high half of float32: 1.0 -> 0x3F80, -2.0 -> 0xC000, 0.5 -> 0x3F00.
    assert result["bits"] == [0x3F80, 0xC000, 0x3F00]
    assert result["y"] == [1.0, -2.0, 0.5]


@pytest.mark.parametrize(
    "make_result",
    [
        lambda x: np.char.upper(x.astype(str)),  # numpy unicode ('U')
        lambda x: np.array([s.upper().encode() for s in x.ravel()]).reshape(x.shape),  # 'S'
        lambda x: np.array([s.upper() for s in x.ravel()], dtype=object).reshape(x.shape),
        lambda x: np.char.upper(x.astype(str)).astype(np.dtypes.StringDType()),  # 'T'
    ],
    ids=["unicode", "bytes", "object", "stringdtype"],
)
def test_strings_round_trip(host, domain, make_model, make_spec, make_session, make_result):
    seen = {}

    def compute(x):
        seen["dtype"] = x.dtype
        seen["types"] = {type(v) for v in x.ravel()}
        return make_result(x)

    node = helper.make_node("Op", ["x"], ["y"], domain=domain)
    model = make_model(
        [node],
        [("x", TensorProto.STRING, [2, 2])],
        [("y", TensorProto.STRING, [2, 2])],
        domain=domain,
    )
    session = make_session(
        model,
        [
            make_spec(
                domain,
                "Op",
                compute,
                inputs=[IOSpec("x", ("str",))],
                outputs=[IOSpec("y", ("str",))],
            )
        ],
    )
    x = np.array([["ab", "ünï"], ["", "x y"]], dtype=object)
    (y,) = session.run(None, {"x": x})
    assert seen["dtype"] == np.dtype(object)
    assert seen["types"] == {str}
    assert y.tolist() == [["AB", "ÜNÏ"], ["", "X Y"]]


def test_string_output_elements_must_be_str_or_bytes(identity_session):
    session = identity_session(
        lambda x: np.array([1, "a"], dtype=object), elem_type=TensorProto.STRING, shape=[2]
    )
    with pytest.raises(Exception, match="element 0 is int, not str or bytes"):
        session.run(None, {"x": np.array(["a", "b"], dtype=object)})


def test_scalars_and_empty_tensors(identity_session):
    session = identity_session(lambda x: x * 2, shape=None)
    (y,) = session.run(None, {"x": np.array(3.0, dtype=np.float32)})
    assert y.shape == () and y == 6.0
    (y,) = session.run(None, {"x": np.zeros((0, 5), dtype=np.float32)})
    assert y.shape == (0, 5)


def test_numpy_scalar_results_become_rank_0_tensors(identity_session):
    session = identity_session(lambda x: x.sum(), shape=[3], out_shape=[])
    (y,) = session.run(None, {"x": np.array([1, 2, 3], dtype=np.float32)})
    assert y.shape == () and y.dtype == np.float32 and y == 6.0


def test_input_outside_the_allowed_dtypes_fails_at_session_creation(
    host, domain, make_model, make_spec, make_session
):
    node = helper.make_node("Op", ["x"], ["y"], domain=domain)
    model = make_model(
        [node], [("x", TensorProto.INT32, [2])], [("y", TensorProto.INT32, [2])], domain=domain
    )
    allowed = IOSpec("x", ("float32", "float64"))
    with pytest.raises(
        Exception,
        match=r"input 0 \('x'\) is int32, but the op accepts "
        r"float32\|float64",
    ):
        make_session(
            model,
            [
                make_spec(
                    domain,
                    "Op",
                    lambda x: x,
                    inputs=[allowed],
                    outputs=[IOSpec("y", ("float32", "float64"))],
                )
            ],
        )


def test_declared_output_type_outside_the_allowed_dtypes_fails_at_session_creation(
    host, domain, make_model, make_spec, make_session
):
    node = helper.make_node("Op", ["x"], ["y"], domain=domain)
    model = make_model(
        [node], [("x", TensorProto.INT32, [2])], [("y", TensorProto.INT32, [2])], domain=domain
    )
    with pytest.raises(
        Exception,
        match=r"declares output 0 \('y'\) as int32, but the op "
        r"produces float32\|float16",
    ):
        make_session(
            model,
            [make_spec(domain, "Op", lambda x: x, outputs=[IOSpec("y", ("float32", "float16"))])],
        )


def test_result_dtype_must_match_the_node_exactly(identity_session):
    session = identity_session(lambda x: x.astype(np.float64), shape=[2])
    with pytest.raises(Exception, match=r"has dtype float64, but the node's output is float32"):
        session.run(None, {"x": np.zeros(2, dtype=np.float32)})


def test_unsupported_result_dtype_is_reported(identity_session):
    session = identity_session(lambda x: x.astype(np.complex64), shape=[2])
    with pytest.raises(Exception, match=r"has dtype complex64, but the op declares any"):
        session.run(None, {"x": np.zeros(2, dtype=np.float32)})
