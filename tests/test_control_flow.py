"""Lowerings inside control flow: torch.cond branches (dynamo), scripted loops (TorchScript)."""

from __future__ import annotations

import onnx
import torch
from torch import Tensor

import opbridge


def _body_ops(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """``(domain, op_type)`` of every node inside a subgraph, at any depth."""
    found: list[tuple[str, str]] = []

    def walk(graph: onnx.GraphProto, inside: bool) -> None:
        for node in graph.node:
            if inside:
                found.append((node.domain, node.op_type))
            for attr in node.attribute:
                for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
                    walk(sub, True)

    walk(model.graph, False)
    return found


def _no_placeholders(model: onnx.ModelProto) -> None:
    assert all(d != "opbridge.lowering" for d, _ in _body_ops(model))
    assert all(n.domain != "opbridge.lowering" for n in model.graph.node)
    assert all(o.domain != "opbridge.lowering" for o in model.opset_import)


def test_declared_op_inside_torch_cond_branch(ns: str) -> None:
    @opbridge.custom_op(f"{ns}::bump", domain=ns)
    def bump(x: Tensor) -> Tensor:
        return x + 1

    class M(torch.nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return torch.cond(x.sum() > 0, lambda t: bump(t), lambda t: t - 1, (x,))

    proto = opbridge.export(M(), (torch.randn(3),))
    assert (ns, "Bump") in _body_ops(proto)
    _no_placeholders(proto)
    session = opbridge.Session(proto)
    for x in (torch.ones(3), -torch.ones(3)):
        torch.testing.assert_close(session(x), M()(x))


def test_lowering_with_constant_inside_torch_cond_branch(ns: str) -> None:
    """A lowering reads a constant (op.value_of) inside a branch and writes ONNX ops."""

    @opbridge.custom_op(f"{ns}::shift", domain=ns)
    def shift(x: Tensor, by: Tensor) -> Tensor:
        return x + by

    @shift.register_lowering
    def _(op, x, by):  # type: ignore[no-untyped-def]
        return op.Add(x, float(op.scalar_of(by)))

    class M(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("by", torch.tensor(3.0))

        def forward(self, x: Tensor) -> Tensor:
            return torch.cond(x.sum() > 0, lambda t: shift(t, self.by), lambda t: t * 2, (x,))

    proto = opbridge.export(M(), (torch.randn(4),))
    _no_placeholders(proto)
    assert all(d != ns for d, _ in _body_ops(proto))  # lowered to standard ops
    session = opbridge.Session(proto)
    for x in (torch.ones(4), -torch.ones(4)):
        torch.testing.assert_close(session(x), M()(x))


class _GeluLoop(torch.nn.Module):
    """PyTorch's own test_contrib_op_with_loop model (test_utility_funs.py)."""

    def __init__(self) -> None:
        super().__init__()
        self.gelu = torch.nn.GELU(approximate="none")

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        res = []
        res2 = []
        for _ in range(x.size(0)):
            if len(res) > 0:
                res2.append(res[0])
            else:
                res2.append(self.gelu(x[0]))
            res.append(x[0])
        return torch.stack(res), torch.stack(res2)


def test_contrib_gelu_in_scripted_loop() -> None:
    x = torch.randn(3, 3, 4)
    proto = opbridge.export(
        torch.jit.script(_GeluLoop()), (x,), exporter="torchscript", contrib_ops=True
    )
    assert ("com.microsoft", "Gelu") in _body_ops(proto)
    _no_placeholders(proto)
    outputs = opbridge.Session(proto)(x)
    for got, want in zip(outputs, _GeluLoop()(x), strict=True):
        torch.testing.assert_close(got, want)


def test_declared_op_inside_scripted_loop_body(ns: str) -> None:
    @opbridge.custom_op(f"{ns}::bump", domain=ns)
    def bump(x: Tensor, k: float) -> Tensor:
        return x + k

    op = getattr(torch.ops, ns).bump

    class L(torch.nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            y = x
            for _ in range(x.size(0)):
                y = op(y, 2.0)
            return y

    x = torch.randn(3, 4)
    proto = opbridge.export(torch.jit.script(L()), (x,), exporter="torchscript")
    assert (ns, "Bump") in _body_ops(proto)
    _no_placeholders(proto)
    torch.testing.assert_close(opbridge.Session(proto)(x), L()(x))
