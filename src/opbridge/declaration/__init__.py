"""Declaring ops: the torch registration and its ONNX signature and schema."""

from opbridge.declaration._custom_op import CustomOpDef, custom_op
from opbridge.declaration._signature import OpLayout, Param, layout_of

__all__ = ["CustomOpDef", "OpLayout", "Param", "custom_op", "layout_of"]
