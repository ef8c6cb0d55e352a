"""``opbridge.custom_op``: declare an operator once for torch, ONNX and ONNX Runtime."""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx.defs
import torch

from opbridge._errors import DeclarationError, LoweringError
from opbridge._registry import REGISTRY, Lowering
from opbridge.declaration._schema import fake_infer, make_schema, register_schema
from opbridge.declaration._signature import OpLayout, layout_of, node_arguments
from opbridge.runtime._kernels import AttrSpec, IOSpec, KernelSpec
from opbridge.runtime._torch_kernel import torch_kernel

__all__ = ["CustomOpDef", "custom_op"]

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_NAME_RE = re.compile(rf"^({_IDENT})::({_IDENT})$")
_DOMAIN_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
_STANDARD_DOMAINS = {"", "ai.onnx", "ai.onnx.ml"}


def _camel_case(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in name.split("_") if part)


class CustomOpDef:
    """A declared op: a torch op, an ONNX node type and (optionally) kernels.

    Returned by :func:`custom_op`; call it like the function it decorates. The
    torch op is also reachable as ``torch.ops.<namespace>.<name>``.
    """

    def __init__(
        self,
        torch_def: Any,
        *,
        namespace: str,
        name: str,
        domain: str,
        op_type: str,
        version: int,
        adopted: torch._ops.OpOverload | None = None,
    ) -> None:
        self._torch_def = torch_def
        self._adopted = adopted
        self.namespace = namespace
        self.name = name
        self.domain = domain
        self.op_type = op_type
        self.version = version
        self._numpy_kernel: Callable[..., Any] | None = None
        self._native_library: Path | str | None = None
        self._lowering: Lowering | None = None
        self._layout = layout_of(self.overload)
        self._layout.check_supported()
        _check_standard_name(self.qualified_name, op_type, self._layout)
        self._schema = make_schema(
            self._layout,
            domain=domain,
            op_type=op_type,
            version=version,
            infer=fake_infer(self._layout, self.overload),
            doc=f"{'Adopted' if adopted is not None else 'Declared'} with opbridge from torch op "
            f"{self.qualified_name}.",
        )
        register_schema(self._schema)

    # -- identity -----------------------------------------------------------------
    @property
    def qualified_name(self) -> str:
        """``"namespace::name"``, the torch op name (``".overload"`` added for an adopted
        overload other than ``default``)."""
        if self._adopted is not None and self._adopted._overloadname != "default":
            return f"{self.namespace}::{self.name}.{self._adopted._overloadname}"
        return f"{self.namespace}::{self.name}"

    @property
    def adopted(self) -> bool:
        """Whether this op was adopted from an existing torch op (not defined by opbridge)."""
        return self._adopted is not None

    @property
    def onnx_name(self) -> str:
        """``"domain::op_type"``, the ONNX node written for this op."""
        return f"{self.domain}::{self.op_type}"

    @property
    def overload(self) -> torch._ops.OpOverload:
        """The torch op overload, ``torch.ops.<namespace>.<name>.default`` (or the adopted one)."""
        if self._adopted is not None:
            return self._adopted
        return getattr(getattr(torch.ops, self.namespace), self.name).default

    @property
    def layout(self) -> OpLayout:
        """Which arguments become node inputs and which attributes."""
        return self._layout

    @property
    def schema(self) -> onnx.defs.OpSchema:
        """The ONNX schema registered for ``domain::op_type``."""
        return self._schema

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if (
            self._adopted is not None
            and len(args) == 1
            and not kwargs
            and inspect.isfunction(args[0])
        ):
            self._refuse_decoration(args[0])
        return self._torch_def(*args, **kwargs)

    def _refuse_decoration(self, func: Callable[..., Any]) -> None:
        # @opbridge.custom_op("ns::existing", domain=...) on a function: the name exists,
        # so custom_op adopted it; decorating would silently replace the torch op.
        from opbridge.declaration._adopt import adopt_advice

        REGISTRY.remove_op(self)
        raise DeclarationError(
            f"torch op {self.qualified_name} already exists, so opbridge will not redefine it "
            f"with {func.__qualname__} (that would change it for every caller). It stays as it "
            f"was. To export it and run it in ONNX Runtime with its own implementation, adopt "
            f"it: {self.name} = {adopt_advice(self.overload, self.domain)}. To define a new "
            f"op, give it a name torch does not have yet."
        )

    def __repr__(self) -> str:
        return (
            f"CustomOpDef({self.qualified_name} -> {self.onnx_name} v{self.version}, "
            f"kernel={self.kernel_origin})"
        )

    # -- registrations ------------------------------------------------------------
    def register_fake(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Registers the shape function used by ``torch.export`` (as in torch.library).

        An adopted op keeps its own fake/meta implementation; torch refuses a second one.
        """
        if self._adopted is not None:
            torch.library.register_fake(self.qualified_name, fn)
            return fn
        self._torch_def.register_fake(fn)
        return fn

    def register_kernel(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Registers a numpy kernel for ONNX Runtime.

        ``fn`` takes the op's arguments by name, numpy arrays for tensors, and returns
        a numpy array (or a tuple of them). Without it, ONNX Runtime runs the op's own
        torch implementation.

        A kernel with an ``out`` parameter writes its results straight into the
        buffers ONNX Runtime allocates, saving the copy of each output: when the
        model declares every output's shape, ``out`` is that array (a tuple for
        several outputs) and the kernel returns ``None`` or ``out``; otherwise
        ``out`` is ``None`` and it returns new arrays::

            @my_tanh.register_kernel
            def _(x, out=None):
                return np.tanh(x, out=out)
        """
        self._numpy_kernel = fn
        return fn

    @typing.overload
    def register_lowering(
        self, fn: Callable[..., Any], *, function_domain: str | None = None
    ) -> Callable[..., Any]: ...
    @typing.overload
    def register_lowering(
        self, fn: None = None, *, function_domain: str | None = None
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]: ...
    def register_lowering(
        self, fn: Callable[..., Any] | None = None, *, function_domain: str | None = None
    ) -> Any:
        """Writes this op as other ONNX ops instead of one ``domain::op_type`` node.

        ``fn(op, *args, **kwargs)`` receives the builder ``op`` and the op's arguments
        (ONNX values for tensors, Python values for attributes).
        """
        if fn is None:
            return lambda f: self.register_lowering(f, function_domain=function_domain)
        if not callable(fn):
            raise LoweringError(f"the lowering for {self.qualified_name} must be callable")
        # Kept on the op, not in the registry's table of user lowerings: it is part
        # of the declaration and outlives opbridge.registry_scope().
        self._lowering = Lowering(self.qualified_name, fn, function_domain)
        return fn

    def register_native_kernel(self, library: str | Path) -> Path:
        """Names the C++ kernel of ``domain::op_type``: a built library or its sources.

        ``library`` is a shared library (from :func:`opbridge.build_library`,
        :func:`opbridge.load_inline` or your own build) or a ``.cc``/``.cpp`` file
        written against ``<opbridge/ort_kernel.h>``, which is built (and cached) now.
        ``opbridge.Session`` then loads that library and runs the node without Python.

        Returns:
            The library's path.
        """
        path = Path(library)
        if path.suffix in (".cc", ".cpp", ".cxx", ".c++"):
            from opbridge.native import build_library

            if not path.is_file():
                raise DeclarationError(
                    f"Native kernel source for {self.onnx_name}: no file '{path}'"
                )
            path = build_library(f"{self.namespace}_{self.name}", [path])
        if not path.is_file():
            raise DeclarationError(
                f"Native kernel library for {self.onnx_name} not found at '{path}'. "
                f"Build one with opbridge.build_library(...) or opbridge.load_inline(...)."
            )
        self._native_library = path
        return path

    @property
    def native_library(self) -> Path | None:
        """The native kernel library named with :meth:`register_native_kernel`."""
        return Path(self._native_library) if self._native_library else None

    @property
    def kernel_origin(self) -> str:
        """Where ONNX Runtime's kernel comes from: ``native``, ``numpy`` or ``torch``."""
        if self._native_library is not None:
            return "native"
        return "numpy" if self._numpy_kernel is not None else "torch"

    # -- views used by the exporters and the runtime ------------------------------
    def lowering(self) -> Lowering:
        """How this op is exported: its registered lowering, else one ``domain::op_type`` node."""
        if self._lowering is not None:
            return self._lowering
        return Lowering(
            target=self.qualified_name,
            fn=self._single_node,
            node=(self.domain, self.op_type, self.version),
        )

    def _single_node(self, op: Any, *args: Any, **kwargs: Any) -> Any:
        bound = _bind(self._layout, args, kwargs)
        # Python values: the builder converts them (and the op may take Values).
        inputs, attrs = node_arguments(self._layout, bound, to_onnx=False)
        node = op.domain(self.domain, version=self.version)
        return getattr(node, self.op_type)(*inputs, _outputs=self._layout.num_outputs, **attrs)

    def kernel_spec(self) -> KernelSpec:
        """The ONNX Runtime kernel for ``domain::op_type`` as plain data."""
        layout = self._layout
        inputs = tuple(IOSpec(p.name, (), p.optional, p.variadic) for p in layout.inputs)
        outputs = tuple(IOSpec(f"output_{j}") for j in range(layout.num_outputs))
        attributes = tuple(
            AttrSpec(p.name, p.attr_kind, p.default, required=not p.optional)  # type: ignore[arg-type]
            for p in layout.attributes
        )
        writes_out = False
        if self._numpy_kernel is not None:
            compute = _numpy_compute(layout, self._numpy_kernel)
            origin = "numpy"
            writes_out = _takes_out(self._numpy_kernel)
        else:
            compute = torch_kernel(
                self.qualified_name, layout.params, self.overload, self._torch_def
            )
            origin = "torch"
        return KernelSpec(
            self.domain,
            self.op_type,
            self.version,
            inputs,
            outputs,
            attributes,
            compute,
            origin,
            writes_out=writes_out,
        )


def _check_standard_name(name: str, op_type: str, layout: OpLayout) -> None:
    """Refuses an op named like a standard ONNX op with fewer inputs than it takes.

    ONNX Runtime's graph optimizers match some nodes by op type in any domain and
    read their inputs by position: a custom-domain ``Add`` with one input aborts the
    process (a failed assertion) when the session is created.
    """
    if not onnx.defs.has(op_type):
        return
    needed = onnx.defs.get_schema(op_type).min_input
    fewest = sum(1 for p in layout.inputs if not p.optional and not p.variadic)
    if fewest < needed:
        raise DeclarationError(
            f"Custom op {name}: op_type {op_type!r} is also a standard ONNX op, which takes at "
            f"least {needed} inputs; ONNX Runtime's optimizers match nodes by that name in any "
            f"domain and abort the process on one with {fewest}. Choose another op_type, "
            f"e.g. op_type='My{op_type}'."
        )


def _bind(layout: OpLayout, args: Sequence[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    bound: dict[str, Any] = {}
    positional = [p for p in layout.params if not p.kwarg_only]
    if len(args) > len(positional):
        raise TypeError(f"{layout.name} takes {len(positional)} positional arguments")
    for p, a in zip(positional, args, strict=False):
        bound[p.name] = a
    bound.update(kwargs)
    return bound


def _split_inputs(layout: OpLayout, inputs: Sequence[Any]) -> dict[str, Any]:
    """Maps kernel inputs (variadic flattened) back to parameter names."""
    named: dict[str, Any] = {}
    params = layout.inputs
    for i, p in enumerate(params):
        if p.variadic:
            named[p.name] = list(inputs[i:])
            break
        named[p.name] = inputs[i] if i < len(inputs) else None
    return named


def _takes_out(fn: Callable[..., Any]) -> bool:
    """Whether a numpy kernel has an ``out`` parameter (it may write ORT's outputs)."""
    try:
        return "out" in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return False


def _numpy_compute(layout: OpLayout, fn: Callable[..., Any]) -> Callable[..., Any]:
    def compute(*inputs: np.ndarray | None, **attrs: Any) -> Any:
        return fn(**_split_inputs(layout, inputs), **attrs)

    compute.__name__ = f"{layout.name}:numpy"
    return compute


def _implementation_as_fake(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """The default fake (meta) implementation: the implementation itself.

    It works for implementations written with torch ops; one that reads values
    (``.item()``, numpy) gets an error naming ``register_fake`` as the fix.
    """

    def fake(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except Exception as e:
            raise DeclarationError(
                f"Custom op {name} has no fake implementation, and its implementation cannot "
                f"run on fake tensors during torch.export ({type(e).__name__}: {e}). Give it "
                f"one: @{func.__name__}.register_fake, returning empty tensors of the output "
                f"shapes and dtypes."
            ) from e

    return fake


@typing.overload
def custom_op(
    name: str,
    fn: Callable[..., Any],
    *,
    domain: str,
    op_type: str | None = None,
    version: int = 1,
    mutates_args: Iterable[str] | str = (),
) -> CustomOpDef: ...
@typing.overload
def custom_op(
    name: torch._ops.OpOverload | torch._ops.OpOverloadPacket | torch.library.CustomOpDef,
    fn: None = None,
    *,
    domain: str,
    op_type: str | None = None,
    version: int = 1,
) -> CustomOpDef: ...
@typing.overload
def custom_op(
    name: str,
    fn: None = None,
    *,
    domain: str,
    op_type: str | None = None,
    version: int = 1,
    mutates_args: Iterable[str] | str = (),
) -> Any: ...
def custom_op(
    name: Any,
    fn: Callable[..., Any] | None = None,
    *,
    domain: str,
    op_type: str | None = None,
    version: int = 1,
    mutates_args: Iterable[str] | str = (),
) -> Any:
    """Declares a custom op for torch, ONNX export and ONNX Runtime at once, or adopts
    one that already exists.

    Use it like ``torch.library.custom_op`` on a function with type hints::

        @opbridge.custom_op("mylib::scale_add", domain="mydomain")
        def scale_add(x: torch.Tensor, y: torch.Tensor, alpha: float) -> torch.Tensor:
            return x + alpha * y

    The torch op ``torch.ops.mylib.scale_add`` works in eager mode, ``torch.export``
    and ``torch.compile``; exported to ONNX it is one ``mydomain::ScaleAdd`` node
    whose inputs are the tensor parameters and whose attributes are the others.

    Called with an op that already exists, it adopts it at once, never redefining it::

        swish = opbridge.custom_op(torch.ops.mylib.swish, domain="mydomain")
        cholesky = opbridge.custom_op(torch.ops.aten.linalg_cholesky, domain="mydomain")

    ``name`` is then an ``OpOverloadPacket`` or ``OpOverload``, the object
    ``torch.library.custom_op`` returned, or the name of an op already registered
    (Python or C++). The node's inputs and attributes come from the op's torch
    schema, its ONNX Runtime kernel is a call of the op itself (whatever implements
    it: Python, a C++ extension, ATen) and ``torch.export`` uses the op's own fake
    implementation.

    Args:
        name: ``"namespace::name"`` of the torch op, or an existing op to adopt.
        fn: The implementation; omit it to use ``custom_op`` as a decorator.
        domain: ONNX domain of the node, e.g. ``"mydomain"`` or ``"com.microsoft"``.
        op_type: ONNX op type; defaults to the CamelCase of ``name``.
        version: Opset version of ``domain`` the node needs.
        mutates_args: Names of arguments the implementation writes (as in torch).

    Returns:
        A :class:`CustomOpDef` (or a decorator producing one).

    Raises:
        DeclarationError: Bad name, domain or version, a parameter type ONNX cannot
            carry, a function decorated with the name of an op that exists already,
            or an op to adopt that torch does not have.
    """
    from opbridge.declaration._adopt import adopt, adopt_advice, find_existing

    if not isinstance(name, str):
        if fn is not None:
            raise DeclarationError(
                f"{name!r} is an existing torch op; opbridge adopts it as it is and does not "
                f"take an implementation. Adopt it: {adopt_advice(name, domain)}."
            )
        return adopt(name, domain=domain, op_type=op_type, version=version)
    match = _NAME_RE.match(name)
    if match is None:
        if fn is None and re.match(rf"^{_IDENT}::{_IDENT}\.{_IDENT}$", name):  # an overload
            return adopt(name, domain=domain, op_type=op_type, version=version)
        raise DeclarationError(
            f"Custom op name {name!r} is not of the form 'namespace::name' with identifiers, "
            f"e.g. 'mynamespace::custom_group_norm'."
        )
    namespace, op_name = match.groups()
    resolved_type = op_type or _camel_case(op_name)
    check_node_identity(name, domain, resolved_type, version)
    if find_existing(name):
        if fn is None:  # adopt now; decorating a function with the result is refused
            return adopt(name, domain=domain, op_type=op_type, version=version)
        raise DeclarationError(
            f"torch op {name} already exists, so opbridge will not redefine it with "
            f"{getattr(fn, '__qualname__', fn)!r} (that would change it for every caller). It "
            f"stays as it was. Adopt it instead: {adopt_advice(name, domain)}."
        )

    def decorate(func: Callable[..., Any]) -> CustomOpDef:
        for other in REGISTRY.ops_for_node(domain, resolved_type):
            if other.version == version and other.qualified_name != name:
                raise DeclarationError(
                    f"Custom op {name}: {domain}::{resolved_type} version {version} is already "
                    f"declared by {other.qualified_name}; a model's node could only run one of "
                    f"them. Give this op another op_type or version."
                )
        if find_existing(name):
            raise DeclarationError(
                f"torch op {name} already exists; adopt it: {adopt_advice(name, domain)}."
            )
        try:
            torch_def = torch.library.custom_op(name, func, mutates_args=mutates_args)
        except (ValueError, TypeError, RuntimeError) as e:
            raise DeclarationError(
                f"Custom op {name}: torch rejected the signature of {func.__qualname__}: {e} "
                f"Annotate every parameter with one of: Tensor, Optional[Tensor], list[Tensor], "
                f"int, float, bool, str, or list of int/float/bool/str; and the return type "
                f"with Tensor or tuple[Tensor, ...]."
            ) from e
        torch_def.register_fake(_implementation_as_fake(name, func))
        op = CustomOpDef(
            torch_def,
            namespace=namespace,
            name=op_name,
            domain=domain,
            op_type=resolved_type,
            version=version,
        )
        REGISTRY.add_op(op)
        return op

    return decorate(fn) if fn is not None else _Declaration(name, decorate)


class _Declaration:
    """What ``@opbridge.custom_op("ns::new_name", domain=...)`` returns before decorating.

    Used as anything but a decorator, it says that torch has no such op to adopt.
    """

    def __init__(self, name: str, decorate: Callable[[Callable[..., Any]], CustomOpDef]) -> None:
        self._name = name
        self._decorate = decorate

    def __call__(self, func: Callable[..., Any]) -> CustomOpDef:
        if not callable(func):
            raise DeclarationError(
                f"@opbridge.custom_op('{self._name}', ...) decorates a function; got {func!r}. "
                f"torch has no op '{self._name}' to adopt in this process."
            )
        return self._decorate(func)

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        ns = self._name.split("::")[0]
        raise DeclarationError(
            f"torch has no op '{self._name}' to adopt in this process, so "
            f"opbridge.custom_op('{self._name}', ...) is a decorator waiting for the op's "
            f"implementation (it has no .{attr}). Check the spelling (torch.ops.{ns} lists the "
            f"namespace's ops), or first import the module or load the library that registers "
            f"the op."
        )


def check_node_identity(name: str, domain: Any, op_type: str, version: Any) -> None:
    """Checks the ONNX side of a declaration: domain, op type, version.

    Raises:
        DeclarationError: Naming the bad value and a good one.
    """
    if not isinstance(domain, str) or not _DOMAIN_RE.match(domain) or domain in _STANDARD_DOMAINS:
        raise DeclarationError(
            f"Custom op {name}: domain {domain!r} is not a custom ONNX domain; pick one of "
            f"your own such as 'mydomain' or 'com.mycompany' (letters, digits, '.', '_', '-')."
        )
    if not isinstance(version, int) or version < 1:
        raise DeclarationError(f"Custom op {name}: version must be an int >= 1, got {version!r}.")
    if not re.match(rf"^{_IDENT}$", op_type):
        raise DeclarationError(f"Custom op {name}: op_type {op_type!r} is not an identifier.")
