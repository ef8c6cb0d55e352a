"""The shipped com.microsoft lowerings, both exporters, run in ONNX Runtime."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import opbridge
from tests.conftest import EXPORTERS


def _domains(model) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    return [(n.domain, n.op_type) for n in model.graph.node if n.op_type != "Constant"]


class Inverse(torch.nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return torch.linalg.inv(x) * 2


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_inverse_is_always_on(exporter: str) -> None:
    x = torch.randn(2, 3, 3) + 3 * torch.eye(3)
    report = opbridge.verify(Inverse(), (x,), exporter=exporter)
    assert report.passed, str(report)
    assert ("com.microsoft", "Inverse") in _domains(report.model)


class Gelu(torch.nn.Module):
    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        self.approximate = approximate

    def forward(self, x: Tensor) -> Tensor:
        return torch.nn.functional.gelu(x, approximate=self.approximate)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_gelu_only_with_contrib_ops(exporter: str) -> None:
    x = torch.randn(4, 5)
    plain = opbridge.export(Gelu(), (x,), exporter=exporter)
    assert all(n.domain != "com.microsoft" for n in plain.graph.node)
    report = opbridge.verify(Gelu(), (x,), exporter=exporter, contrib_ops=True)
    assert report.passed, str(report)
    assert _domains(report.model) == [("com.microsoft", "Gelu")]


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_gelu_tanh_uses_fast_gelu(exporter: str) -> None:
    report = opbridge.verify(Gelu("tanh"), (torch.randn(8),), exporter=exporter, contrib_ops=True)
    assert report.passed, str(report)
    assert _domains(report.model) == [("com.microsoft", "FastGelu")]


class Triangles(torch.nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return torch.triu(x, 1) - torch.tril(x, -1)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_triu_tril_trilu(exporter: str) -> None:
    report = opbridge.verify(Triangles(), (torch.randn(4, 4),), exporter=exporter, contrib_ops=True)
    assert report.passed, str(report)
    assert _domains(report.model).count(("com.microsoft", "Trilu")) == 2


class GridSample(torch.nn.Module):
    def forward(self, x: Tensor, grid: Tensor) -> Tensor:
        return torch.nn.functional.grid_sample(
            x, grid, mode="bilinear", padding_mode="border", align_corners=False
        )


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_grid_sample(exporter: str) -> None:
    x, grid = torch.randn(1, 2, 5, 5), torch.rand(1, 3, 3, 2) * 2 - 1
    report = opbridge.verify(GridSample(), (x, grid), exporter=exporter, contrib_ops=True)
    assert report.passed, str(report)
    assert ("com.microsoft", "GridSample") in _domains(report.model)
