"""The scenarios of the seed tutorials, written with opbridge on today's torch.

Each scenario builds its model, exports it with the chosen exporter, checks the graph
the tutorial describes, runs it in ONNX Runtime and compares with PyTorch. The
declarations are made once per process (torch op names are global).
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import Tensor

import opbridge

__all__ = ["SCENARIOS", "Scenario", "ScenarioResult", "run_scenario"]


@dataclasses.dataclass(frozen=True)
class Scenario:
    """One seed scenario."""

    name: str
    seed: str
    description: str
    run: Callable[[str], opbridge.VerificationReport]
    # Why this machine cannot run the scenario (e.g. no C++ toolchain), or None.
    unavailable: Callable[[], str | None] | None = None


@dataclasses.dataclass
class ScenarioResult:
    scenario: Scenario
    exporter: str
    report: opbridge.VerificationReport | None
    error: str | None = None
    skipped: str | None = None  # why it did not run here

    @property
    def passed(self) -> bool:
        return self.error is None and self.report is not None and self.report.passed


def _expect_nodes(model: onnx.ModelProto, expected: list[tuple[str, str]]) -> None:
    """Checks the graph starts with nodes of these (domain, op_type), as the seed asserts."""
    found = [(n.domain, n.op_type) for n in model.graph.node if n.op_type != "Constant"]
    for want in expected:
        if want not in found:
            raise AssertionError(f"expected a {want[0]}::{want[1]} node, graph has {found}")


def _check(model: onnx.ModelProto) -> None:
    onnx.checker.check_model(model, full_check=True)


# -- 000: torch.inverse -> com.microsoft::Inverse, custom opset version 5 -------------
class CustomInverse(torch.nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return torch.inverse(x) + x


def inverse(exporter: str) -> opbridge.VerificationReport:
    torch.manual_seed(0)
    x = torch.randn(3, 3) + 3 * torch.eye(3)  # well conditioned, as any test should be
    report = opbridge.verify(
        CustomInverse(), (x,), exporter=exporter, custom_opsets={"com.microsoft": 5}
    )
    _check(report.model)
    _expect_nodes(report.model, [("com.microsoft", "Inverse")])
    versions = {o.domain: o.version for o in report.model.opset_import}
    assert versions["com.microsoft"] == 5, versions
    return report


# -- 001/003: the group norm op, eps given as a tensor, written with an attribute --------
@functools.cache
def _group_norm_ops() -> Any:
    # The ONNX node the seed writes, declared with the node's own signature: its torch
    # implementation is the node's ONNX Runtime kernel.
    @opbridge.custom_op("opbridge_demo::testgroupnorm", domain="mydomain", op_type="testgroupnorm")
    def testgroupnorm(
        X: Tensor, num_groups: Tensor, scale: Tensor, bias: Tensor, epsilon: float = 1e-5
    ) -> Tensor:
        groups = int(num_groups.reshape(-1)[0])
        return F.group_norm(X, groups, scale, bias, epsilon)

    # The seed's PyTorch op, with the seed's signature (eps arrives as a tensor). The
    # C++ extension form of it is in examples/cpp_extension.
    @opbridge.custom_op("mynamespace::custom_group_norm", domain="mydomain")
    def custom_group_norm(
        X: Tensor, num_groups: Tensor, scale: Tensor, bias: Tensor, eps: Tensor
    ) -> Tensor:
        return F.group_norm(
            X, int(num_groups.reshape(-1)[0]), scale, bias, float(eps.reshape(-1)[0])
        )

    @custom_group_norm.register_fake
    def _(X: Tensor, num_groups: Tensor, scale: Tensor, bias: Tensor, eps: Tensor) -> Tensor:
        return torch.empty_like(X)

    @custom_group_norm.register_lowering
    def _(op: Any, X: Any, num_groups: Any, scale: Any, bias: Any, eps: Any) -> Any:
        return op.call(testgroupnorm, X, num_groups, scale, bias, epsilon=op.scalar_of(eps))

    return custom_group_norm


class GroupNormModel(torch.nn.Module):
    def forward(self, x: Tensor, num_groups: Tensor, scale: Tensor, bias: Tensor) -> Tensor:
        return torch.ops.mynamespace.custom_group_norm(
            x, num_groups, scale, bias, torch.tensor([0.0])
        )


def group_norm(exporter: str) -> opbridge.VerificationReport:
    _group_norm_ops()
    torch.manual_seed(0)
    inputs = (
        torch.randn(3, 2, 1, 2),
        torch.tensor([2.0]),
        torch.tensor([2.0, 1.0]),
        torch.tensor([1.0, 0.0]),
    )
    with warnings.catch_warnings():
        # The seed passes eps as torch.tensor([0.0]) on purpose (the lowering reads it
        # back as a constant); the tracer's warning about exactly that is expected here.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=__name__)
        report = opbridge.verify(
            GroupNormModel(),
            inputs,
            exporter=exporter,
            input_names=["X", "num_groups", "scale", "bias"],
            output_names=["Y"],
        )
    _check(report.model)
    node = next(n for n in report.model.graph.node if n.domain == "mydomain")
    assert node.op_type == "testgroupnorm", node
    assert [a.name for a in node.attribute] == ["epsilon"], node
    assert [i.name for i in report.model.graph.input] == ["X", "num_groups", "scale", "bias"]
    _check_on_shipped_kernel(report.model, inputs)
    return report


def _check_on_shipped_kernel(model: onnx.ModelProto, inputs: tuple[Tensor, ...]) -> None:
    """Runs the exported model on opbridge's shipped C++ testgroupnorm, as deployed.

    The shipped kernels serve a model only when asked: here a plain ONNX Runtime session
    with the library registered (prebuilt in wheels, so no compiler is needed), compared
    with PyTorch.
    """
    options = ort.SessionOptions()
    options.register_custom_ops_library(str(opbridge.library_path()))
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    names = ["X", "num_groups", "scale", "bias"]
    feeds = {name: t.numpy() for name, t in zip(names, inputs, strict=True)}
    expected = GroupNormModel()(*inputs).numpy()
    np.testing.assert_allclose(session.run(None, feeds)[0], expected, rtol=1e-5, atol=1e-5)


# -- 002/004: aten::gelu -> com.microsoft::Gelu ------------------------------------------
class CustomGelu(torch.nn.Module):
    def forward(self, input_x: Tensor) -> Tensor:
        return torch.ops.aten.gelu(input_x)


def gelu(exporter: str) -> opbridge.VerificationReport:
    torch.manual_seed(0)
    report = opbridge.verify(
        CustomGelu(), (torch.randn(3, 3),), exporter=exporter, contrib_ops=True
    )
    _check(report.model)
    assert report.model.graph.node[0].domain == "com.microsoft"
    assert report.model.graph.node[0].op_type == "Gelu"
    return report


# -- 002/004: addandround as test.customop::CustomOpOne + CustomOpTwo + Cast --------------
@functools.cache
def _add_and_round_ops() -> Any:
    @opbridge.custom_op(
        "test_customop::custom_op_one", domain="test.customop", op_type="CustomOpOne"
    )
    def custom_op_one(x: Tensor, y: Tensor) -> Tensor:
        return x + y

    @custom_op_one.register_kernel
    def _(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return x + y

    @opbridge.custom_op(
        "test_customop::custom_op_two", domain="test.customop", op_type="CustomOpTwo"
    )
    def custom_op_two(x: Tensor) -> Tensor:
        return torch.round(x).to(torch.int32)

    @custom_op_two.register_kernel
    def _(x: np.ndarray) -> np.ndarray:
        return np.round(x).astype(np.int32)  # half to even, like torch.round

    @opbridge.custom_op("mylibrary::addandround_op", domain="test.customop")
    def addandround_op(tensor_x: Tensor) -> Tensor:
        return torch.round(tensor_x + tensor_x)

    @addandround_op.register_lowering
    def custom_addandround(op: Any, input_x: Any) -> Any:
        add_x = op.call(custom_op_one, input_x, input_x)
        round_x = op.call(custom_op_two, add_x)
        return op.Cast(round_x, to=torch.float32)

    return addandround_op


class CustomFoo(torch.nn.Module):
    def forward(self, tensor_x: Tensor) -> Tensor:
        return torch.ops.mylibrary.addandround_op(tensor_x)


def add_and_round(exporter: str) -> opbridge.VerificationReport:
    _add_and_round_ops()
    torch.manual_seed(0)
    report = opbridge.verify(CustomFoo(), (torch.randn(3),), exporter=exporter)
    _check(report.model)
    nodes = report.model.graph.node
    assert (nodes[0].domain, nodes[0].op_type) == ("test.customop", "CustomOpOne")
    assert (nodes[1].domain, nodes[1].op_type) == ("test.customop", "CustomOpTwo")
    return report


# -- 004: aten::add.Tensor replaced by a custom.aten function computing x + alpha*y ------
def custom_aten_add(op: Any, input_x: Any, input_y: Any, alpha: float = 1.0) -> Any:
    input_y = op.Mul(input_y, alpha)
    return op.Add(input_x, input_y)


class AddModel(torch.nn.Module):
    def forward(self, input_x: Tensor, input_y: Tensor) -> Tensor:
        return torch.ops.aten.add(input_x, input_y)


def aten_add(exporter: str) -> opbridge.VerificationReport:
    torch.manual_seed(0)
    with opbridge.registry_scope():
        opbridge.register_lowering(
            "aten::add.Tensor", custom_aten_add, function_domain="custom.aten"
        )
        report = opbridge.verify(
            AddModel(), (torch.randn(3, 4), torch.randn(3, 4)), exporter=exporter
        )
    _check(report.model)
    assert report.model.graph.node[0].domain == "custom.aten"
    assert report.model.graph.node[0].op_type == "custom_aten_add"
    assert [n.op_type for n in report.model.functions[0].node] == ["Constant", "Mul", "Add"]
    return report


# -- 004: the introduction's image classifier, no custom op ------------------------------
class ImageClassifier(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 6, 5)
        self.conv2 = torch.nn.Conv2d(6, 16, 5)
        self.fc1 = torch.nn.Linear(16 * 5 * 5, 120)
        self.fc2 = torch.nn.Linear(120, 84)
        self.fc3 = torch.nn.Linear(84, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), (2, 2))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def image_classifier(exporter: str) -> opbridge.VerificationReport:
    torch.manual_seed(0)
    report = opbridge.verify(
        ImageClassifier().eval(), (torch.randn(1, 1, 32, 32),), exporter=exporter
    )
    _check(report.model)
    return report


SCENARIOS: list[Scenario] = [
    Scenario("inverse", "000", "torch.inverse -> com.microsoft::Inverse, opset 5", inverse),
    Scenario(
        "group_norm",
        "001/003",
        "custom group norm -> mydomain::testgroupnorm, torch and shipped C++ kernels",
        group_norm,
    ),
    Scenario("gelu", "002/004", "aten::gelu -> com.microsoft::Gelu", gelu),
    Scenario("add_and_round", "002/004", "addandround -> CustomOpOne/CustomOpTwo", add_and_round),
    Scenario("aten_add", "004", "aten::add.Tensor -> custom.aten function", aten_add),
    Scenario("image_classifier", "004", "plain CNN, no custom op", image_classifier),
]


def _existing_scenarios() -> list[Scenario]:
    from opbridge.demo import _existing

    return [
        Scenario(
            "adopted_cpp_op", "-", "C++ extension op adopted -> mydomain::ScaledSoftplus",
            _existing.adopted_cpp_op, _existing.cpp_toolchain_missing,
        ),
        Scenario(
            "torch_fallback", "-", "linalg_cholesky, erfinv, kthvalue with fallback='torch'",
            _existing.torch_fallback,
        ),
    ]  # fmt: skip


SCENARIOS += _existing_scenarios()


def run_scenario(scenario: Scenario, exporter: str) -> ScenarioResult:
    """Runs one scenario; failures are captured, not raised."""
    reason = scenario.unavailable() if scenario.unavailable else None
    if reason:
        return ScenarioResult(scenario, exporter, None, skipped=reason)
    try:
        return ScenarioResult(scenario, exporter, scenario.run(exporter))
    except Exception as e:
        return ScenarioResult(scenario, exporter, None, f"{type(e).__name__}: {e}")
