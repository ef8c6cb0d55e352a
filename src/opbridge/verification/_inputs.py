"""Random input sets shaped and typed like the example inputs."""

from __future__ import annotations

from typing import Any

import torch

from opbridge._errors import OpbridgeError

__all__ = ["random_like"]


def _dim_specs(dynamic_shapes: Any, count: int) -> list[dict[int, Any]]:
    """Per input, ``{axis: Dim or name}`` from torch.export-style ``dynamic_shapes``."""
    if dynamic_shapes is None:
        return [{} for _ in range(count)]
    specs = (
        list(dynamic_shapes.values()) if isinstance(dynamic_shapes, dict) else list(dynamic_shapes)
    )
    result: list[dict[int, Any]] = []
    for spec in specs:
        if not spec:
            result.append({})
        elif isinstance(spec, dict):
            result.append({int(k): v for k, v in spec.items() if v is not None})
        else:
            result.append({i: d for i, d in enumerate(spec) if d is not None})
    return result + [{} for _ in range(count - len(result))]


def _range(dim: Any, size: int) -> tuple[int, int]:
    """The sizes to draw from: the Dim's range, capped at twice the example size."""
    low = getattr(dim, "min", None)
    high = getattr(dim, "max", None)
    low = 2 if not isinstance(low, int) else max(low, 0)
    cap = max(2 * size, low)
    high = cap if not isinstance(high, int) or high > cap else high
    return low, max(low, high)


def random_like(
    args: tuple[Any, ...], dynamic_shapes: Any, count: int, seed: int
) -> list[tuple[Any, ...]]:
    """``count`` input sets like ``args``: same dtypes, dynamic dimensions redrawn.

    Floats are standard normal, integers uniform over the example's own range, bools
    fair coins; a dimension named by the same ``Dim`` gets the same size in every input.
    """
    generator = torch.Generator().manual_seed(seed)
    specs = _dim_specs(dynamic_shapes, len(args))
    draws = []
    for _ in range(count):
        sizes: dict[str, int] = {}
        values: list[Any] = []
        for arg, spec in zip(args, specs, strict=False):
            if not isinstance(arg, torch.Tensor):
                values.append(arg)
                continue
            shape = list(arg.shape)
            for axis, dim in spec.items():
                key = getattr(dim, "__name__", None) or str(dim)
                if key not in sizes:
                    low, high = _range(dim, shape[axis])
                    sizes[key] = int(torch.randint(low, high + 1, (), generator=generator))
                shape[axis] = sizes[key]
            values.append(_draw(arg, shape, generator))
        draws.append(tuple(values))
    return draws


def _draw(like: torch.Tensor, shape: list[int], generator: torch.Generator) -> torch.Tensor:
    if like.dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=generator).to(torch.bool)
    if like.dtype.is_floating_point:
        return torch.randn(shape, generator=generator).to(like.dtype)
    if like.dtype.is_complex:
        return torch.randn(shape, generator=generator, dtype=like.dtype)
    if like.numel() == 0:
        low, high = 0, 10
    else:
        low, high = int(like.min()), int(like.max())
    if high >= 2**62 or low <= -(2**62):
        raise OpbridgeError(
            f"cannot draw random {like.dtype} inputs over [{low}, {high}]; pass them with inputs="
        )
    return torch.randint(low, high + 1, shape, generator=generator).to(like.dtype)
