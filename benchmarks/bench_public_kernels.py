"""Declared ops through ``opbridge.Session``: the kernel host's cost on every route.

    python benchmarks/bench_public_kernels.py [--repeats N] [--seconds S] [--memory]

Everything goes through the public API: ops declared with ``opbridge.custom_op``
(torch route: the op's implementation; numpy route: ``register_kernel``; out route:
a numpy kernel with ``out=``), hand-built one-node or 20-node models run by
``opbridge.Session``, against the same model with ONNX's ``Neg`` (a native node ONNX
Runtime keeps), also run by ``opbridge.Session``. Each case runs twice:

* **default**: nothing set by the user (what opbridge arranges: ORT's spinning off in
  sessions with Python kernels, ``OMP_WAIT_POLICY=PASSIVE`` as opbridge is imported
  before torch; torch keeps its own thread count);
* **pinned**: ``intra_op_num_threads=1`` for both sessions and ``torch.set_num_threads(1)``.

Timings are interleaved (custom, native, custom, ...) and each ratio is the median of
per-round ratios, so load from other processes affects both sides alike. ``spread``
is the slowest round of the custom side over its median (the issue's "no run over 2x
the median").
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import opbridge  # first, as the CLI does: sets OMP_WAIT_POLICY before torch loads  # isort: skip

import numpy as np
import onnxruntime as ort
import torch
from onnx import TensorProto, helper

DOMAIN = "bench.public"


@opbridge.custom_op("benchpub::neg_torch", domain=DOMAIN, op_type="NegTorch")
def neg_torch(x: torch.Tensor) -> torch.Tensor:
    return torch.neg(x)


@opbridge.custom_op("benchpub::neg_numpy", domain=DOMAIN, op_type="NegNumpy")
def neg_numpy(x: torch.Tensor) -> torch.Tensor:
    return torch.neg(x)


@neg_numpy.register_kernel
def _neg_numpy_kernel(x: np.ndarray) -> np.ndarray:
    return np.negative(x)


@opbridge.custom_op("benchpub::neg_out", domain=DOMAIN, op_type="NegOut")
def neg_out(x: torch.Tensor) -> torch.Tensor:
    return torch.neg(x)


@neg_out.register_kernel
def _neg_out_kernel(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    return np.negative(x, out=out)


@opbridge.custom_op("benchpub::tanh_out", domain=DOMAIN, op_type="TanhOut")
def tanh_out(x: torch.Tensor) -> torch.Tensor:
    return torch.tanh(x)


@tanh_out.register_kernel
def _tanh_out_kernel(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    return np.tanh(x, out=out)


def _model(op_type: str, domain: str, shape: list[int], length: int = 1) -> bytes:
    names = ["x", *[f"t{i}" for i in range(length - 1)], "y"]
    nodes = [
        helper.make_node(op_type, [names[i]], [names[i + 1]], domain=domain) for i in range(length)
    ]
    graph = helper.make_graph(
        nodes,
        "bench",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        value_info=[
            helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in names[1:-1]
        ],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 10
    return model.SerializeToString()


def _session(model: bytes, pinned: bool) -> opbridge.Session:
    options = None
    if pinned:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 4
    return opbridge.Session(model, options=options)


def _per_call(fn: Callable[[], Any], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def _compare(
    custom: Callable[[], Any], base: Callable[[], Any], repeats: int, seconds: float
) -> tuple[float, float, float, float]:
    """(custom median, base median, median ratio, slowest custom round / median)."""
    probe = max(_per_call(custom, 2), _per_call(base, 2))
    n = max(2, int(seconds / repeats / max(probe, 1e-7)))
    c_times, b_times, ratios = [], [], []
    for _ in range(repeats):
        c = _per_call(custom, n)
        b = _per_call(base, n)
        c_times.append(c)
        b_times.append(b)
        ratios.append(c / b)
    med = statistics.median(c_times)
    return med, statistics.median(b_times), statistics.median(ratios), max(c_times) / med


def _fmt(seconds: float) -> str:
    return f"{seconds * 1e3:8.2f} ms" if seconds >= 1e-3 else f"{seconds * 1e6:8.2f} us"


def _cases() -> list[tuple[str, str, list[int], int, str]]:
    """(name, custom op_type, shape, chain length, goal)."""
    return [
        ("torch route, 16", "NegTorch", [16], 1, "<= 1.15x"),
        ("numpy route, 16", "NegNumpy", [16], 1, "<= 1.15x"),
        ("out= route, 16", "NegOut", [16], 1, "<= 1.15x"),
        ("torch route, 1M", "NegTorch", [1 << 20], 1, "<= native + 1 copy"),
        ("numpy route, 1M", "NegNumpy", [1 << 20], 1, "<= native + 1 copy"),
        ("out= route, 1M", "NegOut", [1 << 20], 1, "<= native + 1 copy"),
        ("torch chain 20, 64x64", "NegTorch", [64, 64], 20, "<= 2x"),
        ("numpy chain 20, 64x64", "NegNumpy", [64, 64], 20, "<= 2x"),
        ("out= chain 20, 64x64", "NegOut", [64, 64], 20, "<= 2x"),
    ]


def run_cases(repeats: int, seconds: float) -> None:
    rng = np.random.default_rng(0)
    default_threads = torch.get_num_threads()
    header = (
        f"{'case':<24} {'threads':<8} {'custom':>11} {'native Neg':>11} {'ratio':>7} "
        f"{'us/node':>8} {'spread':>6}  goal"
    )
    print(header)
    print("-" * len(header))
    copy_probe = rng.random(1 << 20, dtype=np.float32)
    out = np.empty_like(copy_probe)
    one_copy = _per_call(lambda: np.copyto(out, copy_probe), 50)
    for name, op_type, shape, length, goal in _cases():
        x = rng.random(shape, dtype=np.float32)
        results = {}
        for pinned in (False, True):
            torch.set_num_threads(1 if pinned else default_threads)
            custom = _session(_model(op_type, DOMAIN, shape, length), pinned)
            native = _session(_model("Neg", "", shape, length), pinned)
            np.testing.assert_allclose(custom(x), native(x))
            c, b, ratio, spread = _compare(
                lambda c=custom, a=x: c(a), lambda n=native, a=x: n(a), repeats, seconds
            )
            results[pinned] = ratio
            label = "pinned" if pinned else "default"
            print(
                f"{name:<24} {label:<8} {_fmt(c):>11} {_fmt(b):>11} {ratio:6.2f}x "
                f"{(c - b) / length * 1e6:8.2f} {spread:5.2f}x  {goal}"
            )
        torch.set_num_threads(default_threads)
        best = min(results.values())
        print(f"{'':<24} default/best setting: {results[False] / best:.2f}x (goal <= 1.2x)")
    print(f"(one 1M float32 copy: {_fmt(one_copy)})")

    # 16M-element numpy tanh through the host (out=) against the same numpy call alone.
    big = rng.random(1 << 24, dtype=np.float32)
    session = _session(_model("TanhOut", DOMAIN, [1 << 24]), pinned=False)
    c, b, ratio, spread = _compare(lambda: session(big), lambda: np.tanh(big), 3, seconds * 2)
    print(
        f"{'tanh out=, 16M':<24} {'default':<8} {_fmt(c):>11} {_fmt(b):>11} {ratio:6.2f}x "
        f"{'':>8} {spread:5.2f}x  <= 1.05x the numpy call (baseline column: np.tanh)"
    )


def run_memory() -> None:
    """RSS over 10,000 runs of a torch-route and a numpy-route session."""
    page = os.sysconf("SC_PAGE_SIZE")

    def rss() -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * page

    x = np.ones(1024, np.float32)
    for op_type in ("NegTorch", "NegNumpy", "NegOut"):
        session = _session(_model(op_type, DOMAIN, [1024]), pinned=False)
        for _ in range(1000):
            session(x)
        gc.collect()
        before = rss()
        for _ in range(10_000):
            session(x)
        gc.collect()
        print(f"RSS growth over 10,000 runs, {op_type}: {(rss() - before) / 1024:.0f} KiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=0.7)
    parser.add_argument("--memory", action="store_true", help="only the RSS check")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    if args.memory:
        run_memory()
    else:
        run_cases(args.repeats, args.seconds)


if __name__ == "__main__":
    main()
