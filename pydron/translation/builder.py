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
import functools
from dataclasses import dataclass, field
from typing import Optional

from pydron import purity
from pydron.dataflow.template import (RETURN_FLAG, RETURN_VALUE, Block, CallStep, IfStep,
                                      LoopStep, NativeStep, Step, TryStep)
from pydron.translation.codegen import Compiler, locate
from pydron.translation.facts import scan
from pydron.translation.normalize import Normalizer
from pydron.translation.scopes import Scopes
from pydron.translation.sites import (DYNAMIC, KNOWN_METHODS, MUTATING_METHODS, PURE_METHODS,
                                     SiteFinder, dotted)
from pydron.translation.accumulators import CHAIN_METHODS
from pydron.translation.sites import _MISSING as _MISSING_OBJ

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
    output_only: list[str] = field(default_factory=list)   # sync points that change nothing
    shared_read: bool = False
    receivers: list[str] = field(default_factory=list)
    callbacks: list[str] = field(default_factory=list)     # must be inert (see purity)
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
        self._facts_memo: dict[int, tuple] = {}
        self._graph_memo: dict[int, bool] = {}
        self._keep: list[ast.AST] = []     # nodes whose ids key the memos stay alive

    # -- blocks --------------------------------------------------------------------------
    def block(self, stmts: list[ast.stmt], ctx: Optional[_LoopCtx]) -> Block:
        steps: list[Step] = []
        group: list[ast.stmt] = []
        group_sync = 0
        group_waits = False
        # Variables that wait on a call of this block (its targets, and what is computed
        # from them): a statement that reads one is not merged with one that does not, so
        # ``out.append(f(i)); i += 1`` lets the next iteration's ``i`` be known at once.
        waiting: set[str] = set()
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
                waiting.update(w for st in new for w in st.writes)
                raised = set().union(*(self.step_signals(st) for st in new))
            else:
                info = self.analyze([s])
                # pure code, output-only sync points and barriers are never merged
                is_sync = 2 if info.sync_reasons else (1 if info.output_only else 0)
                waits = not waiting.isdisjoint(info.reads)
                if group and (is_sync != group_sync or waits != group_waits):
                    flush()
                if waits:
                    waiting.update(info.writes)
                group.append(s)
                group_sync = is_sync
                group_waits = waits
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
        node = ast.If(test=self._none_set(raised, ctx), body=rest, orelse=[])
        return locate(node, rest[0])

    def _none_set(self, signals: set[str] | frozenset[str], ctx: Optional[_LoopCtx]
                  ) -> Optional[ast.expr]:
        """``not (flag or ...)`` over the flags of ``signals`` (None: no flag to test)."""
        flags = [f for f in (self.flag_var(sig, ctx) for sig in sorted(signals)) if f]
        if not flags:
            return None
        test: ast.expr = ast.Name(id=flags[0], ctx=ast.Load()) if len(flags) == 1 else \
            ast.BoolOp(op=ast.Or(), values=[ast.Name(id=f, ctx=ast.Load()) for f in flags])
        return ast.UnaryOp(op=ast.Not(), operand=test)

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
        elif isinstance(step, TryStep):
            found |= step.body.signals | Builder.step_signals(step.handle)
        return found

    # -- deciding what is a graph construct ------------------------------------------------
    def is_graph(self, s: ast.stmt) -> bool:
        hit = self._graph_memo.get(id(s))
        if hit is None:
            # A while loop whose test was lowered keeps the test's statements beside the
            # loop (they run before every test): only the graph form runs them.
            tags, pre = self.norm.tags, self.norm.while_pre
            hit = self._graph_memo[id(s)] = any(
                id(n) in tags or (type(n) is ast.While and pre.get(id(n)))
                for n in _walk_no_scopes(s))
            self._keep.append(s)
        return hit

    def graph_step(self, s: ast.stmt, ctx: Optional[_LoopCtx]) -> list[Step]:
        if isinstance(s, (ast.Assign, ast.Expr)) and id(s.value) in self.norm.tags:
            return self.call_step(s)
        if isinstance(s, ast.If):
            return self.if_step(s, ctx)
        if isinstance(s, ast.For):
            return self.for_step(s, ctx)
        if isinstance(s, ast.While):
            return self.while_step(s, ctx)
        if type(s) is ast.Try:
            return [self.try_step(s, ctx)]
        if type(s) is ast.With:
            return self.with_step(s, ctx)
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
                        callee_name=_dotted_text(call.func), nodes=(s,))
        if getattr(call, "lineno", None) == s.lineno == getattr(call, "end_lineno", None):
            step.col_offset, step.end_col_offset = call.col_offset, call.end_col_offset
        step.frames = self.norm.frames.get(id(call), ())
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
            locate(assign, s)
            before.append(self.native([assign], ctx))
            test_reads = (tmp,)
            test = ast.Name(id=tmp, ctx=ast.Load())
        body = self.block(s.body, ctx)
        orelse = self.block(s.orelse, ctx)
        writes = tuple(dict.fromkeys(body.writes + orelse.writes))
        carry = tuple(dict.fromkeys(body.reads + orelse.reads + writes))
        step = IfStep(reads=test_reads, writes=writes, lineno=s.lineno,
                      may_sync=body.may_sync or orelse.may_sync, carry=carry,
                      nodes=(ast.If(test=s.test, body=[], orelse=[]),), body=body,
                      orelse=orelse)
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
            locate(assign, s)
            before.append(self.native([assign], None))
            iterable = ast.Name(id=tmp, ctx=ast.Load())
        body_stmts = list(s.body)
        if isinstance(s.target, ast.Name) and self._slot_name(s.target.id):
            item = s.target.id
        else:
            item = f"_pd_item{n}"
            assign = ast.Assign(targets=[s.target], value=ast.Name(id=item, ctx=ast.Load()))
            locate(assign, s)
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
        locate(assign, s)
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
        header = (ast.For(target=s.target, iter=s.iter, body=[], orelse=[])
                  if isinstance(s, ast.For) else ast.While(test=s.test, body=[], orelse=[]))
        return LoopStep(
            reads=reads, writes=writes_t, lineno=s.lineno, carry=carry, nodes=(header,),
            may_sync=any(p.may_sync for p in parts), kind=kind, item=item, body=body,
            orelse=orelse, test_block=test_block, test_reads=test_reads,
            break_var=ctx.break_var if "break" in body.signals else None,
            continue_var=ctx.continue_var if "continue" in body.signals else None,
            returns=RETURN_FLAG in body.writes, iter_private=iter_private,
            speculate=bool("break" in body.signals or RETURN_FLAG in body.writes)
            and any(isinstance(st, CallStep) for st in body.steps))

    # -- try and with -----------------------------------------------------------------------
    def try_step(self, s: ast.Try, ctx: Optional[_LoopCtx]) -> TryStep:
        """The body as graph; handlers, ``else`` and ``finally`` as one plain step that gets
        the body's exception (see TryStep). Its ``try`` re-raises that exception, so that
        matching, ``as`` names, chaining and ``finally`` are Python's own; each handler
        first gives the exception back the traceback and context of a plain run."""
        names = self._try_names()
        body = self.block(s.body, ctx)
        exc, tb, context = names
        orelse = list(s.orelse)
        ran_off = self._none_set(body.signals, ctx)
        if orelse and ran_off is not None:    # ``else`` runs only if the body ran off its end
            orelse = [locate(ast.If(test=ran_off, body=orelse, orelse=[]), s.orelse[0])]
        handlers = [ast.ExceptHandler(type=h.type, name=h.name,
                                      body=self._restore(names, h) + h.body)
                    for h in s.handlers]
        for new, old in zip(handlers, s.handlers):
            ast.copy_location(new, old)
        stmt = ast.Try(body=[self._reraise(exc, _header(s))], handlers=handlers,
                       orelse=orelse, finalbody=list(s.finalbody))
        locate(stmt, _header(s))
        handle = self.native([stmt], ctx, passthrough=body.writes,
                             reasons=("the handlers of a try run once its body has finished",))
        return self._try(s, body, handle, names, "try")

    def with_step(self, s: ast.With, ctx: Optional[_LoopCtx]) -> list[Step]:
        """``with`` as PEP 343 spells it: the manager entered by one plain step, the body
        as graph, ``__exit__`` given the body's exception (or Nones) by the handle step,
        which re-raises unless ``__exit__`` returns a true value."""
        names = self._try_names()
        exc, tb, context = names
        n = exc[len("_pd_exc"):]
        mgr, exit_, value = f"_pd_mgr{n}", f"_pd_exit{n}", f"_pd_val{n}"
        item = s.items[0]
        enter = ast.parse(
            f"{mgr} = _pd_expr\n"
            f"if not (hasattr(type({mgr}), '__enter__') and hasattr(type({mgr}), '__exit__')):\n"
            f"    with {mgr}:\n"      # Python's own error for what is no context manager
            f"        pass\n"
            f"{exit_} = type({mgr}).__exit__\n"
            f"{value} = type({mgr}).__enter__\n"
            f"{value} = {value}({mgr})\n").body
        _unposition(enter)
        enter[0].value = item.context_expr
        # Python's own code for a with sits on the whole statement (a traceback marks no
        # columns); a call of an attribute would move to the attribute's last line, so the
        # code below calls names only.
        where = s
        for st in enter:
            locate(st, where)
        before = self.native(enter, ctx, reasons=("enters a context manager (its __enter__)",))
        body_stmts = list(s.body)
        if item.optional_vars is not None:
            bind = ast.Assign(targets=[item.optional_vars],
                              value=ast.Name(id=value, ctx=ast.Load()))
            body_stmts.insert(0, locate(bind, where))
        body = self.block(body_stmts, ctx)
        handler = ast.parse(
            f"try:\n"
            f"    pass\n"
            f"except BaseException:\n"
            f"    if not {exit_}({mgr}, type({exc}), {exc}, {tb}):\n"
            f"        raise\n"
            f"else:\n"
            f"    {exit_}({mgr}, None, None, None)\n").body[0]
        _unposition([handler])
        handler.body = [self._reraise(exc, where)]
        handler.handlers[0].body[:0] = self._restore(names, where)
        locate(handler, where)
        handle = self.native([handler], ctx, passthrough=body.writes,
                             reasons=("calls the context manager's __exit__ once the body "
                                      "of the with has finished",))
        return [before, self._try(s, body, handle, names, "with")]

    def _try_names(self) -> tuple[str, str, str]:
        self._loops += 1
        n = self._loops
        return f"_pd_exc{n}", f"_pd_tb{n}", f"_pd_ctx{n}"

    @staticmethod
    def _reraise(exc: str, where: ast.stmt) -> ast.stmt:
        """``if exc is not None: raise exc``: the body's exception, raised where it is
        handled."""
        stmt = ast.If(test=ast.Compare(left=ast.Name(id=exc, ctx=ast.Load()), ops=[ast.IsNot()],
                                       comparators=[ast.Constant(None)]),
                      body=[ast.Raise(exc=ast.Name(id=exc, ctx=ast.Load()), cause=None)],
                      orelse=[])
        return locate(stmt, where)

    @staticmethod
    def _restore(names: tuple[str, str, str], where: ast.AST) -> list[ast.stmt]:
        """Raising the body's exception again gave it this step's frame and the caller's
        context: give it back what a plain run would have shown."""
        exc, tb, context = names
        out = []
        for attr, var in (("__traceback__", tb), ("__context__", context)):
            target = ast.Attribute(value=ast.Name(id=exc, ctx=ast.Load()), attr=attr,
                                   ctx=ast.Store())
            out.append(locate(ast.Assign(targets=[target], value=ast.Name(id=var, ctx=ast.Load())),
                              where))
        return out

    def _try(self, s: ast.stmt, body: Block, handle: NativeStep,
             names: tuple[str, str, str], kind: str) -> TryStep:
        exc, tb, context = names
        carry = tuple(dict.fromkeys(
            [r for r in body.reads] + [r for r in handle.reads if r not in names]))
        header = ast.Try(body=[], handlers=[], orelse=[], finalbody=[]) if kind == "try" \
            else ast.With(items=s.items, body=[], type_comment=None)
        return TryStep(reads=(), writes=handle.writes, lineno=s.lineno, may_sync=True,
                       carry=carry, nodes=(header,), body=body, handle=handle,
                       exc_var=exc, tb_var=tb, ctx_var=context, kind=kind)

    # -- plain code ----------------------------------------------------------------------------
    def native(self, stmts: list[ast.stmt], ctx: Optional[_LoopCtx],
               passthrough: tuple[str, ...] = (),
               reasons: tuple[str, ...] = ()) -> NativeStep:
        """One step running ``stmts``. ``passthrough``: variables it hands on unchanged
        unless it binds them; ``reasons``: why it is a sync point, in place of what the
        statements show (for steps the translator wrote)."""
        info = self.analyze(stmts)
        if reasons:
            info.sync_reasons = list(reasons)
            info.output_only = []
        info.writes = list(dict.fromkeys(list(info.writes) + list(passthrough)))
        writes = list(info.writes)
        signal_vars: list[str] = []
        if ctx is not None:
            for sig, var in (("break", ctx.break_var), ("continue", ctx.continue_var)):
                if sig in info.signals and var:
                    signal_vars.append(var)
        writes += [v for v in signal_vars if v not in writes]
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
        callback_checks = tuple(dict.fromkeys(reads.index(r) for r in info.callbacks
                                              if r in reads))
        inplace_checks = tuple(reads.index(r) for r in info.inplace if r in reads)
        if returns:
            writes = [w for w in writes if w not in (RETURN_FLAG, RETURN_VALUE)] \
                + [RETURN_FLAG, RETURN_VALUE]
        index = self.compiler.add_native(
            stmts, tuple(reads), tuple(writes), frozenset(info.assigned),
            frozenset(info.globals_written), frozenset(info.cells_written),
            ctx.break_var if ctx else None, ctx.continue_var if ctx else None,
            has_control=bool(info.signals))
        if returns:    # the runtime expects them last
            writes = [w for w in writes if w not in (RETURN_FLAG, RETURN_VALUE)] \
                + [RETURN_FLAG, RETURN_VALUE]
        step = NativeStep(reads=tuple(reads), writes=tuple(writes), lineno=stmts[0].lineno,
                          may_sync=bool(info.sync_reasons or receiver_checks
                                        or inplace_checks or callback_checks),
                          output_only=tuple(dict.fromkeys(info.output_only)),
                          nodes=tuple(stmts),
                          sync_reasons=tuple(dict.fromkeys(info.sync_reasons)),
                          shared_read=info.shared_read, receiver_checks=receiver_checks,
                          callback_checks=callback_checks,
                          inplace_checks=inplace_checks,
                          returns=returns, signal_vars=tuple(signal_vars),
                          unpack=_is_unpack(stmts, reads, writes))
        self.pending.append((step, "fn", index))
        step.checked = functools.partial(self.compiler.checked_variant, index)
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
            loads, stores, callee_roots, effects, mutated, assigned, signals, unbinds = \
                self._facts(s)
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
            writes.update(mutated)
            info.sync_reasons += effects.sync_reasons
            info.output_only += effects.output_only
            info.receivers += effects.receivers
            info.callbacks += effects.callbacks
            info.inplace += effects.inplace
            # A name unbound here may have no value at the end: it is returned only if
            # it still exists (the same check as for names bound on some paths only).
            info.assigned -= unbinds
            info.assigned |= assigned
            info.signals |= signals
        info.reads = list(reads)
        info.writes = list(writes)
        return info

    def _facts(self, s: ast.stmt) -> tuple:
        """Everything analyze() needs from one statement, computed once per statement."""
        facts = self._facts_memo.get(id(s))
        if facts is None:
            found = scan(s)
            effects = _Native()
            mutated: dict[str, None] = {}
            self._effects(found.effect_nodes, effects, mutated)
            facts = (found.loads, found.stores, found.callee_roots, effects, mutated,
                     found.assigned, found.signals, found.unbinds)
            self._facts_memo[id(s)] = facts
            self._keep.append(s)
        return facts

    def _effects(self, nodes: list[ast.AST], info: _Native, writes: dict[str, None]) -> None:
        for node in nodes:
            if isinstance(node, (ast.With, ast.AsyncWith)):
                info.sync_reasons.append("a 'with' statement runs as one sequential step")
            elif isinstance(node, ast.ClassDef):
                info.sync_reasons.append(f"class {node.name} is defined by running its body")
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                info.sync_reasons.append("an import runs module code")
            elif isinstance(node, ast.Call):
                self._call_effect(node, info, writes)
            elif isinstance(node, (ast.Attribute, ast.Subscript)):
                base = node.value
                if isinstance(node, ast.Subscript) and isinstance(base, ast.Name) \
                        and base.id in self.accumulators:
                    writes[base.id] = None
                else:
                    what = "attribute" if isinstance(node, ast.Attribute) else "item"
                    info.sync_reasons.append(
                        f"changes an {what} of {ast.unparse(base)}, which others may see")
            elif isinstance(node, ast.AugAssign):
                if isinstance(node.target, ast.Name) and \
                        node.target.id not in self.accumulators and \
                        self._slot_name(node.target.id):
                    # ``x += v`` mutates x in place when x is mutable: decided at run time.
                    info.inplace.append(node.target.id)
            else:
                info.sync_reasons.append("yield/await")

    def _callback_args(self, call: ast.Call, info: _Native) -> None:
        """A pure builtin that calls or iterates its arguments is only as pure as they are:
        ``sorted(xs, key=log)``, ``list(map(print, xs))``, ``",".join(gen)``. Arguments
        known now are judged now; local variables once their values are known (the step
        becomes a sync point if one is not inert); anything else makes it a sync point.
        Lambdas, comprehensions and nested calls are judged by their own calls."""
        callee = ast.unparse(call.func)
        for arg in _callback_arg_parts(call):
            if isinstance(arg, _INERT_EXPRS):
                continue
            if isinstance(arg, ast.Name) and self._slot_name(arg.id):
                info.callbacks.append(arg.id)
                continue
            chain = dotted(arg)
            if chain is not None and not self.finder.is_local(chain[0]):
                obj = self.finder.resolve(arg)
                if obj is not _MISSING_OBJ and purity.is_inert(obj):
                    continue
            elif isinstance(arg, ast.Attribute) and arg.attr in PURE_METHODS and \
                    isinstance(arg.value, ast.Name) and self._slot_name(arg.value.id):
                info.receivers.append(arg.value.id)      # ``max(d, key=d.get)``
                continue
            info.sync_reasons.append(f"{callee}() is given {ast.unparse(arg)}, which may "
                                     f"run code with side effects")

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
                    self._callback_args(call, info)
                    return
                if isinstance(recv, ast.Name) and self._slot_name(recv.id):
                    info.receivers.append(recv.id)
                    self._callback_args(call, info)
                    return
                info.sync_reasons.append(f"calls {ast.unparse(func)}() on an object of "
                                         f"unknown type")
                return
            if func.attr in MUTATING_METHODS:
                info.sync_reasons.append(f"{ast.unparse(func)}() changes a shared object")
                return
        kind, reason = self.finder.plain_call_kind(call)
        if kind == purity.PURE:
            callee = self.finder.resolve(func) if dotted(func) is not None else None
            if callee is not None and purity.calls_back(callee):
                self._callback_args(call, info)
        if kind == purity.SYNC:
            if isinstance(func, ast.Name) and self.finder.resolve(func) is print:
                # print changes no object anybody reads: it must keep its place among the
                # sync points (output order), but later computation need not wait for it.
                info.output_only.append("print() writes output, kept in program order")
            else:
                info.sync_reasons.append(reason)


def _header(s: ast.stmt) -> ast.stmt:
    """A position on the first line of ``s`` only (its keyword): where code the translator
    writes for a compound statement sits, as Python's own code for it does."""
    where = ast.Pass()
    where.lineno = where.end_lineno = s.lineno
    where.col_offset = s.col_offset
    where.end_col_offset = s.col_offset + (4 if isinstance(s, ast.With) else 3)
    return where


def _unposition(nodes: list[ast.stmt]) -> None:
    """Forget the positions ``ast.parse`` gave code the translator wrote, so that
    :func:`locate` gives it the user's line."""
    for node in nodes:
        for n in ast.walk(node):
            for attr in ("lineno", "col_offset", "end_lineno", "end_col_offset"):
                if hasattr(n, attr):
                    delattr(n, attr)


def _callback_arg_parts(call: ast.Call) -> list[ast.expr]:
    return [a.value if isinstance(a, ast.Starred) else a for a in call.args] \
        + [k.value for k in call.keywords]


_INERT_EXPRS = (ast.Constant, ast.Lambda, ast.Call, ast.GeneratorExp, ast.ListComp,
                ast.SetComp, ast.DictComp, ast.List, ast.Tuple, ast.Set, ast.Dict,
                ast.JoinedStr, ast.BinOp, ast.UnaryOp, ast.Compare, ast.BoolOp)


def _is_global_chain(func: ast.Attribute, finder: SiteFinder) -> bool:
    chain = dotted(func)
    return chain is not None and not finder.is_local(chain[0])


def _walk_no_scopes(node: ast.AST):
    """ast.walk that does not enter nested function, lambda or class bodies."""
    todo = [node]
    while todo:
        n = todo.pop()
        yield n
        if n is not node and isinstance(n, _SCOPES):
            continue
        todo.extend(ast.iter_child_nodes(n))


def _dotted_text(func: ast.expr) -> str:
    chain = dotted(func)
    return ".".join(chain) if chain else ast.unparse(func)


def _is_unpack(stmts: list[ast.stmt], reads: list[str], writes: list[str]
               ) -> Optional[tuple[int, ...]]:
    """If ``stmts`` is exactly ``a, b, ... = r`` with distinct plain names, which item
    each write binds (the runtime may then hand on the items of a tuple kept on workers
    without fetching it); else None."""
    if len(stmts) != 1 or type(stmts[0]) is not ast.Assign or len(stmts[0].targets) != 1:
        return None
    target, source = stmts[0].targets[0], stmts[0].value
    if type(target) not in (ast.Tuple, ast.List) or type(source) is not ast.Name:
        return None
    names = [e.id if type(e) is ast.Name else None for e in target.elts]
    if None in names or len(set(names)) != len(names) or sorted(names) != sorted(writes) \
            or list(reads) != [source.id] or source.id in names:
        return None
    return tuple(names.index(w) for w in writes)
