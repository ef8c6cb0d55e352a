"""Cost of localisation: ``opbridge.verify(localize=True)`` against a plain verify.

    python benchmarks/bench_verify.py [--repeats N] [--threads N]

The model has about 100 ONNX nodes: 25 blocks of Linear, a declared custom op run by
its numpy kernel in the kernel host, ReLU and a residual Add. Both calls go through
the public API end to end (export, session, run, compare); the localising one also
decomposes the program (dynamo) or records eager ops (TorchScript), runs the model
with every compared value as an output and compares them all. Timings are
interleaved and the median is kept; the machine is shared, so read the ratio.
Goal (issue 10): localising costs <= 3x a plain verify.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np
import torch
from torch import Tensor

import opbridge


@opbridge.custom_op("opbridge_bench_verify::shift", domain="bench.verify")
def shift(x: Tensor, k: int) -> Tensor:
    return x + 0.01 * k


shift.register_kernel(lambda x, k: x + np.float32(0.01 * k))


class Blocks(torch.nn.Module):
    def __init__(self, blocks: int = 25, width: int = 32) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.Linear(width, width) for _ in range(blocks))

    def forward(self, x: Tensor) -> Tensor:
        for k, layer in enumerate(self.layers):
            x = torch.relu(shift(layer(x), k)) + x
        return x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0: default")
    options = parser.parse_args()
    if options.threads:
        torch.set_num_threads(options.threads)
    warnings.simplefilter("ignore")
    model = Blocks().eval()
    x = (torch.randn(8, 32),)
    print(f"torch threads: {torch.get_num_threads()}; ONNX Runtime: default session options")
    header = ("exporter", "nodes", "compared", "verify", "localize", "ratio")
    print("{:<12} {:>6} {:>9} {:>9} {:>9} {:>6}".format(*header))
    for exporter in ("dynamo", "torchscript"):
        report = opbridge.verify(model, x, exporter=exporter, localize=True)  # warm-up
        assert report.passed and report.first_divergence is None, str(report)
        assert report.localization is not None
        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(options.repeats):
            for localize in (False, True):  # interleaved
                start = time.perf_counter()
                opbridge.verify(model, x, exporter=exporter, localize=localize)
                times[localize].append(time.perf_counter() - start)
        plain, local = statistics.median(times[False]), statistics.median(times[True])
        print(
            f"{exporter:<12} {report.localization.nodes:>6} {report.localization.compared:>9} "
            f"{plain * 1e3:>7.0f}ms {local * 1e3:>7.0f}ms {local / plain:>5.2f}x"
        )


if __name__ == "__main__":
    main()
