"""Comparing two arrays the way a reviewer means it.

Integers and bools are compared exactly (as integers, never through float64, which
rounds above 2**53); NaN positions must match; equal infinities are equal; floats
and complex numbers pass when ``|actual - expected| <= atol + rtol * |expected|``
with ``torch.testing.assert_close``'s default tolerances for the expected dtype.
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["Comparison", "compare_arrays", "default_tolerances"]

# torch.testing.assert_close's defaults (rtol, atol); complex types like their parts.
_TOLERANCES: dict[str, tuple[float, float]] = {
    "float16": (1e-3, 1e-5),
    "bfloat16": (1.6e-2, 1e-5),
    "float32": (1.3e-6, 1e-5),
    "float64": (1e-7, 1e-7),
    "complex64": (1.3e-6, 1e-5),
    "complex128": (1e-7, 1e-7),
}


def default_tolerances(dtype: np.dtype | str) -> tuple[float, float]:
    """``(rtol, atol)`` for a dtype, as ``torch.testing.assert_close`` sets them.

    float16 ``(1e-3, 1e-5)``, bfloat16 ``(1.6e-2, 1e-5)``, float32 ``(1.3e-6, 1e-5)``,
    float64 ``(1e-7, 1e-7)``, complex like their float parts; integers and bool
    ``(0, 0)`` (compared exactly).
    """
    name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
    return _TOLERANCES.get(name, (0.0, 0.0))


@dataclasses.dataclass(frozen=True)
class Comparison:
    """The verdict on one pair of arrays."""

    passed: bool
    max_abs_diff: float
    max_rel_diff: float
    mismatched: int
    rtol: float
    atol: float
    note: str = ""


def _is_float(dtype: np.dtype) -> bool:
    return dtype.kind in "fc" or dtype.name == "bfloat16"


def _widen(array: np.ndarray) -> np.ndarray:
    """Floats as float64 (exact for float16/bfloat16/float32), complex as complex128."""
    if array.dtype.kind == "c":
        return array.astype(np.complex128)
    return array.astype(np.float64)


def compare_arrays(
    expected: np.ndarray,
    actual: np.ndarray,
    *,
    rtol: float | None = None,
    atol: float | None = None,
) -> Comparison:
    """Compares ``actual`` (ONNX Runtime) with ``expected`` (PyTorch).

    Args:
        expected: The reference; its dtype picks the default tolerances.
        actual: The value under test.
        rtol: Relative tolerance; by dtype when ``None``.
        atol: Absolute tolerance; by dtype when ``None``.
    """
    expected = np.asarray(expected)
    actual = np.asarray(actual)
    d_rtol, d_atol = default_tolerances(expected.dtype)
    r = d_rtol if rtol is None else float(rtol)
    a = d_atol if atol is None else float(atol)
    if expected.shape != actual.shape:
        return Comparison(
            False,
            float("inf"),
            float("inf"),
            int(expected.size),
            r,
            a,
            f"shape {list(actual.shape)} != {list(expected.shape)}",
        )
    note = ""
    if expected.dtype != actual.dtype:
        note = f"dtype {actual.dtype.name} != {expected.dtype.name}"
    if expected.size == 0:
        return Comparison(not note, 0.0, 0.0, 0, r, a, note)
    if _is_float(expected.dtype) or _is_float(actual.dtype):
        result = _compare_floats(_widen(expected), _widen(actual), r, a)
    else:
        result = _compare_exact(expected, actual, r, a)
    if note:
        joined = f"{note}; {result.note}" if result.note else note
        return dataclasses.replace(result, passed=False, note=joined)
    return result


def _compare_exact(expected: np.ndarray, actual: np.ndarray, r: float, a: float) -> Comparison:
    """Integers and bools: equal or not, with differences computed as Python integers."""
    if expected.dtype.kind == "b" or actual.dtype.kind == "b":
        bad = expected.astype(bool) != actual.astype(bool)
        count = int(np.count_nonzero(bad))
        return Comparison(count == 0, float(count > 0), float(count > 0), count, r, a)
    bad = expected != actual  # numpy compares mixed integer kinds exactly
    count = int(np.count_nonzero(bad))
    if count == 0:
        return Comparison(True, 0.0, 0.0, 0, r, a)
    want = expected[bad].astype(object)
    got = actual[bad].astype(object)
    diffs = [abs(int(w) - int(g)) for w, g in zip(want.tolist(), got.tolist(), strict=True)]
    rels = [d / max(abs(int(w)), 1) for d, w in zip(diffs, want.tolist(), strict=True)]
    return Comparison(False, float(max(diffs)), float(max(rels)), count, r, a)


def _compare_floats(expected: np.ndarray, actual: np.ndarray, r: float, a: float) -> Comparison:
    nan_w = np.isnan(expected)
    nan_g = np.isnan(actual)
    nan_bad = nan_w != nan_g
    with np.errstate(invalid="ignore", over="ignore"):
        same = (expected == actual) | (nan_w & nan_g)  # equal infinities, matching NaNs
        diff = np.abs(expected - actual)
        diff = np.where(same, 0.0, diff)
        diff = np.where(nan_bad | np.isnan(diff), np.inf, diff)
        bound = a + r * np.abs(expected)
        # An infinity matches only the same infinity (the bound is infinite there).
        bad = ~(same | (np.isfinite(expected) & (diff <= bound)))
        rel = np.where(diff == 0, 0.0, diff / np.maximum(np.abs(expected), np.finfo(float).tiny))
    notes = []
    if nan_bad.any():
        extra = int(np.count_nonzero(nan_g & ~nan_w))
        lost = int(np.count_nonzero(nan_w & ~nan_g))
        if extra:
            notes.append(f"NaN at {extra} positions where torch has a number")
        if lost:
            notes.append(f"a number at {lost} positions where torch has NaN")
    count = int(np.count_nonzero(bad))
    max_abs = float(diff.max())
    max_rel = float(np.nanmax(rel)) if rel.size else 0.0
    return Comparison(count == 0, max_abs, max_rel, count, r, a, "; ".join(notes))
