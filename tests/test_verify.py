"""opbridge.verify and its report."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor

import opbridge
from opbridge.verification import default_tolerances


class Twice(torch.nn.Module):
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x * 2, (x > 0).to(torch.int64)


def test_report_fields_and_text() -> None:
    report = opbridge.verify(Twice(), (torch.randn(3, 4),))
    assert report.passed
    assert report.max_abs_diff == 0.0 and report.max_rel_diff == 0.0
    assert report.rows is report.outputs and len(report.rows) == 2
    assert [o.dtype for o in report.outputs] == ["float32", "int64"]
    assert report.outputs[1].rtol == 0.0 and report.outputs[1].atol == 0.0
    assert report.model.graph.node
    text = str(report)
    assert "PASSED" in text and "float32" in text and "int64" in text


def test_detects_a_wrong_kernel(ns: str) -> None:
    @opbridge.custom_op(f"{ns}::almost", domain=f"{ns}.d")
    def almost(x: Tensor) -> Tensor:
        return x + 1

    almost.register_kernel(lambda x: x + np.float32(1.01))

    class M(torch.nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return almost(x)

    report = opbridge.verify(M(), (torch.ones(5),))
    assert not report.passed
    assert report.max_abs_diff == pytest.approx(0.01, rel=1e-3)
    assert report.outputs[0].mismatched == 5
    assert "FAILED" in str(report)
    assert opbridge.verify(M(), (torch.ones(5),), atol=0.02).passed


def test_default_tolerances_by_dtype() -> None:
    assert default_tolerances(np.dtype("float32")) == (1e-3, 1e-5)
    f16 = default_tolerances(np.dtype("float16"))
    assert f16[0] > 1e-3 and f16[1] > 1e-5
    assert default_tolerances(np.dtype("int32")) == (0.0, 0.0)


def test_float16_model() -> None:
    model = torch.nn.Linear(8, 4).half().eval()
    report = opbridge.verify(model, (torch.randn(2, 8).half(),))
    assert report.passed, str(report)
    assert report.outputs[0].dtype == "float16"
