"""What the pipeline costs next to torch and ONNX Runtime alone, as ratios from one run.

    python benchmarks/bench_pipeline.py [--repeats N] [--layer-repeats N] [--weight-mb 500]
                                        [--session-mb 200]

Every measurement runs in a fresh subprocess (one warm-up export or session of a tiny
model first, so that imports and torch's registries are not counted), which reports its
time and its peak extra RSS (``VmHWM`` reset through ``/proc/self/clear_refs``, minus
the RSS before the measured call). Repeats are interleaved; medians are kept.

* export: ``opbridge.export(model, args, path)`` against ``torch.onnx.export`` on a model
  with one weight of ``--weight-mb`` MB, both exporters, weights inside the file
  (``external_data=False`` on both sides; torch's dynamo default writes them beside it,
  reported too). "with op" adds one declared custom op to opbridge's model; torch's
  side then exports the same model with ``x + 1`` in its place (TorchScript: with the op,
  through torch's own ``register_custom_op_symbolic``). "op with a lowering"
  (TorchScript) lowers its op to ``Add``, with opbridge's ``register_lowering`` against a
  torch symbolic writing the same ``Add``.
* session: ``opbridge.Session(path)`` against ``onnxruntime.InferenceSession(path, so)``
  with ``so`` prepared beforehand (the kernel host registered), on a file of
  ``--session-mb`` MB of weights with one custom op run by the kernel host.
* TorchScript layers: a stack of N ``Linear`` + custom op layers, opbridge against torch
  with its own ``register_custom_op_symbolic``; each process reports the median of 5
  exports of its model (one takes milliseconds), and the median of ``--layer-repeats``
  processes per side is kept (the same export varies by about 20% from process to
  process on a shared machine); with torch's default threads, then with
  ``torch.set_num_threads(1)`` on both sides.

Files go to ``/dev/shm`` when it exists, so that disk speed does not drown the ratios.
Threads: torch and ONNX Runtime at their defaults, except where a row says otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

_CHILD = r"""
import io, json, os, sys, time, warnings
warnings.simplefilter("ignore")
import torch
from torch import Tensor
import opbridge

spec = json.loads(sys.argv[1])
if spec.get("threads"):
    torch.set_num_threads(spec["threads"])

def rss():
    with open("/proc/self/status") as f:
        text = f.read()
    return {k: int(text.split(k + ":")[1].split()[0]) * 1024 for k in ("VmRSS", "VmHWM")}

def reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass

@opbridge.custom_op("bench_pipeline::bump", domain="bench.pipeline")
def bump(x: Tensor) -> Tensor:
    return x + 1

@opbridge.custom_op("bench_pipeline::bump_lowered", domain="bench.pipeline")
def bump_lowered(x: Tensor) -> Tensor:
    return x + 1

@bump_lowered.register_lowering
def _(op, x):
    return op.Add(x, op.constant(1.0, like=x))

def torch_symbolic(g, x):
    return g.op("bench.pipeline::Bump", x).setType(x.type())

def torch_lowered(g, x):
    return g.op("Add", x, g.op("Constant", value_t=torch.tensor(1.0)))

torch.onnx.register_custom_op_symbolic("bench_pipeline::bump", torch_symbolic, 20)
torch.onnx.register_custom_op_symbolic("bench_pipeline::bump_lowered", torch_lowered, 20)

class Weighted(torch.nn.Module):
    def __init__(self, mb, op):
        super().__init__()
        cols = max(1, mb * 2**20 // 4 // 64)
        self.w = torch.nn.Parameter(torch.randn(64, cols) * 0.01, requires_grad=False)
        self.op = op
    def forward(self, x):
        y = x @ self.w
        if self.op == "lowered":
            return bump_lowered(y)
        return bump(y) if self.op else y + 1

class Layers(torch.nn.Module):
    def __init__(self, n):
        super().__init__()
        self.fcs = torch.nn.ModuleList(torch.nn.Linear(64, 64) for _ in range(n))
    def forward(self, x):
        for fc in self.fcs:
            x = torch.ops.bench_pipeline.bump(fc(x))
        return x

def export(side, model, args, path, exporter, external):
    if side == "opbridge":
        opbridge.export(model, args, path, exporter=exporter, external_data=external)
    elif exporter == "dynamo":
        torch.onnx.export(model, args, path, dynamo=True, external_data=external,
                          verbose=False, report=False, opset_version=18)
    else:
        torch.onnx.export(model, args, path, dynamo=False, opset_version=20)

kind, side, d = spec["kind"], spec["side"], spec["dir"]
x = torch.randn(1, 64)
if kind == "export":
    # torch's dynamo exporter cannot write opbridge's op: its model has x + 1 instead.
    op = spec["op"] if side == "opbridge" or spec["exporter"] == "torchscript" else False
    export(side, Weighted(1, op), (x,), os.path.join(d, "warm.onnx"), spec["exporter"], False)
    model = Weighted(spec["mb"], op)
    before = rss()["VmRSS"]; reset_peak()
    t = time.perf_counter()
    export(side, model, (x,), os.path.join(d, "m.onnx"), spec["exporter"], spec["external"])
elif kind == "layers":
    # Milliseconds each: the median of 5 exports of the same model is reported.
    export(side, Layers(1), (x,), os.path.join(d, "warm.onnx"), "torchscript", False)
    model = Layers(spec["n"])
    before = rss()["VmRSS"]; reset_peak()
    times = []
    for _ in range(5):
        t = time.perf_counter()
        export(side, model, (x,), os.path.join(d, "m.onnx"), "torchscript", False)
        times.append(time.perf_counter() - t)
    print(json.dumps({"time": sorted(times)[2], "peak": max(0, rss()["VmHWM"] - before)}))
    sys.exit(0)
else:
    import onnxruntime as ort
    path = spec["path"]
    opbridge.Session(spec["warm"])
    if side == "opbridge":
        before = rss()["VmRSS"]; reset_peak()
        t = time.perf_counter()
        opbridge.Session(path)
    else:
        so = opbridge.session_options(path)
        before = rss()["VmRSS"]; reset_peak()
        t = time.perf_counter()
        ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
elapsed = time.perf_counter() - t
print(json.dumps({"time": elapsed, "peak": max(0, rss()["VmHWM"] - before)}))
"""


def _run(spec: dict[str, Any]) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(spec)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _pair(spec: dict[str, Any], repeats: int) -> tuple[dict[str, float], dict[str, float]]:
    """Medians of (opbridge, baseline), runs interleaved."""
    ours: list[dict[str, float]] = []
    theirs: list[dict[str, float]] = []
    for _ in range(repeats):
        ours.append(_run({**spec, "side": "opbridge"}))
        theirs.append(_run({**spec, "side": "torch"}))

    def median(runs: list[dict[str, float]]) -> dict[str, float]:
        return {k: statistics.median(r[k] for r in runs) for k in runs[0]}

    return median(ours), median(theirs)


def _row(label: str, ours: dict[str, float], theirs: dict[str, float]) -> str:
    mb = 2**20
    scale, unit = (1e3, "ms") if theirs["time"] < 1 else (1, "s")
    return (
        f"{label:<44} time {ours['time'] * scale:7.2f}{unit} / "
        f"{theirs['time'] * scale:7.2f}{unit} = "
        f"{ours['time'] / theirs['time']:5.2f}x   peak extra RSS {ours['peak'] / mb:7.0f} / "
        f"{theirs['peak'] / mb:7.0f} MB = {ours['peak'] / max(theirs['peak'], 1):5.2f}x"
    )


def _session_file(directory: str, mb: int, name: str) -> str:
    code = f"""
import warnings; warnings.simplefilter("ignore")
import torch, opbridge
from torch import Tensor
@opbridge.custom_op("bench_pipeline::bump", domain="bench.pipeline")
def bump(x: Tensor) -> Tensor:
    return x + 1
class M(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(64, max(1, {mb} * 2**20 // 256)) * 0.01,
                                    requires_grad=False)
    def forward(self, x):
        return bump(x @ self.w)
opbridge.export(M(), (torch.randn(1, 64),), {os.path.join(directory, name)!r})
"""
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return os.path.join(directory, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--layer-repeats", type=int, default=9,
        help="processes per side for the layer rows (milliseconds each; processes vary by 20%%)",
    )  # fmt: skip
    parser.add_argument("--weight-mb", type=int, default=500)
    parser.add_argument("--session-mb", type=int, default=200)
    args = parser.parse_args()
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    print(
        f"opbridge / baseline, medians of {args.repeats} fresh processes each; files in "
        f"{base or tempfile.gettempdir()}; default threads"
    )
    with tempfile.TemporaryDirectory(dir=base) as d:
        print(f"-- export, one {args.weight_mb} MB weight (opbridge.export / torch.onnx.export)")
        ops = {False: "no custom op", True: "with custom op", "lowered": "op with a lowering"}
        for exporter in ("dynamo", "torchscript"):
            for op in (False, True) if exporter == "dynamo" else (False, True, "lowered"):
                spec = {"kind": "export", "exporter": exporter, "op": op, "mb": args.weight_mb,
                        "external": False, "dir": d}  # fmt: skip
                label = f"{exporter}, {ops[op]}, weights inside"
                print(_row(label, *_pair(spec, args.repeats)), flush=True)
        spec = {"kind": "export", "exporter": "dynamo", "op": True, "mb": args.weight_mb,
                "external": True, "dir": d}  # fmt: skip
        print(_row("dynamo, with custom op, external data", *_pair(spec, args.repeats)))
        print(
            f"-- session creation, {args.session_mb} MB of weights, one custom op on the "
            f"kernel host (opbridge.Session / InferenceSession)"
        )
        warm = _session_file(d, 1, "warm.onnx")
        path = _session_file(d, args.session_mb, "s.onnx")
        spec = {"kind": "session", "path": path, "warm": warm, "dir": d}
        print(_row("Session(path)", *_pair(spec, args.repeats)), flush=True)
        print("-- TorchScript export, N x (Linear 64x64 + custom op) (opbridge / torch)")
        for threads in (None, 1):
            for n in (1, 8, 32):
                spec = {"kind": "layers", "n": n, "dir": d, "threads": threads}
                label = f"{n} layers, " + ("default threads" if threads is None else "1 thread")
                print(_row(label, *_pair(spec, args.layer_repeats)), flush=True)


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"({time.perf_counter() - t0:.0f} s)")
