"""Declared ops run through opbridge.Session: safety of the torch and numpy routes."""

from __future__ import annotations

import gc
import itertools
import warnings

import ml_dtypes
import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import opbridge
from opbridge import KernelError, SessionError
from opbridge._errors import DeclarationError

F = TensorProto.FLOAT
_names = itertools.count()


def _model(domain, op_type, inputs, outputs, *, initializers=(), shape=(3,)):
    """A one-node model ``domain::op_type``; inputs (name, elem type) are graph inputs
    unless given as initializers."""
    init_names = {t.name for t in initializers}
    graph_inputs = [(n, t) for n, t in inputs if n not in init_names]
    graph = helper.make_graph(
        [helper.make_node(op_type, [n for n, _ in inputs], [n for n, _ in outputs], domain=domain)],
        "g",
        [helper.make_tensor_value_info(n, t, list(shape)) for n, t in graph_inputs],
        [helper.make_tensor_value_info(n, t, list(shape)) for n, t in outputs],
        initializer=list(initializers),
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(domain, 1)]
    )
    model.ir_version = 10
    return model


@pytest.fixture
def names(ns):
    return ns, f"sess.{ns}"


def test_torch_kernel_keeping_its_input_survives_the_caller_freeing_it(names):
    ns, domain = names
    kept = []

    @opbridge.custom_op(f"{ns}::keep", domain=domain)
    def keep(x: torch.Tensor) -> torch.Tensor:
        if type(x) is torch.Tensor and not kept:  # not the fake run by shape inference
            kept[:] = [x, x[1:]]  # the tensor and a view of it
        return x * 2

    session = opbridge.Session(_model(domain, "Keep", [("x", F)], [("y", F)], shape=(1 << 16,)))
    x = np.arange(1 << 16, dtype=np.float32)
    session(x)
    del x
    gc.collect()
    for _ in range(3):  # reuse the memory
        session(np.full(1 << 16, -1, np.float32))
        _ = [np.ones(1 << 16, np.float32) for _ in range(8)]
    assert kept[0][:4].tolist() == [0, 1, 2, 3]
    assert kept[1][:3].tolist() == [1, 2, 3]
    assert float(kept[0].sum()) == float(np.arange(1 << 16, dtype=np.float64).sum())


def test_torch_kernel_writing_its_input_is_a_kernel_error(names):
    ns, domain = names

    @opbridge.custom_op(f"{ns}::bump", domain=domain)
    def bump(x: torch.Tensor) -> torch.Tensor:
        x.add_(1)
        return x.clone()

    session = opbridge.Session(_model(domain, "Bump", [("x", F)], [("y", F)]))
    with pytest.raises(KernelError, match=rf"{ns}::bump wrote its input 'x'.*mutates_args=\(\)"):
        session(np.array([2, 3, 4], np.float32))


def test_declared_mutation_writes_a_copy_not_the_initializer(names):
    ns, domain = names

    @opbridge.custom_op(f"{ns}::bump_w", domain=domain, mutates_args=("w",))
    def bump_w(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        w.add_(1)
        return x + w

    init = numpy_helper.from_array(np.array([2, 3, 4], np.float32), "w")
    model = _model(domain, "BumpW", [("x", F), ("w", F)], [("y", F)], initializers=[init])
    session = opbridge.Session(model)
    caller = np.zeros(3, np.float32)
    results = [session(caller).tolist() for _ in range(3)]
    assert results == [[3, 4, 5]] * 3  # the initializer does not drift
    assert caller.tolist() == [0, 0, 0]


def test_numpy_kernel_cannot_write_its_input(names):
    ns, domain = names

    @opbridge.custom_op(f"{ns}::npw", domain=domain)
    def npw(x: torch.Tensor) -> torch.Tensor:
        return x + 1

    @npw.register_kernel
    def _(x):
        x += 1
        return x

    session = opbridge.Session(_model(domain, "Npw", [("x", F)], [("y", F)]))
    caller = np.array([2, 3, 4], np.float32)
    with pytest.raises(KernelError, match="read-only"):
        session(caller)
    assert caller.tolist() == [2, 3, 4]


def test_torch_route_runs_without_warnings_or_grad(names):
    ns, domain = names
    seen = []

    @opbridge.custom_op(f"{ns}::g", domain=domain)
    def g(x: torch.Tensor) -> torch.Tensor:
        seen.append(torch.is_grad_enabled())
        return x * 3

    session = opbridge.Session(_model(domain, "G", [("x", F)], [("y", F)]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert session(torch.ones(3)).tolist() == [3, 3, 3]
    assert seen[-1] is False  # (earlier entries: the fake, run at export-time inference)
    assert torch.is_grad_enabled()


def test_bfloat16_in_and_out(names):
    ns, domain = names

    @opbridge.custom_op(f"{ns}::bf", domain=domain)
    def bf(x: torch.Tensor) -> torch.Tensor:
        return x * 2

    bfloat16 = TensorProto.BFLOAT16
    session = opbridge.Session(_model(domain, "Bf", [("x", bfloat16)], [("y", bfloat16)]))
    out = session(torch.tensor([1.0, 2.5, -3.0], dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and out.tolist() == [2.0, 5.0, -6.0]
    array = session(np.array([1.0, 2.5, -3.0], ml_dtypes.bfloat16))
    assert array.dtype == ml_dtypes.bfloat16 and array.astype(np.float32).tolist() == [2, 5, -6]


def test_one_session_options_for_two_sessions(names):
    ns, domain = names

    @opbridge.custom_op(f"{ns}::twice", domain=domain)
    def twice(x: torch.Tensor) -> torch.Tensor:
        return x * 2

    model = _model(domain, "Twice", [("x", F)], [("y", F)])
    options = ort.SessionOptions()
    first = opbridge.Session(model, options=options)
    second = opbridge.Session(model, options=options)
    assert first(torch.ones(3)).tolist() == second(torch.ones(3)).tolist() == [2, 2, 2]


def test_ctrl_c_in_a_kernel_is_keyboard_interrupt(names):
    ns, domain = names

    @opbridge.custom_op(f"{ns}::intr", domain=domain)
    def intr(x: torch.Tensor) -> torch.Tensor:
        return x

    @intr.register_kernel
    def _(x):
        raise KeyboardInterrupt

    session = opbridge.Session(_model(domain, "Intr", [("x", F)], [("y", F)]))
    with pytest.raises(KeyboardInterrupt):
        session(np.ones(3, np.float32))


def test_big_endian_inputs_are_accepted(names):
    ns, domain = names

    @opbridge.custom_op(f"{ns}::be", domain=domain)
    def be(x: torch.Tensor) -> torch.Tensor:
        return x + 1

    session = opbridge.Session(_model(domain, "Be", [("x", F)], [("y", F)]))
    assert session(np.array([1, 2, 3], ">f4")).tolist() == [2, 3, 4]


def test_string_output_with_torch_inputs_stays_numpy(names):
    ns, domain = names

    @opbridge.custom_op(f"{ns}::s", domain=domain)
    def s(x: torch.Tensor) -> torch.Tensor:
        return x

    @s.register_kernel
    def _(x):
        return np.array([str(v) for v in x], dtype=object)

    model = _model(domain, "S", [("x", F)], [("y", TensorProto.STRING)])
    out = opbridge.Session(model)(torch.tensor([1.0, 2.0, 3.0]))
    assert out.tolist() == ["1.0", "2.0", "3.0"]


def test_truncated_model_file_names_the_file(tmp_path):
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"\x08\x07\x12\x05garbage-and-more-garbage\xff\xff")
    with pytest.raises(SessionError, match="broken.onnx' is not a readable ONNX model"):
        opbridge.Session(path)


def test_second_declaration_of_one_node_type_is_an_error(names):
    ns, domain = names

    @opbridge.custom_op(f"{ns}::first", domain=domain, op_type="Same")
    def first(x: torch.Tensor) -> torch.Tensor:
        return x

    with pytest.raises(DeclarationError, match=rf"already declared by {ns}::first"):

        @opbridge.custom_op(f"{ns}::second", domain=domain, op_type="Same")
        def second(x: torch.Tensor) -> torch.Tensor:
            return x

    @opbridge.custom_op(f"{ns}::second_v2", domain=domain, op_type="Same", version=2)
    def second_v2(x: torch.Tensor) -> torch.Tensor:
        return x


def test_standard_op_name_with_too_few_inputs_is_refused(names):
    ns, domain = names
    with pytest.raises(DeclarationError, match="'Add' is also a standard ONNX op"):

        @opbridge.custom_op(f"{ns}::add_one", domain=domain, op_type="Add")
        def add_one(x: torch.Tensor) -> torch.Tensor:
            return x + 1


def test_kernel_shape_mismatch_through_session(names):
    ns, domain = names

    @opbridge.custom_op(f"{ns}::grow", domain=domain)
    def grow(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, x, x[:1]])

    session = opbridge.Session(_model(domain, "Grow", [("x", F)], [("y", F)], shape=(4,)))
    with pytest.raises(KernelError, match=r"has shape \(9,\), but the model declares \(4,\)"):
        session(np.ones(4, np.float32))


def test_custom_output_without_value_info_is_typed_from_the_declaration(names):
    ns, domain = names

    @opbridge.custom_op(f"{ns}::inc", domain=domain)
    def inc(x: torch.Tensor) -> torch.Tensor:
        return x + 1

    graph = helper.make_graph(
        [
            helper.make_node("Inc", ["x"], ["t"], domain=domain),
            helper.make_node("Neg", ["t"], ["z"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", F, [2])],
        [helper.make_tensor_value_info("z", F, [2])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(domain, 1)]
    )
    model.ir_version = 10
    assert opbridge.Session(model)(np.ones(2, np.float32)).tolist() == [-2, -2]


def test_non_utf8_string_attribute_is_named(names):
    ns, domain = names

    @opbridge.custom_op(f"{ns}::tag", domain=domain)
    def tag(x: torch.Tensor, label: str) -> torch.Tensor:
        return x

    model = _model(domain, "Tag", [("x", F)], [("y", F)])
    attr = helper.make_attribute("label", b"\xff\xfe")
    model.graph.node[0].attribute.append(attr)
    with pytest.raises(SessionError, match="string attribute 'label' is not valid UTF-8"):
        opbridge.Session(model)


def test_inspect_names_a_missing_or_broken_file(tmp_path, capsys):
    from opbridge.cli import main

    assert main(["inspect", str(tmp_path / "nope.onnx")]) == 1
    assert "no such file" in (err := capsys.readouterr().err) and "nope.onnx'" in err
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"garbage\n")
    assert main(["inspect", str(broken)]) == 1
    assert "broken.onnx' is not an ONNX model" in capsys.readouterr().err


def test_numpy_kernel_writes_straight_into_the_output(names):
    ns, domain = names
    seen = []

    @opbridge.custom_op(f"{ns}::th", domain=domain)
    def th(x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x)

    @th.register_kernel
    def _(x, out=None):
        seen.append(out)
        return np.tanh(x, out=out)

    x = np.linspace(-2, 2, 6, dtype=np.float32)
    static = opbridge.Session(_model(domain, "Th", [("x", F)], [("y", F)], shape=(6,)))
    np.testing.assert_allclose(static(x), np.tanh(x), rtol=1e-6)
    assert seen[-1] is not None and seen[-1].shape == (6,)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        kept = seen[-1]
        static(np.zeros(6, np.float32))  # ORT may reuse the first output buffer
    np.testing.assert_allclose(kept, np.tanh(x), rtol=1e-6)  # detached when kept
    dynamic = opbridge.Session(_model(domain, "Th", [("x", F)], [("y", F)], shape=("n",)))
    np.testing.assert_allclose(dynamic(x), np.tanh(x), rtol=1e-6)
    assert seen[-1] is None
