"""Kernel host: concurrent runs from Python threads and ONNX Runtime's thread pools."""

from __future__ import annotations

import threading
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

F = TensorProto.FLOAT
DEADLOCK_TIMEOUT_S = 120


def _run_threads(targets):
    """Runs the callables in threads; fails on a hang or on any exception."""
    errors = []

    def guard(fn):
        try:
            fn()
        except BaseException as exc:  # reported by the caller's thread below
            errors.append(exc)

    threads = [threading.Thread(target=guard, args=(fn,), daemon=True) for fn in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLOCK_TIMEOUT_S)
    assert not any(t.is_alive() for t in threads), "kernel host deadlocked"
    assert not errors, errors


def test_one_session_run_from_several_python_threads(
    host, domain, make_model, make_spec, make_session
):
    running = 0
    overlap = []
    lock = threading.Lock()

    def compute(x, k):
        nonlocal running
        with lock:
            running += 1
            overlap.append(running)
        time.sleep(0.0002)  # releases the GIL in the middle of Compute
        with lock:
            running -= 1
        return x * k

    node = helper.make_node("Scale", ["x"], ["y"], domain=domain, k=3.0)
    model = make_model([node], [("x", F, [None])], [("y", F, [None])], domain=domain)
    session = make_session(
        model, [make_spec(domain, "Scale", compute, attributes=[host_attr("k", "float", 1.0)])]
    )
    barrier = threading.Barrier(4)

    def worker(seed):
        def run():
            barrier.wait()
            rng = np.random.default_rng(seed)
            for _ in range(150):
                x = rng.random(int(rng.integers(1, 64)), dtype=np.float32)
                (y,) = session.run(None, {"x": x})
                np.testing.assert_array_equal(y, x * 3.0)

        return run

    _run_threads([worker(seed) for seed in range(4)])
    # Several Compute calls were in flight at once, each holding the GIL in turn.
    assert max(overlap) > 1


def host_attr(name, kind, default):
    from opbridge.runtime._kernels import AttrSpec

    return AttrSpec(name, kind, default)


def test_parallel_execution_runs_kernels_on_ort_pool_threads(
    host, domain, make_model, make_spec, make_session
):
    threads = set()

    def compute(x, k):
        threads.add(threading.get_ident())
        time.sleep(0.002)
        return x + k

    branches = 4
    nodes = [
        helper.make_node("Shift", ["x"], [f"y{i}"], domain=domain, k=float(i))
        for i in range(branches)
    ]
    model = make_model(
        nodes, [("x", F, [8])], [(f"y{i}", F, [8]) for i in range(branches)], domain=domain
    )
    session = make_session(
        model,
        [make_spec(domain, "Shift", compute, attributes=[host_attr("k", "float", 0.0)])],
        execution_mode=ort.ExecutionMode.ORT_PARALLEL,
        inter_op_num_threads=4,
        intra_op_num_threads=2,
    )
    x = np.arange(8, dtype=np.float32)

    def run():
        for _ in range(20):
            results = session.run(None, {"x": x})
            for i, y in enumerate(results):
                np.testing.assert_array_equal(y, x + i)

    _run_threads([run, run])
    # Threads ORT created (not the two Python callers) ran kernels too.
    assert len(threads) > 2


def test_intra_op_threads_alongside_native_nodes(host, domain, make_model, make_spec, make_session):
    def compute(x):
        return np.tanh(x)

    nodes = [
        helper.make_node("MatMul", ["a", "b"], ["m"]),
        helper.make_node("Tanh", ["m"], ["t"], domain=domain),
        helper.make_node("MatMul", ["t", "b"], ["y"]),
    ]
    model = make_model(
        nodes,
        [("a", F, [64, 64]), ("b", F, [64, 64])],
        [("y", F, [64, 64])],
        domain=domain,
        value_info=[("m", F, [64, 64]), ("t", F, [64, 64])],
    )
    session = make_session(model, [make_spec(domain, "Tanh", compute)], intra_op_num_threads=4)
    rng = np.random.default_rng(0)
    a = rng.random((64, 64), dtype=np.float32)
    b = rng.random((64, 64), dtype=np.float32) / 8
    expected = np.tanh(a @ b) @ b

    def run():
        for _ in range(30):
            (y,) = session.run(None, {"a": a, "b": b})
            np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)

    _run_threads([run, run, run])


def test_a_kernel_may_run_another_session(host, domain, make_model, make_spec, make_session):
    inner_node = helper.make_node("Double", ["x"], ["y"], domain=domain)
    inner = make_session(
        make_model([inner_node], [("x", F, [3])], [("y", F, [3])], domain=domain),
        [make_spec(domain, "Double", lambda x: x * 2)],
    )

    def outer_compute(x):
        (y,) = inner.run(None, {"x": np.ascontiguousarray(x)})
        return y + 1

    outer_node = helper.make_node("Outer", ["x"], ["y"], domain=domain)
    outer = make_session(
        make_model([outer_node], [("x", F, [3])], [("y", F, [3])], domain=domain),
        [make_spec(domain, "Outer", outer_compute)],
    )
    x = np.array([1, 2, 3], np.float32)

    def run():
        for _ in range(50):
            np.testing.assert_array_equal(outer.run(None, {"x": x})[0], x * 2 + 1)

    _run_threads([run, run])


def test_sessions_created_concurrently(host, make_model, make_spec, make_session):
    def build_and_run(index):
        def run():
            domain = f"test.host.concurrent{index}"
            node = helper.make_node("Op", ["x"], ["y"], domain=domain)
            model = make_model([node], [("x", F, [2])], [("y", F, [2])], domain=domain)
            for k in range(5):
                session = make_session(model, [make_spec(domain, "Op", lambda x, k=k: x + k)])
                (y,) = session.run(None, {"x": np.zeros(2, np.float32)})
                np.testing.assert_array_equal(y, [k, k])

        return run

    _run_threads([build_and_run(i) for i in range(4)])


def test_tailored_registrations_stay_with_their_thread(host, domain, make_model, make_spec):
    """register(model=...) in one thread, plain registrations in others, concurrently."""
    host.install(
        [
            make_spec(domain, "Op", lambda x: x + 1, version=1),
            make_spec(domain, "Op", lambda x: x + 5, version=5),
        ]
    )
    node = helper.make_node("Op", ["x"], ["y"], domain=domain)
    model = make_model([node], [("x", F, [2])], [("y", F, [2])], domain=domain, opset=1)
    x = np.zeros(2, np.float32)

    def session(tailored):
        options = ort.SessionOptions()
        if tailored:
            host.register(options, model=model)
        else:
            options.register_custom_ops_library(host.library_path())
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    def worker(tailored):
        def run():
            for _ in range(15):
                (y,) = session(tailored).run(None, {"x": x})
                # Opset 1 selects version 1 only in the tailored registration.
                np.testing.assert_array_equal(y, x + (1 if tailored else 5))

        return run

    _run_threads([worker(True), worker(False), worker(True), worker(False)])
