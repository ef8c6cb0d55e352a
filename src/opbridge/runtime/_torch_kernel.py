"""The torch route: a declared op's torch implementation as an ONNX Runtime kernel.

What the route decides once, when the kernel is made, instead of on every call:

* **What to call.** The op's Python implementation is called directly when nothing
  else is registered for it with torch (no backend kernel, no ``ScalarType``
  argument that needs torch's conversion): the dispatcher, autograd and
  ``catch_warnings`` cost 10-30 us per call and change nothing for a CPU kernel
  that runs without gradients. Otherwise the op overload is called.
* **Grad mode.** Kernels run with gradients off, switched with the C-level
  ``torch._C._set_grad_enabled`` (a ``no_grad`` context costs a microsecond).
  Not ``inference_mode``: inference tensors have no version counter, which is
  how writes are caught (below).
* **torch's "not writable" warning.** Inputs are read-only numpy arrays over
  ONNX Runtime's buffers; ``torch.from_numpy`` warns about that once per process,
  so the route triggers that one warning silently when it is first made.

Memory safety, per call:

* **Writes to inputs.** A tensor input named in the op's ``mutates_args`` is
  cloned before the call: the implementation writes its own copy, never the
  caller's array or a model initializer. Any other input written in place bumps
  torch's version counter; the call then fails with a :class:`KernelError` naming
  the op, the input and ``mutates_args`` (torch has no read-only tensors, so this
  is detected, not prevented).
* **Kept inputs.** A tensor made from an input that is still referenced after the
  call (the tensor itself, or any view of it) has its storage switched to a
  private copy (``UntypedStorage._swap_data_ptr_``), so it never sees the memory
  ONNX Runtime reuses. numpy arrays made from it are handled by the kernel host.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from opbridge._dtypes import as_numpy, as_torch
from opbridge._errors import KernelError

__all__ = ["torch_kernel"]

_warning_consumed = False


def _consume_readonly_warning() -> None:
    """Triggers torch's once-per-process "not writable" warning where nobody sees it."""
    global _warning_consumed
    if not _warning_consumed:
        readonly = np.zeros(1, np.float32)
        readonly.flags.writeable = False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            torch.from_numpy(readonly)
        _warning_consumed = True


try:
    import ml_dtypes

    _BFLOAT16: Any = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - ml_dtypes comes with onnx
    _BFLOAT16 = None


def _to_numpy(tensor: Any) -> Any:
    """A result as numpy; what is not a tensor goes to the host, which names it."""
    if not isinstance(tensor, torch.Tensor):
        return tensor
    if tensor.dtype == torch.bfloat16 or tensor.requires_grad:
        return as_numpy(tensor)
    return tensor.numpy()


def _direct_function(torch_def: Any, overload: Any) -> Callable[..., Any] | None:
    """The op's Python implementation when calling it directly is what torch would run."""
    fn = getattr(torch_def, "_init_fn", None)
    backends = getattr(torch_def, "_backend_fns", None)
    if fn is None or not isinstance(backends, dict) or set(backends) - {None}:
        return None
    if any("ScalarType" in str(arg.type) for arg in overload._schema.arguments):
        return None
    return fn  # type: ignore[no-any-return]


def torch_kernel(
    name: str,
    params: Sequence[Any],
    overload: Any,
    torch_def: Any = None,
) -> Callable[..., Any]:
    """A kernel-host ``compute`` running a torch op on numpy inputs.

    Args:
        name: The op, ``"namespace::name"``, for messages.
        params: The op's parameters in schema order (``declaration._signature.Param``).
        overload: The torch op overload.
        torch_def: The ``torch.library`` definition, whose implementation may be
            called directly.

    Returns:
        ``compute(*inputs, **attrs)`` for a :class:`~opbridge.runtime.KernelSpec`.
    """
    _consume_readonly_warning()
    fn = _direct_function(torch_def, overload) if torch_def is not None else None
    direct = fn is not None
    call = fn if fn is not None else overload
    inputs = [p for p in params if p.kind == "input"]
    mutated = {
        arg.name
        for arg in overload._schema.arguments
        if arg.alias_info is not None and arg.alias_info.is_write
    }
    bool_attrs = {p.name for p in params if p.kind == "attribute" and p.is_bool}
    variadic_at = next((i for i, p in enumerate(inputs) if p.variadic), None)
    declared = f"mutates_args={tuple(sorted(mutated))!r}"
    set_grad = torch._C._set_grad_enabled
    is_grad = torch.is_grad_enabled
    storage_uses = torch._C._storage_Use_Count
    getrefcount = sys.getrefcount

    from_numpy = torch.from_numpy

    def compute(*arrays: np.ndarray | None, **attrs: Any) -> Any:
        named: dict[str, Any] = {}
        # (input name, tensor, version, storage) of every tensor made from an input.
        lent: list[tuple[str, torch.Tensor, int, Any]] = []

        def tensor_of(pname: str, array: np.ndarray | None) -> torch.Tensor | None:
            if array is None:
                return None
            # dtype.name is slow (computed in Python); bfloat16 is the one special case.
            t = as_torch(array) if array.dtype == _BFLOAT16 else from_numpy(array)
            if pname in mutated:
                return t.clone()  # declared writes go to a copy of ONNX Runtime's buffer
            lent.append((pname, t, t._version, t.untyped_storage()))
            return t

        for i, p in enumerate(inputs):
            if i == variadic_at:
                named[p.name] = [tensor_of(p.name, a) for a in arrays[i:]]
                break
            named[p.name] = tensor_of(p.name, arrays[i] if i < len(arrays) else None)
        if direct and bool_attrs:
            for key in bool_attrs & attrs.keys():
                value = attrs[key]
                attrs[key] = [bool(v) for v in value] if isinstance(value, list) else bool(value)
        previous = is_grad()
        set_grad(False)
        try:
            out = call(**named, **attrs)
        finally:
            set_grad(previous)
        named.clear()
        for pname, t, version, storage in lent:
            if t._version != version:
                raise KernelError(
                    f"the torch implementation of {name} wrote its input '{pname}' in place, "
                    f"but the op declares {declared}. Inputs are ONNX Runtime's buffers (the "
                    f"caller's arrays, model initializers) and must not change; declare the "
                    f"write with mutates_args=('{pname}',) (opbridge then passes a copy) or "
                    f"write to a new tensor."
                )
            # Ours: the entry in `lent`, the loop variable and getrefcount's argument;
            # one storage use from `t` and one from `storage`. More means the
            # implementation kept the tensor or a view of it.
            if getrefcount(t) > 3 or storage_uses(storage._cdata) > 2:
                storage._swap_data_ptr_(storage.clone())
        if isinstance(out, (tuple, list)):
            return tuple(_to_numpy(o) for o in out)
        return _to_numpy(out)

    compute.__name__ = f"{name}:torch"
    return compute
