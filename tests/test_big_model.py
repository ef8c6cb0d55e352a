"""A model over 2 GB, end to end with both exporters (about 2x25 s, 4.6 GB peak RSS).

One 2.15 GB weight (only its first row is ever written, so the rest costs no memory
in torch). ``opbridge.verify`` exports it to a file with external data, runs it in
ONNX Runtime from the path and compares with torch; the CLI inspects and runs it.
Deselect with ``-m "not big"``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import Tensor

import opbridge
from opbridge.cli import main
from tests.conftest import EXPORTERS

ROWS, COLS = 1025, 512 * 1024  # 2.15 GB of float32


@pytest.fixture(scope="module")
def big_op() -> opbridge.CustomOpDef:
    @opbridge.custom_op("bigtest::bump", domain="big.test")
    def bump(x: Tensor) -> Tensor:
        return x + 1

    return bump


class _Big(torch.nn.Module):
    def __init__(self, bump: opbridge.CustomOpDef) -> None:
        super().__init__()
        weight = torch.empty(ROWS, COLS)  # untouched pages stay out of RSS
        weight[0].normal_()
        self.weight = torch.nn.Parameter(weight, requires_grad=False)
        self.bump = bump

    def forward(self, x: Tensor, row: Tensor) -> Tensor:
        return self.bump(x) + self.weight[row, :8]  # read at run time: no folding


@pytest.mark.big
@pytest.mark.parametrize("exporter", EXPORTERS)
def test_model_over_2gb(
    big_op: opbridge.CustomOpDef, exporter: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _Big(big_op)
    args = (torch.randn(8), torch.tensor(0))
    path = tmp_path / "big.onnx"
    report = opbridge.verify(model, args, exporter=exporter, f=str(path))
    assert report.passed, str(report)
    # The weights are beside the model, not inside it or the returned proto.
    assert path.stat().st_size < 1_000_000
    data = sum(p.stat().st_size for p in tmp_path.iterdir() if p != path)
    assert data >= ROWS * COLS * 4
    assert report.model.ByteSize() < 1_000_000
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in report.model.graph.initializer)
    assert not any(p.name.endswith(".opbridge-tmp") for p in tmp_path.iterdir())
    # A proto that refers to external data is refused with the fix, not misread.
    with pytest.raises(opbridge.SessionError, match="pass the .onnx path"):
        opbridge.Session(report.model)
    # The CLI runs it from the path.
    names = [i.name for i in report.model.graph.input]
    np.savez(tmp_path / "in.npz", **{n: a.numpy() for n, a in zip(names, args, strict=True)})
    assert main(["inspect", str(path)]) == 0
    assert main(["run", str(path), "--inputs", str(tmp_path / "in.npz")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"big\.test::Bump\s+1\s", out), out
