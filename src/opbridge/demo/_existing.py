"""Scenarios for ops that already exist: an adopted C++ extension op, and the torch fallback.

The C++ op is a small ``TORCH_LIBRARY`` extension built with
``torch.utils.cpp_extension.load_inline`` (cached by torch in
``$TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``): it stands in for any
compiled extension (torchvision, your own). It is loaded once per process.
"""

from __future__ import annotations

import functools
import os
import shlex
import shutil
from typing import Any

import onnx
import torch
from torch import Tensor

import opbridge

__all__ = ["CPP_NAMESPACE", "CPP_SOURCE", "adopted_cpp_op", "load_cpp_op", "torch_fallback"]

CPP_NAMESPACE = "opbridge_demo_cpp"

CPP_SOURCE = r"""
#include <torch/extension.h>

// softplus(beta * x) / beta, linear above `threshold` (as torch.nn.functional.softplus).
torch::Tensor scaled_softplus(const torch::Tensor& x, double beta, double threshold) {
  TORCH_CHECK(x.is_floating_point(), "scaled_softplus: x must be a float tensor, got ",
              x.scalar_type());
  TORCH_CHECK(beta > 0, "scaled_softplus: beta must be > 0, got ", beta);
  auto bx = x * beta;
  return torch::where(bx > threshold, x, torch::log1p(torch::exp(bx)) / beta);
}

// The shape function torch.export uses (what a fake implementation is in Python).
torch::Tensor scaled_softplus_meta(const torch::Tensor& x, double, double) {
  return torch::empty_like(x);
}

TORCH_LIBRARY(opbridge_demo_cpp, m) {
  m.def("scaled_softplus(Tensor x, float beta=1.0, float threshold=20.0) -> Tensor");
}
TORCH_LIBRARY_IMPL(opbridge_demo_cpp, CPU, m) { m.impl("scaled_softplus", &scaled_softplus); }
TORCH_LIBRARY_IMPL(opbridge_demo_cpp, Meta, m) {
  m.impl("scaled_softplus", &scaled_softplus_meta);
}
"""


def cpp_toolchain_missing() -> str | None:
    """Why torch cannot build the demo's C++ extension here, or ``None``.

    The extension is the user's own code: building it needs what torch's
    ``cpp_extension`` needs (a C++ compiler and ninja), unlike opbridge itself.
    """
    import torch.utils.cpp_extension

    compiler = os.environ.get("CXX", "c++")
    if shutil.which(shlex.split(compiler)[0] if compiler.strip() else "c++") is None:
        return f"building a torch C++ extension needs a C++ compiler ({compiler!r} is not on PATH)"
    try:
        torch.utils.cpp_extension.verify_ninja_availability()
    except RuntimeError:
        return "building a torch C++ extension needs ninja (pip install ninja)"
    return None


@functools.cache
def load_cpp_op() -> Any:
    """Builds (cached) and loads the extension; returns its op packet.

    That is ``torch.ops.opbridge_demo_cpp.scaled_softplus``.
    """
    import torch.utils.cpp_extension

    torch.utils.cpp_extension.load_inline(
        name="opbridge_demo_cpp_ext",
        cpp_sources=[CPP_SOURCE],
        is_python_module=False,
        extra_cflags=["-O2"],
    )
    return torch.ops.opbridge_demo_cpp.scaled_softplus


class SoftplusModel(torch.nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return torch.ops.opbridge_demo_cpp.scaled_softplus(x, 2.0) * 3


def adopted_cpp_op(exporter: str) -> opbridge.VerificationReport:
    # The op exists (in C++); adopting it declares its ONNX node from its schema and
    # runs the C++ kernel itself inside ONNX Runtime. Adopting again is harmless.
    op = opbridge.custom_op(load_cpp_op(), domain="mydomain")
    torch.manual_seed(0)
    report = opbridge.verify(SoftplusModel(), (torch.randn(4, 16) * 4,), exporter=exporter)
    onnx.checker.check_model(report.model, full_check=True)
    node = next(n for n in report.model.graph.node if n.domain == "mydomain")
    assert node.op_type == "ScaledSoftplus", node
    assert {a.name for a in node.attribute} == {"beta", "threshold"}, node
    assert op.kernel_origin == "torch"
    return report


class LinalgModel(torch.nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        spd = x @ x.transpose(0, 1) + 4 * torch.eye(x.shape[0])
        chol = torch.linalg.cholesky(spd)
        return chol + torch.erfinv(torch.tanh(x) * 0.9) + torch.kthvalue(x, 2, dim=-1)[0]


def torch_fallback(exporter: str) -> opbridge.VerificationReport:
    torch.manual_seed(0)
    report = opbridge.verify(
        LinalgModel(), (torch.randn(5, 5),), exporter=exporter, fallback="torch"
    )
    onnx.checker.check_model(report.model, full_check=True)
    fallen = sorted(n.op_type for n in report.model.graph.node if n.domain == "opbridge.torch")
    assert fallen == [
        "aten_erfinv_default", "aten_kthvalue_default", "aten_linalg_cholesky_default"
    ], fallen  # fmt: skip
    return report
