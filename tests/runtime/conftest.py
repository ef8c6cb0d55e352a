"""Fixtures for the kernel host tests (``tests/runtime/test_host*.py``).

The host's registry is process-global, so every test gets its own custom domain.
Models are built by hand with ``onnx.helper`` and specs by hand as ``KernelSpec``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from types import ModuleType
from typing import Any

import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from opbridge.runtime import _host
from opbridge.runtime._kernels import AttrSpec, IOSpec, KernelSpec

_domains = itertools.count()

# (name, ONNX element type, shape) for a graph input or output; shape None = unknown.
Port = tuple[str, int, Sequence[int | str | None] | None]


@pytest.fixture(scope="session")
def host() -> ModuleType:
    """The kernel host module; the tests fail (not skip) when it is not built."""
    if not _host.available():
        pytest.fail(f"the kernel host is not built: {_host.unavailable_reason()}")
    return _host


@pytest.fixture
def domain() -> str:
    """A custom op domain no other test uses."""
    return f"test.host{next(_domains)}"


def _value_info(port: Port) -> onnx.ValueInfoProto:
    name, elem_type, shape = port
    return helper.make_tensor_value_info(name, elem_type, shape)


def build_model(
    nodes: Sequence[onnx.NodeProto],
    inputs: Iterable[Port],
    outputs: Iterable[Port],
    *,
    domain: str,
    opset: int = 1,
    value_info: Iterable[Port] = (),
    initializers: Sequence[onnx.TensorProto] = (),
) -> bytes:
    """Serialized model with the given nodes, importing ``domain`` at ``opset``."""
    graph = helper.make_graph(
        list(nodes),
        "host_test",
        [_value_info(p) for p in inputs],
        [_value_info(p) for p in outputs],
        initializer=list(initializers),
        value_info=[_value_info(p) for p in value_info],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(domain, opset)],
    )
    model.ir_version = 10  # onnx 1.23 writes IR 14, which ONNX Runtime refuses
    return model.SerializeToString()


def spec(
    domain: str,
    op_type: str,
    compute: Callable[..., Any],
    inputs: Sequence[str | IOSpec] = ("x",),
    outputs: Sequence[str | IOSpec] = ("y",),
    attributes: Sequence[AttrSpec] = (),
    version: int = 1,
) -> KernelSpec:
    """A KernelSpec; plain strings are inputs/outputs of any type."""

    def port(p: str | IOSpec) -> IOSpec:
        return p if isinstance(p, IOSpec) else IOSpec(p)

    return KernelSpec(
        domain,
        op_type,
        version,
        tuple(port(p) for p in inputs),
        tuple(port(p) for p in outputs),
        tuple(attributes),
        compute,
    )


def open_session(
    model: bytes,
    specs: Sequence[KernelSpec] = (),
    *,
    with_model: bool = True,
    **options: Any,
) -> ort.InferenceSession:
    """An InferenceSession on the CPU provider with the host registered.

    Args:
        model: Serialized model.
        specs: Kernels to install first.
        with_model: Register through ``_host.register(model=...)`` (typed overloads);
            otherwise install and call ``register_custom_ops_library`` directly.
        **options: ``SessionOptions`` attributes to set.
    """
    so = ort.SessionOptions()
    so.log_severity_level = 4  # the tests check errors themselves; keep stderr quiet
    for key, value in options.items():
        setattr(so, key, value)
    if with_model:
        _host.register(so, specs, model=model)
    else:
        _host.install(specs)
        so.register_custom_ops_library(_host.library_path())
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


@pytest.fixture
def make_model() -> Callable[..., bytes]:
    return build_model


@pytest.fixture
def make_spec() -> Callable[..., KernelSpec]:
    return spec


@pytest.fixture
def make_session() -> Callable[..., ort.InferenceSession]:
    return open_session


@pytest.fixture
def identity_session(host: ModuleType, domain: str) -> Callable[..., ort.InferenceSession]:
    """Factory: a one-node session ``y = Op(x)`` (node ``the_node``) around ``compute``."""

    def factory(
        compute: Callable[..., Any],
        elem_type: int = onnx.TensorProto.FLOAT,
        shape: Sequence[int | str | None] | None = None,
        out_elem_type: int | None = None,
        out_shape: Sequence[int | str | None] | None = None,
        **options: Any,
    ) -> ort.InferenceSession:
        node = helper.make_node("Op", ["x"], ["y"], domain=domain, name="the_node")
        model = build_model(
            [node],
            [("x", elem_type, shape)],
            [("y", elem_type if out_elem_type is None else out_elem_type, out_shape)],
            domain=domain,
        )
        return open_session(model, [spec(domain, "Op", compute)], **options)

    return factory
