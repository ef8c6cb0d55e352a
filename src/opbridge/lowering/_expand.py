"""Placeholders and their expansion: how one lowering serves both exporters.

Each exporter adapter writes, for every torch op that has a lowering, one placeholder
node ``opbridge.lowering::<key>`` carrying the op's tensor arguments as inputs and its
other arguments as attributes. :func:`expand` then calls each lowering with a
:class:`~opbridge.lowering._builder.Builder` on the finished model, where types and
constants are known, and splices the nodes it writes in place of the placeholder.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from opbridge._errors import ExportError, LoweringError
from opbridge._registry import Lowering, Registry
from opbridge.declaration._schema import fake_infer, make_schema, register_schema
from opbridge.declaration._signature import OpLayout, layout_of
from opbridge.lowering._builder import Builder, GraphContext, Value, flatten_outputs

__all__ = ["PLACEHOLDER_DOMAIN", "PlaceholderTable", "expand"]

PLACEHOLDER_DOMAIN = "opbridge.lowering"


@dataclasses.dataclass(frozen=True)
class Pending:
    """One torch op overload that the exporters turn into placeholders."""

    key: str  # placeholder op_type
    overload: Any  # torch OpOverload
    layout: OpLayout
    lowering: Lowering


class PlaceholderTable:
    """The torch overloads one export lowers, with their placeholder keys."""

    def __init__(
        self, registry: Registry, *, contrib_ops: bool, fallback: Sequence[Any] = ()
    ) -> None:
        """Args:
        registry: Lowerings and declared ops.
        contrib_ops: Whether contrib-only shipped lowerings apply.
        fallback: ``opbridge.torch`` ops (adopted) written for ops nothing else writes.
        """
        from opbridge._registry import resolve_torch_target

        self.entries: dict[str, Pending] = {}
        self.by_overload: dict[str, Pending] = {}
        counter = itertools.count()
        for op in fallback:
            layout = op.layout
            key = f"L{next(counter)}_{layout.name.replace('::', '_').replace('.', '_')}"
            pending = Pending(key, op.overload, layout, op.lowering())
            self.entries[key] = pending
            self.by_overload[layout.name] = pending
        for target in registry.targets(contrib_ops=contrib_ops):
            try:
                overloads = resolve_torch_target(target)
            except LoweringError:
                continue  # a lowering for an op whose library is not loaded now
            for overload in overloads:
                layout = layout_of(overload)
                if layout.name in self.by_overload:
                    continue
                lowering = registry.resolve(layout.name, contrib_ops=contrib_ops)
                if lowering is None or layout.unsupported:
                    continue
                key = f"L{next(counter)}_{layout.name.replace('::', '_').replace('.', '_')}"
                pending = Pending(key, overload, layout, lowering)
                self.entries[key] = pending
                self.by_overload[layout.name] = pending

    def register_schemas(self) -> None:
        """Makes onnxscript accept the placeholders (the dynamo exporter needs it)."""
        for p in self.entries.values():
            # The inference function keeps outputs typed through onnxscript's optimizer.
            register_schema(
                make_schema(
                    p.layout,
                    domain=PLACEHOLDER_DOMAIN,
                    op_type=p.key,
                    version=1,
                    infer=fake_infer(p.layout, p.overload),
                )
            )


def _attr_to_python(param: Any, proto: onnx.AttributeProto) -> Any:
    value = helper.get_attribute_value(proto)
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [v.decode() for v in value]
    if param is not None and param.is_bool:
        return [bool(v) for v in value] if isinstance(value, list) else bool(value)
    if param is not None and param.attr_kind == "int" and isinstance(value, float):
        return int(value)
    return value


def _known_types(model: onnx.ModelProto) -> dict[str, tuple[int, tuple[Any, ...] | None]]:
    types: dict[str, tuple[int, tuple[Any, ...] | None]] = {}
    graph = model.graph
    for vi in itertools.chain(graph.input, graph.output, graph.value_info):
        t = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            continue
        shape = None
        if t.HasField("shape"):
            shape = tuple(
                d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                for d in t.shape.dim
            )
        types[vi.name] = (t.elem_type, shape)
    for init in graph.initializer:
        types[init.name] = (init.data_type, tuple(init.dims))
    return types


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    consts = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.attribute:
            attr = node.attribute[0]
            value = helper.get_attribute_value(attr)
            if isinstance(value, onnx.TensorProto):
                consts[node.output[0]] = numpy_helper.to_array(value)
            elif attr.name in ("value_float", "value_int", "value_floats", "value_ints"):
                consts[node.output[0]] = np.asarray(value)
    return consts


def _call_lowering(
    pending: Pending, builder: Builder, node: onnx.NodeProto, values: list[Value | None]
) -> Any:
    layout = pending.layout
    attrs = {a.name: a for a in node.attribute}
    positional: list[Any] = []
    keyword: dict[str, Any] = {}
    cursor = 0
    for p in layout.params:
        if p.kind == "input":
            if p.variadic:
                arg: Any = list(values[cursor:])
                cursor = len(values)
            else:
                arg = values[cursor] if cursor < len(values) else None
                cursor += 1
        elif p.name in attrs:
            arg = _attr_to_python(p, attrs[p.name])
        elif p.has_default:
            arg = p.default
        else:
            arg = None
        if p.kwarg_only:
            keyword[p.name] = arg
        else:
            positional.append(arg)
    # Trailing absent arguments are left to the lowering's own defaults.
    while positional and positional[-1] is None:
        positional.pop()
    keyword = {k: v for k, v in keyword.items() if v is not None}
    try:
        return pending.lowering.fn(builder, *positional, **keyword)
    except LoweringError:
        raise
    except Exception as e:
        raise LoweringError(
            f"Lowering '{pending.lowering.name}' for {layout.name} raised {type(e).__name__}: {e}"
        ) from e


def _splice(ctx: GraphContext, produced: list[Value], wanted: list[str]) -> list[onnx.NodeProto]:
    """Renames the lowering's results to the placeholder's output names."""
    if len(produced) != len(wanted):
        raise LoweringError(f"the lowering returned {len(produced)} values, expected {len(wanted)}")
    made = {o for n in ctx.nodes for o in n.output}
    rename: dict[str, str] = {}
    extra: list[onnx.NodeProto] = []
    for value, target in zip(produced, wanted, strict=True):
        if not target:
            continue
        if value.name in made and value.name not in rename:
            rename[value.name] = target
        else:  # a graph value returned as is, or one value returned twice
            extra.append(
                helper.make_node(
                    "Identity",
                    [rename.get(value.name, value.name)],
                    [target],
                    name=ctx.fresh("Identity_node"),
                )
            )
    for n in ctx.nodes:
        n.input[:] = [rename.get(i, i) for i in n.input]
        n.output[:] = [rename.get(o, o) for o in n.output]
    return [*ctx.nodes, *extra]


def expand(
    model: onnx.ModelProto,
    table: PlaceholderTable,
    *,
    custom_opsets: Mapping[str, int] | None = None,
) -> onnx.ModelProto:
    """Replaces every placeholder in ``model`` by the nodes its lowering writes.

    Args:
        model: An exported model holding placeholder nodes.
        table: The placeholders' keys and lowerings.
        custom_opsets: Versions to give custom domains (``{"com.microsoft": 5}``).

    Raises:
        ExportError: A domain's requested version is below what its ops need.
        LoweringError: A lowering failed; the message names it and the op.
    """
    model = _inferred(model)
    types = _known_types(model)
    constants = _constants(model)
    opsets = {o.domain: o.version for o in model.opset_import}
    taken = {o for n in model.graph.node for o in n.output} | set(types)
    used_domains: dict[str, int] = {}
    functions: dict[tuple[Any, ...], onnx.FunctionProto] = {}
    new_nodes: list[onnx.NodeProto] = []
    for node in model.graph.node:
        if node.domain != PLACEHOLDER_DOMAIN:
            new_nodes.append(node)
            continue
        pending = table.entries.get(node.op_type)
        if pending is None:  # pragma: no cover - would be an adapter bug
            raise ExportError(f"unknown placeholder {node.op_type}")
        ctx = GraphContext(
            types=types,
            constants=constants,
            opset_versions=opsets,
            name_prefix=node.name or pending.key,
            taken_names=taken,
        )
        builder = Builder(ctx, target=pending.layout.name)
        values = [ctx.value(n) if n else None for n in node.input]
        if pending.lowering.function_domain:
            call = _as_function(pending, node, values, opsets, functions, used_domains)
            new_nodes.append(call)
            continue
        result = _call_lowering(pending, builder, node, values)
        try:
            new_nodes.extend(_splice(ctx, list(flatten_outputs(result)), list(node.output)))
        except LoweringError as e:
            raise LoweringError(
                f"Lowering '{pending.lowering.name}' for {pending.layout.name}: {e}"
            ) from None
        for d, v in ctx.used_domains.items():
            used_domains[d] = max(v, used_domains.get(d, 1))
    model.graph.ClearField("node")
    model.graph.node.extend(new_nodes)
    model.functions.extend(functions.values())
    _refuse_leftovers(model)
    _prune(model.graph)
    _set_opsets(model, used_domains, custom_opsets or {})
    return _inferred(model)


def _inferred(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with inferred value types, or as is if inference fails.

    Inference only adds type facts; a model ONNX cannot infer is still exported.
    """
    try:
        return onnx.shape_inference.infer_shapes(model)
    except Exception:
        return model


def _as_function(
    pending: Pending,
    node: onnx.NodeProto,
    values: list[Value | None],
    opsets: dict[str, int],
    functions: dict[tuple[Any, ...], onnx.FunctionProto],
    used_domains: dict[str, int],
) -> onnx.NodeProto:
    """Writes the lowering as an ONNX local function and returns the calling node."""
    lowering = pending.lowering
    domain = lowering.function_domain
    assert domain is not None
    present = [(i, v) for i, v in enumerate(values) if v is not None]
    attrs = tuple(sorted((a.name, str(helper.get_attribute_value(a))) for a in node.attribute))
    signature = (domain, lowering.name, attrs, tuple((i, v.elem_type) for i, v in present))
    if signature not in functions:
        formal = [Value(f"input_{i}", v.elem_type, v.shape) for i, v in present]
        formal_by_pos: list[Value | None] = [None] * len(values)
        for (i, _), f in zip(present, formal, strict=True):
            formal_by_pos[i] = f
        ctx = GraphContext(
            types={f.name: (f.elem_type, f.shape) for f in formal}, constants={},
            opset_versions=opsets, name_prefix=lowering.name,
            taken_names={f.name for f in formal},
        )  # fmt: skip
        result = _call_lowering(
            pending, Builder(ctx, target=pending.layout.name), node, formal_by_pos
        )
        outs = [f"output_{j}" for j in range(len(node.output))]
        body = _splice(ctx, list(flatten_outputs(result)), outs)
        same_name = sum(1 for k in functions if k[:2] == signature[:2])
        fn_opsets = {"": opsets.get("", 18), **ctx.used_domains}
        functions[signature] = helper.make_function(
            domain, lowering.name, [f.name for f in formal], outs, body,
            opset_imports=[helper.make_opsetid(d, v) for d, v in fn_opsets.items()],
            overload=str(same_name) if same_name else "",
        )  # fmt: skip
        for d, v in ctx.used_domains.items():
            used_domains[d] = max(v, used_domains.get(d, 1))
    fn = functions[signature]
    used_domains.setdefault(domain, 1)
    call = helper.make_node(
        fn.name, [v.name for _, v in present], list(node.output), name=node.name, domain=domain
    )
    if fn.overload:
        call.overload = fn.overload
    return call


def _refuse_leftovers(model: onnx.ModelProto) -> None:
    """Placeholders only expand in the main graph; anywhere else is an error, not a model."""

    def walk(nodes: Any, where: str) -> None:
        for node in nodes:
            if node.domain == PLACEHOLDER_DOMAIN:
                raise ExportError(
                    f"{where}: an op with an opbridge lowering is used inside "
                    f"{'a function' if where.startswith('function') else 'a control-flow body'}"
                    f" (torch.cond, a loop); opbridge lowers ops in the main graph only. "
                    f"Move the op out of the branch or loop."
                )
            for attr in node.attribute:
                subgraphs = (
                    [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
                )
                for g in subgraphs:
                    walk(g.node, f"{where} > {node.op_type} '{node.name}'")

    walk(model.graph.node, "main graph")
    for fn in model.functions:
        walk(fn.node, f"function {fn.domain}::{fn.name}")


def _prune(graph: onnx.GraphProto) -> None:
    """Drops constants only placeholders used (e.g. an ``eps`` now an attribute)."""
    while True:
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        for n in graph.node:  # values read inside subgraphs
            for a in n.attribute:
                for g in [a.g, *a.graphs]:
                    used |= {i for sub in g.node for i in sub.input}
        dead = [
            n
            for n in graph.node
            if n.op_type == "Constant"
            and n.domain in ("", "ai.onnx")
            and not any(o in used for o in n.output)
        ]
        for n in dead:
            graph.node.remove(n)
        if not dead:
            break
    inputs = {i.name for i in graph.input}  # an initializer that is also an input stays
    unused = [i for i in graph.initializer if i.name not in used and i.name not in inputs]
    for init in unused:
        graph.initializer.remove(init)
    produced = {o for n in graph.node for o in n.output} | {i.name for i in graph.initializer}
    kept = [v for v in graph.value_info if v.name in produced]
    graph.ClearField("value_info")
    graph.value_info.extend(kept)


def _set_opsets(model: onnx.ModelProto, used: dict[str, int], requested: Mapping[str, int]) -> None:
    versions = {o.domain: o.version for o in model.opset_import if o.domain != PLACEHOLDER_DOMAIN}
    for domain, needed in used.items():
        versions[domain] = max(needed, versions.get(domain, 0)) if domain in versions else needed
    for domain, version in requested.items():
        if domain in used and version < used[domain]:
            needed = used[domain]
            raise ExportError(
                f"custom_opsets asks for {domain} version {version}, but the model uses ops of "
                f"{domain} that need version {needed}; ask for {needed} or higher."
            )
        versions[domain] = version
    model.ClearField("opset_import")
    model.opset_import.extend(helper.make_opsetid(d, v) for d, v in versions.items())
    if model.functions and model.ir_version < 10:
        model.ir_version = 10  # function overloads need IR 10
