"""Finding local accumulators: containers this function creates and only it can see.

``out = []`` followed by ``out.append(f(x))`` in a loop is the most common way to collect
results. If ``out`` were any shared object, every append would be a sync point and the loop
would run one call at a time. But a container created here, mutated only through
``append``/``extend``/``add``/``update``/``d[k] = v``/``+=`` and never handed to code we
cannot see before the last of those mutations, cannot be observed by anybody else: its
mutations only need to stay in order among themselves. That is what this pass proves.
"""
from __future__ import annotations

import ast
import builtins
from dataclasses import dataclass, field

from pydron.translation.sites import SiteFinder

CHAIN_METHODS = frozenset({"append", "extend", "insert", "add", "update", "sort", "reverse",
                           "discard", "remove", "clear"})
_READ_METHODS = frozenset({"get", "count", "index", "copy"})
_FRESH_BUILTINS = tuple(getattr(builtins, n) for n in ("list", "dict", "set"))
_READING_BUILTINS = tuple(getattr(builtins, n) for n in (
    "len", "sorted", "sum", "min", "max", "any", "all", "list", "tuple", "set", "frozenset",
    "dict", "str", "repr", "bool"))
_SCOPES = (ast.Lambda, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


@dataclass
class _Uses:
    fresh: list[tuple[int, tuple[int, ...]]] = field(default_factory=list)
    chains: list[tuple[int, tuple[int, ...]]] = field(default_factory=list)
    escapes: list[tuple[int, tuple[int, ...]]] = field(default_factory=list)
    disqualified: bool = False


class AccumulatorFinder:
    """Walks a normalized body and returns the names that are private accumulators."""

    def __init__(self, finder: SiteFinder, candidates: frozenset[str]) -> None:
        self.finder = finder
        self.uses = {name: _Uses() for name in candidates}
        self.position = 0
        self.loops: list[int] = []

    def find(self, body: list[ast.stmt]) -> frozenset[str]:
        self._block(body)
        return frozenset(name for name, u in self.uses.items() if self._valid(u))

    @staticmethod
    def _valid(u: _Uses) -> bool:
        if u.disqualified or len(u.fresh) != 1 or not u.chains:
            return False
        fresh_pos, fresh_loops = u.fresh[0]
        for c_pos, c_loops in u.chains:
            if c_pos < fresh_pos and not set(c_loops) & set(fresh_loops):
                return False
            for e_pos, e_loops in u.escapes:
                shared = [loop for loop in c_loops if loop in e_loops]
                if c_pos > e_pos:
                    # The chain runs after the object escaped, unless a loop around both
                    # makes a fresh object each time round.
                    if not (shared and shared[-1] in fresh_loops):
                        return False
                elif shared and shared[-1] not in fresh_loops:
                    return False
        return True

    # -- walking ---------------------------------------------------------------------------
    def _block(self, body: list[ast.stmt]) -> None:
        for s in body:
            self.position += 1
            self._stmt(s)

    def _here(self) -> tuple[int, tuple[int, ...]]:
        return self.position, tuple(self.loops)

    def _stmt(self, s: ast.stmt) -> None:
        if isinstance(s, ast.Assign) and len(s.targets) == 1:
            target = s.targets[0]
            if isinstance(target, ast.Name) and target.id in self.uses and self._fresh(s.value):
                self.uses[target.id].fresh.append(self._here())
                self._expr(s.value)
                return
            if self._item_store(target, s.value):
                return
        if isinstance(s, ast.AugAssign):
            target = s.target
            if isinstance(target, ast.Name) and target.id in self.uses:
                self._chain(target.id)
                self._expr(s.value)
                return
            if self._item_store(target, s.value):
                return
        if isinstance(s, ast.Expr) and isinstance(s.value, ast.Call):
            func = s.value.func
            if isinstance(func, ast.Attribute) and func.attr in CHAIN_METHODS \
                    and self._is_cand(func.value):
                self._chain(func.value.id)
                for a in s.value.args:
                    self._expr(a)
                for k in s.value.keywords:
                    self._expr(k.value)
                return
        if isinstance(s, ast.Delete) and all(
                isinstance(t, ast.Subscript) and self._is_cand(t.value) for t in s.targets):
            for t in s.targets:
                self._chain(t.value.id)
                self._expr(t.slice)
            return
        if isinstance(s, (ast.For, ast.AsyncFor)):
            self._expr(s.iter)
            if isinstance(s.iter, ast.Name) and s.iter.id in self.uses:
                self.uses[s.iter.id].escapes.append(self._here())
            self._targets(s.target)
            self.loops.append(id(s))
            self._block(s.body)
            self.loops.pop()
            self._block(s.orelse)
            return
        if isinstance(s, ast.While):
            self.loops.append(id(s))
            self._expr(s.test)
            self._block(s.body)
            self.loops.pop()
            self._block(s.orelse)
            return
        if isinstance(s, _SCOPES):
            for node in ast.walk(s):
                if isinstance(node, ast.Name) and node.id in self.uses:
                    self.uses[node.id].disqualified = True
            return
        # Any other statement: its expressions, then the statements nested in it.
        for name, value in ast.iter_fields(s):
            if isinstance(value, list):
                if value and isinstance(value[0], ast.stmt):
                    self._block(value)
                elif value and isinstance(value[0], ast.excepthandler):
                    for h in value:
                        if h.name in self.uses:
                            self.uses[h.name].disqualified = True
                        if h.type is not None:
                            self._expr(h.type)
                        self._block(h.body)
                elif value and isinstance(value[0], ast.match_case):
                    for case in value:
                        self._expr(case.pattern)
                        if case.guard is not None:
                            self._expr(case.guard)
                        self._block(case.body)
                else:
                    for v in value:
                        if isinstance(v, ast.AST):
                            self._expr(v)
            elif isinstance(value, ast.AST):
                self._expr(value)

    def _item_store(self, target: ast.AST, value: ast.expr) -> bool:
        """``acc[k] = v`` or ``acc[k] += v`` on a candidate: a mutation in its chain."""
        if not (isinstance(target, ast.Subscript) and self._is_cand(target.value)):
            return False
        self._chain(target.value.id)
        self._expr(target.slice)
        self._expr(value)
        return True

    def _targets(self, target: ast.AST) -> None:
        for node in ast.walk(target):
            if isinstance(node, ast.Name) and node.id in self.uses:
                self.uses[node.id].disqualified = True

    def _is_cand(self, node: ast.AST) -> bool:
        return isinstance(node, ast.Name) and node.id in self.uses

    def _chain(self, name: str) -> None:
        self.uses[name].chains.append(self._here())

    def _fresh(self, value: ast.expr) -> bool:
        if isinstance(value, (ast.List, ast.Dict, ast.Set, ast.ListComp, ast.SetComp,
                              ast.DictComp)):
            return True
        if isinstance(value, ast.Call) and isinstance(value.func, ast.Name):
            obj = self.finder.resolve(value.func)
            return any(obj is b for b in _FRESH_BUILTINS)
        return False

    def _expr(self, node: ast.AST) -> None:
        """Classify every use of a candidate inside an expression (or pattern)."""
        stack: list[tuple[ast.AST, ast.AST | None]] = [(node, None)]
        while stack:
            n, parent = stack.pop()
            for child in ast.iter_child_nodes(n):
                stack.append((child, n))
            if isinstance(n, ast.Name) and n.id in self.uses:
                if not isinstance(n.ctx, ast.Load):
                    self.uses[n.id].disqualified = True
                elif not self._reading(n, parent):
                    self.uses[n.id].escapes.append(self._here())
            elif isinstance(n, _SCOPES) or isinstance(n, (ast.GeneratorExp,)):
                for inner in ast.walk(n):
                    if isinstance(inner, ast.Name) and inner.id in self.uses:
                        self.uses[inner.id].disqualified = True
            elif isinstance(n, (ast.MatchAs, ast.MatchStar)) and n.name in self.uses:
                self.uses[n.name].disqualified = True
            elif isinstance(n, ast.MatchMapping) and n.rest in self.uses:
                self.uses[n.rest].disqualified = True

    def _reading(self, name: ast.Name, parent: ast.AST | None) -> bool:
        """Is this use of an accumulator one that only reads it, keeping no reference?"""
        if isinstance(parent, ast.Subscript) and parent.value is name:
            return True
        if isinstance(parent, ast.Compare):
            return True
        if isinstance(parent, ast.Attribute) and parent.value is name:
            return parent.attr in _READ_METHODS
        if isinstance(parent, ast.Call) and name in parent.args and \
                isinstance(parent.func, ast.Name):
            obj = self.finder.resolve(parent.func)
            return any(obj is b for b in _READING_BUILTINS)
        return False
