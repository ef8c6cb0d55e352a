"""What ``fallback="torch"`` costs at run time, as ratios measured side by side in one run.

    python benchmarks/bench_fallback.py [--rounds N]

Everything goes through the public API: ``opbridge.export(..., fallback="torch")`` and
``opbridge.Session`` (torch tensors in and out), float32, dynamo exporter.

* ``erfinv``: one ``opbridge.torch::aten_erfinv_default`` node (torch's kernel run
  by opbridge's kernel host inside ONNX Runtime) against ``torch.erfinv`` in eager
  mode, at 16 and 1M elements.
* ``chain of 20``: 20 fallback nodes in a row (``erfinv(x * 0.5)`` repeated; the
  multiply is a native node) against the same model with ``tanh`` in place of
  ``erfinv``, which ONNX Runtime runs natively: the difference divided by 20 is the
  fallback's cost per node, kernel included.

Each setting runs with default threads (torch's and ONNX Runtime's pools as they
come) and pinned (``torch.set_num_threads(1)``, one intra-op thread). Timings are
interleaved and each ratio is the median of per-round ratios, so load from other
processes affects both sides alike.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import onnxruntime as ort
import torch

import opbridge


class Erfinv(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.erfinv(x)


class Chain(torch.nn.Module):
    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], length: int = 20) -> None:
        super().__init__()
        self.fn = fn
        self.length = length

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.length):
            x = self.fn(x * 0.5)
        return x


def _time(fn: Callable[[], object], seconds: float = 0.05) -> float:
    fn()
    n, start = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and n >= 3:
            return elapsed / n


def _pair(
    a: Callable[[], object], b: Callable[[], object], rounds: int
) -> tuple[float, float, float]:
    ta, tb, ratios = [], [], []
    for _ in range(rounds):
        x, y = _time(a), _time(b)
        ta.append(x)
        tb.append(y)
        ratios.append(x / y)
    return statistics.median(ta), statistics.median(tb), statistics.median(ratios)


def _session(
    model: torch.nn.Module, x: torch.Tensor, pinned: bool, **export: object
) -> opbridge.Session:
    proto = opbridge.export(model, (x,), **export)  # type: ignore[arg-type]
    options = ort.SessionOptions()
    if pinned:
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
    return opbridge.Session(proto, options=options)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    default_threads = torch.get_num_threads()
    print(f"{'case':<34}{'threads':<9}{'fallback':>12}{'baseline':>12}{'ratio':>8}")
    for pinned in (False, True):
        torch.set_num_threads(1 if pinned else default_threads)
        threads = "pinned" if pinned else "default"
        for n in (16, 1 << 20):
            x = torch.rand(n) * 1.8 - 0.9
            session = _session(Erfinv(), x, pinned, fallback="torch")
            a, b, r = _pair(lambda: session(x), lambda: torch.erfinv(x), args.rounds)  # noqa: B023
            label = f"erfinv {n} vs torch eager"
            print(f"{label:<34}{threads:<9}{a * 1e6:>10.1f}us{b * 1e6:>10.1f}us{r:>7.2f}x")
        x = torch.rand(64) * 1.8 - 0.9
        fallback = _session(Chain(torch.erfinv), x, pinned, fallback="torch")
        native = _session(Chain(torch.tanh), x, pinned)
        a, b, r = _pair(lambda: fallback(x), lambda: native(x), args.rounds)  # noqa: B023
        label = "chain of 20 (64) vs native Tanh"
        print(f"{label:<34}{threads:<9}{a * 1e6:>10.1f}us{b * 1e6:>10.1f}us{r:>7.2f}x")
        print(f"{'  -> per fallback node':<34}{threads:<9}{(a - b) / 20 * 1e6:>10.1f}us")
    torch.set_num_threads(default_threads)


if __name__ == "__main__":
    main()
