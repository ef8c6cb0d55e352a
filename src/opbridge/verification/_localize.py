"""Localisation: the first ONNX node where ONNX Runtime and PyTorch part.

ONNX Runtime's side: a copy of the model (onnx-ir) with the compared node outputs
added as graph outputs, run by :class:`opbridge.Session`, so custom nodes run by the
kernel host or their native libraries exactly as in a plain run.

PyTorch's side, per exporter:

* ``dynamo``: the exporter names each ONNX value after the FX node that produced it
  (opbridge's lowerings keep those names), so the ``ExportedProgram``, decomposed as
  ``torch.onnx`` decomposes it, is run by a ``torch.fx.Interpreter`` that keeps every
  node's output: every surviving FX value is compared.
* ``torchscript``: ONNX names carry module scopes, not FX nodes. The eager model runs
  under a ``TorchDispatchMode`` that records the outputs of every declared or lowered
  op in call order;
  the k-th group of ONNX nodes written for a declared or lowered op (its name carries
  the op) is matched with the k-th call of that op. Standard nodes written one for one
  from an ATen op (Relu, Add, Mul, Sin...) are matched per module scope in call order,
  where counts, dtypes and shapes all agree. Outputs of submodules called once
  (forward hooks) are matched with the last node of their ONNX scope when dtype and
  shape agree, and graph outputs with the model's outputs. Other standard nodes (Gemm
  of a Linear, MatMul...) are not compared one by one: a departure there shows at the
  next compared value, and :attr:`Divergence.unchecked` lists the nodes between.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from opbridge._dtypes import as_numpy
from opbridge.verification._compare import Comparison, compare_arrays

__all__ = ["Divergence", "Localization", "Step", "localize"]

Progress = Callable[[str, int, int], None]


@dataclasses.dataclass(frozen=True)
class Step:
    """One compared ONNX value: the node that wrote it and how it compares."""

    node: str
    op_type: str
    domain: str
    value: str
    origin: str
    comparison: Comparison

    @property
    def max_abs_diff(self) -> float:
        return self.comparison.max_abs_diff

    @property
    def passed(self) -> bool:
        return self.comparison.passed


@dataclasses.dataclass(frozen=True)
class Divergence:
    """The first node, in topological order, whose output departs while its inputs do not.

    Attributes:
        node: The ONNX node's name.
        op_type: Its op type.
        domain: Its domain (``""`` for standard ONNX).
        origin: The torch module path, torch op and source line that produced it.
        max_abs_diff: Largest ``|ONNX Runtime - PyTorch|`` of its output.
        inputs_max_abs_diff: Largest difference over its inputs (0 for graph inputs
            and weights; for an input not compared itself, that of the nearest
            compared values upstream).
        value: The ONNX value compared.
        unchecked: Nodes between the last compared values and this one, which had no
            PyTorch counterpart (one of them may be the culprit); empty when the node's
            inputs were compared themselves.
    """

    node: str
    op_type: str
    domain: str
    origin: str
    max_abs_diff: float
    inputs_max_abs_diff: float
    value: str
    unchecked: tuple[str, ...] = ()

    def __str__(self) -> str:
        where = f"{self.domain}::{self.op_type}" if self.domain else self.op_type
        text = (
            f"first divergence at node '{self.node}' ({where}), output '{self.value}': "
            f"max|diff| {self.max_abs_diff:.3g} (inputs {self.inputs_max_abs_diff:.3g})"
        )
        if self.origin:
            text += f"\n    from {self.origin}"
        if self.unchecked:
            shown = ", ".join(self.unchecked[-6:])
            more = len(self.unchecked) - 6
            text += "\n    not compared on the way: " + (f"{more} nodes, then " if more > 0 else "")
            text += shown
        return text


@dataclasses.dataclass
class Localization:
    """Every intermediate comparison of one localisation run.

    Attributes:
        steps: The compared values in topological order.
        first_divergence: The first node that departs, or ``None``.
        nodes: Nodes of the main graph.
        subgraph_nodes: Nodes inside control-flow bodies (not compared).
        input_set: Index of the input set localised.
    """

    steps: list[Step]
    first_divergence: Divergence | None
    nodes: int
    subgraph_nodes: int
    input_set: int = 0
    ancestors: frozenset[str] = frozenset()

    @property
    def compared(self) -> int:
        return len(self.steps)

    def path(self) -> list[Step]:
        """The compared values upstream of the first divergence, ending with it."""
        if self.first_divergence is None:
            return []
        return [s for s in self.steps if s.value in self.ancestors]


# -- PyTorch's side: dynamo ------------------------------------------------------------


def _module_path(stack: Any) -> str:
    if not stack:
        return ""
    name, cls = list(stack.values())[-1]
    cls_name = getattr(cls, "__qualname__", None) or str(cls).rsplit(".", 1)[-1].strip("'>")
    return f"{name} ({cls_name})" if name else f"({cls_name})"


_SKIP_FRAMES = ("/torch/", "/opbridge/", "<frozen", "/contextlib.py")
_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)\n\s*(.*)')


def _source_line(stack_trace: str) -> str:
    frames = _FRAME.findall(stack_trace or "")
    user = [f for f in frames if not any(s in f[0] for s in _SKIP_FRAMES)]
    if not frames:
        return ""
    file, line, _, code = (user or frames)[-1]
    return f"{file}:{line} `{code.strip()}`"


def _origin(module: str, op: str, line: str) -> str:
    parts = []
    if module:
        parts.append(f"module {module}")
    if op:
        parts.append(f"torch op {op}")
    if line:
        parts.append(f"at {line}")
    return ", ".join(parts)


def _decomposed(program: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """The program as ``torch.onnx`` decomposes it before writing ONNX (same FX names)."""
    from torch.onnx._internal.exporter import _core, _registration

    from opbridge._registry import REGISTRY
    from opbridge.lowering._expand import PlaceholderTable

    registry = _registration.ONNXRegistry.from_torchlib()
    for contrib in (False, True):  # ops opbridge lowers stay whole, as in the export
        for pending in PlaceholderTable(REGISTRY, contrib_ops=contrib).entries.values():
            registry.register_op(pending.overload, lambda *a, **k: None)
    return _core._prepare_exported_program_for_export(program, registry=registry)


def _fx_reference(
    program: torch.export.ExportedProgram, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, str]]:
    """Every FX node's output by name, and each node's origin."""
    from torch.export.graph_signature import InputKind

    program = _decomposed(program)
    user = iter(pytree.tree_leaves((args, kwargs)))
    flat: list[Any] = []
    for spec in program.graph_signature.input_specs:
        if spec.kind == InputKind.USER_INPUT:
            flat.append(next(user))
        elif spec.target in program.state_dict:
            flat.append(program.state_dict[spec.target])
        else:
            flat.append(program.constants[spec.target])
    values: dict[str, Any] = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n: torch.fx.Node) -> Any:
            result = super().run_node(n)
            values[n.name] = result
            return result

    with torch.no_grad():
        Recorder(program.graph_module).run(*flat)
    origins = {}
    for n in program.graph.nodes:
        if n.op == "call_function":
            origins[n.name] = _origin(
                _module_path(n.meta.get("nn_module_stack")),
                str(n.target),
                _source_line(n.meta.get("stack_trace", "")),
            )
    return values, origins


# -- PyTorch's side: TorchScript -------------------------------------------------------


def _user_line() -> str:
    for frame in reversed(traceback.extract_stack()):
        if not any(s in frame.filename for s in _SKIP_FRAMES):
            return f"{frame.filename}:{frame.lineno} `{(frame.line or '').strip()}`"
    return ""


# Standard ONNX nodes that the TorchScript exporter writes one for one from an ATen op
# (as the dispatch mode sees it): matched per module scope, in call order.
_ONE_TO_ONE: dict[str, str] = {
    "Relu": "aten::relu.default",
    "Sigmoid": "aten::sigmoid.default",
    "Tanh": "aten::tanh.default",
    "Sin": "aten::sin.default",
    "Cos": "aten::cos.default",
    "Exp": "aten::exp.default",
    "Log": "aten::log.default",
    "Sqrt": "aten::sqrt.default",
    "Neg": "aten::neg.default",
    "Abs": "aten::abs.default",
    "Erf": "aten::erf.default",
    "Add": "aten::add.Tensor",
    "Sub": "aten::sub.Tensor",
    "Mul": "aten::mul.Tensor",
    "Div": "aten::div.Tensor",
}


class _OpRecorder(TorchDispatchMode):
    """Records the outputs of the ops in ``names`` in call order, with the module running.

    ``calls[op]`` holds ``(outputs, source line)``; ``scoped[(module path, op)]`` the
    outputs of the one-for-one ops per innermost module.
    """

    def __init__(self, names: set[str]) -> None:
        super().__init__()
        self.names = names
        self.calls: dict[str, list[tuple[list[Any], str]]] = {}
        self.scoped: dict[tuple[str, str], list[tuple[Any, str]]] = {}
        self.modules: list[str] = [""]
        self._standard = set(_ONE_TO_ONE.values())

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        result = func(*args, **(kwargs or {}))
        name = f"{func.namespace}::{func._opname}.{func._overloadname}"
        if name in self.names:
            outs = result if isinstance(result, (tuple, list)) else [result]
            self.calls.setdefault(name, []).append(
                (
                    [o.detach().clone() if isinstance(o, torch.Tensor) else o for o in outs],
                    _user_line(),
                )
            )
        elif name in self._standard and isinstance(result, torch.Tensor):
            self.scoped.setdefault((self.modules[-1], name), []).append(
                (result.detach().clone(), _user_line())
            )
        return result


def _scope_path(node_name: str) -> str:
    """``/b/b.0/lin/Gemm`` -> ``b.0.lin`` (the module path TorchScript scopes spell)."""
    parts = [p for p in node_name.split("/")[:-1] if p]
    path = ""
    for part in parts:
        if re.fullmatch(r"L\d+_\w+", part):
            break  # a lowered op's group, not a module
        path = part if not path or part.startswith(path + ".") else f"{path}.{part}"
    return path


_GROUP_OUTPUT = re.compile(r"(?:^|/)(L\d+_\w+)_output_(\d+)$")


def _torchscript_reference(
    model: torch.nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    graph: ir.Graph,
    expected_outputs: Sequence[np.ndarray],
) -> tuple[dict[str, Any], dict[str, str]]:
    from opbridge._registry import REGISTRY
    from opbridge.lowering._expand import PlaceholderTable

    keys: dict[str, str] = {}
    # Declared ops the adapter wrote as their own node, keyed "domain::op_type".
    direct: dict[tuple[str, str], str] = {}
    for contrib in (False, True):
        for key, pending in PlaceholderTable(REGISTRY, contrib_ops=contrib).entries.items():
            keys.setdefault(key, pending.layout.name)
            if pending.single_node is not None:
                domain, op_type, _ = pending.single_node
                direct.setdefault((domain, op_type), f"{domain}::{op_type}")
                keys.setdefault(f"{domain}::{op_type}", pending.layout.name)
    recorder = _OpRecorder(set(keys.values()))
    module_out: dict[str, list[Any]] = {}
    names = {m: n for n, m in model.named_modules() if n}

    def enter(module: torch.nn.Module, _inp: Any) -> None:
        recorder.modules.append(names[module])

    def hook(module: torch.nn.Module, _inp: Any, out: Any) -> None:
        recorder.modules.pop()
        module_out.setdefault(names[module], []).append(
            out.detach().clone() if isinstance(out, torch.Tensor) else None
        )

    handles = [m.register_forward_pre_hook(enter) for m in names]
    handles += [m.register_forward_hook(hook) for m in names]
    try:
        with torch.no_grad(), recorder:
            model(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()

    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    seen: dict[str, int] = {}  # group output name -> call index
    group_key: dict[str, str] = {}  # compared value -> its op's placeholder key
    counters: dict[str, int] = {}
    last_in_scope: dict[str, ir.Value] = {}
    for position, node in enumerate(graph):
        for index, out in enumerate(node.outputs):
            if (node.domain, node.op_type) in direct:  # one node is the op's whole group
                key, group = direct[(node.domain, node.op_type)], f"#{position}"
            else:  # a lowering's nodes, named after its placeholder
                m = _GROUP_OUTPUT.search(_n(out) or "")
                if m is None:
                    continue
                # TorchScript numbers repeated node names: L6_mylib_op_default_17.
                key = m.group(1) if m.group(1) in keys else re.sub(r"_\d+$", "", m.group(1))
                if key not in keys:
                    continue
                index = int(m.group(2))
                group = _n(out)[: m.start(2)]
            group_key[_n(out)] = key
            if group not in seen:
                seen[group] = counters.get(key, 0)
                counters[key] = seen[group] + 1
            calls = recorder.calls.get(keys[key], [])
            if seen[group] < len(calls):
                outs, line = calls[seen[group]]
                if index < len(outs) and isinstance(outs[index], torch.Tensor):
                    values[_n(out)] = outs[index]
                    origins[_n(out)] = _origin(_scope_path(node.name or ""), keys[key], line)
        scope = _scope_path(node.name or "")
        while scope:
            if node.outputs:
                last_in_scope[scope] = node.outputs[0]
            scope = scope.rpartition(".")[0] if "." in scope else ""
    # A key whose group count differs from its call count (an op torch decomposes
    # before the dispatch mode sees it) cannot be matched in order: drop it.
    for key, count in counters.items():
        if count != len(recorder.calls.get(keys[key], [])):
            for name in [n for n in values if group_key.get(n) == key]:
                values.pop(name)
    _match_standard_nodes(graph, recorder, values, origins)
    for path, outs in module_out.items():
        value = last_in_scope.get(path)
        if len(outs) != 1 or outs[0] is None or value is None or _n(value) in values:
            continue
        if _fits(value, outs[0]):
            values[_n(value)] = outs[0]
            origins[_n(value)] = _origin(
                f"{path} ({type(model.get_submodule(path)).__name__})", "", ""
            )
    for value, want in zip(graph.outputs, expected_outputs, strict=False):
        values.setdefault(_n(value), want)
    return values, origins


def _match_standard_nodes(
    graph: ir.Graph, recorder: _OpRecorder, values: dict[str, Any], origins: dict[str, str]
) -> None:
    """Pairs one-for-one standard nodes with ATen calls of the same module, in order.

    Only where the counts agree for that module and op, and every pair has the same
    dtype and shape; otherwise the nodes stay uncompared (never a guessed pair).
    """
    nodes: dict[tuple[str, str], list[ir.Value]] = {}
    for node in graph:
        aten = _ONE_TO_ONE.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        name = node.name or ""
        if aten is None or len(node.outputs) != 1 or re.search(r"(^|/)L\d+_", name):
            continue  # not one for one, or written by a lowering
        nodes.setdefault((_scope_path(name), aten), []).append(node.outputs[0])
    for key, outs in nodes.items():
        calls = recorder.scoped.get(key, [])
        if len(calls) != len(outs):
            continue
        if not all(_fits(v, t) for v, (t, _) in zip(outs, calls, strict=True)):
            continue
        for v, (tensor, line) in zip(outs, calls, strict=True):
            if _n(v) not in values:
                values[_n(v)] = tensor
                origins[_n(v)] = _origin(key[0], key[1], line)


def _n(value: ir.Value) -> str:
    return value.name or ""


def _fits(value: ir.Value, tensor: torch.Tensor) -> bool:
    from opbridge._dtypes import torch_to_onnx

    if value.dtype is None or value.shape is None:
        return False
    try:
        if int(value.dtype) != torch_to_onnx(tensor.dtype):
            return False
    except TypeError:
        return False
    dims = list(value.shape)
    return len(dims) == tensor.dim() and all(
        not isinstance(d, int) or d == s for d, s in zip(dims, tensor.shape, strict=True)
    )


# -- ONNX Runtime's side ---------------------------------------------------------------


def _as_array(value: Any) -> np.ndarray | None:
    if isinstance(value, torch.Tensor):
        return as_numpy(value.detach().cpu().contiguous())
    if isinstance(value, np.ndarray):
        return value
    return None


def _count_subgraph_nodes(graph: ir.Graph) -> int:
    total = 0
    for node in graph:
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                total += sum(1 for _ in attr.value) + _count_subgraph_nodes(attr.value)
            elif attr.type == ir.AttributeType.GRAPHS:
                for g in attr.value:
                    total += sum(1 for _ in g) + _count_subgraph_nodes(g)
    return total


def localize(
    proto: onnx.ModelProto,
    feeds: Sequence[Any],
    reference: Callable[[ir.Graph], tuple[dict[str, Any], dict[str, str]]],
    *,
    rtol: float | None,
    atol: float | None,
    providers: Sequence[str] | None,
    libraries: Sequence[str],
    progress: Progress | None = None,
) -> Localization:
    """Compares every node output that has a PyTorch counterpart; finds the first departure.

    Args:
        proto: The exported model.
        feeds: Its inputs, in graph-input order.
        reference: Gives PyTorch's values by ONNX value name, and their origins.
    """
    from opbridge.runtime import Session

    # Export types only what it wrote; comparing intermediate values needs them all.
    with contextlib.suppress(Exception):
        proto = onnx.shape_inference.infer_shapes(proto)
    model = ir.serde.deserialize_model(proto)  # a copy: the user's model is left alone
    graph = model.graph
    refs, origins = reference(graph)
    outputs = {_n(v) for v in graph.outputs}
    for node in graph:
        for v in node.outputs:
            if _n(v) in refs and _n(v) not in outputs and v.type is not None:
                graph.outputs.append(v)
    session = Session(ir.serde.serialize_model(model), providers=providers, libraries=libraries)
    got = dict(
        zip(
            session.output_names,
            session.run(dict(zip(session.input_names, feeds, strict=False))),
            strict=True,
        )
    )
    graph_inputs = {_n(v) for v in graph.inputs} | set(graph.initializers)
    steps: list[Step] = []
    upstream: dict[str, float] = {}  # value -> its diff, or that of the compared values above
    compared: dict[str, Step] = {}
    first: Divergence | None = None
    nodes = list(graph)
    for i, node in enumerate(nodes):
        if progress is not None:
            progress("comparing intermediate values", i + 1, len(nodes))
        in_diff = max((upstream.get(_n(v), 0.0) for v in node.inputs if v is not None), default=0.0)
        for v in node.outputs:
            want = _as_array(refs.get(_n(v)))
            actual = got.get(_n(v))
            if want is None or actual is None:
                upstream[_n(v)] = in_diff
                continue
            result = compare_arrays(want, np.asarray(actual), rtol=rtol, atol=atol)
            step = Step(
                node.name or "",
                node.op_type,
                node.domain,
                _n(v),
                origins.get(_n(v), "") or _metadata_origin(node),
                result,
            )
            steps.append(step)
            compared[_n(v)] = step
            upstream[_n(v)] = result.max_abs_diff
            if first is None and not result.passed:
                first = Divergence(
                    node=step.node,
                    op_type=step.op_type,
                    domain=step.domain,
                    origin=step.origin,
                    max_abs_diff=result.max_abs_diff,
                    inputs_max_abs_diff=in_diff,
                    value=_n(v),
                    unchecked=_unchecked(node, compared, graph_inputs),
                )
    ancestors = _ancestor_values(nodes, first.value) if first is not None else set()
    return Localization(
        steps, first, len(nodes), _count_subgraph_nodes(graph), ancestors=frozenset(ancestors)
    )


def _metadata_origin(node: ir.Node) -> str:
    """The origin the dynamo exporter wrote on the node itself, if any."""
    meta = node.metadata_props
    scopes = meta.get("pkg.torch.onnx.name_scopes", "")
    module = ""
    if scopes:
        names = [s.strip(" '\"") for s in scopes.strip("[]").split(",")]
        module = next((n for n in reversed(names[:-1]) if n), "")
    fx = meta.get("pkg.torch.onnx.fx_node", "")
    m = re.search(r"target=([\w.:]+)", fx)
    return _origin(
        module, m.group(1) if m else "", _source_line(meta.get("pkg.torch.onnx.stack_trace", ""))
    )


def _unchecked(node: ir.Node, compared: dict[str, Step], graph_inputs: set[str]) -> tuple[str, ...]:
    """Nodes above ``node`` up to the nearest compared values (not compared themselves)."""
    found: list[str] = []
    stack = [v for v in node.inputs if v is not None]
    seen: set[str] = set()
    while stack:
        v = stack.pop()
        if _n(v) in seen or _n(v) in compared or _n(v) in graph_inputs:
            continue
        seen.add(_n(v))
        producer = v.producer()
        if producer is None or producer.op_type == "Constant":
            continue
        found.append(producer.name or producer.op_type)
        stack.extend(i for i in producer.inputs if i is not None)
    return tuple(dict.fromkeys(reversed(found)))


def _ancestor_values(nodes: list[ir.Node], value: str) -> set[str]:
    producers = {_n(v): n for n in nodes for v in n.outputs}
    seen = {value}
    stack = [value]
    while stack:
        node = producers.get(stack.pop())
        if node is None:
            continue
        for v in node.inputs:
            if v is not None and _n(v) not in seen:
                seen.add(_n(v))
                stack.append(_n(v))
    return seen
