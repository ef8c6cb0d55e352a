"""``opbridge.register_lowering``: how an existing torch op is written in ONNX."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from opbridge._errors import LoweringError
from opbridge._registry import REGISTRY, Lowering, canonical_target, resolve_torch_target
from opbridge.declaration._signature import SUPPORTED_TYPES, layout_of

__all__ = ["register_lowering"]


_FUNCTION_FIX = (
    "wrap the call in a torch op, @torch.library.custom_op('mylib::my_fn', mutates_args=()) "
    "(register_autograd gives it the backward), then declare or adopt it with "
    "opbridge.custom_op or register a lowering for 'mylib::my_fn'"
)
_PRIM_REASON = (
    "Cannot lower {name}: prim:: nodes are TorchScript graph structure, not torch ops with a "
    "schema, and torch.export never produces them. prim::PythonOp stands for a Python "
    "torch.autograd.Function, which no lowering can target: " + _FUNCTION_FIX + "."
)


def _refuse_unlowerable(target: Any) -> None:
    if isinstance(target, type) and issubclass(target, torch.autograd.Function):
        raise LoweringError(
            f"Cannot lower {target.__qualname__}: a Python torch.autograd.Function is not a "
            f"torch op (TorchScript records it as prim::PythonOp, torch.export traces through "
            f"its forward), so no lowering can target it. Either give it a staticmethod "
            f"symbolic(g, ...) for exporter='torchscript', or {_FUNCTION_FIX}."
        )


def register_lowering(
    target: Any,
    fn: Callable[..., Any] | None = None,
    *,
    function_domain: str | None = None,
    contrib: bool = False,
    _shipped: bool = False,
) -> Any:
    """Registers how the torch op ``target`` is written in ONNX, for both exporters.

    ``fn(op, *args, **kwargs)`` receives the builder ``op`` then the op's arguments in
    the order of its torch schema: ONNX values for tensors, Python values for the
    others. It returns the output value (or a tuple). A lowering replaces the
    exporter's built-in one for that op::

        @opbridge.register_lowering("aten::gelu")
        def gelu(op, x, approximate="none"):
            return op.domain("com.microsoft").Gelu(x)

    Args:
        target: ``torch.ops.aten.add.Tensor`` (one overload), ``torch.ops.aten.add``
            (every overload), an opbridge custom op (declared or adopted), the object
            ``torch.library.custom_op`` returned, or a name like ``"aten::add.Tensor"``.
        fn: The lowering; omit it to use ``register_lowering`` as a decorator.
        function_domain: Write the lowering as an ONNX local function of this domain,
            named after ``fn`` (e.g. ``"custom.aten"``), instead of inlining it.
        contrib: Use it only when exporting with ``contrib_ops=True``.

    Raises:
        LoweringError: ``target`` is not a torch op, cannot be lowered
            (``prim::PythonOp``, an ``autograd.Function``), or ``fn`` is not callable.
    """
    _refuse_unlowerable(target)
    name = canonical_target(target)
    if name.startswith("prim::"):
        raise LoweringError(_PRIM_REASON.format(name=name))

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        if not callable(func):
            raise LoweringError(f"the lowering for {name} must be callable, got {func!r}")
        if REGISTRY.op(name) is None and not _shipped:
            overloads = resolve_torch_target(name)  # fails early on a typo, naming the op
            layouts = [layout_of(o) for o in overloads]
            if not any(not lay.unsupported for lay in layouts):
                raise LoweringError(
                    f"Cannot lower {name}: its arguments {', '.join(layouts[0].unsupported)} have "
                    f"no ONNX form (supported: {SUPPORTED_TYPES})."
                )
        REGISTRY.add_lowering(Lowering(name, func, function_domain, contrib, _shipped))
        return func

    return decorate(fn) if fn is not None else decorate
