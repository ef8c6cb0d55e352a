"""A declared op with a native kernel: Session loads it; the model then needs no Python."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import onnx
import pytest
import torch
from torch import Tensor

import opbridge
from opbridge import DeclarationError

SOURCE = textwrap.dedent(
    """
    #include <opbridge/ort_kernel.h>

    Ort::Status Cube(const opbridge::Tensor<float>& x, opbridge::Tensor<float>& y) {
      const auto& shape = x.Shape();
      float* out = y.Allocate(shape);
      const float* in = x.Data();
      for (int64_t i = 0; i < x.NumberOfElement(); ++i) out[i] = in[i] * in[i] * in[i];
      return Ort::Status{nullptr};
    }

    OPBRIDGE_REGISTER_OPS(ops) { ops.Add("native.decl", "Cube", Cube); }
    """
)

PLAIN_ORT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.register_custom_ops_library(sys.argv[2])
    session = ort.InferenceSession(sys.argv[1], options)
    (y,) = session.run(None, {session.get_inputs()[0].name: np.arange(4, dtype=np.float32)})
    assert "torch" not in sys.modules and "opbridge" not in sys.modules
    print(y.tolist())
    """
)


def test_native_kernel_runs_with_and_without_opbridge(ns: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    @opbridge.custom_op(f"{ns}::cube", domain="native.decl", op_type="Cube")
    def cube(x: Tensor) -> Tensor:
        return x * x * x

    library = cube.register_native_kernel(opbridge.load_inline("test_native_decl_cube", SOURCE))
    assert cube.kernel_origin == "native"

    class M(torch.nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return cube(x) + 1

    x = torch.randn(4)
    path = tmp_path / "cube.onnx"
    opbridge.export(M(), (x,), path)
    session = opbridge.Session(path)
    source = session.kernel_sources["native.decl::Cube"]
    assert (source.provider, source.detail) == ("native", str(library))
    assert session.python_kernel_route is None
    torch.testing.assert_close(session(x), M()(x))

    script = tmp_path / "plain_ort.py"
    script.write_text(PLAIN_ORT)
    done = subprocess.run(
        [sys.executable, str(script), str(path), str(library)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str([float(v**3 + 1) for v in range(4)])
    assert onnx.load(str(path)).graph.node[0].domain == "native.decl"


def test_native_kernel_from_source_file(ns: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    @opbridge.custom_op(f"{ns}::cube", domain="native.decl", op_type="Cube")
    def cube(x: Tensor) -> Tensor:
        return x * x * x

    source = tmp_path / "cube.cc"
    source.write_text(SOURCE)
    library = cube.register_native_kernel(source)
    assert library.suffix == ".so" and library.is_file()
    with pytest.raises(DeclarationError, match="not found"):
        cube.register_native_kernel(tmp_path / "missing.so")


SHIPPED = textwrap.dedent(
    """
    import numpy as np
    from onnx import TensorProto, helper
    import opbridge

    nodes = [
        helper.make_node("CustomOpOne", ["x", "x"], ["s"], domain="test.customop"),
        helper.make_node("CustomOpTwo", ["s"], ["r"], domain="test.customop"),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("r", TensorProto.INT32, [4])],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid("test.customop", 1)],
    )
    model.ir_version = 10
    # Never bound silently to a node that merely has a seed op's name ...
    try:
        opbridge.Session(model)
    except opbridge.SessionError as e:
        assert "test.customop::CustomOpOne" in str(e), e
        assert "libraries=[opbridge.library_path()]" in str(e), e
    else:
        raise AssertionError("the shipped kernels were bound without being asked")
    # ... only when the caller passes the library.
    session = opbridge.Session(model, libraries=[opbridge.library_path()])
    assert {s.provider for s in session.kernel_sources.values()} == {"native"}, session
    x = np.array([0.25, 0.75, 1.25, -1.25], np.float32)
    np.testing.assert_array_equal(session(x), np.round(x + x).astype(np.int32))
    print("ok")
    """
)


def test_shipped_kernels_serve_seed_ops_only_when_passed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # A fresh process: here, other tests may have declared test.customop ops, which win.
    script = tmp_path / "shipped.py"
    script.write_text(SHIPPED)
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("ok")
