"""opbridge.verify and its report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

import opbridge
from opbridge.verification import default_tolerances
from tests.conftest import EXPORTERS


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
    assert default_tolerances(np.dtype("float32")) == (1.3e-6, 1e-5)
    assert default_tolerances(np.dtype("float16")) == (1e-3, 1e-5)
    assert default_tolerances(np.dtype("int32")) == (0.0, 0.0)


def test_float16_model() -> None:
    model = torch.nn.Linear(8, 4).half().eval()
    report = opbridge.verify(model, (torch.randn(2, 8).half(),))
    assert report.passed, str(report)
    assert report.outputs[0].dtype == "float16"


# -- judging outputs -----------------------------------------------------------------


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_int64_above_2_53_off_by_one_fails(ns: str, exporter: str) -> None:
    @opbridge.custom_op(f"{ns}::big", domain=f"{ns}.d")
    def big(x: Tensor) -> Tensor:
        return x + 2**53

    big.register_kernel(lambda x: x + np.int64(2**53 - 1))  # off by one

    class M(torch.nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return big(x)

    x = torch.tensor([1, 2, 3], dtype=torch.int64)
    report = opbridge.verify(M(), (x,), exporter=exporter, localize=False)
    assert not report.passed, str(report)
    assert report.outputs[0].mismatched == 3 and report.outputs[0].max_abs_diff == 1.0


class Extremes(torch.nn.Module):
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return x / 0.0, torch.log(x), x > 0  # +-inf, NaN where x < 0, bool


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_infinities_nans_and_bools_judged_right(exporter: str) -> None:
    x = torch.tensor([-2.0, -1.0, 1.0, 3.0])
    report = opbridge.verify(Extremes(), (x,), exporter=exporter)
    assert report.passed, str(report)
    assert [o.dtype for o in report.outputs] == ["float32", "float32", "bool"]
    assert report.first_divergence is None and report.localization is None


class ToBfloat16(torch.nn.Module):
    def forward(self, x: Tensor) -> Tensor:  # ONNX Runtime's CPU kernels: Cast, not Gemm
        return (torch.exp(x) * 3.0).to(torch.bfloat16)


class Bfloat16InOut(torch.nn.Module):
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x.float() * 2, (x.float() + 1).to(torch.bfloat16)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_bfloat16_inputs_reach_onnx_runtime(exporter: str) -> None:
    x = torch.randn(16).to(torch.bfloat16)
    report = opbridge.verify(Bfloat16InOut(), (x,), exporter=exporter, localize=True)
    assert report.passed and report.first_divergence is None, str(report)
    assert [o.dtype for o in report.outputs] == ["float32", "bfloat16"]


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_bfloat16_outputs(exporter: str) -> None:
    report = opbridge.verify(ToBfloat16(), (torch.randn(64),), exporter=exporter)
    assert report.passed, str(report)
    assert report.outputs[0].dtype == "bfloat16" and report.outputs[0].rtol == 1.6e-2


# -- localisation ----------------------------------------------------------------------


def _bumps(ns: str, wrong: int) -> torch.nn.Module:
    """50 custom nodes; the numpy kernel is off by 1e-2 in the one with k == wrong."""

    @opbridge.custom_op(f"{ns}::bump", domain=f"{ns}.d")
    def bump(x: Tensor, k: int) -> Tensor:
        return x + 1

    bump.register_kernel(lambda x, k: x + np.float32(1.01 if k == wrong else 1.0))

    class Bumps(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(8, 8)

        def forward(self, x: Tensor) -> Tensor:
            x = self.proj(x)
            for k in range(50):
                x = bump(x, k) - 1.0
            return x

    return Bumps().eval()


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_planted_kernel_bug_found_at_its_node(ns: str, exporter: str) -> None:
    report = opbridge.verify(_bumps(ns, wrong=17), (torch.randn(4, 8),), exporter=exporter)
    assert not report.passed
    custom = [n for n in report.model.graph.node if n.domain == f"{ns}.d"]
    assert len(custom) == 50
    found = report.first_divergence
    assert found is not None, str(report)
    assert found.node == custom[17].name
    assert (found.op_type, found.domain) == ("Bump", f"{ns}.d")
    assert found.max_abs_diff == pytest.approx(0.01, rel=1e-3)
    assert found.inputs_max_abs_diff < 1e-5
    assert f"{ns}" in found.origin and "bump" in found.origin
    assert "x = bump(x, k) - 1.0" in found.origin  # the source line
    assert "first divergence at node" in str(report)
    path = report.localization.path()  # type: ignore[union-attr]
    assert path[-1].node == found.node and all(s.passed for s in path[:-1])


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_planted_lowering_bug_found_at_its_node(ns: str, exporter: str) -> None:
    @opbridge.custom_op(f"{ns}::shift", domain=f"{ns}.d")
    def shift(x: Tensor, i: int) -> Tensor:
        return x + i

    @shift.register_lowering
    def _(op: opbridge.Builder, x: opbridge.Value, i: int) -> opbridge.Value:
        return op.Add(x, op.constant(float(i) + (0.01 if i == 31 else 0.0), like=x))

    class Shifts(torch.nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            for i in range(50):
                x = shift(x, i)
            return x - 1225.0  # sum(range(50)): back to the scale of x

    report = opbridge.verify(Shifts(), (torch.randn(3, 5),), exporter=exporter)
    assert not report.passed
    adds = [n for n in report.model.graph.node if n.op_type == "Add"]
    assert len(adds) == 50 and not [n for n in report.model.graph.node if n.domain]
    found = report.first_divergence
    assert found is not None, str(report)
    assert found.node == adds[31].name and found.op_type == "Add" and found.domain == ""
    assert found.max_abs_diff == pytest.approx(0.01, rel=1e-3)
    assert found.inputs_max_abs_diff < 1e-4
    assert "shift" in found.origin


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_no_divergence_reports_none(ns: str, exporter: str) -> None:
    report = opbridge.verify(
        _bumps(ns, wrong=-1), (torch.randn(4, 8),), exporter=exporter, localize=True
    )
    assert report.passed, str(report)
    assert report.localization is not None and report.first_divergence is None
    assert report.localization.compared >= 50
    assert all(s.passed for s in report.localization.steps)
    assert "no intermediate value departs" in str(report)


def test_localize_false_and_default(ns: str) -> None:
    model, x = _bumps(ns, wrong=3), (torch.randn(2, 8),)
    assert opbridge.verify(model, x, localize=False).localization is None
    assert opbridge.verify(model, x).first_divergence is not None  # failed: localised


def test_standard_nodes_matched_per_module_scope_torchscript(ns: str) -> None:
    class Inner(torch.nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return torch.sin(x) * 3.0

    class Outer(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = Inner()

        def forward(self, x: Tensor) -> Tensor:
            return self.inner(x) + 1.0

    report = opbridge.verify(Outer(), (torch.randn(3),), exporter="torchscript", localize=True)
    steps = report.localization.steps  # type: ignore[union-attr]
    assert [s.op_type for s in steps] == ["Sin", "Mul", "Add"]
    assert all(s.passed for s in steps) and report.first_divergence is None
    sin, mul, add = steps
    assert sin.node.startswith("/inner/") and "module inner, torch op aten::sin" in sin.origin
    assert "torch.sin(x) * 3.0" in sin.origin and "aten::mul.Tensor" in mul.origin
    assert add.node == "/Add" and "aten::add.Tensor" in add.origin


# -- several input sets ------------------------------------------------------------------


def test_extra_and_random_input_sets(ns: str) -> None:
    @opbridge.custom_op(f"{ns}::pos", domain=f"{ns}.d")
    def pos(x: Tensor) -> Tensor:
        return x.abs()

    # Wrong only for rows wider than 6: the example inputs do not see it.
    pos.register_kernel(lambda x: np.abs(x) + np.float32(0.5 if x.shape[-1] > 6 else 0.0))

    class M(torch.nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return pos(x) * 2

    batch = torch.export.Dim("batch", min=1, max=16)
    width = torch.export.Dim("width", min=2, max=10)
    report = opbridge.verify(
        M(),
        (torch.randn(2, 4),),
        inputs=[(torch.randn(5, 3),)],
        random_inputs=6,
        seed=3,
        dynamic_shapes=({0: batch, 1: width},),
    )
    sets = report.input_sets
    assert [s.label for s in sets[:2]] == ["args", "inputs[0]"] and len(sets) == 8
    assert sets[0].passed and sets[1].passed and sets[1].shapes == ((5, 3),)
    drawn = [s.shapes[0] for s in sets[2:]]
    assert all(1 <= b <= 16 and 2 <= w <= 10 for b, w in drawn)
    assert len(set(drawn)) > 1  # dynamic dims really vary
    assert all(s.passed == (s.shapes[0][1] <= 6) for s in sets)
    assert report.passed == all(s.passed for s in sets)
    again = opbridge.verify(
        M(),
        (torch.randn(2, 4),),
        random_inputs=6,
        seed=3,
        localize=False,
        dynamic_shapes=({0: batch, 1: width},),
    )
    assert [s.shapes for s in again.input_sets[1:]] == [s.shapes for s in sets[2:]]
    assert not report.passed  # seed 3 draws widths above 6
    if report.localization is not None:
        assert report.localization.input_set == next(s.index for s in sets if not s.passed)
        assert report.first_divergence is not None
        assert report.first_divergence.op_type == "Pos"
    else:
        raise AssertionError("a failed verify localises")
    assert "input sets:" in str(report)


def test_random_inputs_keep_dtypes_and_integer_ranges() -> None:
    from opbridge.verification._inputs import random_like

    args = (torch.randn(2, 3), torch.tensor([3, 5, 7]), torch.tensor([True, False]))
    ((a, b, c),) = random_like(args, None, 1, seed=0)
    assert a.shape == (2, 3) and a.dtype == torch.float32
    assert b.dtype == torch.int64 and int(b.min()) >= 3 and int(b.max()) <= 7
    assert c.dtype == torch.bool


# -- progress --------------------------------------------------------------------------


def test_no_progress_output_off_a_terminal(ns: str, capfd: pytest.CaptureFixture[str]) -> None:
    opbridge.verify(_bumps(ns, wrong=1), (torch.randn(2, 8),), random_inputs=2)
    captured = capfd.readouterr()
    assert "comparing" not in captured.err and "verifying" not in captured.err
    assert "\x1b[" not in captured.err


def test_progress_bar_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from rich.console import Console

    from opbridge import _progress

    buffer = io.StringIO()
    real = Console
    monkeypatch.setattr(
        "rich.console.Console",
        lambda **kw: real(file=buffer, force_terminal=True, width=80),
    )
    with _progress.progress_bar(None) as update:
        assert update is not None
        update("comparing intermediate values", 5, 10)
    assert "comparing intermediate values" in buffer.getvalue()
    with _progress.progress_bar(False) as update:
        assert update is None


def test_readme_example_localizes_the_rms_norm_kernel(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import runpy

    example = Path(__file__).parent.parent / "examples" / "localize.py"
    page = tmp_path / "encoder.html"
    report = runpy.run_path(str(example))["main"](page)
    found = report.first_divergence
    assert found is not None and found.op_type == "RmsNorm" and found.inputs_max_abs_diff == 0
    assert "module blocks.0.norm" in found.origin and "rms_norm(x, self.weight" in found.origin
    assert "first divergence at node" in capsys.readouterr().out
    assert found.node in page.read_text()


NATIVE_SLIGHTLY_WRONG = """
#include <opbridge/ort_kernel.h>

Ort::Status Cube(const opbridge::Tensor<float>& x, opbridge::Tensor<float>& y) {
  float* out = y.Allocate(x.Shape());
  const float* in = x.Data();
  for (int64_t i = 0; i < x.NumberOfElement(); ++i) out[i] = in[i] * in[i] * in[i] + 0.01f;
  return Ort::Status{nullptr};
}

OPBRIDGE_REGISTER_OPS(ops) { ops.Add("verify.native", "Cube", Cube); }
"""


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_localizes_through_a_native_library(ns: str, exporter: str) -> None:
    @opbridge.custom_op(f"{ns}::cube", domain="verify.native", op_type="Cube")
    def cube(x: Tensor) -> Tensor:
        return x * x * x

    cube.register_native_kernel(
        opbridge.load_inline("test_verify_native_cube", NATIVE_SLIGHTLY_WRONG)
    )

    class M(torch.nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return torch.cos(cube(torch.sin(x)))

    report = opbridge.verify(M(), (torch.randn(16),), exporter=exporter)
    assert "verify.native::Cube: native" in report.session
    found = report.first_divergence
    assert found is not None, str(report)
    assert (found.op_type, found.domain) == ("Cube", "verify.native")
    (native,) = [n for n in report.model.graph.node if n.domain == "verify.native"]
    assert found.node == native.name and found.max_abs_diff == pytest.approx(0.01, rel=1e-3)


def test_many_input_sets_print_failures_first() -> None:
    from opbridge.verification import InputSetResult, OutputComparison, VerificationReport

    ok = OutputComparison(0, "y", "float32", (2,), 0.0, 0.0, 0, 1.3e-6, 1e-5, True)
    bad = OutputComparison(0, "y", "float32", (2,), 1.0, 1.0, 1, 1.3e-6, 1e-5, False)
    sets = [InputSetResult(i, f"set{i}", ((2,),), (bad if i % 2 else ok,)) for i in range(25)]
    text = str(VerificationReport(False, [ok], None, "dynamo", "S", sets))  # type: ignore[arg-type]
    assert "input sets: 13 of 25 pass" in text
    assert text.count("FAIL\n") + text.endswith("FAIL") == 10
    assert "set1 " in text and "set0 " not in text
    assert "... 15 more sets, 2 of them fail" in text


def test_standard_nodes_unmatched_when_counts_differ_torchscript() -> None:
    class Alpha(torch.nn.Module):
        def forward(self, x: Tensor, y: Tensor) -> Tensor:
            z = torch.add(x, y, alpha=2.0)  # ONNX: Mul then Add; ATen: one add
            return torch.relu_(z) * 1.5  # in place: relu_, not relu

    args = (torch.randn(6), torch.randn(6))
    report = opbridge.verify(Alpha(), args, exporter="torchscript", localize=True)
    assert report.passed and report.first_divergence is None, str(report)
    compared = {s.op_type for s in report.localization.steps}  # type: ignore[union-attr]
    assert "Relu" not in compared  # relu_ has no Relu twin in the dispatch record
    ops = [n.op_type for n in report.model.graph.node]
    assert ops.count("Mul") == 2  # alpha's Mul and the final Mul: one aten mul, not paired
    assert [s.op_type for s in report.localization.steps].count("Mul") <= 1  # type: ignore[union-attr]
