"""opbridge.Session and session_options: kernels, inputs, outputs, errors."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from torch import Tensor

import opbridge
from opbridge import KernelError, SessionError


def _model(
    domain: str,
    op_type: str,
    in_types=(TensorProto.FLOAT,),
    out_type=TensorProto.FLOAT,
    shape=(2, 3),
    **attrs,
) -> onnx.ModelProto:  # type: ignore[no-untyped-def]
    names = [f"x{i}" for i in range(len(in_types))]
    node = helper.make_node(op_type, names, ["y"], domain=domain, **attrs)
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info(n, t, shape) for n, t in zip(names, in_types, strict=True)],
        [helper.make_tensor_value_info("y", out_type, shape)],
    )  # fmt: skip
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid(domain, 1)]
    )
    model.ir_version = 10  # onnx 1.23 writes IR 14, which ONNX Runtime refuses
    return model


@pytest.fixture
def scale_op(ns: str):  # type: ignore[no-untyped-def]
    @opbridge.custom_op(f"{ns}::scale", domain=f"{ns}.d", op_type="Scale")
    def scale(x: Tensor, factor: float = 2.0) -> Tensor:
        return x * factor

    return scale


def test_torch_in_torch_out_numpy_in_numpy_out(scale_op) -> None:  # type: ignore[no-untyped-def]
    session = opbridge.Session(_model(scale_op.domain, "Scale", factor=3.0))
    x = torch.randn(2, 3)
    out = session(x)
    assert isinstance(out, torch.Tensor)
    torch.testing.assert_close(out, x * 3)
    arr = np.ones((2, 3), np.float32)
    out = session(arr)
    assert isinstance(out, np.ndarray)
    np.testing.assert_array_equal(out, arr * 3)
    np.testing.assert_array_equal(session(x0=arr), arr * 3)
    assert session.kernel_sources[f"{scale_op.domain}::Scale"].provider == "python"
    assert "kernel-host" in repr(session) or "onnxruntime-extensions" in repr(session)


def test_model_as_bytes_and_path(scale_op, tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = _model(scale_op.domain, "Scale")
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    x = np.ones((2, 3), np.float32)
    for source in (model.SerializeToString(), str(path), path):
        np.testing.assert_array_equal(opbridge.Session(source)(x), x * 2)


def test_session_options_for_plain_inference_session(scale_op) -> None:  # type: ignore[no-untyped-def]
    model = _model(scale_op.domain, "Scale")
    options = opbridge.session_options(model)
    session = ort.InferenceSession(model.SerializeToString(), options)
    x = np.ones((2, 3), np.float32)
    np.testing.assert_array_equal(session.run(None, {"x0": x})[0], x * 2)
    # Without a model: every op declared in this process.
    options = opbridge.session_options()
    session = ort.InferenceSession(model.SerializeToString(), options)
    np.testing.assert_array_equal(session.run(None, {"x0": x})[0], x * 2)


def test_missing_kernel_names_domain_op_and_fix() -> None:
    with pytest.raises(SessionError) as info:
        opbridge.Session(_model("unknown.domain", "Mystery"))
    message = str(info.value)
    assert "unknown.domain::Mystery" in message
    assert "opbridge.custom_op" in message and "libraries=" in message


def test_missing_model_file() -> None:
    with pytest.raises(SessionError, match="does not exist"):
        opbridge.Session("/nonexistent/model.onnx")


def test_wrong_inputs(scale_op) -> None:  # type: ignore[no-untyped-def]
    session = opbridge.Session(_model(scale_op.domain, "Scale"))
    good = np.ones((2, 3), np.float32)
    with pytest.raises(SessionError, match="takes 1 inputs"):
        session(good, good)
    with pytest.raises(SessionError, match="missing model inputs"):
        session()
    with pytest.raises(SessionError, match="must be float32, got int64"):
        session(np.ones((2, 3), np.int64))
    with pytest.raises(SessionError, match="rank 2"):
        session(np.ones((6,), np.float32))
    with pytest.raises(SessionError, match="size 3 on axis 1"):
        session(np.ones((2, 4), np.float32))
    with pytest.raises(SessionError, match="no input 'nope'"):
        session(nope=good)
    with pytest.raises(SessionError, match="torch tensor or numpy array"):
        session("text")


def test_kernel_that_raises_reaches_user_and_process_survives(ns: str) -> None:
    @opbridge.custom_op(f"{ns}::fragile", domain=f"{ns}.d", op_type="Fragile")
    def fragile(x: Tensor) -> Tensor:
        return x + 1

    @fragile.register_kernel
    def _(x: np.ndarray) -> np.ndarray:
        if (x < 0).any():
            raise ValueError("negative input is not allowed here")
        return x + 1

    session = opbridge.Session(_model(fragile.domain, "Fragile"))
    with pytest.raises(KernelError, match="ValueError.*negative input is not allowed here"):
        session(-np.ones((2, 3), np.float32))
    np.testing.assert_array_equal(session(np.ones((2, 3), np.float32)), np.full((2, 3), 2.0))


def test_kernel_returning_wrong_dtype_is_an_error(ns: str) -> None:
    @opbridge.custom_op(f"{ns}::sloppy", domain=f"{ns}.d", op_type="Sloppy")
    def sloppy(x: Tensor) -> Tensor:
        return x

    sloppy.register_kernel(lambda x: x.astype(np.float64))
    session = opbridge.Session(_model(sloppy.domain, "Sloppy"))
    with pytest.raises(KernelError, match="Sloppy"):
        session(np.ones((2, 3), np.float32))


def test_user_library_is_loaded_and_reported(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SessionError, match="does not exist"):
        opbridge.Session(_model("x.y", "Op"), libraries=[tmp_path / "missing.so"])
