"""What both exporter adapters are asked to do, in one value."""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["ExportSettings"]


@dataclasses.dataclass(frozen=True)
class ExportSettings:
    """The user's export request, as both adapters receive it.

    Attributes:
        args: Positional example inputs.
        kwargs: Keyword example inputs.
        opset_version: Default-domain opset; the exporter's default when ``None``.
        dynamic_shapes: ``torch.export``-style dynamic shapes (already applied when the
            dynamo adapter gets an ``ExportedProgram``).
        input_names: Graph input names.
        output_names: Graph output names.
    """

    args: tuple[Any, ...]
    kwargs: dict[str, Any] | None = None
    opset_version: int | None = None
    dynamic_shapes: Any = None
    input_names: list[str] | None = None
    output_names: list[str] | None = None
