"""Exceptions raised by opbridge. Every message names the op involved and the fix."""

from __future__ import annotations

__all__ = [
    "DeclarationError",
    "ExportError",
    "KernelError",
    "LoweringError",
    "OpbridgeError",
    "SessionError",
]


class OpbridgeError(Exception):
    """Base class of every error opbridge raises on purpose."""


class DeclarationError(OpbridgeError, ValueError):
    """A custom op declaration is malformed (name, domain, signature)."""


class LoweringError(OpbridgeError):
    """A lowering could not be registered or failed while writing ONNX nodes."""


class ExportError(OpbridgeError):
    """Export failed, typically because an op has no lowering."""


class SessionError(OpbridgeError):
    """A session could not be created or called (missing kernel, bad inputs)."""


class KernelError(SessionError):
    """A kernel raised or returned something that does not match its signature."""
