"""Turning groups of statements into Python functions the runtime can call.

Each plain-code step becomes ``def step(<reads>): <statements>; return (<writes>)``,
compiled from the user's own AST nodes so that tracebacks show the user's file and lines.
All functions of one template are compiled together, nested in a factory function that
declares the variables living in cells; functions that use them are re-bound to each
run's own cells.
"""
from __future__ import annotations

import ast
import types
from typing import Any, Callable, Optional

from pydron.dataflow.template import UNBOUND, ReturnSignal

_SCOPES = (ast.Lambda, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _name(n: str, ctx: ast.expr_context | None = None) -> ast.Name:
    return ast.Name(id=n, ctx=ctx or ast.Load())


def _args(names: list[str], defaults: dict[str, str]) -> ast.arguments:
    params = [ast.arg(arg=n) for n in names] + [ast.arg(arg=n) for n in defaults]
    return ast.arguments(posonlyargs=[], args=params, vararg=None, kwonlyargs=[],
                         kw_defaults=[], kwarg=None,
                         defaults=[_name(v) for v in defaults.values()])


class _ControlRewriter(ast.NodeTransformer):
    """``return v`` -> ``return _R(v)``; a break/continue of a graph loop -> set its flag."""

    def __init__(self, break_var: Optional[str], continue_var: Optional[str]) -> None:
        self.break_var = break_var
        self.continue_var = continue_var
        self.depth = 0
        self.exits = False

    def _skip(self, node: ast.AST) -> ast.AST:
        return node

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = visit_Lambda = _skip

    def _loop(self, node: ast.AST) -> ast.AST:
        if isinstance(node, ast.While):
            node.test = self.visit(node.test)
        else:
            node.iter = self.visit(node.iter)
        self.depth += 1
        node.body = self._stmts(node.body)
        self.depth -= 1
        node.orelse = self._stmts(node.orelse)
        return node

    visit_For = visit_While = visit_AsyncFor = _loop

    def _stmts(self, stmts: list[ast.stmt]) -> list[ast.stmt]:
        out: list[ast.stmt] = []
        for s in stmts:
            new = self.visit(s)
            out.extend(new if isinstance(new, list) else [new])
        return out

    def visit_Return(self, node: ast.Return) -> ast.stmt:
        value = node.value if node.value is not None else ast.Constant(None)
        new = ast.Return(value=ast.Call(func=_name("_pd_R"), args=[value], keywords=[]))
        return locate(new, node)

    def _signal(self, node: ast.stmt, var: Optional[str]) -> Any:
        if self.depth or var is None:
            return node
        self.exits = True
        flag = ast.Assign(targets=[_name(var, ast.Store())], value=ast.Constant(True))
        return [locate(flag, node), locate(ast.Break(), node)]

    def visit_Break(self, node: ast.Break) -> Any:
        return self._signal(node, self.break_var)

    def visit_Continue(self, node: ast.Continue) -> Any:
        return self._signal(node, self.continue_var)


class Compiler:
    """Collects the functions of one template and compiles them in one go."""

    def __init__(self, name: str, filename: str, globals_: dict[str, Any],
                 closure_names: tuple[str, ...], qualname: str = "") -> None:
        self.name = name
        self.qualname = qualname or name
        self.filename = filename
        self.globals = globals_
        self.closure_names = closure_names
        self.defs: list[ast.FunctionDef] = []
        self.specs: dict[int, tuple] = {}

    def add_native(self, stmts: list[ast.stmt], reads: tuple[str, ...],
                   writes: tuple[str, ...], assigned: frozenset[str],
                   globals_written: frozenset[str], cells_written: frozenset[str],
                   break_var: Optional[str], continue_var: Optional[str],
                   has_control: bool) -> int:
        """Compile statements into ``f(*reads) -> tuple(writes) | ReturnSignal``."""
        spec = (stmts, reads, writes, assigned, globals_written, cells_written, break_var,
                continue_var, has_control)
        index = self._add(self._native_body(spec, checked=False), list(reads), stmts[0])
        self.specs[index] = spec
        return index

    def checked_variant(self, index: int) -> Callable[..., Any]:
        """The same step, but first deleting inputs that have no value, so that reading
        one raises Python's own UnboundLocalError. Compiled only when first needed."""
        spec = self.specs[index]
        single = Compiler(self.name, self.filename, self.globals, self.closure_names,
                          self.qualname)
        single._add(self._native_body(spec, checked=True), list(spec[1]), spec[0][0])
        return single.compile()[0]

    def _native_body(self, spec: tuple, checked: bool) -> list[ast.stmt]:
        (stmts, reads, writes, assigned, globals_written, cells_written, break_var,
         continue_var, has_control) = spec
        exits = False
        if has_control:
            rewriter = _ControlRewriter(break_var, continue_var)
            # The rewriter changes return/break/continue in place: work on a copy.
            body = rewriter._stmts([_copy(s) for s in stmts])
            exits = rewriter.exits
        else:
            body = list(stmts)
        code: list[ast.stmt] = []
        if globals_written:
            code.append(ast.Global(names=sorted(globals_written)))
        if cells_written:
            code.append(ast.Nonlocal(names=sorted(cells_written)))
        if checked:
            for r in reads:
                code.append(ast.If(
                    test=ast.Compare(left=_name(r), ops=[ast.Is()],
                                     comparators=[_name("_pd_U")]),
                    body=[ast.Delete(targets=[_name(r, ast.Del())])], orelse=[]))
        if exits:
            for var in (break_var, continue_var):
                if var is not None and var in writes and var not in reads:
                    # (a flag read as well is one the step hands on: a try's handlers
                    # keep what its body set)
                    code.append(ast.Assign(targets=[_name(var, ast.Store())],
                                           value=ast.Constant(False)))
            body = [ast.While(test=ast.Constant(True), body=body + [ast.Break()], orelse=[])]
        code.extend(body)
        results: list[ast.expr] = []
        for i, w in enumerate(writes):
            if w in assigned:
                results.append(_name(w))
                continue
            tmp = f"_pd_o{i}"
            code.append(ast.Try(
                body=[ast.Assign(targets=[_name(tmp, ast.Store())], value=_name(w))],
                handlers=[ast.ExceptHandler(type=_name("NameError"), name=None, body=[
                    ast.Assign(targets=[_name(tmp, ast.Store())], value=_name("_pd_U"))])],
                orelse=[], finalbody=[]))
            results.append(_name(tmp))
        code.append(ast.Return(value=ast.Tuple(elts=results, ctx=ast.Load())))
        return code

    def add_expression(self, expr: ast.expr, params: tuple[str, ...],
                       where: ast.AST) -> int:
        """Compile ``lambda *params: expr`` (tests of guards, argument builders)."""
        return self._add([ast.Return(value=_copy(expr))], list(params), where)

    def _add(self, body: list[ast.stmt], params: list[str], where: ast.AST) -> int:
        # Each step is defined under a private name inside the factory and renamed after
        # compiling: a def named like the user's function would bind that name in the
        # factory, and a step that reads it (recursion, a method calling the global of the
        # same name) would see the step instead of the global.
        hidden = {"_pd_U": "_pd_U", "_pd_R": "_pd_R"}
        fdef = ast.FunctionDef(name=_STEP_NAME, args=_args(params, hidden),
                               body=body, decorator_list=[], returns=None, type_comment=None)
        ast.copy_location(fdef, where)
        locate(fdef, where)
        self.defs.append(fdef)
        return len(self.defs) - 1

    def compile(self) -> list[Callable[..., Any]]:
        """Compile every collected function; returns them in the order they were added."""
        if not self.defs:
            return []
        body: list[ast.stmt] = [ast.Assign(targets=[_name(n, ast.Store())],
                                           value=ast.Constant(None))
                                for n in self.closure_names]
        body.append(ast.Assign(targets=[_name("_pd_fns", ast.Store())],
                               value=ast.List(elts=[], ctx=ast.Load())))
        for fdef in self.defs:
            body.append(fdef)
            body.append(ast.Expr(ast.Call(
                func=ast.Attribute(value=_name("_pd_fns"), attr="append", ctx=ast.Load()),
                args=[_name(_STEP_NAME)], keywords=[])))
        body.append(ast.Return(value=_name("_pd_fns")))
        factory = ast.FunctionDef(name="_pd_factory", args=_args(["_pd_U", "_pd_R"], {}),
                                  body=body, decorator_list=[], returns=None,
                                  type_comment=None)
        factory.lineno = factory.end_lineno = self.defs[0].lineno
        factory.col_offset = factory.end_col_offset = 0
        module = ast.Module(body=[factory], type_ignores=[])
        locate(factory, factory)
        code = compile(module, self.filename, "exec", dont_inherit=True)
        code = _requalify(code, "_pd_factory.<locals>." + _STEP_NAME, self.qualname,
                          self.name)
        namespace: dict[str, Any] = {}
        exec(code, self.globals, namespace)
        fns = namespace["_pd_factory"](UNBOUND, ReturnSignal)
        for fn in fns:
            fn.__name__ = self.name
        return fns


_STEP_NAME = "_pd_step"


def _requalify(code: types.CodeType, old: str, new: str, name: str) -> types.CodeType:
    """Rename qualified names under the factory to what they are in the user's function,
    so classes and functions defined in a step print and pickle as they would plainly, and
    give the steps themselves the user's function name (what tracebacks show)."""
    consts = []
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            c = _requalify(c, old, new, name)
        elif isinstance(c, str) and c.startswith(old):
            c = new + c[len(old):]
        consts.append(c)
    changes: dict[str, Any] = {"co_consts": tuple(consts)}
    if code.co_name == _STEP_NAME:
        changes["co_name"] = name
    qual = getattr(code, "co_qualname", None)
    if qual is not None and qual.startswith(old):
        changes["co_qualname"] = new + qual[len(old):]
    return code.replace(**changes)


def locate(node: ast.AST, where: ast.AST) -> ast.AST:
    """Give ``node`` and the nodes below it that have no position the position of
    ``where`` (or of their nearest positioned parent), so tracebacks show the user's line.

    Positioned subtrees are the user's own code and are not walked again: this runs for
    every synthesized node, so it must cost what the new nodes cost, not the whole tree.
    """
    base = (getattr(where, "lineno", 1), getattr(where, "col_offset", 0),
            getattr(where, "end_lineno", None), getattr(where, "end_col_offset", None))
    todo: list[tuple[ast.AST, tuple]] = [(node, base)]
    while todo:
        current, pos = todo.pop()
        if "lineno" in current._attributes:
            if getattr(current, "lineno", None) is None:
                line, col, end, end_col = pos
                current.lineno, current.col_offset = line, col
                current.end_lineno = end if end is not None and end >= line else line
                current.end_col_offset = end_col if end_col is not None and (
                    current.end_lineno > line or end_col >= col) else col
            elif current is not node:
                continue
            pos = (current.lineno, current.col_offset, current.end_lineno,
                   current.end_col_offset)
        for child in ast.iter_child_nodes(current):
            todo.append((child, pos))
    return node


def make_binder(fdef: ast.FunctionDef, func: Callable[..., Any],
                params: tuple[str, ...]) -> Callable[..., tuple[Any, ...]]:
    """A function with ``func``'s signature that returns its parameters' values.

    Calling it raises exactly the TypeError the real function would for bad arguments.
    """
    args = _copy(fdef.args)
    for a in ast.walk(args):
        if isinstance(a, ast.arg):
            a.annotation = None
    args.defaults = [ast.Constant(None) for _ in args.defaults]
    args.kw_defaults = [None if d is None else ast.Constant(None) for d in args.kw_defaults]
    binder = ast.FunctionDef(name=fdef.name, args=args,
                             body=[ast.Return(value=ast.Tuple(elts=[_name(p) for p in params],
                                                              ctx=ast.Load()))],
                             decorator_list=[], returns=None, type_comment=None)
    module = ast.Module(body=[binder], type_ignores=[])
    ast.fix_missing_locations(module)
    code = compile(module, "<pydron binder>", "exec", dont_inherit=True)
    fcode = next(c for c in code.co_consts if isinstance(c, types.CodeType))
    if hasattr(fcode, "co_qualname"):
        fcode = fcode.replace(co_qualname=func.__qualname__)
    fn = types.FunctionType(fcode, {}, fdef.name, func.__defaults__)
    fn.__kwdefaults__ = func.__kwdefaults__
    return fn


def _copy(node: Any) -> Any:
    import copy
    return copy.deepcopy(node)
