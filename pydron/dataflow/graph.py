"""The graph template as a networkx DiGraph, and as DOT text for Graphviz.

Nodes are steps (with their kind, line and, for sync points, why); an edge carries one
variable from the step that last wrote it to a step that reads it. The blocks inside ``if``
and loop steps are part of the same graph: their steps have a ``parent`` attribute naming
the step they belong to, and their inputs arrive through edges from that step.
"""
from __future__ import annotations

from typing import Any

import networkx as nx

from pydron.dataflow.template import (Block, CallStep, IfStep, LoopStep, NativeStep, Step,
                                      TryStep)


def block_graph(block: Block, params: tuple[str, ...] = ()) -> nx.DiGraph:
    """A DiGraph of ``block`` and every block nested in it."""
    graph = nx.DiGraph()
    writers = {}
    for p in params:
        node = f"param {p}"
        graph.add_node(node, kind="param", label=p, line=None)
        writers[p] = node
    _add_block(graph, block, "", writers, parent=None)
    return graph


def _kind(step: Step) -> str:
    if isinstance(step, CallStep):
        return "call"
    if isinstance(step, NativeStep):
        return "sync" if step.sync_reasons or step.output_only else "local"
    if isinstance(step, IfStep):
        return "if"
    if isinstance(step, (LoopStep, TryStep)):
        return step.kind
    return type(step).__name__


def _add_block(graph: nx.DiGraph, block: Block, prefix: str, writers: dict[str, str],
               parent: Any) -> None:
    writers = dict(writers)
    for i, step in enumerate(block.steps):
        node = f"{prefix}s{i}"
        attrs = dict(kind=_kind(step), label=_label(step), line=step.lineno, parent=parent,
                     source=step.source)
        if isinstance(step, NativeStep) and (step.sync_reasons or step.output_only):
            attrs["why"] = "; ".join(step.sync_reasons + step.output_only)
        graph.add_node(node, **attrs)
        for var in dict.fromkeys(step.reads + step.carry):
            source = writers.get(var)
            if source is not None:
                if graph.has_edge(source, node):
                    graph.edges[source, node]["vars"].append(var)
                else:
                    graph.add_edge(source, node, vars=[var])
        if isinstance(step, TryStep):
            inner = {**writers, **{v: node for v in step.reads + step.carry}}
            _add_block(graph, step.body, f"{node}.body.", inner, node)
            handle = f"{node}.handle"
            graph.add_node(handle, kind="sync", label=_label(step.handle), parent=node,
                           line=step.handle.lineno, source=step.handle.source,
                           why="; ".join(step.handle.sync_reasons))
        if isinstance(step, (IfStep, LoopStep)):
            inner = {**writers, **{v: node for v in step.reads + step.carry}}
            if isinstance(step, IfStep):
                _add_block(graph, step.body, f"{node}.then.", inner, node)
                _add_block(graph, step.orelse, f"{node}.else.", inner, node)
            else:
                _add_block(graph, step.test_block, f"{node}.test.", inner, node)
                _add_block(graph, step.body, f"{node}.body.", inner, node)
                _add_block(graph, step.orelse, f"{node}.else.", inner, node)
        for var in step.writes:
            writers[var] = node


def _label(step: Step) -> str:
    text = step.source.splitlines()[0] if step.source else _kind(step)
    return text if len(text) <= 60 else text[:57] + "..."


_STYLE = {"call": 'shape=box, style="rounded,filled", fillcolor="#cde8ff"',
          "sync": 'shape=box, style=filled, fillcolor="#ffd6cc"',
          "local": "shape=box",
          "if": "shape=diamond",
          "for": "shape=hexagon", "while": "shape=hexagon",
          "try": "shape=octagon", "with": "shape=octagon",
          "param": "shape=plaintext"}


def to_dot(graph: nx.DiGraph, name: str = "pydron") -> str:
    """DOT text of a graph from :func:`block_graph` (nested blocks become clusters)."""
    children: dict[Any, list[str]] = {}
    for node, data in graph.nodes(data=True):
        children.setdefault(data.get("parent"), []).append(node)
    lines = [f"digraph {_quote(name)} {{", "  node [fontname=Helvetica, fontsize=10];"]

    def emit(parent: Any, indent: str) -> None:
        for node in children.get(parent, []):
            data = graph.nodes[node]
            label = f"{data['label']}"
            if data.get("line"):
                label = f"{data['line']}: {label}"
            style = _STYLE.get(data["kind"], "shape=box")
            lines.append(f"{indent}{_quote(node)} [label={_quote(label)}, {style}];")
            if node in children:
                lines.append(f"{indent}subgraph {_quote('cluster ' + node)} {{")
                lines.append(f"{indent}  label={_quote(data['kind'] + ' body')}; style=dashed;")
                emit(node, indent + "  ")
                lines.append(f"{indent}}}")

    emit(None, "  ")
    for a, b, data in graph.edges(data=True):
        lines.append(f"  {_quote(a)} -> {_quote(b)} [label={_quote(', '.join(data['vars']))}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _quote(text: str) -> str:
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"') + '"'
