"""Kernel host: no leaks over many runs, failing runs and session lifetimes.

Counted with tracemalloc, reference counts and the garbage collector's object list,
never the resident set size, which other processes' load makes noisy; the RSS
check lives in benchmarks/bench_kernel_host.py --memory.
"""

from __future__ import annotations

import gc
import sys
import tracemalloc

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from opbridge.runtime._kernels import AttrSpec, IOSpec

F, S = TensorProto.FLOAT, TensorProto.STRING

ATTRS = [
    AttrSpec("k", "float", 1.0),
    AttrSpec("axes", "ints", [0]),
    AttrSpec("names", "strs", ["a"]),
    AttrSpec("table", "tensor", None),
    AttrSpec("unset", "floats", [1.5, 2.5]),
]


def _compute(x, words, missing, *, k, axes, names, table, unset):
    assert missing is None
    return x * k + table.sum(), np.char.upper(words.astype(str))


@pytest.fixture
def busy_session(host, domain, make_model, make_spec, make_session):
    """A session exercising every conversion: numeric and string in and out,
    an absent optional input, list, string and tensor attributes."""
    node = helper.make_node(
        "Busy",
        ["x", "words", ""],
        ["y", "upper"],
        domain=domain,
        k=2.0,
        axes=[1, 2],
        names=["p", "q"],
        table=numpy_helper.from_array(np.ones(3, np.float32)),
    )
    model = make_model(
        [node],
        [("x", F, [4]), ("words", S, [2])],
        [("y", F, [4]), ("upper", S, [2])],
        domain=domain,
    )
    spec = make_spec(
        domain,
        "Busy",
        _compute,
        inputs=["x", IOSpec("words", ("str",)), IOSpec("missing", optional=True)],
        outputs=[IOSpec("y", ("float32",)), IOSpec("upper", ("str",))],
        attributes=ATTRS,
    )
    session = make_session(model, [spec])
    feeds = {"x": np.arange(4, dtype=np.float32), "words": np.array(["ab", "cd"], dtype=object)}
    return session, feeds


def test_ten_thousand_runs_keep_no_references(busy_session):
    """Counts, not RSS: a machine under load cannot make this flake (RSS is in the
    benchmarks, benchmarks/bench_kernel_host.py --memory)."""
    session, feeds = busy_session
    for _ in range(100):
        session.run(None, feeds)
    gc.collect()
    refs = sys.getrefcount(_compute)
    objects = len(gc.get_objects())
    for _ in range(10_000):
        y, upper = session.run(None, feeds)
    del y, upper
    gc.collect()
    assert sys.getrefcount(_compute) == refs
    # A leaked list, tuple or str per run would be 10,000 more tracked objects.
    assert len(gc.get_objects()) - objects < 100


def test_runs_allocate_nothing_that_survives(busy_session):
    """tracemalloc (which also sees numpy's buffers) is exact where RSS is coarse."""
    session, feeds = busy_session
    for _ in range(200):
        session.run(None, feeds)
    gc.collect()
    tracemalloc.start()
    try:
        for _ in range(100):
            session.run(None, feeds)
        gc.collect()
        baseline, _ = tracemalloc.get_traced_memory()
        for _ in range(2000):
            session.run(None, feeds)
        gc.collect()
        current, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert current - baseline < 16 << 10, f"{current - baseline} bytes survived 2,000 runs"


def test_failing_runs_do_not_leak(identity_session):
    def compute(x):
        raise ValueError("always " + str(x.shape))

    session = identity_session(compute, shape=[8])
    x = np.zeros(8, np.float32)

    def fail_many(n):
        for _ in range(n):
            try:
                session.run(None, {"x": x})
            except Exception as exc:  # every run fails on purpose
                assert "ValueError: always (8,)" in str(exc)

    fail_many(300)
    gc.collect()
    tracemalloc.start()
    try:
        fail_many(100)
        gc.collect()
        baseline, _ = tracemalloc.get_traced_memory()
        fail_many(1000)
        gc.collect()
        current, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert current - baseline < 16 << 10, f"{current - baseline} bytes survived 1,000 failures"


def test_sessions_release_their_kernels_and_attribute_values(
    host, domain, make_model, make_spec, make_session
):
    default = [7, 8, 9]  # handed to every kernel whose node lacks the attribute
    nodes = [
        helper.make_node("Op", ["x"], ["t"], domain=domain),
        helper.make_node("Op", ["t"], ["y"], domain=domain),
    ]
    model = make_model(
        nodes, [("x", F, [2])], [("y", F, [2])], domain=domain, value_info=[("t", F, [2])]
    )
    spec = make_spec(
        domain, "Op", lambda x, axes: x, attributes=[AttrSpec("axes", "ints", default)]
    )
    host.install([spec])
    gc.collect()
    kernels = host.live_kernels()
    refs = sys.getrefcount(default)
    for _ in range(50):
        session = make_session(model)
        assert host.live_kernels() == kernels + 2
        assert sys.getrefcount(default) == refs + 2
        session.run(None, {"x": np.zeros(2, np.float32)})
        del session  # the last reference: ORT destroys the kernels right here
        assert host.live_kernels() == kernels
    assert host.live_kernels() == kernels
    assert sys.getrefcount(default) == refs


def test_replaced_kernels_are_freed_once_no_session_uses_them(
    host, domain, make_model, make_spec, make_session
):
    class Marker:
        alive = 0

        def __init__(self):
            Marker.alive += 1

        def __del__(self):
            Marker.alive -= 1

    def make_compute():
        marker = Marker()
        return lambda x: (marker, x)[1]

    node = helper.make_node("Op", ["x"], ["y"], domain=domain)
    model = make_model([node], [("x", F, [2])], [("y", F, [2])], domain=domain)
    session = make_session(model, [make_spec(domain, "Op", make_compute())])
    for _ in range(5):  # each replaces the previous definition
        host.install([make_spec(domain, "Op", make_compute())])
    gc.collect()
    # The session's definition and the current one are alive; the rest are gone.
    assert Marker.alive == 2
    del session
    gc.collect()
    assert Marker.alive == 1
