"""Ops that already exist: adopt one, and let the torch fallback take the rest.

python examples/adopt_existing.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

import opbridge


# An op your code base already has (torch.library.custom_op; a torch.library.define op
# or a C++ extension op is adopted the same way).
@torch.library.custom_op("mylib::swish", mutates_args=())
def swish(x: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    return x * torch.sigmoid(beta * x)


@swish.register_fake
def _(x: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    return torch.empty_like(x)


class Model(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.mylib.swish(x, 2.0)
        return torch.linalg.cholesky(y @ y.T + 4 * torch.eye(y.shape[0])) + torch.erfinv(x * 0.1)


def main() -> None:
    # Adopt it: the node is mydomain::Swish, its kernel in ONNX Runtime is mylib::swish itself.
    opbridge.custom_op(torch.ops.mylib.swish, domain="mydomain")
    x = torch.randn(4, 4)
    try:
        opbridge.export(Model(), (x,))
    except opbridge.ExportError as e:  # linalg_cholesky and erfinv: each named, with its fix
        print(e, end="\n\n")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        # The torch fallback writes the two ATen ops as opbridge.torch nodes.
        model = opbridge.export(Model(), (x,), path, fallback="torch")
        print(sorted({f"{n.domain}::{n.op_type}" for n in model.graph.node if n.domain}))
        print(opbridge.Session(path)(x) - Model()(x))
    for exporter in ("dynamo", "torchscript"):
        print(opbridge.verify(Model(), (x,), exporter=exporter, fallback="torch"))


if __name__ == "__main__":
    main()
