"""Find the node where ONNX Runtime and PyTorch part, on a small encoder.

python examples/localize.py [report.html]

The encoder's RMSNorm is a declared op whose numpy kernel (what ONNX Runtime runs)
squares its input in float16, a realistic slip. The outputs differ, and verify says
which node departs first, from which module and source line.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

import opbridge


@opbridge.custom_op("example::rms_norm", domain="example")
def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


@rms_norm.register_kernel
def _(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    square = (x.astype(np.float16) ** 2).astype(np.float32)  # the slip: float16 squares
    return x / np.sqrt(square.mean(-1, keepdims=True) + eps) * weight


class RMSNorm(torch.nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(width))

    def forward(self, x: Tensor) -> Tensor:
        return rms_norm(x, self.weight, 1e-6)


class Block(torch.nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = RMSNorm(width)
        self.up = torch.nn.Linear(width, 4 * width)
        self.down = torch.nn.Linear(4 * width, width)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.down(torch.nn.functional.gelu(self.up(self.norm(x))))


class TinyEncoder(torch.nn.Module):
    def __init__(self, features: int = 32, width: int = 64, depth: int = 4) -> None:
        super().__init__()
        self.embed = torch.nn.Linear(features, width)
        self.blocks = torch.nn.Sequential(*(Block(width) for _ in range(depth)))
        self.head = torch.nn.Linear(width, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(self.embed(x)))


def main(html: str | Path | None = None) -> opbridge.VerificationReport:
    torch.manual_seed(0)
    model = TinyEncoder().eval()
    x = torch.randn(2, 16, 32)
    report = opbridge.verify(model, (x,))  # fails, so it localises
    print(report)
    if html is not None:
        report.save_html(html)
    return report


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
