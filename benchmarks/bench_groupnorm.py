"""Benchmark opbridge's native GroupNorm kernel against PyTorch and ONNX Runtime.

Run with ``python benchmarks/bench_groupnorm.py``. For each shape (float32, 32 groups)
it times, as the median of several repetitions:

* ``native``: ``mydomain::testgroupnorm`` from :func:`opbridge.native.library_path`,
  run in an ``onnxruntime.InferenceSession``;
* ``torch``: ``torch.nn.functional.group_norm`` in eager mode;
* ``ort-builtin``: ONNX Runtime's own ``GroupNormalization`` (opset 21, where scale and
  bias are per channel, shape [C], matching the custom op);
* ``copy``: ``np.copyto`` of a buffer of X's size, i.e. one read and one write of
  B = X.nbytes. Copy bandwidth is defined as 2 * B / t_copy (bytes read + written).

Two bandwidth floors are derived from the measured copy: a GroupNorm must read X and
write Y at least once (``floor-1read`` = 2B / copy_bw = t_copy, reachable when each
group's statistics pass hits the cache), and the classic two-pass kernel reads X twice
from memory (``floor-2read`` = 3B / copy_bw = 1.5 * t_copy).

All ONNX Runtime sessions and torch use the same number of threads (``--threads``,
default: all cores); ``np.copyto`` is single-threaded.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import onnxruntime as ort
import torch
from onnx import TensorProto, helper

import opbridge.native

SHAPES = [
    ((8, 64, 56, 56), 32),
    ((1, 320, 64, 64), 32),
    ((2, 1280, 16, 16), 32),
    ((1, 32, 8, 8), 32),
]
EPS = 1e-5


def _model(nodes, inputs, domain_opsets) -> bytes:
    vi = helper.make_tensor_value_info
    graph = helper.make_graph(
        nodes,
        "bench",
        [vi(name, t, None) for name, t in inputs],
        [vi("Y", TensorProto.FLOAT, None)],
    )
    opsets = [helper.make_opsetid(d, v) for d, v in domain_opsets]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 10  # onnx 1.23 writes IR 14, which onnxruntime refuses
    return model.SerializeToString()


def _session(model: bytes, threads: int, library: str | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    if library:
        options.register_custom_ops_library(library)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _time(fn: Callable[[], object], min_time: float, repeats: int) -> float:
    """Median seconds per call over ``repeats`` batches of at least ``min_time`` s."""
    fn()
    fn()
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-7)
    number = max(1, int(min_time / once))
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        samples.append((time.perf_counter() - start) / number)
    return statistics.median(samples)


def _bench_shape(
    shape: tuple[int, ...],
    groups: int,
    native: ort.InferenceSession,
    args: argparse.Namespace,
    rng: np.random.Generator,
) -> str:
    """Times every implementation on one shape and returns the table row."""
    f32 = TensorProto.FLOAT
    x = rng.standard_normal(shape).astype(np.float32)
    scale = rng.standard_normal(shape[1]).astype(np.float32)
    bias = rng.standard_normal(shape[1]).astype(np.float32)
    builtin = _session(
        _model(
            [
                helper.make_node(
                    "GroupNormalization", ["X", "S", "B"], ["Y"], num_groups=groups, epsilon=EPS
                )
            ],
            [("X", f32), ("S", f32), ("B", f32)],
            [("", 21)],
        ),
        args.threads,
    )
    native_feeds = {"X": x, "G": np.array([groups], np.float32), "S": scale, "B": bias}
    builtin_feeds = {"X": x, "S": scale, "B": bias}
    tx, ts, tb = torch.from_numpy(x), torch.from_numpy(scale), torch.from_numpy(bias)

    # Same answers first: a fast wrong kernel is not interesting.
    ref = torch.nn.functional.group_norm(tx, groups, ts, tb, EPS).numpy()
    np.testing.assert_allclose(native.run(None, native_feeds)[0], ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(builtin.run(None, builtin_feeds)[0], ref, rtol=1e-4, atol=1e-4)

    dst = np.empty_like(x)
    t_native = _time(lambda: native.run(None, native_feeds), args.min_time, args.repeats)
    with torch.inference_mode():
        t_torch = _time(
            lambda: torch.nn.functional.group_norm(tx, groups, ts, tb, EPS),
            args.min_time,
            args.repeats,
        )
    t_builtin = _time(lambda: builtin.run(None, builtin_feeds), args.min_time, args.repeats)
    t_copy = _time(lambda: np.copyto(dst, x), args.min_time, args.repeats)
    # The kernel alone: Y bound to a preallocated buffer. ORT's plain run() also
    # allocates (and page-faults in) a fresh Y on every call, outside the kernel.
    binding = native.io_binding()
    for name, value in native_feeds.items():
        binding.bind_cpu_input(name, value)
    bound_y = np.empty_like(x)
    binding.bind_output("Y", "cpu", 0, np.float32, list(shape), bound_y.ctypes.data)
    t_bound = _time(lambda: native.run_with_iobinding(binding), args.min_time, args.repeats)

    nbytes = x.nbytes
    copy_bw = 2 * nbytes / t_copy
    floor1 = 2 * nbytes / copy_bw
    floor2 = 3 * nbytes / copy_bw
    return (
        f"{'x'.join(map(str, shape)):>18} {nbytes / 1e6:5.1f} {t_native * 1e3:9.3f} "
        f"{t_torch * 1e3:9.3f} {t_builtin * 1e3:9.3f} {t_copy * 1e3:8.3f} "
        f"{copy_bw / 1e9:5.1f} {t_torch / t_native:9.2f} {t_builtin / t_native:9.2f} "
        f"{t_native / floor1:10.2f} {t_native / floor2:10.2f} {t_bound * 1e3:9.3f} "
        f"{t_bound / t_copy:9.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--min-time", type=float, default=0.2, help="seconds per repetition")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    library = str(opbridge.native.library_path())

    f32 = TensorProto.FLOAT
    native = _session(
        _model(
            [
                helper.make_node(
                    "testgroupnorm", ["X", "G", "S", "B"], ["Y"], domain="mydomain", epsilon=EPS
                )
            ],
            [("X", f32), ("G", f32), ("S", f32), ("B", f32)],
            [("", 21), ("mydomain", 1)],
        ),
        args.threads,
        library,
    )

    print(
        f"threads={args.threads}  onnxruntime {ort.__version__}  torch {torch.__version__}"
        f"  numpy {np.__version__}"
    )
    header = (
        f"{'shape':>18} {'MB':>5} {'native ms':>9} {'torch ms':>9} {'ort-gn ms':>9} "
        f"{'copy ms':>8} {'GB/s':>5} {'torch/nat':>9} {'ortgn/nat':>9} "
        f"{'nat/floor1':>10} {'nat/floor2':>10} {'bound ms':>9} {'bnd/copy':>9}"
    )
    print(header)
    print("-" * len(header))
    rng = np.random.default_rng(0)
    for shape, groups in SHAPES:
        print(_bench_shape(shape, groups, native, args, rng))
    print(
        "\nratios: torch/nat and ortgn/nat > 1 mean the native kernel is faster;"
        "\nnat/floor1 = native / t(copy X) (read X once + write Y once);"
        "\nnat/floor2 = native / (1.5 * t(copy X)) (read X twice + write Y once);"
        "\nbound = the native kernel with Y bound to a preallocated buffer (io_binding),"
        "\nbnd/copy = bound / t(copy X): the kernel's own cost against one copy of X."
    )


if __name__ == "__main__":
    main()
