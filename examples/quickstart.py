"""Declare an op once, export it with both exporters, run it in ONNX Runtime, verify.

python examples/quickstart.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

import opbridge


@opbridge.custom_op("quickstart::scaled_tanh", domain="mydomain")
def scaled_tanh(x: torch.Tensor, scale: float) -> torch.Tensor:
    return torch.tanh(x) * scale


class Model(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return scaled_tanh(x, 2.0) + 1


def main() -> None:
    x = torch.randn(4, 8)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        model = opbridge.export(Model(), (x,), path)
        print("nodes:", [f"{n.domain or 'ai.onnx'}::{n.op_type}" for n in model.graph.node])
        session = opbridge.Session(path)
        print(session)
        torch.testing.assert_close(session(x), Model()(x))
    for exporter in ("dynamo", "torchscript"):
        report = opbridge.verify(Model(), (x,), exporter=exporter)
        print(report)
        assert report.passed


if __name__ == "__main__":
    main()
