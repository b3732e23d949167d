"""Source text -> normalized AST -> graph template. Pure: no processes, no I/O but reading
the function's source file."""
from __future__ import annotations

import ast
from typing import Any, Callable

from pydron.dataflow.template import Block, CallStep, IfStep, LoopStep, Template, TryStep
from pydron.translation import scopes as scopes_mod
from pydron.translation.accumulators import AccumulatorFinder
from pydron.translation.builder import Builder
from pydron.translation.codegen import Compiler, make_binder
from pydron.translation.normalize import Normalizer
from pydron.translation.sites import SiteFinder
from pydron.translation.source import describe, load

__all__ = ["translate", "describe"]

# Builtins that look at the caller's frame: translated code would show them other locals.
_FRAME_READERS = ("locals", "vars", "eval", "exec", "dir")


def translate(func: Callable[..., Any]) -> Template:
    """Translate ``func`` into a graph template (raises TranslationError if it can't)."""
    src = load(func)
    code = func.__code__
    fdef = src.node
    scopes0 = scopes_mod.of_source(src.text, src.filename, fdef.name, code)
    finder = SiteFinder(scopes0, func.__globals__)
    reason = _opaque_reason(fdef, finder)
    if "__class__" in code.co_freevars:
        _rewrite_super(fdef)
    norm = Normalizer(finder)
    body = norm.body(fdef.body) if not reason else list(fdef.body)
    normalized = ast.FunctionDef(name=fdef.name, args=fdef.args, body=body or [ast.Pass()],
                                 decorator_list=[], returns=None, type_comment=None)
    ast.copy_location(normalized, fdef)
    frees = frozenset(code.co_freevars)
    scopes1 = scopes_mod.of_normalized(normalized, frees, src.filename,
                                       scopes0.declared_globals)
    finder.scopes = scopes1
    candidates = frozenset(n for n in scopes1.locals
                           if n not in scopes1.cells and n not in scopes1.params)
    accumulators = AccumulatorFinder(finder, candidates).find(body)
    compiler = Compiler(fdef.name, src.filename, func.__globals__,
                        tuple(sorted(scopes1.cells | frees)), qualname=func.__qualname__)
    builder = Builder(norm, finder, scopes1, accumulators, compiler)
    block = builder.block(body, None) if not reason else Block([])
    fns = compiler.compile()
    for step, attr, index in builder.pending:
        fn = fns[index]
        setattr(step, attr, fn)
        if attr == "fn" and fn.__code__.co_freevars:
            step.needs_cells = True
    return Template(
        name=describe(func), filename=src.filename, block=block, params=scopes1.params,
        binder=make_binder(fdef, func, scopes1.params), cells=tuple(sorted(scopes1.cells)),
        guards=tuple(finder.guards.items()),
        opaque_reason=reason, has_dispatch=_has_calls(block), normalized=normalized,
        accumulators=tuple(sorted(a for a in accumulators if not a.startswith("_pd_"))))


def _opaque_reason(fdef: ast.FunctionDef, finder: SiteFinder) -> str:
    import builtins
    for node in ast.walk(fdef):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id in _FRAME_READERS and \
                    finder.resolve(node.func) is getattr(builtins, node.func.id):
                if node.func.id == "dir" and node.args:
                    continue
                return f"calls {node.func.id}(), which needs the function's own frame"
    return ""


def _rewrite_super(fdef: ast.FunctionDef) -> None:
    """``super()`` finds its class and instance in the calling frame; spell them out."""
    params = fdef.args.posonlyargs + fdef.args.args
    if not params:
        return
    first = params[0].arg
    todo: list[ast.AST] = list(fdef.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
                node.func.id == "super" and not node.args and not node.keywords:
            node.args = [ast.Name(id="__class__", ctx=ast.Load()),
                         ast.Name(id=first, ctx=ast.Load())]
            for a in node.args:
                ast.copy_location(a, node)
        todo.extend(ast.iter_child_nodes(node))


def _has_calls(block: Block) -> bool:
    for step in block.steps:
        if isinstance(step, CallStep):
            return True
        if isinstance(step, IfStep) and (_has_calls(step.body) or _has_calls(step.orelse)):
            return True
        if isinstance(step, TryStep) and _has_calls(step.body):
            return True
        if isinstance(step, LoopStep) and (_has_calls(step.body) or _has_calls(step.orelse)
                                           or _has_calls(step.test_block)):
            return True
    return False
