"""``opbridge verify --localize --html --random-inputs``."""

from __future__ import annotations

from pathlib import Path

import pytest

from opbridge.cli import main

MODELS = """
import numpy as np
import torch
import opbridge

@opbridge.custom_op("clivlz::nudge", domain="clivlz.d")
def nudge(x: torch.Tensor, k: int) -> torch.Tensor:
    return x * 1.0

nudge.register_kernel(lambda x, k: x + np.float32(0.05 if k == 2 else 0.0))

class Chain(torch.nn.Module):
    def forward(self, x):
        for k in range(4):
            x = torch.sin(nudge(x, k))
        return x

def make_chain():
    return Chain(), (torch.randn(3, 5),)
"""


@pytest.fixture(scope="module")
def models_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cliverify") / "clivlz_models.py"
    path.write_text(MODELS)
    return path


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_verify_localizes_and_writes_html(
    models_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], exporter: str
) -> None:
    page = tmp_path / "report.html"
    argv = [
        "verify",
        f"{models_file}:make_chain",
        "--exporter",
        exporter,
        "--html",
        str(page),
        "--random-inputs",
        "2",
    ]
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "first divergence at node" in out and "clivlz.d::Nudge" in out
    assert "input sets: 0 of 3 pass" in out
    text = page.read_text()
    assert "<svg" in text and "clivlz.d::Nudge" in text
    assert main([*argv[:4], "--no-localize"]) == 1
    assert "first divergence" not in capsys.readouterr().out
