"""Verification: prove with numbers that ONNX Runtime and PyTorch agree."""

from opbridge.verification._compare import Comparison, compare_arrays, default_tolerances
from opbridge.verification._localize import Divergence, Localization, Step
from opbridge.verification._verify import (
    InputSetResult,
    OutputComparison,
    VerificationReport,
    verify,
)

__all__ = [
    "Comparison",
    "Divergence",
    "InputSetResult",
    "Localization",
    "OutputComparison",
    "Step",
    "VerificationReport",
    "compare_arrays",
    "default_tolerances",
    "verify",
]
