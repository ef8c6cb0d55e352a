"""Conversions between torch dtypes, numpy dtypes and ONNX element types."""

from __future__ import annotations

import numpy as np
import onnx
import torch

__all__ = [
    "as_numpy",
    "as_torch",
    "numpy_to_torch",
    "onnx_to_torch",
    "torch_to_numpy",
    "torch_to_onnx",
]

_TORCH_TO_ONNX: dict[torch.dtype, int] = {
    torch.float32: onnx.TensorProto.FLOAT,
    torch.float64: onnx.TensorProto.DOUBLE,
    torch.float16: onnx.TensorProto.FLOAT16,
    torch.bfloat16: onnx.TensorProto.BFLOAT16,
    torch.int8: onnx.TensorProto.INT8,
    torch.int16: onnx.TensorProto.INT16,
    torch.int32: onnx.TensorProto.INT32,
    torch.int64: onnx.TensorProto.INT64,
    torch.uint8: onnx.TensorProto.UINT8,
    torch.bool: onnx.TensorProto.BOOL,
    torch.complex64: onnx.TensorProto.COMPLEX64,
    torch.complex128: onnx.TensorProto.COMPLEX128,
}
_ONNX_TO_TORCH = {v: k for k, v in _TORCH_TO_ONNX.items()}


def torch_to_onnx(dtype: torch.dtype) -> int:
    """``torch.float32`` -> ``onnx.TensorProto.FLOAT``."""
    try:
        return _TORCH_TO_ONNX[dtype]
    except KeyError:
        raise TypeError(f"torch dtype {dtype} has no ONNX element type") from None


def onnx_to_torch(elem_type: int) -> torch.dtype:
    """``onnx.TensorProto.FLOAT`` -> ``torch.float32``."""
    try:
        return _ONNX_TO_TORCH[elem_type]
    except KeyError:
        name = onnx.TensorProto.DataType.Name(elem_type)
        raise TypeError(f"ONNX element type {name} has no torch dtype") from None


def torch_to_numpy(dtype: torch.dtype) -> np.dtype:
    """``torch.float32`` -> ``np.dtype('float32')`` (bfloat16 via ml_dtypes)."""
    return onnx.helper.tensor_dtype_to_np_dtype(torch_to_onnx(dtype))


def numpy_to_torch(dtype: np.dtype) -> torch.dtype:
    """``np.dtype('float32')`` -> ``torch.float32``."""
    return onnx_to_torch(onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))


def as_torch(array: np.ndarray) -> torch.Tensor:
    """A torch tensor sharing ``array``'s memory (bfloat16 through its bits)."""
    # numpy has no bfloat16; ml_dtypes' (kind "V") shares the bits. dtype.name is slow
    # enough to matter per kernel call, dtype.kind is not.
    if array.dtype.kind == "V" and array.dtype.name == "bfloat16":
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def as_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A numpy array sharing a CPU tensor's memory (bfloat16 as ``ml_dtypes.bfloat16``)."""
    tensor = tensor.detach()
    if tensor.dtype == torch.bfloat16:
        import ml_dtypes

        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()
