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

import onnx_ir as ir

from opbridge._errors import ExportError, LoweringError
from opbridge._model import all_nodes
from opbridge._registry import Lowering, Registry
from opbridge.declaration._schema import fake_infer, make_schema, register_schema
from opbridge.declaration._signature import OpLayout, call_arguments, layout_of
from opbridge.lowering._builder import Builder, GraphContext, Value, flatten_outputs

__all__ = ["PLACEHOLDER_DOMAIN", "PlaceholderTable", "check_requested_opsets", "expand"]

PLACEHOLDER_DOMAIN = "opbridge.lowering"


@dataclasses.dataclass(frozen=True)
class Pending:
    """One torch op overload that the exporters turn into placeholders."""

    key: str  # placeholder op_type
    overload: Any  # torch OpOverload
    layout: OpLayout
    lowering: Lowering
    fallback: bool = False  # an ``opbridge.torch`` node for an op nothing else writes

    @property
    def single_node(self) -> tuple[str, str, int] | None:
        """``(domain, op_type, version)`` of the one node an adapter may write itself.

        Fallback ops are left to expansion, which records them in the model.
        """
        return None if self.fallback else self.lowering.node


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
            pending = Pending(key, op.overload, layout, op.lowering(), fallback=True)
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


def _call_lowering(
    pending: Pending, builder: Builder, node: ir.Node, values: list[Value | None]
) -> Any:
    attrs = {name: attr.value for name, attr in node.attributes.items()}
    positional, keyword = call_arguments(pending.layout, values, attrs)
    try:
        return pending.lowering.fn(builder, *positional, **keyword)
    except LoweringError:
        raise
    except Exception as e:
        raise LoweringError(
            f"Lowering '{pending.lowering.name}' for {pending.layout.name} raised "
            f"{type(e).__name__}: {e}"
        ) from e


def _check_count(pending: Pending, produced: list[Value], wanted: int) -> None:
    if len(produced) != wanted:
        raise LoweringError(
            f"Lowering '{pending.lowering.name}' for {pending.layout.name}: the lowering "
            f"returned {len(produced)} values, expected {wanted}"
        )


def _splice(ctx: GraphContext, placeholder: ir.Node, produced: list[Value]) -> None:
    """Puts the lowering's nodes in place of ``placeholder``.

    A value the lowering wrote takes the placeholder output's name, type and users; a
    value it returned as is (a graph value, or one value returned twice) goes through
    an ``Identity`` node, so that every output keeps its own name.
    """
    made = {id(o) for n in ctx.nodes for o in n.outputs}
    taken: set[int] = set()
    nodes = list(ctx.nodes)
    pairs: list[tuple[ir.Value, ir.Value]] = []
    for value, old in zip(produced, placeholder.outputs, strict=True):
        new = value.ir
        if id(new) not in made or id(new) in taken:
            identity = ir.Node(
                "", "Identity", [new], outputs=[ir.Value()], name=ctx.fresh("Identity_node")
            )
            nodes.append(identity)
            new = identity.outputs[0]
        taken.add(id(new))
        pairs.append((old, new))
    graph = placeholder.graph
    assert graph is not None
    graph.insert_before(placeholder, nodes)
    for old, new in pairs:
        name, dtype, shape = old.name, old.dtype, old.shape
        old.replace_all_uses_with(new, replace_graph_outputs=True)
        old.name = None
        new.name = name
        if dtype is not None:
            new.dtype = dtype
        if shape is not None and new.shape is None:
            new.shape = shape
    graph.remove(placeholder, safe=True)


def expand(
    model: ir.Model,
    table: PlaceholderTable,
    *,
    custom_opsets: Mapping[str, int] | None = None,
) -> ir.Model:
    """Replaces every placeholder in ``model`` by the nodes its lowering writes.

    Placeholders are found in the main graph, in control-flow bodies at any depth
    and in local functions; the model is edited in place. Only the values a
    lowering asks for are read (``op.value_of``); no shape inference runs: types
    come from the exporter's values and the declared ops' fake implementations.

    Args:
        model: An exported model holding placeholder nodes.
        table: The placeholders' keys and lowerings.
        custom_opsets: Versions to give custom domains (``{"com.microsoft": 5}``).

    Raises:
        ExportError: A domain's requested version is below what its ops need.
        LoweringError: A lowering failed; the message names it and the op.
    """
    placeholders = [n for n in all_nodes(model) if n.domain == PLACEHOLDER_DOMAIN]
    used_domains: dict[str, int] = {}
    if placeholders:
        taken = {v.name for n in all_nodes(model) for v in n.outputs if v.name}
        taken |= {v.name for v in model.graph.inputs if v.name}
        taken |= set(model.graph.initializers)
        opsets = dict(model.opset_imports)
        functions: dict[tuple[Any, ...], ir.Function] = {}
        for node in placeholders:
            _expand_one(node, table, opsets, taken, functions, used_domains)
        for fn in functions.values():
            model.functions[fn.identifier()] = fn
    _set_opsets(model, used_domains, custom_opsets or {})
    return model


def _expand_one(
    node: ir.Node,
    table: PlaceholderTable,
    opsets: dict[str, int],
    taken: set[str],
    functions: dict[tuple[Any, ...], ir.Function],
    used_domains: dict[str, int],
) -> None:
    pending = table.entries.get(node.op_type)
    if pending is None:  # pragma: no cover - would be an adapter bug
        raise ExportError(f"unknown placeholder {node.op_type}")
    graph = node.graph
    if isinstance(graph, ir.Function):  # pragma: no cover - ir gives the function's graph
        graph = graph.graph
    local_opsets = dict(opsets)
    if graph is not None and graph.opset_imports:
        local_opsets.update(graph.opset_imports)
    ctx = GraphContext(
        opset_versions=local_opsets, name_prefix=node.name or pending.key, taken_names=taken
    )
    values = [Value(v) if v is not None else None for v in node.inputs]
    inputs = [v for v in node.inputs if v is not None]
    if pending.lowering.function_domain:
        call = _as_function(pending, node, values, local_opsets, functions, used_domains, ctx)
        produced = [Value(o) for o in call.outputs]
        ctx.nodes.append(call)
    else:
        builder = Builder(ctx, target=pending.layout.name)
        produced = list(flatten_outputs(_call_lowering(pending, builder, node, values)))
    _check_count(pending, produced, len(node.outputs))
    _splice(ctx, node, produced)
    for d, v in ctx.used_domains.items():
        used_domains[d] = max(v, used_domains.get(d, 1))
    _prune(inputs)


def _as_function(
    pending: Pending,
    node: ir.Node,
    values: list[Value | None],
    opsets: dict[str, int],
    functions: dict[tuple[Any, ...], ir.Function],
    used_domains: dict[str, int],
    outer: GraphContext,
) -> ir.Node:
    """Writes the lowering as an ONNX local function and returns the calling node."""
    lowering = pending.lowering
    domain = lowering.function_domain
    assert domain is not None
    present = [(i, v) for i, v in enumerate(values) if v is not None]
    attrs = tuple(sorted((a.name, repr(a.value)) for a in node.attributes.values()))
    signature = (domain, lowering.name, attrs, tuple((i, v.elem_type) for i, v in present))
    if signature not in functions:
        formal_by_pos: list[Value | None] = [None] * len(values)
        formal: list[ir.Value] = []
        for i, v in present:
            f = ir.Value(name=f"input_{i}", type=v.ir.type, shape=v.ir.shape)
            formal.append(f)
            formal_by_pos[i] = Value(f)
        ctx = GraphContext(
            opset_versions=opsets,
            name_prefix=lowering.name,
            taken_names={f"input_{i}" for i, _ in present},
        )
        result = _call_lowering(
            pending, Builder(ctx, target=pending.layout.name), node, formal_by_pos
        )
        produced = list(flatten_outputs(result))
        _check_count(pending, produced, len(node.outputs))
        made = {id(o) for n in ctx.nodes for o in n.outputs}
        outputs: list[ir.Value] = []
        for j, value in enumerate(produced):
            out = value.ir
            if id(out) not in made or any(out is o for o in outputs):
                identity = ir.Node("", "Identity", [out], outputs=[ir.Value()])
                ctx.nodes.append(identity)
                out = identity.outputs[0]
            out.name = f"output_{j}"
            outputs.append(out)
        same_name = sum(1 for k in functions if k[:2] == signature[:2])
        fn_opsets = {"": opsets.get("", 18), **ctx.used_domains}
        functions[signature] = ir.Function(
            domain, lowering.name, str(same_name) if same_name else "",
            graph=ir.Graph(formal, outputs, nodes=ctx.nodes, opset_imports=fn_opsets),
            attributes=[],
        )  # fmt: skip
        for d, version in ctx.used_domains.items():
            used_domains[d] = max(version, used_domains.get(d, 1))
    fn = functions[signature]
    used_domains.setdefault(domain, 1)
    return ir.Node(
        domain, fn.name, [v.ir for _, v in present], overload=fn.overload,
        num_outputs=len(node.outputs), name=outer.fresh(fn.name + "_call"),
    )  # fmt: skip


def _prune(values: list[ir.Value]) -> None:
    """Drops what only the expanded placeholder used (e.g. an ``eps`` now an attribute).

    Only the placeholder's own inputs are looked at, never the whole model.
    """
    for value in values:
        if value.uses() or value.is_graph_output() or value.is_graph_input():
            continue
        producer = value.producer()
        if value.is_initializer():
            graph = value.graph
            if graph is not None and value.name and value.name in graph.initializers:
                graph.initializers.pop(value.name)
        elif (
            producer is not None
            and producer.op_type == "Constant"
            and producer.domain == ""
            and producer.graph is not None
        ):
            producer.graph.remove(producer, safe=True)


def check_requested_opsets(used: Mapping[str, int], requested: Mapping[str, int]) -> None:
    """Refuses a ``custom_opsets`` version below what the model's ops of that domain need."""
    for domain, version in requested.items():
        if domain in used and version < used[domain]:
            needed = used[domain]
            raise ExportError(
                f"custom_opsets asks for {domain} version {version}, but the model uses ops of "
                f"{domain} that need version {needed}; ask for {needed} or higher."
            )


def _set_opsets(model: ir.Model, used: dict[str, int], requested: Mapping[str, int]) -> None:
    versions = {d: v for d, v in model.opset_imports.items() if d != PLACEHOLDER_DOMAIN}
    for domain, needed in used.items():
        versions[domain] = max(needed, versions.get(domain, 0)) if domain in versions else needed
    check_requested_opsets(used, requested)
    versions.update(requested)
    model.opset_imports.clear()
    model.opset_imports.update(versions)
    if model.functions and model.ir_version < 10:
        model.ir_version = 10  # function overloads need IR 10
