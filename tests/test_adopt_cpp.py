"""Adopting a C++ extension op (TORCH_LIBRARY, built with load_inline).

The extension is the demo's (opbridge.demo._existing): built once (cached by torch) and
loaded once per process, as C++ op names can be registered only once.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import Tensor

import opbridge
from opbridge import DeclarationError
from opbridge.demo._existing import CPP_NAMESPACE, SoftplusModel, load_cpp_op
from tests.conftest import EXPORTERS

NAME = f"{CPP_NAMESPACE}::scaled_softplus"


def _expected(x: Tensor) -> Tensor:
    return torch.nn.functional.softplus(x, beta=2.0) * 3


@pytest.fixture(scope="module")
def cpp_op() -> object:
    return load_cpp_op()


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("form", ["name", "packet", "overload"])
def test_adopted_cpp_op_runs_in_onnx_runtime(cpp_op: object, exporter: str, form: str) -> None:
    packet = torch.ops.opbridge_demo_cpp.scaled_softplus
    existing = {"name": NAME, "packet": packet, "overload": packet.default}[form]
    op = opbridge.custom_op(existing, domain="cpp.domain")
    assert op.onnx_name == "cpp.domain::ScaledSoftplus" and op.adopted
    x = torch.randn(3, 7) * 4
    report = opbridge.verify(SoftplusModel(), (x,), exporter=exporter)
    assert report.passed, str(report)
    torch.testing.assert_close(SoftplusModel()(x), _expected(x))
    sess = ort.InferenceSession(
        report.model.SerializeToString(), opbridge.session_options(report.model)
    )
    (got,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    np.testing.assert_allclose(got, _expected(x).numpy(), rtol=1e-5, atol=1e-6)


def test_cpp_kernel_errors_reach_the_caller(cpp_op: object) -> None:
    opbridge.custom_op(NAME, domain="cpp.domain")

    class Bad(torch.nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return torch.ops.opbridge_demo_cpp.scaled_softplus(x, -1.0)

    model = opbridge.export(Bad(), (torch.randn(2),))  # the meta kernel does not check beta
    with pytest.raises(opbridge.SessionError, match="beta must be > 0"):
        opbridge.Session(model)(torch.randn(2))


def test_redeclaring_the_cpp_op_is_refused_with_runnable_advice(cpp_op: object) -> None:
    x = torch.randn(5)
    before = torch.ops.opbridge_demo_cpp.scaled_softplus(x)
    with pytest.raises(DeclarationError, match="already exists") as info:

        @opbridge.custom_op(NAME, domain="cpp.domain")
        def scaled_softplus(x: Tensor, beta: float = 1.0, threshold: float = 20.0) -> Tensor:
            return x

    torch.testing.assert_close(torch.ops.opbridge_demo_cpp.scaled_softplus(x), before)
    statement = re.search(
        r"opbridge\.custom_op\(torch\.ops\.[\w.]+, domain='[\w.]+'\)", str(info.value)
    )
    assert statement is not None, str(info.value)
    adopted = eval(statement[0], {"torch": torch, "opbridge": opbridge})
    assert adopted.onnx_name == "cpp.domain::ScaledSoftplus"


def test_unadopted_cpp_op_falls_back_and_runs_in_a_fresh_process(
    cpp_op: object, tmp_path: Path
) -> None:
    x = torch.randn(3, 4)
    with pytest.raises(opbridge.ExportError) as info:
        opbridge.export(SoftplusModel(), (x,))
    assert f"opbridge.custom_op(torch.ops.{CPP_NAMESPACE}.scaled_softplus" in str(info.value)
    path = tmp_path / "cpp_fallback.onnx"
    model = opbridge.export(SoftplusModel(), (x,), path, fallback="torch")
    assert [n.op_type for n in model.graph.node if n.domain == "opbridge.torch"] == [
        f"{CPP_NAMESPACE}_scaled_softplus_default"
    ]
    np.save(tmp_path / "x.npy", x.numpy())
    code = textwrap.dedent(
        f"""
        import numpy as np, torch, opbridge
        x = np.load({str(tmp_path / "x.npy")!r})
        try:
            opbridge.Session({str(path)!r})
        except opbridge.SessionError as e:
            print("without the extension:", e)
        from opbridge.demo._existing import load_cpp_op
        load_cpp_op()
        print("RESULT=" + str(opbridge.Session({str(path)!r})(x).tolist()))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"runs torch op {NAME}.default, which this process does not have" in proc.stdout
    out = np.array(eval(proc.stdout.split("RESULT=", 1)[1]), dtype=np.float32)
    np.testing.assert_allclose(out, _expected(x).numpy(), rtol=1e-5, atol=1e-6)
