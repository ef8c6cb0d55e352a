"""``VerificationReport.save_html``: one self-contained page (no scripts, no links out).

Numbers are written twice: readable (``0.01``) and exact in ``data-value`` (``repr``),
so a test (or a reader's tool) can check them against the report object.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

import onnx

if TYPE_CHECKING:
    from opbridge.verification._localize import Step
    from opbridge.verification._verify import VerificationReport

__all__ = ["render"]

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .5em 0; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: left; }
td.num { text-align: right; font-family: ui-monospace, monospace; }
.pass { color: #17692a; font-weight: 600; } .fail { color: #b3261e; font-weight: 600; }
code { background: #f4f4f4; padding: 0 .2em; }
.legend span { display: inline-block; padding: 0 .5em; margin-right: .5em; border: 1px solid #999; }
svg text { font: 11px ui-monospace, monospace; }
"""

_COLOURS = {"diverges": "#f4b4b0", "ok": "#c8e6c9", "departs": "#ffe0b2", "unchecked": "#eeeeee"}


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _num(value: float, css: str) -> str:
    return f'<td class="num {css}" data-value="{value!r}">{value:.3g}</td>'


def _verdict(passed: bool) -> str:
    return '<span class="pass">PASS</span>' if passed else '<span class="fail">FAIL</span>'


def render(report: VerificationReport) -> str:
    """The report as one HTML page."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>opbridge.verify: {'PASSED' if report.passed else 'FAILED'}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f'<h1 id="verdict" data-passed="{str(report.passed).lower()}">opbridge.verify '
        f"({_e(report.exporter)} exporter): {'PASSED' if report.passed else 'FAILED'}</h1>",
        f"<p><code>{_e(report.session)}</code></p>",
    ]
    parts.append(_outputs_table(report))
    parts.append(_localization(report))
    parts.append("</body></html>")
    return "\n".join(parts)


def _outputs_table(report: VerificationReport) -> str:
    rows = [
        "<h2>Outputs</h2>",
        '<table id="outputs"><tr><th>input set</th><th>shapes</th><th>output</th><th>dtype</th>'
        "<th>shape</th><th>max |diff|</th><th>max rel</th><th>rtol</th><th>atol</th>"
        "<th>mismatched</th><th>result</th></tr>",
    ]
    for s in report._sets():
        shapes = " ".join("x".join(map(str, sh)) or "scalar" for sh in s.shapes)
        for o in s.outputs:
            rows.append(
                f'<tr class="output" data-set="{s.index}" data-output="{o.index}">'
                f"<td>{_e(s.label)}</td><td>{_e(shapes)}</td><td>{_e(o.name)}</td>"
                f"<td>{_e(o.dtype)}</td><td>{_e(list(o.shape))}</td>"
                + _num(o.max_abs_diff, "max-abs")
                + _num(o.max_rel_diff, "max-rel")
                + _num(o.rtol, "rtol")
                + _num(o.atol, "atol")
                + f'<td class="num mismatched">{o.mismatched}</td>'
                f"<td>{_verdict(o.passed)} {_e(o.note)}</td></tr>"
            )
    rows.append("</table>")
    return "\n".join(rows)


def _localization(report: VerificationReport) -> str:
    loc = report.localization
    if loc is None:
        return "<h2>Localisation</h2><p>Not run (the outputs matched; pass localize=True).</p>"
    out = [
        "<h2>Localisation</h2>",
        f'<p id="coverage">Input set {loc.input_set}: {loc.compared} of {loc.nodes} node outputs '
        "compared with PyTorch"
        + (
            f"; {loc.subgraph_nodes} nodes inside subgraphs not compared"
            if loc.subgraph_nodes
            else ""
        )
        + ".</p>",
    ]
    d = loc.first_divergence
    if d is None:
        out.append('<p id="no-divergence">No intermediate value departs beyond tolerance.</p>')
        return "\n".join(out)
    where = f"{d.domain}::{d.op_type}" if d.domain else d.op_type
    out += [
        '<table id="divergence">',
        f'<tr><th>node</th><td class="node">{_e(d.node)}</td></tr>',
        f'<tr><th>op</th><td class="op">{_e(where)}</td></tr>',
        f'<tr><th>output</th><td class="value">{_e(d.value)}</td></tr>',
        f'<tr><th>origin</th><td class="origin">{_e(d.origin) or "(unknown)"}</td></tr>',
        "<tr><th>max |diff| of its output</th>" + _num(d.max_abs_diff, "max-abs") + "</tr>",
        "<tr><th>max |diff| of its inputs</th>"
        + _num(d.inputs_max_abs_diff, "inputs-max-abs")
        + "</tr>",
    ]
    if d.unchecked:
        out.append(
            f"<tr><th>not compared on the way</th><td>{_e(', '.join(d.unchecked))}</td></tr>"
        )
    out.append("</table>")
    path = loc.path()
    out.append("<h3>Along the path to it</h3>")
    if len(path) > _PATH_ROWS:
        out.append(f"<p>The last {_PATH_ROWS} of {len(path)} compared values upstream.</p>")
    out.append(_path_table(path[-_PATH_ROWS:], len(path) - min(len(path), _PATH_ROWS)))
    out.append("<h3>The graph around it</h3>")
    out.append(_svg(report.model, loc.steps, d.node, d.value))
    return "\n".join(out)


_PATH_ROWS = 25


def _path_table(path: list[Step], first: int) -> str:
    rows = [
        '<table id="path"><tr><th>#</th><th>node</th><th>op</th><th>output</th><th>origin</th>'
        "<th>max |diff|</th><th>result</th></tr>"
    ]
    for i, s in enumerate(path):
        op = f"{s.domain}::{s.op_type}" if s.domain else s.op_type
        rows.append(
            f'<tr class="step"><td>{first + i}</td><td>{_e(s.node)}</td><td>{_e(op)}</td>'
            f"<td>{_e(s.value)}</td><td>{_e(s.origin)}</td>"
            + _num(s.max_abs_diff, "max-abs")
            + f"<td>{_verdict(s.passed)}</td></tr>"
        )
    rows.append("</table>")
    return "\n".join(rows)


def _neighbourhood(
    model: onnx.ModelProto, target: str, up: int = 3, down: int = 2
) -> list[onnx.NodeProto]:
    nodes = list(model.graph.node)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output}
    consumers: dict[str, list[int]] = {}
    for i, n in enumerate(nodes):
        for v in n.input:
            consumers.setdefault(v, []).append(i)
    start = next((i for i, n in enumerate(nodes) if n.name == target), None)
    if start is None:
        return []
    keep = {start}
    frontier = {start}
    for _ in range(up):
        frontier = {producer[v] for i in frontier for v in nodes[i].input if v in producer}
        frontier = {i for i in frontier if nodes[i].op_type != "Constant"}
        keep |= frontier
    frontier = {start}
    for _ in range(down):
        frontier = {c for i in frontier for v in nodes[i].output for c in consumers.get(v, [])}
        keep |= frontier
    return [nodes[i] for i in sorted(keep)][:40]


def _svg(model: onnx.ModelProto, steps: list[Step], target: str, target_value: str) -> str:
    """Layered drawing: producers left of consumers; colour says how each node compares."""
    nodes = _neighbourhood(model, target)
    if not nodes:
        return "<p>(node not found in the main graph)</p>"
    by_value = {s.value: s for s in steps}
    produced = {o: n.name for n in nodes for o in n.output}
    layer: dict[str, int] = {}
    for n in nodes:  # topological order: a node sits right of its producers
        layer[n.name] = 1 + max((layer[produced[v]] for v in n.input if v in produced), default=-1)
    columns: dict[int, list[onnx.NodeProto]] = {}
    for n in nodes:
        columns.setdefault(layer[n.name], []).append(n)
    box_w, box_h, gap_x, gap_y = 190, 46, 60, 18
    pos: dict[str, tuple[int, int]] = {}
    for col, members in columns.items():
        for row, n in enumerate(members):
            pos[n.name] = (20 + col * (box_w + gap_x), 20 + row * (box_h + gap_y))
    width = 40 + (max(columns) + 1) * (box_w + gap_x)
    height = 40 + max(len(m) for m in columns.values()) * (box_h + gap_y)
    svg = [
        f'<svg id="graph" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6" '
        'markerHeight="6" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#666"/></marker></defs>',
    ]
    for n in nodes:
        x2, y2 = pos[n.name]
        for v in n.input:
            if v in produced:
                x1, y1 = pos[produced[v]]
                svg.append(
                    f'<line x1="{x1 + box_w}" y1="{y1 + box_h // 2}" x2="{x2}" '
                    f'y2="{y2 + box_h // 2}" stroke="#666" marker-end="url(#arrow)"/>'
                )
    for n in nodes:
        x, y = pos[n.name]
        compared = [by_value[o] for o in n.output if o in by_value]
        if target_value in n.output:
            state = "diverges"
        elif not compared:
            state = "unchecked"
        else:
            state = "ok" if all(s.passed for s in compared) else "departs"
        diff = f"max|diff| {max(s.max_abs_diff for s in compared):.3g}" if compared else "—"
        op = f"{n.domain}::{n.op_type}" if n.domain else n.op_type
        name = n.name if len(n.name) <= 26 else "…" + n.name[-25:]
        stroke = ' stroke="#b3261e" stroke-width="3"' if state == "diverges" else ' stroke="#555"'
        svg.append(
            f'<g class="node {state}" data-node="{_e(n.name)}"><title>{_e(n.name)}</title>'
            f'<rect x="{x}" y="{y}" width="{box_w}" height="{box_h}" rx="6" '
            f'fill="{_COLOURS[state]}"{stroke}/>'
            f'<text x="{x + 8}" y="{y + 15}" font-weight="bold">{_e(op[:26])}</text>'
            f'<text x="{x + 8}" y="{y + 28}">{_e(name)}</text>'
            f'<text x="{x + 8}" y="{y + 41}">{_e(diff)}</text></g>'
        )
    svg.append("</svg>")
    legend = (
        '<p class="legend">'
        + "".join(f'<span style="background:{c}">{k}</span>' for k, c in _COLOURS.items())
        + "</p>"
    )
    return legend + "\n" + "\n".join(svg)
