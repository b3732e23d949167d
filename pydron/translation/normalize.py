"""Normalizing a function body so that its dispatch sites stand alone.

After this pass every call that may run on a worker is the whole right-hand side of an
assignment to a name (or a whole expression statement), with names and constants as
arguments, so ``g(f(a), f(b))`` exposes two independent calls. Operands evaluated before a
call are moved into temporaries ahead of it, so the evaluation order stays Python's.
Short-circuit operators and conditional expressions become ``if`` statements; list, set and
dict comprehensions (and generator expressions handed to ``sum``, ``list`` ... ) become
loops that fill a fresh accumulator. A construct this pass does not handle is left as it
is: its calls then simply run in program order, which is slower but never wrong.
"""
from __future__ import annotations

import ast
import copy
import sys
from typing import Optional

from pydron.translation.sites import SiteFinder

_SCOPE_NODES = (ast.Lambda, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
_OPAQUE_STMTS = (ast.Try, ast.With, ast.AsyncWith, ast.AsyncFor, ast.Match, ast.ClassDef,
                 ast.FunctionDef, ast.AsyncFunctionDef, ast.Global, ast.Nonlocal)
if hasattr(ast, "TryStar"):
    _OPAQUE_STMTS = _OPAQUE_STMTS + (ast.TryStar,)
_COMPS = (ast.ListComp, ast.SetComp, ast.DictComp)
_CAPTURING_COMPREHENSIONS = sys.version_info < (3, 12)    # PEP 709 inlines them from 3.12


class _Fallback(Exception):
    """This expression is not lowered; its statement stays plain code."""


class Normalizer:
    """Rewrites statements; records which calls are dispatch sites in ``tags``."""

    def __init__(self, finder: SiteFinder) -> None:
        self.finder = finder
        # Keyed by id(): every node whose id is a key is kept alive (in ``_keep`` or in the
        # memo's value), because a node freed by a fallback would hand its id, and so its
        # tag, to whatever node is allocated at that address next.
        self.tags: dict[int, tuple[str, object]] = {}
        self.while_pre: dict[int, list[ast.stmt]] = {}
        # Per dispatch site inside lowered comprehensions: the frames a plain run would show
        # between the function's and the call's, as (name, position in the frame around).
        self.frames: dict[int, tuple[tuple[str, tuple[int, int, int, int]], ...]] = {}
        self._comps: list[tuple[str, tuple[int, int, int, int]]] = []
        self._counter = 0
        self._memo: dict[int, tuple[ast.AST, bool]] = {}
        self._keep: list[ast.AST] = []
        self._maps: dict[int, tuple[ast.Call, ast.GeneratorExp]] = {}
        self._unstable: Optional[frozenset[str]] = frozenset()
        self._statement: Optional[ast.stmt] = None

    def tmp(self, kind: str = "t") -> str:
        self._counter += 1
        return f"_pd_{kind}{self._counter}"

    # -- finding sites -----------------------------------------------------------------
    def has_site(self, node: ast.AST) -> bool:
        """Does evaluating ``node`` (not the bodies of nested scopes) call a dispatch site?"""
        entry = self._memo.get(id(node))
        if entry is None:
            hit = self._scan(node)
            self._memo[id(node)] = (node, hit)
            return hit
        return entry[1]

    def _scan(self, node: ast.AST) -> bool:
        if type(node) is ast.Try:
            # Only the body runs as graph; handlers, else and finally stay plain code.
            return any(self.has_site(b) for b in node.body)
        if type(node) is ast.With:
            return any(self.has_site(b) for b in node.body) or \
                self.has_site(node.items[0].context_expr)
        if isinstance(node, _SCOPE_NODES) or isinstance(node, _OPAQUE_STMTS):
            return False
        if isinstance(node, ast.GeneratorExp):
            # Lazily consumed: its calls happen whenever its consumer pulls. Only an eager
            # consumer (see Call below) lets us look inside.
            return self.has_site(node.generators[0].iter)
        if isinstance(node, _COMPS) and _CAPTURING_COMPREHENSIONS and \
                self._captures_locals(node):
            # Before Python 3.12 a comprehension is a nested function: every local it reads
            # would become a cell shared with it, and a cell is state that forces sync
            # points. As a loop it reads the locals directly.
            return True
        if isinstance(node, ast.Call):
            if id(node) in self.tags or self.finder.site(node) is not None:
                return True
            gen = self._eager_generator(node)
            if gen is not None and any(self.has_site(p) for p in _comp_parts(gen)):
                return True
        return any(self.has_site(child) for child in ast.iter_child_nodes(node))

    def _eager_generator(self, call: ast.Call) -> Optional[ast.GeneratorExp]:
        """The generator an eager consumer exhausts at once: ``sum(f(x) for x in xs)``'s
        own, or ``list(map(f, xs))`` read as ``list(f(x) for x in xs)`` (``map`` over
        several iterables as a generator over ``zip`` of them, which stops where ``map``
        stops). None when ``call`` is not such a consumer."""
        if self.finder.eager_consumer(call):
            return call.args[0]
        if len(call.args) != 1 or call.keywords or not isinstance(call.func, ast.Name):
            return None
        inner = call.args[0]
        if not (isinstance(inner, ast.Call) and len(inner.args) >= 2 and not inner.keywords
                and not any(isinstance(a, ast.Starred) for a in inner.args)
                and isinstance(inner.func, ast.Name)):
            return None
        cached = self._maps.get(id(inner))
        if cached is not None:
            return cached[1]
        if not self.finder.consumes_eagerly(call.func):
            return None
        import builtins
        if self.finder.resolve(inner.func) is not builtins.map:
            return None
        fn, iterables = inner.args[0], inner.args[1:]
        if not isinstance(fn, ast.Name):
            return None
        if len(iterables) > 1 and self.finder.resolve(ast.Name(id="zip", ctx=ast.Load())) \
                is not builtins.zip:
            return None
        names = [self.tmp("m") for _ in iterables]
        probe = ast.Call(func=fn, args=[_name(n) for n in names], keywords=[])
        if self.finder.site(probe) is None:
            return None          # not a function that may be @functional: leave map alone
        if len(iterables) == 1:
            target: ast.expr = ast.Name(id=names[0], ctx=ast.Store())
            source = iterables[0]
        else:
            target = ast.Tuple(elts=[ast.Name(id=n, ctx=ast.Store()) for n in names],
                               ctx=ast.Store())
            source = ast.Call(func=_name("zip"), args=list(iterables), keywords=[])
        gen = ast.GeneratorExp(elt=probe, generators=[ast.comprehension(
            target=target, iter=source, ifs=[], is_async=0)])
        _locate(gen, inner)
        self._maps[id(inner)] = (inner, gen)
        return gen

    def _captures_locals(self, comp: ast.expr) -> bool:
        """Does the comprehension read a local of the function (other than through its
        first iterable, which is evaluated outside it)?"""
        bound = {n.id for g in comp.generators for n in ast.walk(g.target)
                 if isinstance(n, ast.Name)}
        parts: list[ast.AST] = [comp.key, comp.value] if isinstance(comp, ast.DictComp) \
            else [comp.elt]
        for i, g in enumerate(comp.generators):
            if i:
                parts.append(g.iter)
            parts.extend(g.ifs)
        for part in parts:
            for n in ast.walk(part):
                if isinstance(n, (ast.Lambda, ast.NamedExpr)):
                    return False      # closures and walrus keep the comprehension as it is
                if isinstance(n, ast.Name) and n.id not in bound and \
                        self.finder.scopes.is_local(n.id):
                    return True
        return False

    # -- statements ----------------------------------------------------------------------
    def body(self, stmts: list[ast.stmt]) -> list[ast.stmt]:
        out: list[ast.stmt] = []
        for s in stmts:
            out.extend(self.stmt(s))
        return out

    def stmt(self, s: ast.stmt) -> list[ast.stmt]:
        if not self.has_site(s):
            return [s]
        saved = self._counter
        # A comprehension lowered into a loop normalizes its own statements: the walrus
        # targets of the statement around it must still count afterwards.
        outer = (self._statement, self._unstable)
        self._statement = s
        self._unstable = None
        try:
            result = self._stmt(s)
        except _Fallback:
            self._counter = saved
            return [s]
        finally:
            self._statement, self._unstable = outer
        for new in result:
            _locate(new, s)
        return result

    def _stmt(self, s: ast.stmt) -> list[ast.stmt]:
        if isinstance(s, ast.Expr):
            pre, value = self.expr(s.value, top=True)
            return pre + [ast.Expr(value=value)]
        if isinstance(s, ast.Assign):
            if any(self.has_site(t) for t in s.targets):
                raise _Fallback
            comp = self._comp_into_target(s)
            if comp is not None:
                return comp
            single = (len(s.targets) == 1 and isinstance(s.targets[0], ast.Name)
                      and self.finder.scopes.is_slot_local(s.targets[0].id)) \
                or (len(s.targets) == 1 and isinstance(s.targets[0], ast.Name)
                    and s.targets[0].id.startswith("_pd_"))
            pre, value = self.expr(s.value, top=single)
            return pre + [ast.Assign(targets=s.targets, value=value)]
        if isinstance(s, ast.AnnAssign):
            if s.value is None or self.has_site(s.target):
                raise _Fallback
            return self._stmt(ast.Assign(targets=[s.target], value=s.value))
        if isinstance(s, ast.AugAssign):
            if self.has_site(s.target):
                raise _Fallback
            if not isinstance(s.target, ast.Name) and not self._all_static(s.value):
                raise _Fallback
            pre, value = self.expr(s.value)
            return pre + [ast.AugAssign(target=s.target, op=s.op, value=value)]
        if isinstance(s, ast.Return):
            pre, value = self.expr(s.value)
            return pre + [ast.Return(value=value)]
        if isinstance(s, ast.If):
            pre, test = self.expr(s.test)
            return pre + [ast.If(test=test, body=self.body(s.body) or [ast.Pass()],
                                 orelse=self.body(s.orelse))]
        if isinstance(s, ast.For):
            if self.has_site(s.target):
                raise _Fallback
            pre, it = self.expr(s.iter, simple=True)
            return pre + [ast.For(target=s.target, iter=it, body=self.body(s.body),
                                  orelse=self.body(s.orelse), type_comment=None)]
        if isinstance(s, ast.While):
            pre, test = self.expr(s.test)
            loop = ast.While(test=test, body=self.body(s.body), orelse=self.body(s.orelse))
            for p in pre:
                _locate(p, s)
            self.while_pre[id(loop)] = pre
            return [loop]
        if isinstance(s, ast.Assert):
            if s.msg is not None and self.has_site(s.msg):
                raise _Fallback
            pre, test = self.expr(s.test)
            return pre + [ast.Assert(test=test, msg=s.msg)]
        if isinstance(s, ast.Raise):
            pre, exc = self.expr(s.exc) if s.exc is not None else ([], None)
            pre2, cause = self.expr(s.cause) if s.cause is not None else ([], None)
            if pre2 and exc is not None and not self._stable(exc):
                t = self.tmp()
                pre.append(_assign(t, exc))
                exc = _name(t)
            return pre + pre2 + [ast.Raise(exc=exc, cause=cause)]
        if type(s) is ast.Try:
            return [ast.Try(body=self.body(s.body) or [ast.Pass()], handlers=s.handlers,
                            orelse=s.orelse, finalbody=s.finalbody)]
        if type(s) is ast.With:
            return self._with(s)
        if isinstance(s, ast.Delete):
            raise _Fallback
        raise _Fallback

    def _with(self, s: ast.With) -> list[ast.stmt]:
        """One context manager per ``with`` (the next is entered inside the first), its
        expression's calls lowered in front of it."""
        item = s.items[0]
        body = s.body
        if len(s.items) > 1:
            inner = ast.With(items=s.items[1:], body=s.body, type_comment=None)
            _locate(inner, s)
            body = [inner]
        pre, expr = self.expr(item.context_expr)
        if item.optional_vars is not None and self.has_site(item.optional_vars):
            raise _Fallback
        new = ast.withitem(context_expr=expr, optional_vars=item.optional_vars)
        return pre + [ast.With(items=[new], body=self.body(body) or [ast.Pass()],
                               type_comment=None)]

    def _comp_into_target(self, s: ast.Assign) -> Optional[list[ast.stmt]]:
        """``ys = [f(x) for x in xs]`` fills ``ys`` directly when that cannot be observed."""
        if len(s.targets) != 1 or not isinstance(s.targets[0], ast.Name):
            return None
        name = s.targets[0].id
        if not isinstance(s.value, _COMPS) or not self.finder.scopes.is_slot_local(name):
            return None
        if any(isinstance(n, ast.Name) and n.id == name for n in ast.walk(s.value)):
            return None
        pre, _ = self._lower_comp(s.value, acc=name)
        return pre

    # -- expressions ---------------------------------------------------------------------
    def expr(self, e: ast.expr, top: bool = False, simple: bool = False
             ) -> tuple[list[ast.stmt], ast.expr]:
        """Lower ``e``: statements to run first, and what is left of the expression.

        ``top``: a dispatch call may be returned as is (it is a whole statement's value).
        ``simple``: the result must be a name or a constant.
        """
        if not self.has_site(e):
            if simple and not self._stable(e):
                t = self.tmp()
                return [_assign(t, e)], _name(t)
            return [], e
        pre, out = self._expr(e, top)
        if simple and not self._stable(out):
            t = self.tmp()
            pre.append(_assign(t, out))
            out = _name(t)
        return pre, out

    def _expr(self, e: ast.expr, top: bool) -> tuple[list[ast.stmt], ast.expr]:
        if isinstance(e, ast.Call):
            return self._call(e, top)
        if isinstance(e, ast.BinOp):
            pre, (left, right) = self.children([e.left, e.right])
            return pre, ast.BinOp(left=left, op=e.op, right=right)
        if isinstance(e, ast.UnaryOp):
            pre, (operand,) = self.children([e.operand])
            return pre, ast.UnaryOp(op=e.op, operand=operand)
        if isinstance(e, ast.Compare):
            if len(e.ops) != 1:
                if any(self.has_site(c) for c in e.comparators[1:]):
                    raise _Fallback
            pre, parts = self.children([e.left, e.comparators[0]])
            return pre, ast.Compare(left=parts[0], ops=e.ops,
                                    comparators=[parts[1]] + e.comparators[1:])
        if isinstance(e, ast.BoolOp):
            return self._boolop(e)
        if isinstance(e, ast.IfExp):
            return self._ifexp(e)
        if isinstance(e, (ast.Tuple, ast.List, ast.Set)):
            pre, elts = self.children([x.value if isinstance(x, ast.Starred) else x
                                       for x in e.elts])
            elts = [ast.Starred(value=v, ctx=ast.Load()) if isinstance(x, ast.Starred) else v
                    for x, v in zip(e.elts, elts)]
            node = type(e)(elts=elts, ctx=ast.Load()) if not isinstance(e, ast.Set) \
                else ast.Set(elts=elts)
            return pre, node
        if isinstance(e, ast.Dict):
            flat: list[ast.expr] = []
            for k, v in zip(e.keys, e.values):
                if k is not None:
                    flat.append(k)
                flat.append(v)
            pre, done = self.children(flat)
            it = iter(done)
            keys, values = [], []
            for k in e.keys:
                keys.append(next(it) if k is not None else None)
                values.append(next(it))
            return pre, ast.Dict(keys=keys, values=values)
        if isinstance(e, ast.Subscript):
            pre, (value, index) = self.children([e.value, e.slice])
            return pre, ast.Subscript(value=value, slice=index, ctx=ast.Load())
        if isinstance(e, ast.Slice):
            parts = [p for p in (e.lower, e.upper, e.step) if p is not None]
            pre, done = self.children(parts)
            it = iter(done)
            return pre, ast.Slice(*(next(it) if p is not None else None
                                    for p in (e.lower, e.upper, e.step)))
        if isinstance(e, ast.Attribute):
            pre, (value,) = self.children([e.value])
            return pre, ast.Attribute(value=value, attr=e.attr, ctx=ast.Load())
        if isinstance(e, ast.Starred):
            pre, (value,) = self.children([e.value])
            return pre, ast.Starred(value=value, ctx=ast.Load())
        if isinstance(e, ast.JoinedStr):
            # Python evaluates each value, then its format spec, left to right: the specs
            # are operands too, so a call in a spec keeps its place among the others.
            formatted = [v for v in e.values if isinstance(v, ast.FormattedValue)]
            parts: list[ast.expr] = []
            for v in formatted:
                parts.append(v.value)
                if v.format_spec is not None:
                    parts.append(v.format_spec)
            pre, done = self.children(parts)
            it = iter(done)
            values = []
            for v in e.values:
                if not isinstance(v, ast.FormattedValue):
                    values.append(v)
                    continue
                value = next(it)
                spec = next(it) if v.format_spec is not None else None
                if spec is not None and not isinstance(spec, ast.JoinedStr):
                    # a spec computed into a temporary: a spec holding just that string
                    spec = ast.JoinedStr(values=[ast.FormattedValue(
                        value=spec, conversion=-1, format_spec=None)])
                values.append(ast.FormattedValue(value=value, conversion=v.conversion,
                                                 format_spec=spec))
            return pre, ast.JoinedStr(values=values)
        if isinstance(e, ast.NamedExpr):
            pre, value = self.expr(e.value)
            return pre, ast.NamedExpr(target=e.target, value=value)
        if isinstance(e, _COMPS):
            return self._lower_comp(e)
        raise _Fallback

    def children(self, parts: list[ast.expr]) -> tuple[list[ast.stmt], list[ast.expr]]:
        """Lower operands evaluated left to right, keeping Python's evaluation order.

        Every operand evaluated before the last one containing a site is computed into a
        temporary first (unless reading it later makes no difference).
        """
        last = max((i for i, p in enumerate(parts) if self.has_site(p)), default=-1)
        pre: list[ast.stmt] = []
        out: list[ast.expr] = []
        for i, p in enumerate(parts):
            if i < last:
                p_pre, p_out = self.expr(p)
                pre += p_pre
                if not self._stable(p_out):
                    t = self.tmp()
                    pre.append(_assign(t, p_out))
                    p_out = _name(t)
                out.append(p_out)
            elif i == last:
                p_pre, p_out = self.expr(p)
                pre += p_pre
                out.append(p_out)
            else:
                out.append(p)
        return pre, out

    def _call(self, e: ast.Call, top: bool) -> tuple[list[ast.stmt], ast.expr]:
        site = self.finder.site(e)
        if site is None:
            gen = self._eager_generator(e)
            if gen is not None:
                comp = ast.ListComp(elt=gen.elt, generators=gen.generators)
                ast.copy_location(comp, gen)
                comp._pd_consumer = e     # a generator's frame, called from e
                e = ast.Call(func=e.func, args=[comp], keywords=e.keywords)
            method = isinstance(e.func, ast.Attribute)
            # For ``obj.method(...)`` the receiver is the operand; looking the method up
            # after the arguments are computed cannot change which method it is.
            head = e.func.value if method else e.func
            parts = [head] + [a.value if isinstance(a, ast.Starred) else a for a in e.args] \
                + [k.value for k in e.keywords]
            pre, done = self.children(parts)
            if method:
                done[0] = ast.Attribute(value=done[0], attr=e.func.attr, ctx=ast.Load())
            return pre, self._rebuild_call(e, done)
        kind, obj = site
        parts = ([] if kind == "static" else [e.func]) \
            + [a.value if isinstance(a, ast.Starred) else a for a in e.args] \
            + [k.value for k in e.keywords]
        pre: list[ast.stmt] = []
        done: list[ast.expr] = []
        for p in parts:
            p_pre, p_out = self.expr(p, simple=True)
            if isinstance(p_out, ast.Name) and not self.finder.scopes.is_slot_local(p_out.id) \
                    and not p_out.id.startswith("_pd_"):
                t = self.tmp()
                p_pre = p_pre + [_assign(t, p_out)]
                p_out = _name(t)
            pre += p_pre
            done.append(p_out)
        if kind == "static":
            done.insert(0, e.func)
        call = self._rebuild_call(e, done)
        _locate(ast.copy_location(call, e), e)      # the call's own columns (carets)
        self.tags[id(call)] = site
        if self._comps:
            self.frames[id(call)] = tuple(self._comps)
        self._keep.append(call)
        self._memo[id(call)] = (call, True)
        if top:
            return pre, call
        t = self.tmp()
        pre.append(_assign(t, call))
        return pre, _name(t)

    @staticmethod
    def _rebuild_call(e: ast.Call, done: list[ast.expr]) -> ast.Call:
        it = iter(done)
        func = next(it)
        args = [ast.Starred(value=next(it), ctx=ast.Load()) if isinstance(a, ast.Starred)
                else next(it) for a in e.args]
        keywords = [ast.keyword(arg=k.arg, value=next(it)) for k in e.keywords]
        return ast.Call(func=func, args=args, keywords=keywords)

    def _boolop(self, e: ast.BoolOp) -> tuple[list[ast.stmt], ast.expr]:
        if not any(self.has_site(v) for v in e.values[1:]):
            pre, first = self.expr(e.values[0])
            return pre, ast.BoolOp(op=e.op, values=[first] + e.values[1:])
        t = self.tmp()
        pre, first = self.expr(e.values[0])
        pre.append(_assign(t, first))
        inner: list[ast.stmt] = []
        for value in reversed(e.values[1:]):
            v_pre, v_out = self.expr(value)
            stmts = v_pre + [_assign(t, v_out)] + inner
            test: ast.expr = _name(t)
            if isinstance(e.op, ast.Or):
                test = ast.UnaryOp(op=ast.Not(), operand=_name(t))
            inner = [ast.If(test=test, body=stmts, orelse=[])]
        return pre + inner, _name(t)

    def _ifexp(self, e: ast.IfExp) -> tuple[list[ast.stmt], ast.expr]:
        t = self.tmp()
        pre, test = self.expr(e.test)
        b_pre, body = self.expr(e.body)
        o_pre, orelse = self.expr(e.orelse)
        return pre + [ast.If(test=test, body=b_pre + [_assign(t, body)],
                             orelse=o_pre + [_assign(t, orelse)])], _name(t)

    def _lower_comp(self, e: ast.expr, acc: Optional[str] = None
                    ) -> tuple[list[ast.stmt], ast.expr]:
        """A comprehension as loops filling a fresh list, set or dict."""
        acc = acc or self.tmp("acc")
        gens = e.generators
        if any(g.is_async for g in gens):
            raise _Fallback
        pre, first_iter = self.expr(gens[0].iter, simple=True)
        bound = set()
        for g in gens:
            bound.update(n.id for n in ast.walk(g.target) if isinstance(n, ast.Name))
        renames = {name: self.tmp("c") + "_" + name for name in bound}
        renamer = _Renamer(renames)
        if isinstance(e, ast.ListComp):
            init: ast.expr = ast.List(elts=[], ctx=ast.Load())
            add: ast.stmt = ast.Expr(ast.Call(
                func=ast.Attribute(value=_name(acc), attr="append", ctx=ast.Load()),
                args=[renamer.visit(copy.deepcopy(e.elt))], keywords=[]))
        elif isinstance(e, ast.SetComp):
            init = ast.Set(elts=[ast.Starred(value=ast.Tuple(elts=[], ctx=ast.Load()),
                                             ctx=ast.Load())])
            add = ast.Expr(ast.Call(
                func=ast.Attribute(value=_name(acc), attr="add", ctx=ast.Load()),
                args=[renamer.visit(copy.deepcopy(e.elt))], keywords=[]))
        else:
            init = ast.Dict(keys=[], values=[])
            add = ast.Assign(
                targets=[ast.Subscript(value=_name(acc),
                                       slice=renamer.visit(copy.deepcopy(e.key)),
                                       ctx=ast.Store())],
                value=renamer.visit(copy.deepcopy(e.value)))
        stmt: ast.stmt = add
        for i, g in reversed(list(enumerate(gens))):
            for cond in reversed(g.ifs):
                stmt = ast.If(test=renamer.visit(copy.deepcopy(cond)), body=[stmt], orelse=[])
            iterable = first_iter if i == 0 else renamer.visit(copy.deepcopy(g.iter))
            stmt = ast.For(target=renamer.visit(copy.deepcopy(g.target)), iter=iterable,
                           body=[stmt], orelse=[], type_comment=None)
        _locate(stmt, e)
        frame = _comp_frame(e)
        if frame is not None:
            self._comps.append(frame)
        try:
            loops = self.body([stmt])
        finally:
            if frame is not None:
                self._comps.pop()
        return pre + [_assign(acc, init)] + loops, _name(acc)

    # -- helpers ---------------------------------------------------------------------------
    def _stable(self, e: ast.expr) -> bool:
        """Can ``e`` be evaluated later than written without changing its value?"""
        if isinstance(e, ast.Constant):
            return True
        if isinstance(e, ast.Name):
            if self._unstable is None:     # names a walrus rebinds inside this statement
                self._unstable = frozenset(n.target.id for n in ast.walk(self._statement)
                                           if isinstance(n, ast.NamedExpr))
            if e.id in self._unstable:
                return False
            if e.id.startswith("_pd_") or self.finder.scopes.is_slot_local(e.id):
                return True
            return self.finder.is_stable_global(e.id)
        return False

    def _all_static(self, e: ast.expr) -> bool:
        for node in ast.walk(e):
            if isinstance(node, ast.Call):
                site = self.finder.site(node)
                if site is not None and site[0] != "static":
                    return False
        return True


class _Renamer(ast.NodeTransformer):
    """Renames a comprehension's own variables so they cannot clash once it is a loop."""

    def __init__(self, renames: dict[str, str]) -> None:
        self.renames = renames

    def visit_Name(self, node: ast.Name) -> ast.Name:
        new = self.renames.get(node.id)
        if new is not None:
            return ast.copy_location(ast.Name(id=new, ctx=node.ctx), node)
        return node

    def visit_Lambda(self, node: ast.Lambda) -> ast.Lambda:
        # Defaults are evaluated where the lambda is written (``lambda x, i=i: ...``);
        # the body sees the lambda's own parameters first.
        node.args.defaults = [self.visit(d) for d in node.args.defaults]
        node.args.kw_defaults = [self.visit(d) if d is not None else None
                                 for d in node.args.kw_defaults]
        params = {a.arg for a in ast.walk(node.args) if isinstance(a, ast.arg)}
        inner = self if not params & set(self.renames) else _Renamer(
            {k: v for k, v in self.renames.items() if k not in params})
        node.body = inner.visit(node.body)
        return node

    def visit_NamedExpr(self, node: ast.NamedExpr) -> ast.NamedExpr:
        node.value = self.visit(node.value)     # a walrus binds outside the comprehension
        return node


def _comp_parts(gen: ast.GeneratorExp) -> list[ast.AST]:
    parts: list[ast.AST] = [gen.elt]
    for g in gen.generators:
        parts.append(g.iter)
        parts.extend(g.ifs)
    return parts


_COMP_FRAMES = {ast.ListComp: "<listcomp>", ast.SetComp: "<setcomp>", ast.DictComp: "<dictcomp>"}


def _comp_frame(e: ast.expr) -> Optional[tuple[str, tuple[int, int, int, int]]]:
    """The frame a plain run gives comprehension ``e`` (none for a list, set or dict
    comprehension from Python 3.12 on, PEP 709), and where the frame around calls it."""
    consumer = getattr(e, "_pd_consumer", None)
    if consumer is not None:
        name, at = "<genexpr>", consumer
    elif _CAPTURING_COMPREHENSIONS:
        name, at = _COMP_FRAMES[type(e)], e
    else:
        return None
    return name, (at.lineno, at.end_lineno or at.lineno, at.col_offset,
                  at.end_col_offset if at.end_col_offset is not None else at.col_offset)


def _name(name: str) -> ast.Name:
    return ast.Name(id=name, ctx=ast.Load())


def _assign(name: str, value: ast.expr) -> ast.Assign:
    return ast.Assign(targets=[ast.Name(id=name, ctx=ast.Store())], value=value)


def _locate(new: ast.AST, old: ast.AST) -> None:
    """Give new nodes the position of the code they came from (for tracebacks)."""
    from pydron.translation.codegen import locate
    locate(new, old)
