"""One pass over a plain statement that collects what the builder needs to know about it.

Which names it reads and binds (in this function's scope), which of its nodes may have an
effect (calls, stores into objects, imports ...), which names only serve to reach a callee
(``math`` in ``math.sqrt(x)``), and whether it may return from the function or break out
of, or continue, the graph loop around it. Translation time is dominated by walking
trees, so all of this is gathered in a single walk.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass

from pydron.translation.sites import dotted

_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef)
_COMPS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
_LOOPS = (ast.For, ast.While, ast.AsyncFor)
_EFFECTS = (ast.With, ast.AsyncWith, ast.ClassDef, ast.Import, ast.ImportFrom, ast.Call,
            ast.AugAssign, ast.Yield, ast.YieldFrom, ast.Await)


@dataclass
class StatementFacts:
    loads: dict[str, None]
    stores: dict[str, None]
    callee_roots: set[str]
    effect_nodes: list[ast.AST]      # in no particular order
    signals: set[str]                # "return", "break", "continue"
    assigned: set[str]               # bound on every path through the statement
    unbinds: set[str]                # may be unbound by it (``del x``, ``except E as x``)


def scan(s: ast.stmt) -> StatementFacts:
    loads: dict[str, None] = {}
    stores: dict[str, None] = {}
    effects: list[ast.AST] = []
    signals: set[str] = set()
    callee_ids: set[int] = set()
    roots: set[str] = set()
    other: set[str] = set()
    unbinds: set[str] = set()
    # (node, nested scope depth, comprehension depth, loop depth, runs now)
    stack: list[tuple[ast.AST, int, int, int, bool]] = [(s, 0, 0, 0, True)]
    push = stack.append
    while stack:
        node, fdepth, cdepth, ldepth, live = stack.pop()
        t = type(node)
        if t is ast.Name:
            if type(node.ctx) is ast.Load:
                loads[node.id] = None
            elif fdepth == 0 and cdepth == 0:
                stores[node.id] = None
                if type(node.ctx) is ast.Del:
                    unbinds.add(node.id)
            if id(node) not in callee_ids:
                other.add(node.id)
            continue
        if t is ast.Constant:
            continue
        if live and (t in _EFFECTS or (t in (ast.Attribute, ast.Subscript)
                                       and type(node.ctx) is not ast.Load)):
            effects.append(node)
        if t is ast.Call:
            chain = dotted(node.func)
            if chain is not None:
                inner = node.func
                while type(inner) is ast.Attribute:
                    inner = inner.value
                callee_ids.add(id(inner))
                roots.add(chain[0])
        elif t is ast.Return:
            if fdepth == 0:
                signals.add("return")
        elif t is ast.Break or t is ast.Continue:
            if fdepth == 0 and ldepth == 0:
                signals.add("break" if t is ast.Break else "continue")
            continue
        elif t is ast.NamedExpr:
            if fdepth == 0:
                stores[node.target.id] = None
            push((node.value, fdepth, cdepth, ldepth, live))
            continue
        elif t is ast.AugAssign and type(node.target) is ast.Name:
            loads[node.target.id] = None
        elif t in _DEFS or t is ast.ClassDef:
            if fdepth == 0 and cdepth == 0:
                stores[node.name] = None
            heads = list(node.decorator_list)
            if t is ast.ClassDef:
                heads += node.bases + [k.value for k in node.keywords]
            else:
                heads += node.args.defaults + [d for d in node.args.kw_defaults if d]
            for h in heads:
                push((h, fdepth, cdepth, ldepth, live))
            body_live = live and t is ast.ClassDef    # a class body runs now, a def's later
            for b in node.body:
                push((b, fdepth + 1, cdepth, 0, body_live))
            continue
        elif t is ast.Lambda:
            for d in node.args.defaults + [d for d in node.args.kw_defaults if d]:
                push((d, fdepth, cdepth, ldepth, live))
            # Pure builtins such as sorted() call a lambda at once: its calls count.
            push((node.body, fdepth + 1, cdepth, 0, live))
            continue
        elif t in _COMPS:
            for child in ast.iter_child_nodes(node):
                push((child, fdepth, cdepth + 1, ldepth, live))
            continue
        elif t in _LOOPS:
            head = node.test if t is ast.While else node.iter
            push((head, fdepth, cdepth, ldepth, live))
            if t is not ast.While:
                push((node.target, fdepth, cdepth, ldepth, live))
            for b in node.body:
                push((b, fdepth, cdepth, ldepth + 1, live))
            for b in node.orelse:
                push((b, fdepth, cdepth, ldepth, live))
            continue
        elif t is ast.alias:
            if fdepth == 0 and node.name != "*":
                stores[(node.asname or node.name).split(".")[0]] = None
            continue
        elif t is ast.ExceptHandler:
            if node.name and fdepth == 0 and cdepth == 0:
                stores[node.name] = None
                unbinds.add(node.name)      # Python deletes it at the handler's end
        elif t is ast.MatchAs or t is ast.MatchStar:
            if node.name and fdepth == 0:
                stores[node.name] = None
        elif t is ast.MatchMapping:
            if node.rest and fdepth == 0:
                stores[node.rest] = None
        for child in ast.iter_child_nodes(node):
            push((child, fdepth, cdepth, ldepth, live))
    return StatementFacts(loads=loads, stores=stores, callee_roots=roots - other,
                          effect_nodes=effects, signals=signals,
                          assigned=definitely_assigned(s), unbinds=unbinds)


def definitely_assigned(s: ast.stmt) -> set[str]:
    """Names a statement binds whenever it completes normally."""
    names: set[str] = set()
    if isinstance(s, ast.Assign):
        for t in s.targets:
            names |= {n.id for n in ast.walk(t) if isinstance(n, ast.Name)
                      and isinstance(n.ctx, ast.Store)}
    elif isinstance(s, ast.AnnAssign) and s.value is not None and isinstance(s.target, ast.Name):
        names.add(s.target.id)
    elif isinstance(s, ast.AugAssign) and isinstance(s.target, ast.Name):
        names.add(s.target.id)
    elif isinstance(s, (ast.Import, ast.ImportFrom)):
        names |= {(a.asname or a.name).split(".")[0] for a in s.names if a.name != "*"}
    elif isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        names.add(s.name)
    return names
