"""Kernel host: what a kernel keeps never sees memory ONNX Runtime reuses."""

from __future__ import annotations

import gc
import threading
import warnings

import numpy as np
import pytest
from onnx import TensorProto, helper

F = TensorProto.FLOAT


def _run_kept(identity_session, keep):
    """Runs a kernel that keeps `keep(x)` once, then reuses ORT's memory."""
    kept = []

    def compute(x):
        if not kept:
            kept.append(keep(x))
        return x + 0

    session = identity_session(compute, shape=[4])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        first = np.array([1, 2, 3, 4], np.float32)
        session.run(None, {"x": first})
        del first
        gc.collect()
        for k in range(5):
            session.run(None, {"x": np.full(4, 100 + k, np.float32)})
    return kept[0]


@pytest.mark.parametrize(
    "keep",
    [
        lambda x: x[::1],
        lambda x: x.reshape(2, 2),
        lambda x: np.asarray(x[0:]),
        lambda x: x.view(np.int32).view(np.float32),
        lambda x: (x, x[::-1]),
    ],
    ids=["slice", "reshape", "asarray-of-slice", "view-of-view", "array-and-view"],
)
def test_kept_derived_views_keep_their_values(identity_session, keep):
    kept = _run_kept(identity_session, keep)
    for array in kept if isinstance(kept, tuple) else (kept,):
        assert sorted(np.asarray(array).ravel().tolist()) == [1, 2, 3, 4]


def test_inputs_are_read_only_for_good(identity_session):
    def compute(x):
        with pytest.raises(ValueError):
            x.flags.writeable = True
        with pytest.raises(ValueError):
            x[0] = 5
        return x

    session = identity_session(compute, shape=[2])
    caller = np.array([1, 2], np.float32)
    session.run(None, {"x": caller})
    assert caller.tolist() == [1, 2]


def test_a_returned_list_changed_by_another_thread_is_copied_safely(
    host, domain, make_model, make_spec, make_session
):
    big = 1 << 18  # copied without the GIL
    holder = []

    def compute(x):
        result = [np.zeros(big, np.float32), np.full(4, 7, np.float32)]
        holder[:] = [result]
        return result

    node = helper.make_node("Two", ["x"], ["a", "b"], domain=domain)
    model = make_model([node], [("x", F, [1])], [("a", F, [big]), ("b", F, [4])], domain=domain)
    session = make_session(model, [make_spec(domain, "Two", compute, outputs=["a", "b"])])
    stop = threading.Event()

    def churn():
        k = 0
        while not stop.is_set():
            k += 1
            for result in list(holder):
                # Frees the list's item array and the arrays in it.
                result.clear()
                result.extend([np.zeros(3, np.float32), np.full(4, k % 1000, np.float32)])

    thread = threading.Thread(target=churn)
    thread.start()
    try:
        for _ in range(300):
            a, b = session.run(None, {"x": np.zeros(1, np.float32)})
            # What the kernel returned, whatever happened to its list afterwards.
            assert a.shape == (big,) and b.tolist() == [7, 7, 7, 7]
    finally:
        stop.set()
        thread.join()


def test_output_shape_must_match_the_declared_static_shape(identity_session):
    session = identity_session(lambda x: np.zeros(7, np.float32), shape=[4], out_shape=[4])
    with pytest.raises(Exception, match=r"has shape \(7,\), but the model declares \(4,\)"):
        session.run(None, {"x": np.zeros(4, np.float32)})


def test_symbolic_output_dims_accept_any_size(identity_session):
    session = identity_session(lambda x: np.zeros(7, np.float32), shape=["n"], out_shape=["m"])
    assert session.run(None, {"x": np.zeros(4, np.float32)})[0].shape == (7,)


def test_string_outputs_keep_nul_characters(identity_session):
    session = identity_session(
        lambda x: np.array(["a\x00b", "", "\x00"], dtype=object),
        elem_type=TensorProto.STRING,
        shape=[3],
    )
    (y,) = session.run(None, {"x": np.array(["p", "q", "r"], dtype=object)})
    assert y.tolist() == ["a\x00b", "", "\x00"]


def test_string_inputs_keep_nul_characters(identity_session):
    seen = []
    session = identity_session(
        lambda x: seen.append(x.tolist()) or x, elem_type=TensorProto.STRING, shape=[2]
    )
    (y,) = session.run(None, {"x": np.array(["a\x00b", "c"], dtype=object)})
    assert seen == [["a\x00b", "c"]]
    assert y.tolist() == ["a\x00b", "c"]


def test_ctrl_c_in_a_kernel_is_a_keyboard_interrupt_marker(identity_session):
    def compute(x):
        raise KeyboardInterrupt

    session = identity_session(compute, shape=[1])
    with pytest.raises(Exception, match=r"\[opbridge:interrupted\]"):
        session.run(None, {"x": np.zeros(1, np.float32)})
