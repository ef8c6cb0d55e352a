"""What a kernel for one custom ONNX node looks like to opbridge's runtime.

A :class:`KernelSpec` is the contract between the declaration side (an op declared
with :func:`opbridge.custom_op`) and whatever executes it inside ONNX Runtime (the
kernel host, or the interim onnxruntime-extensions route). It is deliberately
plain data plus one callable so that any provider can consume it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from opbridge.declaration._signature import AttrKind

__all__ = ["AttrSpec", "IOSpec", "KernelSpec"]


@dataclasses.dataclass(frozen=True)
class IOSpec:
    """One input or output of a custom node.

    Attributes:
        name: Parameter name (for error messages).
        dtypes: Allowed numpy dtype names (``"float32"``, ``"int64"``, ``"bool"``, ...);
            empty means any tensor type.
        optional: The input may be absent (the kernel then receives ``None``).
        variadic: The last input may repeat; the kernel receives each one as a
            separate positional argument.
    """

    name: str
    dtypes: tuple[str, ...] = ()
    optional: bool = False
    variadic: bool = False


@dataclasses.dataclass(frozen=True)
class AttrSpec:
    """One attribute of a custom node.

    Attributes:
        name: Attribute name as written on the ONNX node.
        kind: ONNX attribute kind: an :class:`AttrKind` or its name (``"ints"``).
        default: Value used when the node does not carry the attribute; ``None``
            with ``required=True`` means the node must carry it.
        required: Whether the attribute must be present.
    """

    name: str
    kind: AttrKind | str
    default: Any = None
    required: bool = False


@dataclasses.dataclass(frozen=True)
class KernelSpec:
    """A kernel for ``domain::op_type`` at opset ``version``.

    ``compute(*inputs, **attrs)`` takes numpy arrays (``None`` for an absent optional
    input) and attribute values as Python objects (``int``, ``float``, ``str``, lists
    of them, or a numpy array for a tensor attribute), and returns one numpy array
    or a tuple of them, one per output. It may raise; the runtime turns the
    exception into an ONNX Runtime error that names the op.
    """

    domain: str
    op_type: str
    version: int
    inputs: tuple[IOSpec, ...]
    outputs: tuple[IOSpec, ...]
    attributes: tuple[AttrSpec, ...]
    compute: Callable[..., np.ndarray | Sequence[np.ndarray]]
    origin: str = "numpy"  # "numpy" (a registered numpy kernel) or "torch" (the op's torch impl)
    #: ``compute`` takes ``out=``: the arrays ONNX Runtime allocated for the outputs
    #: (one array, or a tuple for several), when the model declares every output's
    #: shape; it writes them and returns ``None`` (or ``out``). Otherwise ``out`` is
    #: ``None`` and it returns new arrays as usual.
    writes_out: bool = False

    @property
    def qualified_name(self) -> str:
        return f"{self.domain}::{self.op_type}"
