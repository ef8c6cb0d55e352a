"""opbridge.custom_op: the torch side and the ONNX signature of a declaration."""

from __future__ import annotations

import numpy as np
import onnx.defs
import pytest
import torch
from torch import Tensor

import opbridge
from opbridge import DeclarationError


def test_custom_op_registers_torch_op_and_schema(ns: str) -> None:
    @opbridge.custom_op(f"{ns}::scale_add", domain="my.domain")
    def scale_add(x: Tensor, y: Tensor, alpha: float = 2.0) -> Tensor:
        return x + alpha * y

    x, y = torch.ones(3), torch.arange(3.0)
    torch.testing.assert_close(scale_add(x, y), x + 2 * y)
    torch.testing.assert_close(getattr(torch.ops, ns).scale_add(x, y, alpha=3.0), x + 3 * y)
    assert scale_add.op_type == "ScaleAdd"
    assert scale_add.onnx_name == "my.domain::ScaleAdd"
    assert onnx.defs.has("ScaleAdd", 1, "my.domain")
    schema = onnx.defs.get_schema("ScaleAdd", 1, "my.domain")
    assert [i.name for i in schema.inputs] == ["x", "y"]
    assert set(schema.attributes) == {"alpha"}


def test_layout_splits_inputs_and_attributes(ns: str) -> None:
    @opbridge.custom_op(f"{ns}::many", domain="d", op_type="Many", version=3)
    def many(
        x: Tensor,
        maybe: Tensor | None,
        n: int,
        f: float,
        b: bool,
        s: str,
        ints: list[int],
        floats: list[float],
    ) -> tuple[Tensor, Tensor]:
        return x.clone(), x.clone()

    layout = many.layout
    assert [p.name for p in layout.inputs] == ["x", "maybe"]
    assert layout.inputs[1].optional
    assert {p.name: p.attr_kind for p in layout.attributes} == {
        "n": "int",
        "f": "float",
        "b": "int",
        "s": "str",
        "ints": "ints",
        "floats": "floats",
    }
    assert layout.num_outputs == 2
    assert many.version == 3


def test_works_in_eager_export_and_compile(ns: str) -> None:
    @opbridge.custom_op(f"{ns}::twice", domain="d")
    def twice(x: Tensor) -> Tensor:
        return x * 2

    class M(torch.nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return twice(x) + 1

    x = torch.randn(4)
    program = torch.export.export(M(), (x,))
    targets = [n.target for n in program.graph.nodes if n.op == "call_function"]
    assert getattr(torch.ops, ns).twice.default in targets
    torch.testing.assert_close(program.module()(x), x * 2 + 1)
    compiled = torch.compile(M(), backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), x * 2 + 1)


def test_register_fake_used_by_export(ns: str) -> None:
    @opbridge.custom_op(f"{ns}::data_dependent", domain="d")
    def data_dependent(x: Tensor) -> Tensor:
        return x * float(x.sum().item() > 0)

    class M(torch.nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return data_dependent(x)

    with pytest.raises(Exception, match="register_fake"):
        torch.export.export(M(), (torch.randn(2),))

    @data_dependent.register_fake
    def _(x: Tensor) -> Tensor:
        return torch.empty_like(x)

    torch.export.export(M(), (torch.randn(2),))


@pytest.mark.parametrize("name", ["noseparator", "a::b::c", "1ns::op", "ns::", "ns::bad-name"])
def test_bad_name(name: str) -> None:
    with pytest.raises(DeclarationError, match="namespace::name"):
        opbridge.custom_op(name, domain="d")(lambda x: x)


@pytest.mark.parametrize("domain", ["", "ai.onnx", "has space", None])
def test_bad_domain(ns: str, domain: object) -> None:
    with pytest.raises(DeclarationError, match="domain"):
        opbridge.custom_op(f"{ns}::op", domain=domain)  # type: ignore[arg-type]


def test_bad_version(ns: str) -> None:
    with pytest.raises(DeclarationError, match="version"):
        opbridge.custom_op(f"{ns}::op", domain="d", version=0)


def test_unsupported_parameter_type_names_op_and_fix(ns: str) -> None:
    def uses_dict(x: Tensor, table: dict) -> Tensor:  # type: ignore[type-arg]
        return x

    with pytest.raises(DeclarationError, match=rf"{ns}::uses_dict.*Annotate every parameter"):
        opbridge.custom_op(f"{ns}::uses_dict", domain="d")(uses_dict)


def test_unannotated_parameter(ns: str) -> None:
    def bare(x):  # type: ignore[no-untyped-def]
        return x

    with pytest.raises(DeclarationError, match="bare"):
        opbridge.custom_op(f"{ns}::bare", domain="d")(bare)


def test_kernel_spec_runs_torch_impl_on_numpy(ns: str) -> None:
    @opbridge.custom_op(f"{ns}::affine", domain="d")
    def affine(x: Tensor, scale: float, shift: float = 0.5) -> Tensor:
        return x * scale + shift

    spec = affine.kernel_spec()
    assert (spec.domain, spec.op_type, spec.origin) == ("d", "Affine", "torch")
    out = spec.compute(np.ones(3, np.float32), scale=2.0)
    np.testing.assert_allclose(out, np.full(3, 2.5, np.float32))

    @affine.register_kernel
    def _(x: np.ndarray, scale: float, shift: float = 0.5) -> np.ndarray:
        return x * scale - shift

    spec = affine.kernel_spec()
    assert spec.origin == "numpy"
    np.testing.assert_allclose(spec.compute(np.ones(3, np.float32), scale=2.0), np.full(3, 1.5))
