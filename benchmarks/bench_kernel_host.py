"""The kernel host's overhead, as ratios measured side by side in one run.

    python benchmarks/bench_kernel_host.py [--repeats N] [--seconds S]

Cases (float32; every session single-threaded, default graph optimizations unless
noted):

* ``identity``: a custom node whose numpy kernel returns its input, against ONNX's
  ``Identity``, at 16 and 1M elements. Returning the input view is the right
  measure of the host: the input reaches Python without a copy and the output is
  written with the one copy any out-of-place op needs, which is also what the
  native ``Identity`` does (graph input to graph output). The ``x.copy()`` row
  shows what a second copy made by the kernel itself costs.
* ``identity vs ortx``: the same node as an onnxruntime-extensions Python op
  (``onnx_op``), which moves every tensor through Python lists.
* ``torch.from_numpy``: the kernel wraps the view as a torch tensor and back, as
  opbridge does for torch implementations.
* ``chain``: 20 custom nodes in a row on 64x64 against 20 native ones. For
  Identity both sessions disable graph optimizations, or ONNX Runtime would
  delete the native Identity nodes; ``Neg`` runs optimized.

Timings are interleaved (host, baseline, host, ...) and each ratio is the median of
the per-round ratios, so load from other processes on a shared machine affects
both sides alike. Absolute times are medians too.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from opbridge.runtime import _host
from opbridge.runtime._kernels import IOSpec, KernelSpec

DOMAIN = "bench.kernel_host"


def _model(nodes: list[onnx.NodeProto], shape: list[int | None], extra_domain: str) -> bytes:
    graph = helper.make_graph(
        nodes,
        "bench",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
    )
    opsets = [helper.make_opsetid("", 17)]
    if extra_domain:
        opsets.append(helper.make_opsetid(extra_domain, 1))
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 10  # onnx 1.23 writes IR 14, which ONNX Runtime refuses
    return model.SerializeToString()


def _chain(op_type: str, domain: str, length: int) -> list[onnx.NodeProto]:
    names = ["x", *[f"t{i}" for i in range(length - 1)], "y"]
    return [
        helper.make_node(op_type, [names[i]], [names[i + 1]], domain=domain) for i in range(length)
    ]


def _options(optimize: bool = True) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return options


def _native(model: bytes, optimize: bool = True) -> ort.InferenceSession:
    return ort.InferenceSession(model, _options(optimize), providers=["CPUExecutionProvider"])


def _hosted(model: bytes, optimize: bool = True) -> ort.InferenceSession:
    options = _options(optimize)
    _host.register(options, model=model)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _ortx(model: bytes) -> ort.InferenceSession:
    from onnxruntime_extensions import get_library_path

    options = _options()
    options.register_custom_ops_library(get_library_path())
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _install_kernels() -> None:
    def torch_identity(x: np.ndarray) -> np.ndarray:
        import torch

        return torch.from_numpy(x).numpy()

    def spec(op_type: str, compute: Callable[..., np.ndarray]) -> KernelSpec:
        return KernelSpec(DOMAIN, op_type, 1, (IOSpec("x"),), (IOSpec("y"),), (), compute)

    _host.install(
        [
            spec("Identity", lambda x: x),
            spec("CopyIdentity", lambda x: x.copy()),
            spec("TorchIdentity", torch_identity),
            spec("Neg", np.negative),
        ]
    )


def _install_ortx() -> bool:
    try:
        from onnxruntime_extensions import PyCustomOpDef, onnx_op
    except ImportError:
        return False

    @onnx_op(
        op_type="BenchPyIdentity",
        inputs=[PyCustomOpDef.dt_float],
        outputs=[PyCustomOpDef.dt_float],
    )
    def bench_py_identity(x: np.ndarray) -> np.ndarray:
        return x

    return True


@dataclass
class Case:
    name: str
    host: ort.InferenceSession
    baseline: ort.InferenceSession
    baseline_name: str
    x: np.ndarray
    goal: str = ""
    check: Callable[[float], bool] | None = None


def _time_per_run(session: ort.InferenceSession, feeds: dict[str, np.ndarray], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        session.run(None, feeds)
    return (time.perf_counter() - start) / n


def _measure(case: Case, repeats: int, seconds: float) -> tuple[float, float, float]:
    """Median host time, baseline time and baseline/host... as (host, base, ratio)."""
    feeds = {"x": case.x}
    expected = case.baseline.run(None, feeds)[0]
    np.testing.assert_array_equal(case.host.run(None, feeds)[0], expected)
    # Calibrate the iteration count to about `seconds` per side per round.
    probe = max(_time_per_run(case.host, feeds, 3), _time_per_run(case.baseline, feeds, 3))
    n = max(3, int(seconds / repeats / max(probe, 1e-7)))
    host_times, base_times, ratios = [], [], []
    for _ in range(repeats):
        h = _time_per_run(case.host, feeds, n)
        b = _time_per_run(case.baseline, feeds, n)
        host_times.append(h)
        base_times.append(b)
        ratios.append(h / b)
    return statistics.median(host_times), statistics.median(base_times), statistics.median(ratios)


def _fmt_time(seconds: float) -> str:
    if seconds >= 1e-3:
        return f"{seconds * 1e3:8.2f} ms"
    return f"{seconds * 1e6:8.2f} us"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds per case")
    parser.add_argument("--seconds", type=float, default=1.0, help="time per case and side")
    args = parser.parse_args()
    if not _host.available():
        raise SystemExit(f"the kernel host is not built: {_host.unavailable_reason()}")
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    ort.set_default_logger_severity(3)

    _install_kernels()
    have_ortx = _install_ortx()
    rng = np.random.default_rng(0)
    small = rng.random(16, dtype=np.float32)
    large = rng.random(1 << 20, dtype=np.float32)
    square = rng.random((64, 64), dtype=np.float32)

    def single(op_type: str, domain: str = DOMAIN) -> bytes:
        return _model([helper.make_node(op_type, ["x"], ["y"], domain=domain)], [None], domain)

    native_identity = _native(single("Identity", ""))
    host_identity = _hosted(single("Identity"))
    cases = [
        Case(
            "identity, 16",
            host_identity,
            native_identity,
            "ORT Identity",
            small,
            "<= 2x",
            lambda r: r <= 2.0,
        ),
        Case(
            "identity, 1M",
            host_identity,
            native_identity,
            "ORT Identity",
            large,
            "<= 1.5x",
            lambda r: r <= 1.5,
        ),
        Case(
            "x.copy(), 1M", _hosted(single("CopyIdentity")), native_identity, "ORT Identity", large
        ),
        Case(
            "torch.from_numpy, 16",
            _hosted(single("TorchIdentity")),
            native_identity,
            "ORT Identity",
            small,
        ),
        Case(
            "torch.from_numpy, 1M",
            _hosted(single("TorchIdentity")),
            native_identity,
            "ORT Identity",
            large,
        ),
        Case(
            "chain 20 Identity, 64x64",
            _hosted(_model(_chain("Identity", DOMAIN, 20), [64, 64], DOMAIN), optimize=False),
            _native(_model(_chain("Identity", "", 20), [64, 64], DOMAIN), optimize=False),
            "20 ORT Identity",
            square,
        ),
        Case(
            "chain 20 Neg, 64x64",
            _hosted(_model(_chain("Neg", DOMAIN, 20), [64, 64], DOMAIN)),
            _native(_model(_chain("Neg", "", 20), [64, 64], DOMAIN)),
            "20 ORT Neg",
            square,
        ),
    ]
    ortx_case = None
    if have_ortx:
        ortx_model = _model(
            [helper.make_node("BenchPyIdentity", ["x"], ["y"], domain="ai.onnx.contrib")],
            [None],
            "ai.onnx.contrib",
        )
        ortx_case = Case(
            "identity, 1M (vs ortx)",
            host_identity,
            _ortx(ortx_model),
            "ortx Python op",
            large,
            ">= 100x faster",
            lambda r: 1 / r >= 100,
        )
        cases.append(ortx_case)

    header = f"{'case':<26} {'kernel host':>12} {'baseline':>12}  {'vs':<16} {'host/base':>9}  goal"
    print(header)
    print("-" * len(header))
    failures = []
    for case in cases:
        host_t, base_t, ratio = _measure(case, args.repeats, args.seconds)
        shown = f"{ratio:8.2f}x" if case is not ortx_case else f"1/{1 / ratio:.0f}x".rjust(9)
        verdict = ""
        if case.check is not None:
            ok = case.check(ratio)
            verdict = f"{case.goal} {'ok' if ok else 'MISSED'}"
            if not ok:
                failures.append(case.name)
        print(
            f"{case.name:<26} {_fmt_time(host_t):>12} {_fmt_time(base_t):>12}  "
            f"{case.baseline_name:<16} {shown:>9}  {verdict}"
        )
    if not have_ortx:
        print("(onnxruntime-extensions not installed: the ortx comparison was skipped)")
    if failures:
        print(f"goals missed: {', '.join(failures)}")


if __name__ == "__main__":
    main()
