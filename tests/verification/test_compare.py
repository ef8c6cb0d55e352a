"""compare_arrays: exact integers, NaN and infinity rules, torch's tolerances."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import torch

from opbridge.verification import compare_arrays, default_tolerances


def test_int64_above_2_53_off_by_one_fails() -> None:
    big = np.array([2**53 + 1, 2**62 + 7], dtype=np.int64)
    off = big.copy()
    off[0] -= 1  # equal once both are rounded to float64
    assert float(big[0]) == float(off[0])
    result = compare_arrays(big, off)
    assert not result.passed
    assert result.mismatched == 1 and result.max_abs_diff == 1.0
    assert compare_arrays(big, big.copy()).passed


def test_uint64_top_values_compared_exactly() -> None:
    top = np.array([2**64 - 1], dtype=np.uint64)
    result = compare_arrays(top, top - np.uint64(1))
    assert not result.passed and result.max_abs_diff == 1.0


def test_equal_infinities_pass_and_opposite_fail() -> None:
    x = np.array([np.inf, -np.inf, 1.0], dtype=np.float32)
    assert compare_arrays(x, x.copy()).passed
    result = compare_arrays(x, np.array([np.inf, np.inf, 1.0], dtype=np.float32))
    assert not result.passed and result.mismatched == 1 and result.max_abs_diff == np.inf
    assert not compare_arrays(x, np.array([1e38, -np.inf, 1.0], dtype=np.float32)).passed


def test_nan_positions_must_match() -> None:
    x = np.array([np.nan, 1.0, 2.0], dtype=np.float32)
    assert compare_arrays(x, x.copy()).passed
    moved = np.array([1.0, np.nan, 2.0], dtype=np.float32)
    result = compare_arrays(x, moved)
    assert not result.passed and result.mismatched == 2
    assert "NaN at 1 positions" in result.note and "where torch has NaN" in result.note
    assert not compare_arrays(np.ones(2, np.float32), np.array([1, np.nan], np.float32)).passed


def test_bool_outputs_exact() -> None:
    a = np.array([True, False, True])
    assert compare_arrays(a, a.copy()).passed
    result = compare_arrays(a, np.array([True, True, True]))
    assert not result.passed and result.mismatched == 1 and result.max_abs_diff == 1.0


def test_bfloat16_uses_its_tolerance() -> None:
    x = np.array([1.0, 2.0, 3.0], dtype=ml_dtypes.bfloat16)
    near = np.array([1.0, 2.0, 3.0078125], dtype=ml_dtypes.bfloat16)  # one bf16 ulp at 3
    assert compare_arrays(x, near).passed  # rtol 1.6e-2
    far = np.array([1.0, 2.0, 3.25], dtype=ml_dtypes.bfloat16)
    result = compare_arrays(x, far)
    assert not result.passed and result.max_abs_diff == pytest.approx(0.25)
    assert (result.rtol, result.atol) == (1.6e-2, 1e-5)


@pytest.mark.parametrize(
    "dtype",
    [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64,
     torch.complex128],
)  # fmt: skip
def test_defaults_are_assert_close_defaults(dtype: torch.dtype) -> None:
    from torch.testing._comparison import default_tolerances as torch_defaults

    from opbridge._dtypes import torch_to_numpy

    name = "bfloat16" if dtype == torch.bfloat16 else torch_to_numpy(dtype).name
    assert default_tolerances(name) == torch_defaults(dtype)


def test_integers_are_exact_and_tolerances_overridable() -> None:
    assert default_tolerances(np.dtype("int64")) == (0.0, 0.0)
    assert default_tolerances(np.dtype("bool")) == (0.0, 0.0)
    x = np.ones(3, np.float32)
    assert not compare_arrays(x, x + np.float32(1e-3)).passed
    assert compare_arrays(x, x + np.float32(1e-3), atol=1e-2).passed
    assert compare_arrays(x, x * np.float32(1.001), rtol=1e-2, atol=0).passed


def test_dtype_and_shape_mismatch_fail_with_reason() -> None:
    x = np.ones((2, 3), np.float32)
    result = compare_arrays(x, x.astype(np.float64))
    assert not result.passed and "dtype float64 != float32" in result.note
    result = compare_arrays(x, np.ones((3, 2), np.float32))
    assert not result.passed and "shape [3, 2] != [2, 3]" in result.note
    assert not compare_arrays(np.arange(3), np.arange(3).astype(np.int32)).passed


def test_complex_compares_magnitude_of_difference() -> None:
    x = np.array([1 + 1j, 2 - 1j], dtype=np.complex64)
    assert compare_arrays(x, x.copy()).passed
    result = compare_arrays(x, x + np.complex64(1e-3j))
    assert not result.passed and result.max_abs_diff == pytest.approx(1e-3, rel=1e-3)
