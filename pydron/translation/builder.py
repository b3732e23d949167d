"""From a normalized body to the graph template: which statements become which steps.

Runs of plain statements become one step each (a step that only computes, or a step that
is a sync point: the two are never merged, so a progress ``print`` cannot hold back the
arithmetic next to it). Dispatch sites become call steps; ``if``, ``for`` and ``while``
statements that contain dispatch sites become refinable steps with blocks inside. After a
statement that may ``return``, ``break`` or ``continue``, the rest of its block is guarded
by a test of the flags those statements set.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass, field
from typing import Optional

from pydron import purity
from pydron.dataflow.template import (RETURN_FLAG, RETURN_VALUE, Block, CallStep, IfStep,
                                      LoopStep, NativeStep, Step)
from pydron.translation.codegen import Compiler
from pydron.translation.normalize import Normalizer
from pydron.translation.scopes import Scopes
from pydron.translation.sites import DYNAMIC, KNOWN_METHODS, MUTATING_METHODS, PURE_METHODS, SiteFinder
from pydron.translation.accumulators import CHAIN_METHODS

_SCOPES = (ast.Lambda, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
_LOOPS = (ast.For, ast.While, ast.AsyncFor)


@dataclass
class _LoopCtx:
    break_var: Optional[str]
    continue_var: Optional[str]


@dataclass
class _Native:
    """What one run of plain statements reads, writes and does."""

    reads: list[str] = field(default_factory=list)
    writes: list[str] = field(default_factory=list)
    assigned: set[str] = field(default_factory=set)
    sync_reasons: list[str] = field(default_factory=list)
    shared_read: bool = False
    receivers: list[str] = field(default_factory=list)
    inplace: list[str] = field(default_factory=list)
    globals_written: set[str] = field(default_factory=set)
    cells_written: set[str] = field(default_factory=set)
    signals: set[str] = field(default_factory=set)


class Builder:
    """Builds the blocks of one template; collects the code to compile on the way."""

    def __init__(self, normalizer: Normalizer, finder: SiteFinder, scopes: Scopes,
                 accumulators: frozenset[str], compiler: Compiler) -> None:
        self.norm = normalizer
        self.finder = finder
        self.scopes = scopes
        self.accumulators = accumulators
        self.compiler = compiler
        self.pending: list[tuple[Step, str, int]] = []   # (step, attribute, compiled index)
        self._loops = 0

    # -- blocks --------------------------------------------------------------------------
    def block(self, stmts: list[ast.stmt], ctx: Optional[_LoopCtx]) -> Block:
        steps: list[Step] = []
        group: list[ast.stmt] = []
        group_sync = False
        signals: set[str] = set()
        stmts = [s for s in stmts if not isinstance(s, (ast.Global, ast.Nonlocal, ast.Pass))]

        def flush() -> None:
            nonlocal group
            if group:
                steps.append(self.native(group, ctx))
                group = []

        for i, s in enumerate(stmts):
            if self.is_graph(s):
                flush()
                new = self.graph_step(s, ctx)
                steps.extend(new)
                raised = set().union(*(self.step_signals(st) for st in new))
            else:
                info = self.analyze([s])
                is_sync = bool(info.sync_reasons)
                if group and is_sync != group_sync:
                    flush()
                group.append(s)
                group_sync = is_sync
                raised = info.signals
                if raised:
                    flush()
            signals |= raised
            rest = stmts[i + 1:]
            if raised and rest:
                guard = self.guard(raised, ctx, rest, s)
                if self.is_graph(guard):
                    flush()
                    steps.extend(self.graph_step(guard, ctx))
                else:
                    steps.append(self.native([guard], ctx))
                signals |= self.step_signals(steps[-1])
                break
        flush()
        return self._finish(steps, signals)

    @staticmethod
    def _finish(steps: list[Step], signals: set[str]) -> Block:
        reads: dict[str, None] = {}
        writes: dict[str, None] = {}
        for st in steps:
            for r in st.reads + st.carry:
                if r not in writes:
                    reads[r] = None
            for w in st.writes:
                writes[w] = None
        return Block(steps=steps, reads=tuple(reads), writes=tuple(writes),
                     may_sync=any(st.may_sync for st in steps), signals=frozenset(signals))

    def guard(self, raised: set[str], ctx: Optional[_LoopCtx], rest: list[ast.stmt],
              where: ast.stmt) -> ast.If:
        """``if not (flags...): rest`` after a statement that may leave the block early."""
        flags = [self.flag_var(sig, ctx) for sig in sorted(raised)]
        flags = [f for f in flags if f]
        test: ast.expr = ast.Name(id=flags[0], ctx=ast.Load()) if len(flags) == 1 else \
            ast.BoolOp(op=ast.Or(), values=[ast.Name(id=f, ctx=ast.Load()) for f in flags])
        node = ast.If(test=ast.UnaryOp(op=ast.Not(), operand=test), body=rest, orelse=[])
        ast.copy_location(node, rest[0])
        ast.fix_missing_locations(node)
        return node

    @staticmethod
    def flag_var(signal: str, ctx: Optional[_LoopCtx]) -> Optional[str]:
        if signal == "return":
            return RETURN_FLAG
        if ctx is None:
            return None
        return ctx.break_var if signal == "break" else ctx.continue_var

    @staticmethod
    def step_signals(step: Step) -> set[str]:
        found: set[str] = set()
        if RETURN_FLAG in step.writes:
            found.add("return")
        if isinstance(step, NativeStep):
            found |= {"break" if v.startswith("_pd_brk") else "continue"
                      for v in step.signal_vars}
        elif isinstance(step, IfStep):
            found |= step.body.signals | step.orelse.signals
        elif isinstance(step, LoopStep):
            found |= step.orelse.signals
        return found

    # -- deciding what is a graph construct ------------------------------------------------
    def is_graph(self, s: ast.stmt) -> bool:
        return any(id(n) in self.norm.tags for n in _walk_no_scopes(s))

    def graph_step(self, s: ast.stmt, ctx: Optional[_LoopCtx]) -> list[Step]:
        if isinstance(s, (ast.Assign, ast.Expr)) and id(s.value) in self.norm.tags:
            return self.call_step(s)
        if isinstance(s, ast.If):
            return self.if_step(s, ctx)
        if isinstance(s, ast.For):
            return self.for_step(s, ctx)
        if isinstance(s, ast.While):
            return self.while_step(s, ctx)
        # A tagged call somewhere we do not open up: plain code (its calls run in order).
        return [self.native([s], ctx)]

    # -- call steps --------------------------------------------------------------------------
    def call_step(self, s: ast.Assign | ast.Expr) -> list[Step]:
        call = s.value
        kind, obj = self.norm.tags[id(call)]
        target = None
        if isinstance(s, ast.Assign):
            target = s.targets[0].id
        reads: list[str] = []
        if kind == DYNAMIC:
            reads.append(call.func.id)
        plain = all(isinstance(a, ast.Name) for a in call.args) and not call.keywords
        arg_names = [n.id for a in call.args + [k.value for k in call.keywords]
                     for n in ([a.value] if isinstance(a, ast.Starred) else [a])
                     if isinstance(n, ast.Name)]
        if plain:
            reads.extend(a.id for a in call.args)
        else:
            unique = list(dict.fromkeys(arg_names))
            reads.extend(unique)
        step = CallStep(reads=tuple(reads), writes=(target,) if target else (),
                        lineno=s.lineno, may_sync=kind == DYNAMIC, target=target,
                        callee=obj if kind != DYNAMIC else None,
                        callee_name=ast.unparse(call.func), source=_source(s))
        if not plain:
            built = ast.Tuple(elts=[
                ast.Tuple(elts=list(call.args), ctx=ast.Load()),
                ast.Dict(keys=[ast.Constant(k.arg) if k.arg else None for k in call.keywords],
                         values=[k.value for k in call.keywords])], ctx=ast.Load())
            index = self.compiler.add_expression(built, tuple(dict.fromkeys(arg_names)), s)
            self.pending.append((step, "build_args", index))
        return [step]

    # -- if ----------------------------------------------------------------------------------
    def if_step(self, s: ast.If, ctx: Optional[_LoopCtx]) -> list[Step]:
        before: list[Step] = []
        test = s.test
        if self._is_flag_test(test):
            params = tuple(n.id for n in ast.walk(test) if isinstance(n, ast.Name))
            test_reads = tuple(dict.fromkeys(params))
        elif isinstance(test, ast.Name) and self._slot_name(test.id):
            test_reads = (test.id,)
        else:
            tmp = self.norm.tmp("t")
            assign = ast.Assign(targets=[ast.Name(id=tmp, ctx=ast.Store())], value=test)
            ast.copy_location(assign, s)
            ast.fix_missing_locations(assign)
            before.append(self.native([assign], ctx))
            test_reads = (tmp,)
            test = ast.Name(id=tmp, ctx=ast.Load())
        body = self.block(s.body, ctx)
        orelse = self.block(s.orelse, ctx)
        writes = tuple(dict.fromkeys(body.writes + orelse.writes))
        carry = tuple(dict.fromkeys(body.reads + orelse.reads + writes))
        step = IfStep(reads=test_reads, writes=writes, lineno=s.lineno,
                      may_sync=body.may_sync or orelse.may_sync, carry=carry,
                      source=f"if {ast.unparse(s.test)}:", body=body, orelse=orelse)
        if len(test_reads) != 1 or not isinstance(test, ast.Name):
            index = self.compiler.add_expression(test, test_reads, s)
            self.pending.append((step, "test", index))
        return before + [step]

    @staticmethod
    def _is_flag_test(test: ast.expr) -> bool:
        names = [n.id for n in ast.walk(test) if isinstance(n, ast.Name)]
        return bool(names) and all(n.startswith(("_pd_brk", "_pd_cont", "_pd_ret"))
                                   for n in names)

    # -- loops -------------------------------------------------------------------------------
    def _loop_ctx(self) -> tuple[int, _LoopCtx]:
        self._loops += 1
        n = self._loops
        return n, _LoopCtx(f"_pd_brk{n}", f"_pd_cont{n}")

    def for_step(self, s: ast.For, outer: Optional[_LoopCtx]) -> list[Step]:
        n, ctx = self._loop_ctx()
        before: list[Step] = []
        iterable = s.iter
        if not (isinstance(iterable, ast.Name) and self._slot_name(iterable.id)):
            tmp = self.norm.tmp("t")
            assign = ast.Assign(targets=[ast.Name(id=tmp, ctx=ast.Store())], value=iterable)
            ast.copy_location(assign, s)
            ast.fix_missing_locations(assign)
            before.append(self.native([assign], None))
            iterable = ast.Name(id=tmp, ctx=ast.Load())
        body_stmts = list(s.body)
        if isinstance(s.target, ast.Name) and self._slot_name(s.target.id):
            item = s.target.id
        else:
            item = f"_pd_item{n}"
            assign = ast.Assign(targets=[s.target], value=ast.Name(id=item, ctx=ast.Load()))
            ast.copy_location(assign, s)
            ast.fix_missing_locations(assign)
            body_stmts.insert(0, assign)
        body = self.block(body_stmts, ctx)
        orelse = self.block(s.orelse, outer)     # ``else`` belongs to the enclosing loop
        mentioned = {x.id for part in s.body + s.orelse for x in ast.walk(part)
                     if isinstance(x, ast.Name)}
        return before + [self._loop(s, "for", n, ctx, body, orelse, (iterable.id,), item,
                                    iter_private=iterable.id not in mentioned)]

    def while_step(self, s: ast.While, outer: Optional[_LoopCtx]) -> list[Step]:
        n, ctx = self._loop_ctx()
        test_var = f"_pd_w{n}"
        assign = ast.Assign(targets=[ast.Name(id=test_var, ctx=ast.Store())], value=s.test)
        ast.copy_location(assign, s)
        ast.fix_missing_locations(assign)
        test_block = self.block(self.norm.while_pre.get(id(s), []) + [assign], None)
        body = self.block(s.body, ctx)
        orelse = self.block(s.orelse, outer)
        return [self._loop(s, "while", n, ctx, body, orelse, (), "", test_block=test_block,
                           test_reads=(test_var,))]

    def _loop(self, s: ast.stmt, kind: str, n: int, ctx: _LoopCtx, body: Block,
              orelse: Block, reads: tuple[str, ...], item: str, iter_private: bool = False,
              test_block: Optional[Block] = None, test_reads: tuple[str, ...] = ()) -> LoopStep:
        flags = {ctx.break_var, ctx.continue_var}
        test_block = test_block or Block([])
        parts = (body, orelse, test_block)
        writes = [w for p in parts for w in p.writes if w not in flags]
        if item:
            writes.insert(0, item)
        writes_t = tuple(dict.fromkeys(writes))
        carry = tuple(dict.fromkeys([r for p in parts for r in p.reads if r not in flags]
                                    + list(writes_t)))
        header = ast.unparse(s).splitlines()[0]
        return LoopStep(
            reads=reads, writes=writes_t, lineno=s.lineno, carry=carry, source=header,
            may_sync=any(p.may_sync for p in parts), kind=kind, item=item, body=body,
            orelse=orelse, test_block=test_block, test_reads=test_reads,
            break_var=ctx.break_var if "break" in body.signals else None,
            continue_var=ctx.continue_var if "continue" in body.signals else None,
            returns=RETURN_FLAG in body.writes, iter_private=iter_private)

    # -- plain code ----------------------------------------------------------------------------
    def native(self, stmts: list[ast.stmt], ctx: Optional[_LoopCtx]) -> NativeStep:
        info = self.analyze(stmts)
        writes = list(info.writes)
        signal_vars: list[str] = []
        if ctx is not None:
            for sig, var in (("break", ctx.break_var), ("continue", ctx.continue_var)):
                if sig in info.signals and var:
                    signal_vars.append(var)
        writes += signal_vars
        reads = list(info.reads)
        for w in info.writes:          # a value that may stay as it was passes through
            if w not in info.assigned and w not in reads:
                reads.append(w)
        returns = "return" in info.signals
        if returns:    # on a normal exit the return flag and value pass through unchanged
            for var in (RETURN_FLAG, RETURN_VALUE):
                if var not in reads:
                    reads.append(var)
                if var not in writes:
                    writes.append(var)
        receiver_checks = tuple(reads.index(r) for r in info.receivers if r in reads)
        inplace_checks = tuple(reads.index(r) for r in info.inplace if r in reads)
        if returns:
            writes = [w for w in writes if w not in (RETURN_FLAG, RETURN_VALUE)] \
                + [RETURN_FLAG, RETURN_VALUE]
        index = self.compiler.add_native(
            stmts, tuple(reads), tuple(writes), frozenset(info.assigned),
            frozenset(info.globals_written), frozenset(info.cells_written),
            ctx.break_var if ctx else None, ctx.continue_var if ctx else None)
        if returns:    # the runtime expects them last
            writes = [w for w in writes if w not in (RETURN_FLAG, RETURN_VALUE)] \
                + [RETURN_FLAG, RETURN_VALUE]
        step = NativeStep(reads=tuple(reads), writes=tuple(writes), lineno=stmts[0].lineno,
                          may_sync=bool(info.sync_reasons or receiver_checks
                                        or inplace_checks),
                          source="\n".join(_source(s) for s in stmts),
                          sync_reasons=tuple(dict.fromkeys(info.sync_reasons)),
                          shared_read=info.shared_read, receiver_checks=receiver_checks,
                          inplace_checks=inplace_checks,
                          returns=returns, signal_vars=tuple(signal_vars))
        self.pending.append((step, "fn", index))
        return step

    def _slot_name(self, name: str) -> bool:
        return self.scopes.is_slot_local(name) or (name.startswith("_pd_")
                                                   and name not in self.scopes.cells)

    def analyze(self, stmts: list[ast.stmt]) -> _Native:
        """Reads, writes and effects of plain statements."""
        info = _Native()
        reads: dict[str, None] = {}
        writes: dict[str, None] = {}
        for s in stmts:
            loads, stores = _NameUses.of(s)
            callee_roots = _callee_roots(s)
            for name in loads:
                if self._slot_name(name):
                    if name not in info.assigned:
                        reads[name] = None
                    if name in self.accumulators:
                        writes[name] = None      # readers stay ordered with mutations
                elif name in self.scopes.cells or name in self.scopes.frees:
                    info.shared_read = True
                elif not (self.finder.global_is_constant(name) or (
                        name in callee_roots and self.finder.is_stable_global(name))):
                    info.shared_read = True     # a module's or class's attributes may change
            for name in stores:
                if self._slot_name(name):
                    writes[name] = None
                elif name in self.scopes.declared_globals or (
                        name not in self.scopes.locals and name not in self.scopes.frees):
                    info.globals_written.add(name)
                    info.sync_reasons.append(f"writes global variable {name}")
                else:
                    info.cells_written.add(name)
                    info.sync_reasons.append(
                        f"writes {name}, a variable shared with a nested function")
            self._effects(s, info, writes)
            info.assigned |= _definitely_assigned(s)
            info.signals |= _signals(s)
        info.reads = list(reads)
        info.writes = list(writes)
        return info

    def _effects(self, s: ast.stmt, info: _Native, writes: dict[str, None]) -> None:
        for node in _walk_effects(s):
            if isinstance(node, ast.With):
                info.sync_reasons.append("a 'with' statement runs as one sequential step")
            elif isinstance(node, ast.ClassDef):
                info.sync_reasons.append(f"class {node.name} is defined by running its body")
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                info.sync_reasons.append("an import runs module code")
            elif isinstance(node, ast.Call):
                self._call_effect(node, info, writes)
            elif isinstance(node, (ast.Attribute, ast.Subscript)) and \
                    isinstance(node.ctx, (ast.Store, ast.Del)):
                base = node.value
                if isinstance(node, ast.Subscript) and isinstance(base, ast.Name) \
                        and base.id in self.accumulators:
                    writes[base.id] = None
                else:
                    what = "attribute" if isinstance(node, ast.Attribute) else "item"
                    info.sync_reasons.append(
                        f"changes an {what} of {ast.unparse(base)}, which others may see")
            elif isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name) \
                    and node.target.id not in self.accumulators and \
                    self._slot_name(node.target.id):
                # ``x += v`` mutates x in place when x is mutable: decided at run time.
                info.inplace.append(node.target.id)
            elif isinstance(node, (ast.Yield, ast.YieldFrom, ast.Await)):
                info.sync_reasons.append("yield/await")

    def _call_effect(self, call: ast.Call, info: _Native, writes: dict[str, None]) -> None:
        func = call.func
        if isinstance(func, ast.Attribute) and func.attr in KNOWN_METHODS and \
                not _is_global_chain(func, self.finder):
            recv = func.value
            if isinstance(recv, ast.Name) and recv.id in self.accumulators and \
                    func.attr in CHAIN_METHODS:
                writes[recv.id] = None
                return
            if func.attr in PURE_METHODS:
                if isinstance(recv, ast.Constant):
                    return
                if isinstance(recv, ast.Name) and self._slot_name(recv.id):
                    info.receivers.append(recv.id)
                    return
                info.sync_reasons.append(f"calls {ast.unparse(func)}() on an object of "
                                         f"unknown type")
                return
            if func.attr in MUTATING_METHODS:
                info.sync_reasons.append(f"{ast.unparse(func)}() changes a shared object")
                return
        kind, reason = self.finder.plain_call_kind(call)
        if kind == purity.SYNC:
            info.sync_reasons.append(reason)


def _is_global_chain(func: ast.Attribute, finder: SiteFinder) -> bool:
    from pydron.translation.sites import dotted
    chain = dotted(func)
    return chain is not None and not finder.is_local(chain[0])


class _NameUses(ast.NodeVisitor):
    """Names loaded and stored by a statement, nested scopes included for loads (their
    free variables are read when they run), excluded for stores (they bind their own)."""

    def __init__(self) -> None:
        self.loads: dict[str, None] = {}
        self.stores: dict[str, None] = {}
        self.depth = 0

    @classmethod
    def of(cls, node: ast.AST) -> tuple[list[str], list[str]]:
        v = cls()
        v.visit(node)
        return list(v.loads), list(v.stores)

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load):
            self.loads[node.id] = None
        elif self.depth == 0:
            self.stores[node.id] = None

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self.stores[node.target.id] = None      # binds in the function, even in a comprehension
        self.visit(node.value)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        if isinstance(node.target, ast.Name):
            self.loads[node.target.id] = None
        self.generic_visit(node)

    def _scope(self, node: ast.AST) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if self.depth == 0:
                self.stores[node.name] = None
            for d in node.decorator_list:
                self.visit(d)
            if not isinstance(node, ast.ClassDef):
                for d in node.args.defaults + [d for d in node.args.kw_defaults if d]:
                    self.visit(d)
            else:
                for b in node.bases + [k.value for k in node.keywords]:
                    self.visit(b)
        self.depth += 1
        body = node.body if isinstance(node.body, list) else [node.body]
        for b in body:
            self.visit(b)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = visit_Lambda = _scope

    def _comp(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_ListComp = visit_SetComp = visit_DictComp = visit_GeneratorExp = _comp

    def visit_alias(self, node: ast.alias) -> None:
        if node.name != "*":
            self.stores[(node.asname or node.name).split(".")[0]] = None

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.name and self.depth == 0:
            self.stores[node.name] = None
        self.generic_visit(node)

    def visit_MatchAs(self, node: ast.MatchAs) -> None:
        if node.name and self.depth == 0:
            self.stores[node.name] = None
        self.generic_visit(node)

    def visit_MatchStar(self, node: ast.MatchStar) -> None:
        if node.name and self.depth == 0:
            self.stores[node.name] = None

    def visit_MatchMapping(self, node: ast.MatchMapping) -> None:
        if node.rest and self.depth == 0:
            self.stores[node.rest] = None
        self.generic_visit(node)


def _callee_roots(s: ast.AST) -> set[str]:
    """Names used only to reach a callee, as ``math`` in ``math.sqrt(x)``."""
    from pydron.translation.sites import dotted
    roots: set[str] = set()
    other: set[str] = set()
    callee_names: set[int] = set()
    for node in ast.walk(s):
        if isinstance(node, ast.Call):
            chain = dotted(node.func)
            if chain is not None:
                inner = node.func
                while isinstance(inner, ast.Attribute):
                    inner = inner.value
                callee_names.add(id(inner))
                roots.add(chain[0])
    for node in ast.walk(s):
        if isinstance(node, ast.Name) and id(node) not in callee_names:
            other.add(node.id)
    return roots - other


def _walk_no_scopes(node: ast.AST):
    """ast.walk that does not enter nested function, lambda or class bodies."""
    todo = [node]
    while todo:
        n = todo.pop()
        yield n
        if n is not node and isinstance(n, _SCOPES):
            continue
        todo.extend(ast.iter_child_nodes(n))


def _walk_effects(node: ast.AST):
    """Nodes whose evaluation happens when this statement runs (lambda bodies included,
    since pure builtins such as sorted() call them right away; def bodies excluded)."""
    todo = [node]
    while todo:
        n = todo.pop()
        yield n
        if n is not node and isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
            todo.extend(n.decorator_list)
            todo.extend(n.args.defaults)
            todo.extend(d for d in n.args.kw_defaults if d is not None)
            continue
        if isinstance(n, ast.ClassDef) and n is not node:
            continue
        todo.extend(ast.iter_child_nodes(n))


def _definitely_assigned(s: ast.stmt) -> set[str]:
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


def _signals(s: ast.stmt) -> set[str]:
    """Which of return / break / continue a plain statement may execute for its context."""
    found: set[str] = set()

    def walk(node: ast.AST, in_loop: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, _SCOPES):
                continue
            if isinstance(child, ast.Return):
                found.add("return")
            elif isinstance(child, ast.Break) and not in_loop:
                found.add("break")
            elif isinstance(child, ast.Continue) and not in_loop:
                found.add("continue")
            if isinstance(child, _LOOPS):
                for b in child.body:
                    walk_stmt(b, True)
                for b in child.orelse:
                    walk_stmt(b, in_loop)
                walk(ast.Expression(body=child.iter if not isinstance(child, ast.While)
                                    else child.test), in_loop)
            else:
                walk(child, in_loop)

    def walk_stmt(st: ast.stmt, in_loop: bool) -> None:
        wrapper = ast.Module(body=[st], type_ignores=[])
        walk(wrapper, in_loop)

    walk_stmt(s, False)
    return found


def _source(s: ast.AST) -> str:
    try:
        return ast.unparse(s)
    except Exception:
        return type(s).__name__
