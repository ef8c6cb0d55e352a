"""``opbridge.verify``: export, run in ONNX Runtime, and compare with PyTorch."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
import torch

from opbridge._dtypes import as_numpy
from opbridge.exporters import export
from opbridge.runtime import Session

__all__ = ["OutputComparison", "VerificationReport", "default_tolerances", "verify"]

_TOLERANCES: dict[str, tuple[float, float]] = {
    "float64": (1e-7, 1e-9),
    "float32": (1e-3, 1e-5),
    "float16": (1e-2, 1e-3),
    "bfloat16": (2e-2, 1e-2),
}


def default_tolerances(dtype: np.dtype) -> tuple[float, float]:
    """``(rtol, atol)`` for a dtype: float32 1e-3/1e-5, float16 looser, integers exact."""
    return _TOLERANCES.get(np.dtype(dtype).name, (0.0, 0.0))


@dataclasses.dataclass(frozen=True)
class OutputComparison:
    """How one output of ONNX Runtime compares with PyTorch's."""

    index: int
    name: str
    dtype: str
    shape: tuple[int, ...]
    max_abs_diff: float
    max_rel_diff: float
    mismatched: int
    rtol: float
    atol: float
    passed: bool
    note: str = ""


@dataclasses.dataclass
class VerificationReport:
    """The result of :func:`verify`.

    Attributes:
        passed: Every output matched within its tolerances.
        outputs: One :class:`OutputComparison` per output.
        model: The exported model.
        exporter: ``"dynamo"`` or ``"torchscript"``.
        session: ``repr`` of the session (which kernels ran).
    """

    passed: bool
    outputs: list[OutputComparison]
    model: onnx.ModelProto
    exporter: str
    session: str

    @property
    def rows(self) -> list[OutputComparison]:
        """The per-output rows (same as :attr:`outputs`)."""
        return self.outputs

    @property
    def max_abs_diff(self) -> float:
        return max((o.max_abs_diff for o in self.outputs), default=0.0)

    @property
    def max_rel_diff(self) -> float:
        return max((o.max_rel_diff for o in self.outputs), default=0.0)

    def __str__(self) -> str:
        verdict = "PASSED" if self.passed else "FAILED"
        lines = [
            f"opbridge.verify ({self.exporter} exporter): {verdict}",
            f"  {self.session}",
            f"  {'output':<16} {'dtype':<9} {'shape':<16} {'max|diff|':>10} {'max rel':>10} "
            f"{'rtol':>7} {'atol':>7}  result",
        ]
        for o in self.outputs:
            lines.append(
                f"  {o.name[:16]:<16} {o.dtype:<9} {str(list(o.shape))[:16]:<16} "
                f"{o.max_abs_diff:>10.3g} {o.max_rel_diff:>10.3g} {o.rtol:>7.0e} {o.atol:>7.0e}  "
                + ("ok" if o.passed else f"FAIL ({o.mismatched} elements) {o.note}".strip())
            )
        return "\n".join(lines)


def _flatten(value: Any) -> list[Any]:
    if isinstance(value, (tuple, list)):
        return [x for v in value for x in _flatten(v)]
    if isinstance(value, dict):
        return [x for v in value.values() for x in _flatten(v)]
    return [value]


def _as_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return as_numpy(value.detach().cpu().contiguous())
    return np.asarray(value)


def compare(
    expected: Sequence[np.ndarray],
    actual: Sequence[np.ndarray],
    names: Sequence[str],
    *,
    rtol: float | None,
    atol: float | None,
) -> list[OutputComparison]:
    """Compares outputs pairwise; tolerances default by each expected dtype."""
    rows = []
    for i, (want, got) in enumerate(zip(expected, actual, strict=False)):
        d_rtol, d_atol = default_tolerances(want.dtype)
        r = d_rtol if rtol is None else rtol
        a = d_atol if atol is None else atol
        name = names[i] if i < len(names) else f"output_{i}"
        note = ""
        if want.shape != got.shape:
            rows.append(
                OutputComparison(
                    i,
                    name,
                    want.dtype.name,
                    want.shape,
                    float("inf"),
                    float("inf"),
                    want.size,
                    r,
                    a,
                    False,
                    f"shape {list(got.shape)} != {list(want.shape)}",
                )
            )
            continue
        if want.dtype != got.dtype:
            note = f"dtype {got.dtype.name} != {want.dtype.name}"
        w = want.astype(np.float64) if want.dtype.kind in "fcbiu" else want
        g = got.astype(np.float64) if got.dtype.kind in "fcbiu" else got
        if w.dtype.kind == "f":
            diff = np.abs(w - g)
            both_nan = np.isnan(w) & np.isnan(g)
            diff = np.where(both_nan, 0.0, diff)
            rel = diff / np.maximum(np.abs(w), np.finfo(np.float64).tiny)
            bad = ~(diff <= a + r * np.abs(w))
            max_abs = float(diff.max()) if diff.size else 0.0
            max_rel = float(rel.max()) if rel.size else 0.0
        else:
            bad = w != g
            max_abs = float(bad.sum() > 0)
            max_rel = max_abs
        mismatched = int(np.count_nonzero(bad))
        rows.append(
            OutputComparison(
                i,
                name,
                want.dtype.name,
                tuple(want.shape),
                max_abs,
                max_rel,
                mismatched,
                r,
                a,
                mismatched == 0 and not note,
                note,
            )
        )
    return rows


def verify(
    model: torch.nn.Module,
    args: Any,
    *,
    exporter: str = "dynamo",
    rtol: float | None = None,
    atol: float | None = None,
    providers: Sequence[str] | None = None,
    libraries: Sequence[str] = (),
    **export_kwargs: Any,
) -> VerificationReport:
    """Exports ``model``, runs it in ONNX Runtime and compares with PyTorch eager.

    Args:
        model: The module to check.
        args: Example inputs (a tuple, or one tensor).
        exporter: ``"dynamo"`` or ``"torchscript"``.
        rtol: Relative tolerance for every output; by dtype when ``None``
            (float32 1e-3, float16 1e-2, integers exact).
        atol: Absolute tolerance; by dtype when ``None`` (float32 1e-5).
        providers: ONNX Runtime execution providers.
        libraries: Extra C++ custom-op libraries for the session.
        **export_kwargs: Passed to :func:`opbridge.export`.

    Returns:
        A :class:`VerificationReport`; ``str(report)`` is a readable table.
    """
    if not isinstance(args, tuple):
        args = (args,)
    with torch.no_grad():
        expected = [_as_numpy(v) for v in _flatten(model(*args))]
    proto = export(model, args, exporter=exporter, **export_kwargs)  # type: ignore[arg-type]
    session = Session(proto, providers=providers, libraries=libraries)
    with torch.no_grad():
        actual = _flatten(session(*[_as_numpy(a) for a in args]))
    rows = compare(
        expected, [np.asarray(a) for a in actual], session.output_names, rtol=rtol, atol=atol
    )
    if len(actual) != len(expected):
        rows.append(
            OutputComparison(
                len(rows),
                "(count)",
                "-",
                (),
                float("inf"),
                float("inf"),
                0,
                0.0,
                0.0,
                False,
                f"ONNX Runtime gave {len(actual)} outputs, torch {len(expected)}",
            )
        )
    return VerificationReport(all(r.passed for r in rows), rows, proto, exporter, repr(session))
