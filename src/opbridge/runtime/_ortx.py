"""Fallback Python-kernel route through onnxruntime-extensions' Python ops.

Used only when opbridge's own kernel host (:mod:`opbridge.runtime._host`) cannot be
built or imported. It is slow (every tensor is copied through Python lists, about
300x a native node at 1M floats), fixes one element type per input and output, and
carries only int, float and string attributes. Sessions report when it is in use.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from opbridge._errors import SessionError
from opbridge.runtime._kernels import KernelSpec

__all__ = ["available", "install", "library_path", "name", "unavailable_reason"]

name = "onnxruntime-extensions (fallback)"

_lock = threading.Lock()
_installed: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}


def _import() -> Any:
    import onnxruntime_extensions

    return onnxruntime_extensions


def unavailable_reason() -> str | None:
    try:
        _import()
    except ImportError as e:
        return f"onnxruntime-extensions is not installed ({e}); pip install onnxruntime-extensions"
    return None


def available() -> bool:
    return unavailable_reason() is None


def library_path() -> str:
    return _import().get_library_path()


def _dt(elem_type: int) -> Any:
    import onnx

    defs = _import().PyCustomOpDef
    name_ = onnx.TensorProto.DataType.Name(elem_type).lower()
    return getattr(defs, f"dt_{name_}")


_ATTR_DT = {"int": "dt_int64", "float": "dt_float", "str": "dt_string"}


def install(
    specs: Sequence[KernelSpec],
    *,
    io_types: Mapping[str, tuple[tuple[int, ...], tuple[int, ...]]] | None = None,
) -> None:
    """Registers ``specs`` as onnxruntime-extensions Python ops.

    Args:
        specs: The kernels.
        io_types: ``"domain::op_type" -> (input elem types, output elem types)``, read
            from the model; this route needs fixed types.

    Raises:
        SessionError: A kernel needs something this route cannot carry.
    """
    ortx = _import()
    for spec in specs:
        key = spec.qualified_name
        types = (io_types or {}).get(key)
        if types is None:
            raise SessionError(
                f"{key}: the onnxruntime-extensions fallback needs the node's input and output "
                f"types, which the model does not state."
            )
        with _lock:
            if key in _installed:
                if _installed[key] != types:
                    raise SessionError(
                        f"{key} is already registered with other element types in the "
                        f"onnxruntime-extensions fallback; it fixes one type per input. "
                        f"Build opbridge's kernel host to lift this limit."
                    )
                continue
            attrs = {}
            for a in spec.attributes:
                if a.kind not in _ATTR_DT:
                    raise SessionError(
                        f"{key}: attribute '{a.name}' of kind {a.kind} cannot be carried by the "
                        f"onnxruntime-extensions fallback (int, float, str only)."
                    )
                attrs[a.name] = getattr(ortx.PyCustomOpDef, _ATTR_DT[a.kind])
            out_types = types[1]
            out_dtypes = [np.dtype(_np_name(t)) for t in out_types]

            def body(
                *inputs: Any, _spec: KernelSpec = spec, _dtypes: Any = out_dtypes, **kw: Any
            ) -> Any:
                result = _spec.compute(*inputs, **kw)
                results = result if isinstance(result, (tuple, list)) else (result,)
                fixed = tuple(
                    np.asarray(r, dtype=d) for r, d in zip(results, _dtypes, strict=False)
                )
                return fixed if len(fixed) > 1 else fixed[0]

            ortx.onnx_op(
                op_type=key,
                inputs=[_dt(t) for t in types[0]],
                outputs=[_dt(t) for t in out_types],
                attrs=attrs,
            )(body)
            _installed[key] = types


def _np_name(elem_type: int) -> str:
    from onnx import helper

    return helper.tensor_dtype_to_np_dtype(elem_type).name
