"""Lowerings: torch ops written as ONNX nodes with the builder ``op``.

The shipped lowerings live one file per ONNX domain (:mod:`.com_microsoft` for
ONNX Runtime's contrib ops); they are registered on import.
"""

from opbridge.lowering._builder import Builder, Value
from opbridge.lowering._register import register_lowering

__all__ = ["Builder", "Value", "register_lowering"]

from opbridge.lowering import com_microsoft as com_microsoft
