"""Which names of a function are locals, cells, free variables or globals.

Python's own compiler decides this; we ask it (``symtable`` for the source as written, the
code object of the normalized function for the form we actually run) instead of
re-deriving the scoping rules.
"""
from __future__ import annotations

import ast
import symtable
import textwrap
import types
from dataclasses import dataclass, field


@dataclass
class Scopes:
    """Name classes of one function."""

    locals: frozenset[str]          # bound in the function body or parameters
    cells: frozenset[str]           # locals captured by nested scopes (live in cells)
    frees: frozenset[str]           # from an enclosing function (live in its cells)
    declared_globals: frozenset[str]
    params: tuple[str, ...] = field(default=())

    def is_local(self, name: str) -> bool:
        return name in self.locals

    def is_slot_local(self, name: str) -> bool:
        """A local whose value can flow along graph edges (not shared through a cell)."""
        return name in self.locals and name not in self.cells

    def is_global(self, name: str) -> bool:
        return name not in self.locals and name not in self.frees


def of_source(text: str, filename: str, name: str, code: types.CodeType) -> Scopes:
    """Scopes of the function as written (``text`` holds its dedented ``def``)."""
    # A function with free variables is only valid source inside a scope that binds them
    # (``nonlocal x`` in a top-level def is a SyntaxError), so give it one.
    wrapped = "def _pd_outer():\n" + "".join(f"    {n} = None\n" for n in code.co_freevars) \
        + textwrap.indent(text, "    ")
    top = symtable.symtable(wrapped, filename, "exec").get_children()[0]
    table = next(t for t in top.get_children() if t.get_name() == name)
    declared = frozenset(s.get_name() for s in table.get_symbols() if s.is_declared_global())
    local = frozenset(s.get_name() for s in table.get_symbols()
                      if (s.is_local() or s.is_parameter()) and not s.is_declared_global())
    return Scopes(locals=local, cells=frozenset(code.co_cellvars),
                  frees=frozenset(code.co_freevars), declared_globals=declared,
                  params=tuple(code.co_varnames[:_argcount(code)]))


def _argcount(code: types.CodeType) -> int:
    n = code.co_argcount + code.co_kwonlyargcount
    n += bool(code.co_flags & 0x04) + bool(code.co_flags & 0x08)   # *args, **kwargs
    return n


def of_normalized(fdef: ast.FunctionDef, frees: frozenset[str], filename: str,
                  declared_globals: frozenset[str]) -> Scopes:
    """Scopes of the normalized function, by compiling it inside a stand-in enclosing scope."""
    outer = ast.FunctionDef(
        name="_pd_outer", args=ast.arguments(posonlyargs=[], args=[], vararg=None,
                                              kwonlyargs=[], kw_defaults=[], kwarg=None,
                                              defaults=[]),
        body=[ast.Assign(targets=[ast.Name(id=n, ctx=ast.Store())], value=ast.Constant(None))
              for n in sorted(frees)] + [fdef],
        decorator_list=[], returns=None, type_comment=None)
    module = ast.Module(body=[outer], type_ignores=[])
    from pydron.translation.codegen import locate
    locate(outer, fdef)
    code = compile(module, filename, "exec", dont_inherit=True)
    outer_code = next(c for c in code.co_consts if isinstance(c, types.CodeType))
    inner = next(c for c in outer_code.co_consts
                 if isinstance(c, types.CodeType) and c.co_name == fdef.name)
    return Scopes(locals=frozenset(inner.co_varnames) | frozenset(inner.co_cellvars),
                  cells=frozenset(inner.co_cellvars), frees=frozenset(inner.co_freevars),
                  declared_globals=declared_globals,
                  params=tuple(inner.co_varnames[:_argcount(inner)]))
