"""Exports a model with an ``example::ScaleShift`` node for the C++ deployment example.

Run: ``python export_model.py model.onnx``; then build the kernel with
``opbridge build scale_shift scale_kernel.cc -o deploy/`` and run the model without
Python: ``./run_model model.onnx deploy/libscale_shift.so 5``.
"""

from __future__ import annotations

import sys

import torch

import opbridge


@opbridge.custom_op("example::scale_shift", domain="example", op_type="ScaleShift")
def scale_shift(x: torch.Tensor, factor: float, shift: int = 0) -> torch.Tensor:
    return x * factor + shift


class Model(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return scale_shift(torch.relu(x - 1), 2.5, shift=3)


def main(path: str) -> None:
    opbridge.export(Model(), (torch.zeros(5),), path)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "model.onnx")
