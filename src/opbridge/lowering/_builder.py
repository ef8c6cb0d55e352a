"""The builder ``op`` a lowering writes ONNX nodes with.

One builder serves both exporters: the exporter adapters only leave a placeholder
node per torch op, and the expansion pass (:mod:`opbridge.lowering._expand`) calls
the lowering with a :class:`Builder` over the finished ONNX graph, where input
types and constant values are known.

    def gelu(op, x, approximate="none"):
        return op.domain("com.microsoft").Gelu(x)

    def add(op, x, y, alpha=1.0):
        return op.Add(x, op.Mul(y, alpha))   # a Python number becomes a constant
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from opbridge._errors import LoweringError
from opbridge._model import infer_node_outputs

__all__ = ["Builder", "Value"]


class Value:
    """A value of the ONNX graph being written (a view of an ``onnx_ir.Value``).

    Attributes:
        name: The ONNX value name.
        elem_type: ONNX element type (``onnx.TensorProto.FLOAT``...), 0 when unknown.
        shape: Dimensions (ints, or strings for symbolic dims), ``None`` when unknown.
        ir: The underlying ``onnx_ir.Value``.
    """

    __slots__ = ("ir",)

    def __init__(self, value: ir.Value) -> None:
        self.ir = value

    @property
    def name(self) -> str:
        return self.ir.name or ""

    @property
    def elem_type(self) -> int:
        dtype = self.ir.dtype
        return int(dtype) if dtype is not None else 0

    @property
    def shape(self) -> tuple[int | str | None, ...] | None:
        shape = self.ir.shape
        if shape is None:
            return None
        return tuple(d if isinstance(d, int) else d.value for d in shape)

    @property
    def dtype(self) -> np.dtype | None:
        """The numpy dtype, or ``None`` when unknown."""
        if not self.elem_type:
            return None
        return onnx.helper.tensor_dtype_to_np_dtype(self.elem_type)

    @property
    def rank(self) -> int | None:
        return None if self.ir.shape is None else len(self.ir.shape)

    def __repr__(self) -> str:
        dtype = self.dtype.name if self.dtype is not None else "?"
        return f"Value({self.name!r}, {dtype}, shape={self.shape})"


def constant_of(value: ir.Value) -> np.ndarray | None:
    """The value of an initializer or a ``Constant`` node's output; ``None`` otherwise.

    Only this value is read: nothing else of the model is converted.
    """
    if value.const_value is not None:
        return value.const_value.numpy()
    node = value.producer()
    if node is None or node.op_type != "Constant" or node.domain != "" or not node.attributes:
        return None
    attr = next(iter(node.attributes.values()))
    if attr.type == ir.AttributeType.TENSOR:
        return attr.value.numpy()
    if attr.name in ("value_float", "value_int", "value_floats", "value_ints"):
        return np.asarray(attr.value)
    return None


class GraphContext:
    """What one lowering call writes: new nodes, and the opsets they use."""

    def __init__(
        self,
        *,
        opset_versions: dict[str, int],
        name_prefix: str,
        taken_names: set[str],
    ) -> None:
        self.opset_versions = opset_versions  # domain -> version in use (default domain "")
        self.nodes: list[ir.Node] = []
        self.used_domains: dict[str, int] = {}
        self._prefix = name_prefix
        self._taken = taken_names
        self._counter = itertools.count()
        self._constants: dict[int, np.ndarray] = {}

    def fresh(self, hint: str) -> str:
        while True:
            name = f"{self._prefix}/{hint}_{next(self._counter)}"
            if name not in self._taken:
                self._taken.add(name)
                return name

    def constant(self, value: Value) -> np.ndarray | None:
        key = id(value.ir)
        if key not in self._constants:
            array = constant_of(value.ir)
            if array is None:
                return None
            self._constants[key] = array
        return self._constants[key]


def _attr_value(value: Any) -> Any:
    """Turns dtypes into ONNX enums and arrays into tensors; other values as is."""
    try:
        import torch

        if isinstance(value, torch.dtype):
            from opbridge._dtypes import torch_to_onnx

            return torch_to_onnx(value)
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(value, (np.dtype, type)) and value is not bool and value not in (int, float):
        try:
            return onnx.helper.np_dtype_to_tensor_dtype(np.dtype(value))
        except TypeError:
            pass
    if isinstance(value, np.ndarray):
        return ir.tensor(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (list, tuple)):
        return [int(v) if isinstance(v, bool) else _attr_value(v) for v in value]
    return value


class _NodeFactory:
    def __init__(self, builder: Builder, domain: str, version: int) -> None:
        self._builder = builder
        self._domain = domain
        self._version = version

    def __getattr__(self, op_type: str) -> Any:
        if op_type.startswith("_"):
            raise AttributeError(op_type)

        def make(*inputs: Any, _outputs: int = 1, **attrs: Any) -> Any:
            return self._builder.node(
                op_type, *inputs, domain=self._domain, version=self._version,
                outputs=_outputs, **attrs,
            )  # fmt: skip

        make.__name__ = op_type
        return make


class Builder:
    """Writes ONNX nodes for one lowering call; passed to lowerings as ``op``.

    ``op.Add(a, b)`` writes a node of the default ONNX domain;
    ``op.domain("com.microsoft", version=1).Inverse(x)`` one of another domain.
    Keyword arguments are attributes (``to=torch.float32`` and numpy arrays are
    converted); ``_outputs=n`` asks for ``n`` outputs and returns a tuple. Python
    numbers and numpy arrays given as inputs become constants, typed like the
    first tensor input whose type is known.
    """

    def __init__(self, ctx: GraphContext, *, target: str) -> None:
        self._ctx = ctx
        self._target = target

    # -- facts ---------------------------------------------------------------------
    @property
    def opset_version(self) -> int:
        """Version of the default ONNX domain in the model being written."""
        return self._ctx.opset_versions.get("", 18)

    @property
    def target(self) -> str:
        """The torch op being lowered, ``"ns::name.overload"``."""
        return self._target

    # -- node writing ----------------------------------------------------------------
    def __getattr__(self, op_type: str) -> Any:
        if op_type.startswith("_") or not op_type[:1].isupper():
            raise AttributeError(
                f"'op.{op_type}': ONNX op types start with an upper-case letter "
                f"(op.Add, op.MatMul); use op.domain(...) for other domains."
            )
        return getattr(_NodeFactory(self, "", self.opset_version), op_type)

    def domain(self, name: str, version: int = 1) -> Any:
        """Returns a writer of nodes of domain ``name`` (at opset ``version``).

        Example: ``op.domain("com.microsoft").Gelu(x)``.
        """
        if name in ("", "ai.onnx"):
            return _NodeFactory(self, "", self.opset_version)
        return _NodeFactory(self, name, version)

    def node(
        self,
        op_type: str,
        *inputs: Any,
        domain: str = "",
        version: int | None = None,
        outputs: int = 1,
        **attrs: Any,
    ) -> Any:
        """Writes one node; the general form behind ``op.Add(...)``."""
        like = next((v for v in inputs if isinstance(v, Value) and v.elem_type), None)
        values: list[ir.Value | None] = []
        for v in inputs:
            if v is None:
                values.append(None)
            elif isinstance(v, Value):
                values.append(v.ir)
            elif isinstance(v, (int, float, bool, np.ndarray, np.generic, list, tuple)):
                values.append(self.constant(v, like=like).ir)
            else:
                raise LoweringError(
                    f"Lowering of {self._target}: input {v!r} of {op_type} is neither a value "
                    f"nor a constant."
                )
        try:
            node_attrs = ir.convenience.convert_attributes(
                {k: _attr_value(v) for k, v in attrs.items() if v is not None}
            )
        except (ValueError, TypeError) as e:
            raise LoweringError(
                f"Lowering of {self._target}: bad attribute for {op_type}: {e}"
            ) from e
        node = ir.Node(
            domain, op_type, values, node_attrs,
            outputs=[ir.Value(name=self._ctx.fresh(op_type)) for _ in range(outputs)],
            name=self._ctx.fresh(op_type + "_node"),
        )  # fmt: skip
        self._ctx.nodes.append(node)
        if domain:
            self._ctx.used_domains[domain] = max(
                version or 1, self._ctx.used_domains.get(domain, 1)
            )
        infer_node_outputs(node, version or self.opset_version if domain else self.opset_version)
        results = tuple(Value(o) for o in node.outputs)
        return results[0] if outputs == 1 else results

    def call(self, target: Any, *args: Any, **kwargs: Any) -> Any:
        """Writes another op as it would be exported: its lowering, or its single node.

        ``target`` is an opbridge custom op (written as its ``domain::op_type`` node
        unless it has a lowering) or any torch op with a registered lowering::

            op.call(testgroupnorm, X, num_groups, scale, bias, epsilon=1e-5)
        """
        from opbridge._registry import REGISTRY, canonical_target

        name = canonical_target(target)
        overload = name if "." in name else f"{name}.default"
        lowering = REGISTRY.resolve(overload, contrib_ops=True)
        if lowering is None:
            raise LoweringError(
                f"Lowering of {self._target}: op.call({name}) has no lowering; declare it with "
                f"opbridge.custom_op or register one with opbridge.register_lowering."
            )
        return lowering.fn(self, *args, **kwargs)

    def constant(self, value: Any, dtype: Any = None, *, like: Value | None = None) -> Value:
        """Writes a ``Constant`` node holding ``value``.

        Args:
            value: A Python number or list, or a numpy array.
            dtype: numpy dtype of the constant; by default that of ``like`` for
                Python numbers, else numpy's.
            like: A value whose element type Python numbers should take.
        """
        if (
            dtype is None
            and like is not None
            and like.dtype is not None
            and not isinstance(value, np.ndarray)
        ):
            dtype = like.dtype
        array = np.asarray(value, dtype=dtype)
        if array.dtype == np.float64 and dtype is None and not isinstance(value, np.ndarray):
            array = array.astype(np.float32)  # Python floats default to float32, as in torch
        name = self._ctx.fresh("constant")
        tensor = ir.tensor(array, name=name)
        out = ir.Value(name=name, type=ir.TensorType(tensor.dtype), shape=ir.Shape(array.shape))
        out.const_value = tensor  # op.value_of reads it back
        node = ir.Node("", "Constant", [], [ir.AttrTensor("value", tensor)], outputs=[out],
                       name=name + "_node")  # fmt: skip
        self._ctx.nodes.append(node)
        return Value(out)

    # -- reading constants -------------------------------------------------------------
    def value_of(self, value: Value) -> np.ndarray:
        """Returns the numpy array of a constant input (an initializer or Constant).

        Raises:
            LoweringError: ``value`` is computed at run time.
        """
        if isinstance(value, (int, float, bool, np.ndarray)):
            return np.asarray(value)
        array = self._ctx.constant(value) if isinstance(value, Value) else None
        if array is None:
            name = value.name if isinstance(value, Value) else repr(value)
            raise LoweringError(
                f"Lowering of {self._target} needs the value of '{name}' at export time, but "
                f"it is computed at run time. Pass a constant (e.g. torch.tensor([...]) made "
                f"inside forward, or a Python number) instead of a model input."
            )
        return array

    def scalar_of(self, value: Value) -> Any:
        """Like :meth:`value_of` for a one-element constant, as a Python number."""
        array = self.value_of(value)
        if array.size != 1:
            raise LoweringError(
                f"Lowering of {self._target}: expected a one-element constant for "
                f"'{getattr(value, 'name', value)}', got shape {array.shape}."
            )
        return array.reshape(()).item()

    def is_constant(self, value: Value) -> bool:
        """Whether ``value`` is known at export time."""
        return isinstance(value, Value) and self._ctx.constant(value) is not None


def flatten_outputs(result: Any) -> Sequence[Value]:
    """A lowering returns a value or a tuple of values; always a tuple here."""
    if isinstance(result, Value):
        return (result,)
    if isinstance(result, (tuple, list)) and all(isinstance(r, Value) for r in result):
        return tuple(result)
    raise LoweringError(f"a lowering must return an op value or a tuple of them, got {result!r}")
