"""Hand-made ONNX models and sessions for the native kernel tests (no opbridge core)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import onnxruntime as ort
from onnx import TensorProto, helper

__all__ = ["groupnorm_model", "make_session", "single_node_model"]

# onnx 1.23 writes IR 14, which onnxruntime refuses; 10 is what ORT 1.2x/1.3x accept.
IR_VERSION = 10


def single_node_model(
    op_type: str,
    domain: str,
    inputs: Sequence[tuple[str, int]],
    outputs: Sequence[tuple[str, int]],
    *,
    domain_version: int = 1,
    **attrs: object,
) -> bytes:
    """Returns a serialized model with one custom node and rank-agnostic I/O."""
    node = helper.make_node(
        op_type, [n for n, _ in inputs], [n for n, _ in outputs], domain=domain, **attrs
    )
    graph = helper.make_graph(
        [node],
        f"{op_type}_graph",
        [helper.make_tensor_value_info(n, t, None) for n, t in inputs],
        [helper.make_tensor_value_info(n, t, None) for n, t in outputs],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(domain, domain_version)],
    )
    model.ir_version = IR_VERSION
    return model.SerializeToString()


def groupnorm_model(
    x_type: int = TensorProto.FLOAT,
    groups_type: int = TensorProto.FLOAT,
    param_type: int | None = None,
    epsilon: float | None = 1e-5,
) -> bytes:
    """A model with one ``mydomain::testgroupnorm`` node (inputs X, num_groups, scale, bias)."""
    param_type = x_type if param_type is None else param_type
    attrs = {} if epsilon is None else {"epsilon": float(epsilon)}
    return single_node_model(
        "testgroupnorm",
        "mydomain",
        [("X", x_type), ("num_groups", groups_type), ("scale", param_type), ("bias", param_type)],
        [("Y", x_type)],
        **attrs,
    )


def make_session(
    model: bytes, *libraries: os.PathLike[str] | str, threads: int = 2
) -> ort.InferenceSession:
    """A CPU session with the given custom-op libraries registered."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 4  # the tests assert on the exceptions, not the log
    for lib in libraries:
        options.register_custom_ops_library(str(lib))
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
