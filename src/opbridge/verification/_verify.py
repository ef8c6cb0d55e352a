"""``opbridge.verify``: export, run in ONNX Runtime, and compare with PyTorch."""

from __future__ import annotations

import dataclasses
import os
import tempfile
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
import torch

from opbridge._dtypes import as_numpy
from opbridge._progress import progress_bar
from opbridge.exporters import export
from opbridge.runtime import Session
from opbridge.verification._compare import compare_arrays, default_tolerances
from opbridge.verification._inputs import random_like
from opbridge.verification._localize import (
    Divergence,
    Localization,
    _fx_reference,
    _torchscript_reference,
)
from opbridge.verification._localize import (
    localize as _localize,
)

__all__ = [
    "InputSetResult",
    "OutputComparison",
    "VerificationReport",
    "default_tolerances",
    "verify",
]


_SET_ROWS = 10  # input sets listed by str(report)


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


@dataclasses.dataclass(frozen=True)
class InputSetResult:
    """The outputs' comparison for one set of inputs.

    Attributes:
        index: 0 for ``args``, then the extra example inputs, then the random draws.
        label: ``"args"``, ``"inputs[0]"``, ``"random[0] (seed 0)"``...
        shapes: The input shapes of this set.
        outputs: One :class:`OutputComparison` per output.
    """

    index: int
    label: str
    shapes: tuple[tuple[int, ...], ...]
    outputs: tuple[OutputComparison, ...]

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    @property
    def max_abs_diff(self) -> float:
        return max((o.max_abs_diff for o in self.outputs), default=0.0)


@dataclasses.dataclass
class VerificationReport:
    """The result of :func:`verify`.

    Attributes:
        passed: Every output of every input set matched within its tolerances.
        outputs: The rows of the first input set (``args``).
        model: The exported model.
        exporter: ``"dynamo"`` or ``"torchscript"``.
        session: ``repr`` of the session (which kernels ran).
        input_sets: One :class:`InputSetResult` per input set, ``args`` first.
        localization: The intermediate comparisons, when localisation ran.
    """

    passed: bool
    outputs: list[OutputComparison]
    model: onnx.ModelProto
    exporter: str
    session: str
    input_sets: list[InputSetResult] = dataclasses.field(default_factory=list)
    localization: Localization | None = None

    @property
    def rows(self) -> list[OutputComparison]:
        """The per-output rows (same as :attr:`outputs`)."""
        return self.outputs

    @property
    def max_abs_diff(self) -> float:
        return max((o.max_abs_diff for s in self._sets() for o in s.outputs), default=0.0)

    @property
    def max_rel_diff(self) -> float:
        return max((o.max_rel_diff for s in self._sets() for o in s.outputs), default=0.0)

    @property
    def first_divergence(self) -> Divergence | None:
        """The first node where ONNX Runtime departs from PyTorch, if localisation ran."""
        return self.localization.first_divergence if self.localization else None

    def _sets(self) -> list[InputSetResult]:
        return self.input_sets or [InputSetResult(0, "args", (), tuple(self.outputs))]

    def save_html(self, path: str | os.PathLike[str]) -> None:
        """Writes one self-contained HTML page: tables, divergence, a drawing of the graph."""
        from opbridge.verification._html import render

        with open(os.fspath(path), "w", encoding="utf-8") as f:
            f.write(render(self))

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
                f"{o.max_abs_diff:>10.3g} {o.max_rel_diff:>10.3g} {o.rtol:>7.1e} {o.atol:>7.1e}  "
                + ("ok" if o.passed else f"FAIL ({o.mismatched} elements) {o.note}".strip())
            )
        if len(self.input_sets) > 1:
            lines.append(
                f"  input sets: {sum(s.passed for s in self.input_sets)} of "
                f"{len(self.input_sets)} pass"
            )
            shown = self.input_sets
            if len(shown) > _SET_ROWS:  # the failures first; the HTML page lists every set
                shown = sorted(shown, key=lambda s: (s.passed, s.index))[:_SET_ROWS]
                shown.sort(key=lambda s: s.index)
            for s in shown:
                shapes = " ".join("x".join(map(str, sh)) or "scalar" for sh in s.shapes)
                lines.append(
                    f"    {s.label:<20} {shapes[:28]:<28} max|diff| {s.max_abs_diff:<10.3g} "
                    + ("ok" if s.passed else "FAIL")
                )
            if len(shown) < len(self.input_sets):
                hidden = [s for s in self.input_sets if s not in shown]
                failing = sum(not s.passed for s in hidden)
                lines.append(
                    f"    ... {len(hidden)} more sets, "
                    + (f"{failing} of them fail" if failing else "all pass")
                )
        loc = self.localization
        if loc is not None:
            lines.append(
                f"  localisation (input set {loc.input_set}): {loc.compared} of {loc.nodes} "
                "node outputs compared with PyTorch"
                + (
                    f", {loc.subgraph_nodes} nodes in subgraphs not compared"
                    if loc.subgraph_nodes
                    else ""
                )
            )
            lines.append(
                f"  {loc.first_divergence}"
                if loc.first_divergence
                else "  no intermediate value departs beyond tolerance"
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
        c = compare_arrays(want, got, rtol=rtol, atol=atol)
        name = names[i] if i < len(names) else f"output_{i}"
        rows.append(
            OutputComparison(
                i,
                name,
                want.dtype.name,
                tuple(want.shape),
                c.max_abs_diff,
                c.max_rel_diff,
                c.mismatched,
                c.rtol,
                c.atol,
                c.passed,
                c.note,
            )
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
    return rows


def _as_tuple(args: Any) -> tuple[Any, ...]:
    if isinstance(args, tuple):
        return args
    return tuple(args) if isinstance(args, list) else (args,)


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in getattr(value, "shape", ()))


def verify(
    model: torch.nn.Module,
    args: Any,
    *,
    exporter: str = "dynamo",
    rtol: float | None = None,
    atol: float | None = None,
    providers: Sequence[str] | None = None,
    libraries: Sequence[str] = (),
    localize: bool | None = None,
    inputs: Sequence[Any] = (),
    random_inputs: int = 0,
    seed: int = 0,
    progress: bool | None = None,
    **export_kwargs: Any,
) -> VerificationReport:
    """Exports ``model``, runs it in ONNX Runtime and compares with PyTorch eager.

    Integers and bools must match exactly, NaNs at the same positions, infinities
    equal; floats within ``torch.testing.assert_close``'s tolerances for their dtype.

    Args:
        model: The module to check.
        args: Example inputs (a tuple, or one tensor); also the export's inputs.
        exporter: ``"dynamo"`` or ``"torchscript"``.
        rtol: Relative tolerance for every output; by dtype when ``None`` (float32
            1.3e-6, float16 1e-3, bfloat16 1.6e-2, float64 1e-7, integers exact).
        atol: Absolute tolerance; by dtype when ``None`` (1e-5; float64 1e-7).
        providers: ONNX Runtime execution providers.
        libraries: Extra C++ custom-op libraries for the session.
        localize: Compare intermediate values with PyTorch's and report the first node
            that departs (:attr:`VerificationReport.first_divergence`). ``None`` (the
            default) localises only when the verification fails; ``False`` never.
        inputs: More example inputs (each a tuple, or one tensor), checked after ``args``.
        random_inputs: How many random input sets to draw, shaped and typed like
            ``args``; dynamic dimensions (``dynamic_shapes``) vary within their ranges.
        seed: Seed of the random draws.
        progress: Show a progress bar; by default only when stderr is a terminal.
        **export_kwargs: Passed to :func:`opbridge.export`; ``f="m.onnx"`` keeps the
            exported file (by default it is written to a temporary directory).

    Returns:
        A :class:`VerificationReport`; ``str(report)`` is a readable table.
    """
    args = _as_tuple(args)
    kwargs = export_kwargs.get("kwargs") or {}
    sets: list[tuple[str, tuple[Any, ...]]] = [("args", args)]
    sets += [(f"inputs[{i}]", _as_tuple(x)) for i, x in enumerate(inputs)]
    if random_inputs:
        draws = random_like(args, export_kwargs.get("dynamic_shapes"), random_inputs, seed)
        sets += [(f"random[{i}] (seed {seed})", d) for i, d in enumerate(draws)]

    program = None
    if exporter == "dynamo" and localize is not False and isinstance(model, torch.nn.Module):
        try:
            program = torch.export.export(
                model, args, kwargs=kwargs, dynamic_shapes=export_kwargs.get("dynamic_shapes")
            )
        except Exception:
            program = None  # opbridge.export below says what went wrong, clearly
    # Through a file, so that a model of any size runs (its weights as external data).
    f = export_kwargs.pop("f", None)
    workdir = tempfile.TemporaryDirectory(prefix="opbridge-verify-")
    path = f if isinstance(f, (str, os.PathLike)) else os.path.join(workdir.name, "model.onnx")
    proto = export(program or model, args, path, exporter=exporter, **export_kwargs)  # type: ignore[arg-type]
    session = Session(path, providers=providers, libraries=libraries)

    results: list[InputSetResult] = []
    expected_by_set: list[list[np.ndarray]] = []
    with progress_bar(progress) as bar:
        for index, (label, values) in enumerate(sets):
            if bar is not None and len(sets) > 1:
                bar("verifying input sets", index, len(sets))
            with torch.no_grad():
                expected = [_as_numpy(v) for v in _flatten(model(*values, **kwargs))]
                feeds = [_as_numpy(a) for a in _flatten((values, kwargs))]
                actual = _flatten(session(*feeds))
            rows = compare(
                expected,
                [np.asarray(a) for a in actual],
                session.output_names,
                rtol=rtol,
                atol=atol,
            )
            expected_by_set.append(expected)
            results.append(
                InputSetResult(index, label, tuple(_shape(v) for v in values), tuple(rows))
            )
        if bar is not None and len(sets) > 1:
            bar("verifying input sets", len(sets), len(sets))
        passed = all(r.passed for r in results)
        localization = None
        if localize or (localize is None and not passed):
            target = next((r.index for r in results if not r.passed), 0)
            values = sets[target][1]
            if program is not None:
                reference: Any = lambda graph: _fx_reference(program, values, kwargs)  # noqa: E731
            else:
                reference = lambda graph: _torchscript_reference(  # noqa: E731
                    model, values, kwargs, graph, expected_by_set[target]
                )
            try:
                localization = _localize(
                    proto,
                    [_as_numpy(a) for a in _flatten((values, kwargs))],
                    reference,
                    rtol=rtol,
                    atol=atol,
                    providers=providers,
                    libraries=libraries,
                    progress=bar,
                )
            except Exception as e:
                if localize:
                    raise
                # Asked for implicitly: the failed verification is still the answer.
                warnings.warn(
                    f"opbridge.verify: localisation failed ({type(e).__name__}: {e}); "
                    "the output comparison stands. Pass localize=True to see the error.",
                    stacklevel=2,
                )
            else:
                localization.input_set = target
    workdir.cleanup()
    return VerificationReport(
        passed, list(results[0].outputs), proto, exporter, repr(session), results, localization
    )
