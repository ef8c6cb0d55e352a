"""opbridge.export(..., fallback="torch"): ATen ops no exporter lowers, run by torch kernels."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import Tensor

import opbridge
from opbridge.cli import main
from tests.conftest import EXPORTERS

# Measured with torch 2.13: neither exporter lowers these.
BOTH = {
    "aten::linalg_slogdet.default",
    "aten::linalg_solve.default",
    "aten::linalg_cholesky.default",
    "aten::searchsorted.Tensor",
    "aten::erfinv.default",
    "aten::kthvalue.default",
}
# The TorchScript exporter also has no symbolic for these (dynamo writes them natively).
TORCHSCRIPT_ONLY = {"aten::diff.default", "aten::logcumsumexp.default", "aten::histc.default"}


class LinalgModel(torch.nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        a = x @ x.transpose(0, 1) + 4 * torch.eye(x.shape[0])
        chol = torch.linalg.cholesky(a)
        logdet = torch.linalg.slogdet(a)[1]
        solved = torch.linalg.solve(a, x)
        inv_erf = torch.erfinv(torch.tanh(x) * 0.9)
        kth = torch.kthvalue(x, 2, dim=-1, keepdim=True)[0]
        edges = torch.sort(x.flatten())[0]
        bucket = torch.searchsorted(edges, x).to(x.dtype)
        return chol + logdet + solved + inv_erf + kth + bucket


class SequenceModel(torch.nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        d = torch.diff(x, dim=-1)
        hist = torch.histc(x, bins=4, min=-2.0, max=2.0)
        return torch.logcumsumexp(d, 0).sum(-1) + hist.sum() + torch.erfinv(x * 0.1).sum()


def _fallen_back(model: onnx.ModelProto) -> set[str]:
    props = {p.key: p.value for p in model.metadata_props}
    return set(json.loads(props["opbridge.torch_fallback"]).values())


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_aten_ops_fall_back_and_verify(exporter: str) -> None:
    x = torch.randn(5, 5)
    report = opbridge.verify(LinalgModel(), (x,), exporter=exporter, fallback="torch")
    assert report.passed, str(report)
    assert _fallen_back(report.model) == BOTH
    types = {n.op_type for n in report.model.graph.node if n.domain == "opbridge.torch"}
    assert "aten_linalg_cholesky_default" in types and "aten_searchsorted_Tensor" in types
    onnx.checker.check_model(report.model, full_check=True)
    # A plain InferenceSession with opbridge's options runs it too.
    sess = ort.InferenceSession(
        report.model.SerializeToString(), opbridge.session_options(report.model)
    )
    (got,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    np.testing.assert_allclose(got, LinalgModel()(x).numpy(), rtol=1e-4, atol=1e-4)


def test_torchscript_only_ops_fall_back() -> None:
    x = torch.randn(4, 6)
    report = opbridge.verify(SequenceModel(), (x,), exporter="torchscript", fallback="torch")
    assert report.passed, str(report)
    assert _fallen_back(report.model) == TORCHSCRIPT_ONLY | {"aten::erfinv.default"}
    report = opbridge.verify(SequenceModel(), (x,), exporter="dynamo", fallback="torch")
    assert report.passed, str(report)
    assert _fallen_back(report.model) == {"aten::erfinv.default"}


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_without_fallback_the_error_lists_every_op(exporter: str) -> None:
    with pytest.raises(opbridge.ExportError) as info:
        opbridge.export(LinalgModel(), (torch.randn(5, 5),), exporter=exporter)
    text = str(info.value)
    assert "6 ops of this model cannot be written" in text
    for name in BOTH:
        packet = name.split(".")[0]
        assert f"opbridge.register_lowering('{packet}" in text, (name, text)
    assert "fallback='torch'" in text
    assert "opbridge.custom_op(torch.ops.aten.searchsorted.Tensor, domain='mydomain')" in text


def test_supported_models_are_unchanged_by_fallback() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU())
    proto = opbridge.export(model, (torch.randn(2, 4),), fallback="torch")
    assert not [p for p in proto.metadata_props if p.key == "opbridge.torch_fallback"]
    assert {n.domain for n in proto.graph.node} <= {"", "ai.onnx"}


def test_fallback_without_it_later_is_still_an_error() -> None:
    x = torch.randn(5, 5)
    opbridge.export(LinalgModel(), (x,), fallback="torch")
    with pytest.raises(opbridge.ExportError, match="cannot be written"):
        opbridge.export(LinalgModel(), (x,))


def test_fft_with_torchscript_is_a_clear_error() -> None:
    class Fft(torch.nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return torch.fft.irfft(torch.fft.rfft(x), n=4)

    with pytest.raises(opbridge.ExportError, match="complex tensor"):
        opbridge.export(Fft(), (torch.randn(3, 4),), exporter="torchscript", fallback="torch")
    assert opbridge.verify(Fft(), (torch.randn(3, 4),), exporter="dynamo").passed


def test_a_fresh_process_runs_the_model_from_the_file_alone(tmp_path: Path) -> None:
    x = torch.randn(5, 5)
    path = tmp_path / "fallback.onnx"
    opbridge.export(LinalgModel(), (x,), path, fallback="torch")
    np.save(tmp_path / "x.npy", x.numpy())
    np.save(tmp_path / "y.npy", LinalgModel()(x).numpy())
    code = textwrap.dedent(
        f"""
        import numpy as np, onnxruntime as ort, opbridge
        x = np.load({str(tmp_path / "x.npy")!r}); y = np.load({str(tmp_path / "y.npy")!r})
        np.testing.assert_allclose(opbridge.Session({str(path)!r})(x), y, rtol=1e-4, atol=1e-4)
        opts = opbridge.session_options({str(path)!r})
        sess = ort.InferenceSession({str(path)!r}, opts)
        out = sess.run(None, {{sess.get_inputs()[0].name: x}})[0]
        np.testing.assert_allclose(out, y, rtol=1e-4, atol=1e-4)
        print("fresh ok")
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "fresh ok" in proc.stdout, proc.stderr[-3000:]


def test_cli_export_fallback_and_inspect(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models = tmp_path / "fallback_models.py"
    models.write_text(
        textwrap.dedent(
            """
            import torch

            class Model(torch.nn.Module):
                def forward(self, x):
                    return torch.erfinv(torch.tanh(x) * 0.5) + torch.erfinv(x * 0.1)

            def make_model():
                return Model(), (torch.randn(3, 4),)
            """
        )
    )
    out = tmp_path / "m.onnx"
    assert main(["export", f"{models}:make_model", "-o", str(out)]) != 0
    assert "fallback='torch'" in capsys.readouterr().err
    assert main(["export", f"{models}:make_model", "-o", str(out), "--fallback", "torch"]) == 0
    assert "opbridge.torch::aten_erfinv_default" in capsys.readouterr().out
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "torch fallback: 2 nodes" in text and "aten::erfinv.default x2" in text


def test_fallback_inside_control_flow_runs_both_branches() -> None:
    class Branchy(torch.nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return torch.cond(x.sum() > 0, lambda x: torch.erfinv(x * 0.5), lambda x: x - 1, (x,))

    # The fallback node sits in the If's then-branch; expansion enters subgraphs.
    x = torch.rand(3)
    model = opbridge.export(Branchy(), (x,), fallback="torch")
    then_branch = next(n for n in model.graph.node if n.op_type == "If").attribute
    assert "opbridge.torch" in str(then_branch)
    session = opbridge.Session(model)
    for sample in (x, -x - 0.1):
        torch.testing.assert_close(session(sample), Branchy()(sample))
    assert opbridge.verify(Branchy(), (x,), fallback="torch").passed


def test_adopt_existing_example_runs() -> None:
    example = Path(__file__).resolve().parents[1] / "examples" / "adopt_existing.py"
    proc = subprocess.run(
        [sys.executable, str(example)], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 ops of this model cannot be written" in proc.stdout
    assert proc.stdout.count("PASSED") == 2, proc.stdout
