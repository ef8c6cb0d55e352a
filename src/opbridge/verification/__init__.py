"""Verification: prove with numbers that ONNX Runtime and PyTorch agree."""

from opbridge.verification._verify import (
    OutputComparison,
    VerificationReport,
    default_tolerances,
    verify,
)

__all__ = ["OutputComparison", "VerificationReport", "default_tolerances", "verify"]
