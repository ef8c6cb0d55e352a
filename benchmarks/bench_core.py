"""Export and run overhead of opbridge's core, as ratios measured side by side.

    python benchmarks/bench_core.py [--repeats N]

Export: ``opbridge.export`` against plain ``torch.onnx.export`` on the same small model
(no custom op, so both write the same graph), for both exporters; plus the same model
with one declared custom op exported by opbridge. Run: ``opbridge.Session`` against a
bare ``onnxruntime.InferenceSession`` (the cost of opbridge's input checks) and against
torch eager. Timings are interleaved and the median is kept; the machine is shared,
so only the ratios mean anything.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
import warnings
from collections.abc import Callable

import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor

import opbridge


@opbridge.custom_op("opbridge_bench::scaled_tanh", domain="bench")
def scaled_tanh(x: Tensor, scale: float) -> Tensor:
    return torch.tanh(x) * scale


class Plain(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(64, 128)
        self.fc2 = torch.nn.Linear(128, 64)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


class WithCustomOp(Plain):
    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(scaled_tanh(self.fc1(x), 2.0))


def _median_times(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():  # interleaved: noise hits every contender alike
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def _plain_export(model: torch.nn.Module, x: Tensor, dynamo: bool) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(model, (x,), dynamo=True, verbose=False, report=False)
        else:
            torch.onnx.export(model, (x,), io.BytesIO(), dynamo=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--runs", type=int, default=2000, help="session calls per timing")
    args = parser.parse_args()
    torch.manual_seed(0)
    plain, custom = Plain().eval(), WithCustomOp().eval()
    x = torch.randn(32, 64)

    print("Export time (median of", args.repeats, "interleaved runs)")
    print(
        f"  {'exporter':<12} {'torch.onnx':>11} {'opbridge':>11} {'ratio':>7} "
        f"{'opbridge+custom op':>19} {'ratio':>7}"
    )
    for exporter in ("dynamo", "torchscript"):
        t = _median_times(
            {
                "torch": lambda e=exporter: _plain_export(plain, x, e == "dynamo"),
                "opbridge": lambda e=exporter: opbridge.export(plain, (x,), exporter=e),
                "custom": lambda e=exporter: opbridge.export(custom, (x,), exporter=e),
            },
            args.repeats,
        )
        print(
            f"  {exporter:<12} {t['torch'] * 1e3:>9.1f}ms {t['opbridge'] * 1e3:>9.1f}ms "
            f"{t['opbridge'] / t['torch']:>6.2f}x {t['custom'] * 1e3:>17.1f}ms "
            f"{t['custom'] / t['torch']:>6.2f}x"
        )

    print(f"\nRun time per call (median of {args.repeats} x {args.runs} calls), batch 32x64")
    model = opbridge.export(custom, (x,))
    session = opbridge.Session(model)
    bare = ort.InferenceSession(model.SerializeToString(), session.options)
    name = bare.get_inputs()[0].name
    xn = x.numpy()

    def loop(fn: Callable[[], object]) -> Callable[[], None]:
        def run() -> None:
            for _ in range(args.runs):
                fn()

        return run

    with torch.no_grad():
        t = _median_times(
            {
                "eager": loop(lambda: custom(x)),
                "bare": loop(lambda: bare.run(None, {name: xn})),
                "session_np": loop(lambda: session(xn)),
                "session_torch": loop(lambda: session(x)),
            },
            args.repeats,
        )
    per = {k: v / args.runs * 1e6 for k, v in t.items()}
    print(f"  torch eager                       {per['eager']:>8.1f}us  1.00x")
    for key, label in (
        ("bare", "onnxruntime.InferenceSession"),
        ("session_np", "opbridge.Session (numpy in/out)"),
        ("session_torch", "opbridge.Session (torch in/out)"),
    ):
        print(
            f"  {label:<33} {per[key]:>8.1f}us  {per[key] / per['eager']:.2f}x eager, "
            f"{per[key] / per['bare']:.2f}x bare ORT"
        )
    print(f"  (custom op kernel route: {session.python_kernel_route})")
    np.testing.assert_allclose(session(xn), custom(x).detach().numpy(), rtol=1e-4, atol=1e-5)


if __name__ == "__main__":
    main()
