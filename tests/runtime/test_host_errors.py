"""Kernel host: kernel exceptions and invalid results become clear ORT errors."""

from __future__ import annotations

import gc
import warnings

import numpy as np
import pytest
from onnx import TensorProto

SIGNATURE = r"expected signature: test\.host\d+::Op\(x: any\) -> \(y: any\)"


def test_kernel_exception_carries_type_message_op_and_node(identity_session):
    calls = []

    def compute(x):
        calls.append(1)
        if len(calls) == 1:
            raise KeyError("no such thing")
        return x

    session = identity_session(compute, shape=[2])
    x = np.ones(2, np.float32)
    with pytest.raises(Exception) as info:
        session.run(None, {"x": x})
    message = str(info.value)
    assert "KeyError: 'no such thing'" in message
    assert "::Op (node 'the_node')" in message
    assert "the kernel raised" in message
    assert "test_host_errors.py" in message  # the Python traceback is included
    # The session stays usable.
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], x)


def test_exception_subclasses_are_named_with_their_module(identity_session):
    class ShapeMismatch(ValueError):
        pass

    def compute(x):
        raise ShapeMismatch("bad shape")

    session = identity_session(compute, shape=[2])
    with pytest.raises(
        Exception,
        match=r"raised test_host_errors\.test_exception_subclasses_are_named_with_their_module"
        r"\.<locals>\.ShapeMismatch: bad shape",
    ):
        session.run(None, {"x": np.ones(2, np.float32)})


@pytest.mark.parametrize(
    ("compute", "match"),
    [
        (lambda x: [[1.0, 2.0]], r"output 0 \('y'\) must be a numpy.ndarray, got list"),
        (lambda x: None, r"output 0 \('y'\) must be a numpy.ndarray, got None"),
        (lambda x: 3.0, r"output 0 \('y'\) must be a numpy.ndarray, got float"),
        (lambda x: (x, x), r"the kernel returned 2 values, expected 1"),
        (lambda x: (), r"the kernel returned 0 values, expected 1"),
        (lambda x: x.reshape(1, 2), r"output 0 \('y'\) has rank 2, but the model declares rank 1"),
        (lambda x: x.astype(np.int32), r"has dtype int32, but the node's output is float32"),
    ],
    ids=["list", "none", "python-float", "too-many", "too-few", "rank", "dtype"],
)
def test_invalid_results_name_the_op_and_its_signature(identity_session, compute, match):
    session = identity_session(compute, shape=[2], out_shape=[2])
    with pytest.raises(Exception, match=match) as info:
        session.run(None, {"x": np.ones(2, np.float32)})
    assert "::Op (node 'the_node')" in str(info.value)
    import re

    assert re.search(SIGNATURE, str(info.value))


def test_rank_is_not_checked_when_the_model_has_no_shape(identity_session):
    session = identity_session(lambda x: x.reshape(1, 2), shape=[2], out_shape=None)
    (y,) = session.run(None, {"x": np.ones(2, np.float32)})
    assert y.shape == (1, 2)


def test_string_kernel_errors(identity_session):
    def compute(x):
        raise RuntimeError("strings " + ",".join(x))

    session = identity_session(compute, elem_type=TensorProto.STRING, shape=[2])
    with pytest.raises(Exception, match="RuntimeError: strings a,b"):
        session.run(None, {"x": np.array(["a", "b"], dtype=object)})


def test_a_kept_input_view_is_detached_and_warned_about(identity_session):
    kept = []

    def compute(x):
        if not kept:
            kept.append(x)
        return x

    session = identity_session(compute, shape=[3])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        session.run(None, {"x": np.array([1, 2, 3], np.float32)})
    assert any("kept a reference to input 0" in str(w.message) for w in caught)
    # Detached: it now views a private copy (its base) instead of ORT's buffer.
    assert kept[0].base is not None
    # It now views a private copy: later runs (which reuse ORT's memory) and the
    # caller's buffer changing do not affect it.
    for _ in range(3):
        session.run(None, {"x": np.array([7, 8, 9], np.float32)})
    np.testing.assert_array_equal(kept[0], [1, 2, 3])


def test_a_view_kept_by_a_failing_kernel_is_detached_without_warning(identity_session):
    kept = []

    def compute(x):
        if not kept:
            kept.append(x)
            raise ValueError("failed after keeping its input")
        return x

    session = identity_session(compute, shape=[3])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(Exception, match="failed after keeping its input"):
            session.run(None, {"x": np.array([1, 2, 3], np.float32)})
    assert kept[0].base is not None
    for _ in range(3):
        session.run(None, {"x": np.array([7, 8, 9], np.float32)})
    np.testing.assert_array_equal(kept[0], [1, 2, 3])


def test_views_dropped_in_time_cause_no_warning(identity_session):
    session = identity_session(lambda x: x[::-1], shape=[3])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        session.run(None, {"x": np.array([1, 2, 3], np.float32)})
    gc.collect()


def test_warning_turned_error_becomes_an_ort_error(identity_session):
    kept = []
    session = identity_session(lambda x: kept.append(x) or x, shape=[3])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(Exception, match="RuntimeWarning: .*kept a reference"):
            session.run(None, {"x": np.array([1, 2, 3], np.float32)})
