"""The shipped kernels against PyTorch, and their input validation."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from native_helpers import groupnorm_model, make_session, single_node_model
from onnx import TensorProto

F32 = TensorProto.FLOAT
F16 = TensorProto.FLOAT16
I64 = TensorProto.INT64
I32 = TensorProto.INT32

_NP = {F32: np.float32, F16: np.float16, I64: np.int64}


def _torch_group_norm(x: np.ndarray, groups: int, scale, bias, eps: float) -> np.ndarray:
    """Reference computed in float32 (float16 inputs are widened first)."""
    t = torch.nn.functional.group_norm(
        torch.from_numpy(x.astype(np.float32)),
        groups,
        torch.from_numpy(scale.astype(np.float32)),
        torch.from_numpy(bias.astype(np.float32)),
        eps,
    )
    return t.numpy()


def _random_case(rng: np.random.Generator) -> tuple[tuple[int, ...], int]:
    rank = int(rng.integers(2, 6))
    groups = int(rng.choice([1, 2, 3, 4, 8]))
    channels = groups * int(rng.integers(1, 5))
    batch = int(rng.integers(1, 4))
    spatial = [int(rng.integers(1, 9)) for _ in range(rank - 2)]
    return (batch, channels, *spatial), groups


@pytest.fixture(scope="module")
def gn_sessions(kernel_lib):
    cache: dict[tuple, ort.InferenceSession] = {}

    def get(x_type=F32, groups_type=F32, epsilon=1e-5, param_type=None):
        key = (x_type, groups_type, epsilon, param_type)
        if key not in cache:
            cache[key] = make_session(
                groupnorm_model(x_type, groups_type, param_type, epsilon), kernel_lib
            )
        return cache[key]

    return get


@pytest.mark.parametrize("x_type", [F32, F16], ids=["float32", "float16"])
@pytest.mark.parametrize("groups_type", [F32, I64], ids=["groups-float", "groups-int64"])
def test_groupnorm_matches_torch_on_random_shapes(gn_sessions, x_type, groups_type):
    rng = np.random.default_rng(1234 + x_type * 10 + groups_type)
    session = gn_sessions(x_type, groups_type, epsilon=1e-5)
    dtype = _NP[x_type]
    for _ in range(12):
        shape, groups = _random_case(rng)
        x = (rng.standard_normal(shape) * 3 + 2).astype(dtype)
        scale = rng.standard_normal(shape[1]).astype(dtype)
        bias = rng.standard_normal(shape[1]).astype(dtype)
        # num_groups as a 1-element vector or as a scalar: both are accepted.
        g = np.array([groups] if rng.random() < 0.5 else groups, dtype=_NP[groups_type])
        (y,) = session.run(None, {"X": x, "num_groups": g, "scale": scale, "bias": bias})
        assert y.dtype == dtype and y.shape == shape
        ref = _torch_group_norm(x, groups, scale, bias, 1e-5)
        if x_type == F32:
            np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5, err_msg=str(shape))
        else:
            # float16 output: the float32 result rounded once (half an ulp) plus slack.
            np.testing.assert_allclose(
                y.astype(np.float32), ref, rtol=2e-3, atol=2e-3, err_msg=str(shape)
            )


@pytest.mark.parametrize("x_type", [F32, F16], ids=["float32", "float16"])
def test_groupnorm_large_groups_and_parallel_tasks(gn_sessions, x_type):
    # Groups larger than the kernel's 4096-element block and ragged tails, and enough
    # (batch, group) items to be split over several ParallelFor tasks.
    rng = np.random.default_rng(7)
    dtype = _NP[x_type]
    for shape, groups in [((3, 6, 37, 53), 2), ((2, 64, 17, 19), 32), ((5, 12, 4099), 4)]:
        x = rng.standard_normal(shape).astype(dtype)
        scale = rng.uniform(0.5, 2, shape[1]).astype(dtype)
        bias = rng.standard_normal(shape[1]).astype(dtype)
        (y,) = gn_sessions(x_type).run(
            None,
            {"X": x, "num_groups": np.array([groups], np.float32), "scale": scale, "bias": bias},
        )
        ref = _torch_group_norm(x, groups, scale, bias, 1e-5)
        tol = 1e-5 if x_type == F32 else 4e-3
        np.testing.assert_allclose(y.astype(np.float32), ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("epsilon", [None, 0.0, 1e-5, 0.5], ids=["default", "0", "1e-5", "0.5"])
def test_groupnorm_epsilon_attribute(gn_sessions, epsilon):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4, 3, 3)).astype(np.float32) * 0.1
    scale = np.ones(4, np.float32)
    bias = np.zeros(4, np.float32)
    feeds = {"X": x, "num_groups": np.array([2.0], np.float32), "scale": scale, "bias": bias}
    (y,) = gn_sessions(epsilon=epsilon).run(None, feeds)
    expected_eps = 1e-5 if epsilon is None else epsilon
    np.testing.assert_allclose(
        y, _torch_group_norm(x, 2, scale, bias, expected_eps), rtol=1e-5, atol=1e-5
    )
    if epsilon == 0.5:  # make sure the attribute really changed the result
        assert not np.allclose(y, _torch_group_norm(x, 2, scale, bias, 1e-5), atol=1e-3)


def test_groupnorm_is_numerically_stable_with_large_offset(gn_sessions):
    # mean/std = 1e4: E[x^2] - E[x]^2 in float32 would lose every significant digit.
    rng = np.random.default_rng(11)
    x64 = 1e4 + rng.standard_normal((2, 4, 32, 32))
    x = x64.astype(np.float32)
    scale = np.ones(4, np.float32)
    bias = np.zeros(4, np.float32)
    (y,) = gn_sessions().run(
        None, {"X": x, "num_groups": np.array([2.0], np.float32), "scale": scale, "bias": bias}
    )
    ref = torch.nn.functional.group_norm(torch.from_numpy(x.astype(np.float64)), 2, eps=1e-5)
    np.testing.assert_allclose(y, ref.numpy(), rtol=0, atol=1e-3)


def test_groupnorm_empty_batch(gn_sessions):
    x = np.zeros((0, 4, 3), np.float32)
    (y,) = gn_sessions().run(
        None,
        {
            "X": x,
            "num_groups": np.array([2.0], np.float32),
            "scale": np.ones(4, np.float32),
            "bias": np.zeros(4, np.float32),
        },
    )
    assert y.shape == (0, 4, 3)


def test_groupnorm_seed_example(gn_sessions):
    # The tutorial's inputs: X (3, 2, 1, 2), num_groups [2.], scale [2., 1.], bias [1., 0.].
    x = np.random.default_rng(0).standard_normal((3, 2, 1, 2)).astype(np.float32)
    scale = np.array([2.0, 1.0], np.float32)
    bias = np.array([1.0, 0.0], np.float32)
    (y,) = gn_sessions(epsilon=0.0).run(
        None, {"X": x, "num_groups": np.array([2.0], np.float32), "scale": scale, "bias": bias}
    )
    np.testing.assert_allclose(y, _torch_group_norm(x, 2, scale, bias, 0.0), rtol=1e-5, atol=1e-5)


_GOOD = {
    "X": np.ones((2, 4, 3), np.float32),
    "num_groups": np.array([2.0], np.float32),
    "scale": np.ones(4, np.float32),
    "bias": np.zeros(4, np.float32),
}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"X": np.ones((4,), np.float32)}, "rank >= 2"),
        ({"X": np.ones((), np.float32)}, "rank >= 2"),
        ({"num_groups": np.array([3.0], np.float32)}, "divisible"),
        ({"num_groups": np.array([0.0], np.float32)}, "positive integer"),
        ({"num_groups": np.array([-2.0], np.float32)}, "positive integer"),
        ({"num_groups": np.array([1.5], np.float32)}, "positive integer"),
        ({"num_groups": np.array([np.nan], np.float32)}, "positive integer"),
        ({"num_groups": np.array([np.inf], np.float32)}, "positive integer"),
        ({"num_groups": np.array([[2.0]], np.float32)}, "num_groups must be"),
        ({"num_groups": np.array([2.0, 2.0], np.float32)}, "num_groups must be"),
        ({"num_groups": np.zeros((0,), np.float32)}, "num_groups must be"),
        ({"scale": np.ones(3, np.float32)}, "scale must have shape"),
        ({"scale": np.ones((4, 1), np.float32)}, "scale must have shape"),
        ({"bias": np.ones(5, np.float32)}, "bias must have shape"),
        ({"bias": np.ones((), np.float32)}, "bias must have shape"),
    ],
)
def test_groupnorm_rejects_bad_inputs(gn_sessions, override, message):
    feeds = {**_GOOD, **override}
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument, match=message):
        gn_sessions().run(None, feeds)
    # The session is still usable afterwards.
    gn_sessions().run(None, _GOOD)


def test_groupnorm_rejects_wrong_dtypes(gn_sessions, kernel_lib):
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument, match="data type"):
        gn_sessions().run(None, {**_GOOD, "X": _GOOD["X"].astype(np.float64)})
    # float16 X with float32 scale/bias matches no registered kernel: refused at load.
    with pytest.raises(Exception, match="testgroupnorm"):
        make_session(groupnorm_model(F16, F32, param_type=F32), kernel_lib)
    # An int32 num_groups is not a supported type either.
    with pytest.raises(Exception, match="testgroupnorm"):
        make_session(groupnorm_model(F32, I32), kernel_lib)


def test_groupnorm_rejects_string_epsilon(kernel_lib):
    model = single_node_model(
        "testgroupnorm",
        "mydomain",
        [("X", F32), ("num_groups", F32), ("scale", F32), ("bias", F32)],
        [("Y", F32)],
        epsilon="tiny",
    )
    with pytest.raises(Exception, match="epsilon must be a float"):
        make_session(model, kernel_lib)


@pytest.fixture(scope="module")
def custom_sessions(kernel_lib):
    one = make_session(
        single_node_model("CustomOpOne", "test.customop", [("X", F32), ("Y", F32)], [("Z", F32)]),
        kernel_lib,
    )
    two = make_session(
        single_node_model("CustomOpTwo", "test.customop", [("X", F32)], [("Y", I32)]), kernel_lib
    )
    return one, two


@pytest.mark.parametrize("shape", [(), (0,), (7,), (3, 4), (2, 3, 5, 1)])
def test_custom_op_one_adds(custom_sessions, shape):
    rng = np.random.default_rng(len(shape))
    x = rng.standard_normal(shape).astype(np.float32)
    y = rng.standard_normal(shape).astype(np.float32)
    (z,) = custom_sessions[0].run(None, {"X": x, "Y": y})
    assert z.shape == shape and z.dtype == np.float32
    np.testing.assert_array_equal(z, (torch.from_numpy(x) + torch.from_numpy(y)).numpy())


@pytest.mark.parametrize(("xs", "ys"), [((3,), (4,)), ((2, 3), (3, 2)), ((1, 3), (3,))])
def test_custom_op_one_rejects_shape_mismatch(custom_sessions, xs, ys):
    x = np.ones(xs, np.float32)
    y = np.ones(ys, np.float32)
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument, match="same shape"):
        custom_sessions[0].run(None, {"X": x, "Y": y})


def test_custom_op_one_rejects_wrong_dtype(custom_sessions):
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument, match="data type"):
        custom_sessions[0].run(None, {"X": np.ones(3, np.int32), "Y": np.ones(3, np.float32)})


def test_custom_op_two_rounds_half_to_even(custom_sessions):
    rng = np.random.default_rng(5)
    halves = np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5, -0.49, 0.51, 1e6 + 0.5], np.float32)
    for x in [halves, (rng.standard_normal((4, 5, 6)) * 100).astype(np.float32)]:
        (y,) = custom_sessions[1].run(None, {"X": x})
        assert y.dtype == np.int32 and y.shape == x.shape
        np.testing.assert_array_equal(y, torch.round(torch.from_numpy(x)).to(torch.int32).numpy())


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf, 3e9, -3e9])
def test_custom_op_two_rejects_values_outside_int32(custom_sessions, value):
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument, match="int32"):
        custom_sessions[1].run(None, {"X": np.array([1.0, value], np.float32)})
