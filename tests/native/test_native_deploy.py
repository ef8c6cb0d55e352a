"""Deployment without opbridge: a plain InferenceSession plus register_custom_ops_library."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import onnx
import torch
from native_helpers import IR_VERSION
from onnx import TensorProto, helper

import opbridge.native

# Runs in a fresh interpreter that never imports opbridge or torch.
_DEPLOY_SCRIPT = textwrap.dedent(
    """\
    import sys

    import numpy as np
    import onnxruntime as ort

    library, model, feeds_path, out_path = sys.argv[1:]
    options = ort.SessionOptions()
    options.register_custom_ops_library(library)
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    feeds = dict(np.load(feeds_path))
    names = [o.name for o in session.get_outputs()]
    np.savez(out_path, **dict(zip(names, session.run(None, feeds))))
    assert "opbridge" not in sys.modules and "torch" not in sys.modules
    """
)


def _model_using_every_shipped_op() -> bytes:
    """GroupNorm (float32 and float16) -> CustomOpOne -> CustomOpTwo, in one graph."""
    f32, f16, i32, i64 = (
        TensorProto.FLOAT,
        TensorProto.FLOAT16,
        TensorProto.INT32,
        TensorProto.INT64,
    )
    nodes = [
        helper.make_node(
            "testgroupnorm", ["X", "G", "S", "B"], ["N"], domain="mydomain", epsilon=1e-5
        ),
        helper.make_node(
            "testgroupnorm", ["H", "GI", "SH", "BH"], ["NH"], domain="mydomain", epsilon=1e-3
        ),
        helper.make_node("CustomOpOne", ["N", "X"], ["Sum"], domain="test.customop"),
        helper.make_node("CustomOpTwo", ["Sum"], ["Rounded"], domain="test.customop"),
    ]
    vi = helper.make_tensor_value_info
    graph = helper.make_graph(
        nodes,
        "deploy",
        [
            vi("X", f32, [2, 4, 3, 3]),
            vi("G", f32, [1]),
            vi("S", f32, [4]),
            vi("B", f32, [4]),
            vi("H", f16, [1, 6, 5]),
            vi("GI", i64, []),
            vi("SH", f16, [6]),
            vi("BH", f16, [6]),
        ],
        [vi("N", f32, None), vi("NH", f16, None), vi("Sum", f32, None), vi("Rounded", i32, None)],
    )
    model = helper.make_model(
        graph,
        opset_imports=[
            helper.make_opsetid("", 18),
            helper.make_opsetid("mydomain", 1),
            helper.make_opsetid("test.customop", 1),
        ],
    )
    model.ir_version = IR_VERSION
    return model.SerializeToString()


def test_plain_onnxruntime_runs_every_shipped_op(kernel_lib, tmp_path):
    rng = np.random.default_rng(42)
    feeds = {
        "X": rng.standard_normal((2, 4, 3, 3)).astype(np.float32) * 4,
        "G": np.array([2.0], np.float32),
        "S": rng.standard_normal(4).astype(np.float32),
        "B": rng.standard_normal(4).astype(np.float32),
        "H": rng.standard_normal((1, 6, 5)).astype(np.float16),
        "GI": np.array(3, np.int64),
        "SH": rng.standard_normal(6).astype(np.float16),
        "BH": rng.standard_normal(6).astype(np.float16),
    }
    model_path = tmp_path / "deploy.onnx"
    model_path.write_bytes(_model_using_every_shipped_op())
    feeds_path = tmp_path / "feeds.npz"
    np.savez(feeds_path, **feeds)
    out_path = tmp_path / "out.npz"
    subprocess.run(
        [
            sys.executable,
            "-c",
            _DEPLOY_SCRIPT,
            str(kernel_lib),
            str(model_path),
            str(feeds_path),
            str(out_path),
        ],
        check=True,
        timeout=120,
    )
    out = np.load(out_path)
    used = {f"{n.domain}::{n.op_type}" for n in onnx.load(model_path).graph.node}
    assert used == set(opbridge.native.SHIPPED_OPS)

    t = {k: torch.from_numpy(v.astype(np.float32)) for k, v in feeds.items()}
    norm = torch.nn.functional.group_norm(t["X"], 2, t["S"], t["B"], 1e-5)
    norm_h = torch.nn.functional.group_norm(t["H"], 3, t["SH"], t["BH"], 1e-3)
    total = norm + t["X"]
    np.testing.assert_allclose(out["N"], norm.numpy(), rtol=1e-5, atol=1e-5)
    assert out["NH"].dtype == np.float16
    np.testing.assert_allclose(out["NH"].astype(np.float32), norm_h.numpy(), rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(out["Sum"], total.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out["Rounded"], torch.round(torch.from_numpy(out["Sum"])).int())
