"""Deciding, at translation time, which calls deserve a node of their own in the graph.

A call is a *dispatch site* if its callee may turn out to be @functional: a global that is
functional now (``static``, resolved once and guarded), or a callee only known at run time
(``dynamic``: a local variable, a method of an object). Every other call stays inside plain
Python code; whether that code is a sync point is decided from the callee as well.
"""
from __future__ import annotations

import ast
import builtins
import dis
from typing import Any, Optional

from pydron import purity
from pydron.translation.scopes import Scopes

STATIC = "static"
DYNAMIC = "dynamic"

# Methods of the builtin types: a call to one of these is never a functional call, so it
# stays in plain code. Those that only read are pure when the receiver is a builtin value.
PURE_METHODS = purity.PURE_METHOD_NAMES
MUTATING_METHODS = frozenset({
    "append", "extend", "insert", "pop", "remove", "clear", "add", "update", "discard",
    "setdefault", "sort", "reverse", "popitem", "difference_update",
    "intersection_update", "symmetric_difference_update",
})
KNOWN_METHODS = PURE_METHODS | MUTATING_METHODS

# Builtin consumers that exhaust a generator expression immediately: a generator expression
# given to them may be evaluated as a list without changing the result.
EAGER_CONSUMERS = tuple(getattr(builtins, n) for n in (
    "sum", "list", "tuple", "set", "frozenset", "sorted", "min", "max", "dict"))

_MISSING = object()


class SiteFinder:
    """Classifies call expressions of one function."""

    def __init__(self, scopes: Scopes, globals_: dict[str, Any]) -> None:
        self.scopes = scopes
        self.globals = globals_
        self.builtins = globals_.get("__builtins__", builtins)
        if not isinstance(self.builtins, dict):
            self.builtins = vars(self.builtins)
        #: (dotted name, object) pairs the translation relied on; re-checked at every call.
        self.guards: dict[tuple[str, ...], Any] = {}
        self._module_code: Optional[_ModuleCode] = None   # built when first needed

    # -- name resolution -------------------------------------------------------------
    def is_local(self, name: str) -> bool:
        return name.startswith("_pd_") or self.scopes.is_local(name) or name in self.scopes.frees

    def resolve(self, expr: ast.expr) -> Any:
        """The object a global name or dotted attribute chain names now, or _MISSING."""
        chain = dotted(expr)
        if chain is None or self.is_local(chain[0]):
            return _MISSING
        obj = self.globals.get(chain[0], _MISSING)
        if obj is _MISSING:
            obj = self.builtins.get(chain[0], _MISSING)
        for attr in chain[1:]:
            if obj is _MISSING:
                break
            try:
                obj = getattr(obj, attr, _MISSING)
            except Exception:
                obj = _MISSING
        if obj is not _MISSING:
            self.guards[chain] = obj
        return obj

    def is_stable_global(self, name: str) -> bool:
        """A global that names a function, class or module: reading it later is harmless."""
        if self.is_local(name) or name in self.scopes.declared_globals or \
                self._rebindable(name):
            return False
        obj = self.resolve(ast.Name(id=name, ctx=ast.Load()))
        return obj is not _MISSING and callable_or_module(obj)

    def global_is_constant(self, name: str) -> bool:
        """A global whose value no sync point can change (a function, a builtin class)."""
        if not self.is_stable_global(name):
            return False
        return purity.is_immutable(self.resolve(ast.Name(id=name, ctx=ast.Load())))

    # -- call classification -----------------------------------------------------------
    def site(self, call: ast.Call) -> Optional[tuple[str, Any]]:
        """``(STATIC, obj)``, ``(DYNAMIC, None)`` or None for a call that stays plain code."""
        func = call.func
        if isinstance(func, ast.Name):
            if self.is_local(func.id) or func.id in self.scopes.declared_globals:
                return (DYNAMIC, None)
            obj = self.resolve(func)
            if obj is _MISSING:
                return (DYNAMIC, None)
            if purity.call_kind(obj) != purity.DISPATCH:
                return None
            if self._rebindable(func.id):
                # A global that some function of its module assigns may name another
                # callee by the time the call runs: read it then, in program order.
                return (DYNAMIC, None)
            return (STATIC, obj)
        if isinstance(func, ast.Attribute):
            chain = dotted(func)
            if chain is not None and not self.is_local(chain[0]):
                obj = self.resolve(func)
                if obj is not _MISSING:
                    if purity.call_kind(obj) != purity.DISPATCH:
                        return None
                    if not self._through_modules(chain):
                        # ``BOX.get``, ``Class.method``: an attribute store (a sync point)
                        # may rebind it during the run: look it up then, in order.
                        return (DYNAMIC, None)
                    return (STATIC, obj)
            if func.attr in KNOWN_METHODS:
                return None
            return (DYNAMIC, None)
        if isinstance(func, ast.Lambda):
            return None
        return (DYNAMIC, None)

    def _through_modules(self, chain: tuple[str, ...]) -> bool:
        """Is ``a.b.c`` reached through modules only (``np.fft.fft``), whose attributes
        the scheduled code is not expected to rebind?"""
        import types
        if self._rebindable(chain[0]):
            return False
        obj = self.resolve(ast.Name(id=chain[0], ctx=ast.Load()))
        for attr in chain[1:-1]:
            if not isinstance(obj, types.ModuleType):
                return False
            obj = getattr(obj, attr, _MISSING)
        return isinstance(obj, types.ModuleType)

    def _rebindable(self, name: str) -> bool:
        """May a function of the module rebind this global while the function runs (it
        assigns it with ``global``, or the module calls ``globals()``)? Only the module's
        own globals count (``globals()["len"] = ...`` is not considered)."""
        if name not in self.globals:
            return False
        if self._module_code is None:
            self._module_code = _ModuleCode(self.globals)
        return self._module_code.assigns(name)

    def plain_call_kind(self, call: ast.Call) -> tuple[int, str]:
        """How a call left in plain code behaves: purity.PURE / SYNC, with a reason."""
        func = call.func
        name = ast.unparse(func)
        if isinstance(func, ast.Attribute) and func.attr in KNOWN_METHODS:
            if func.attr in PURE_METHODS:
                return purity.PURE, ""
            return purity.SYNC, f"{name}() may change a shared object"
        obj = self.resolve(func) if dotted(func) is not None else _MISSING
        if obj is _MISSING:
            return purity.SYNC, f"call to {name} (not known to be @functional)"
        kind = purity.call_kind(obj)
        if kind == purity.SYNC:
            return purity.SYNC, f"call to {name} (not @functional)"
        return purity.PURE, ""

    def eager_consumer(self, call: ast.Call) -> bool:
        """``sum(f(x) for x in xs)`` and friends: the generator may become a list."""
        if len(call.args) != 1 or not isinstance(call.args[0], ast.GeneratorExp):
            return False
        return self.consumes_eagerly(call.func)

    def consumes_eagerly(self, func: ast.expr) -> bool:
        """Is ``func`` a builtin that exhausts the iterable it is given (``list``, ``sum``)?"""
        if not isinstance(func, ast.Name):
            return False
        obj = self.resolve(func)
        return any(obj is c for c in EAGER_CONSUMERS)


class _ModuleCode:
    """The code of every function and method defined in one module (nested code included),
    to answer "does any of it assign global NAME?" from the bytecode, a name at a time:
    only code objects that mention the name are disassembled."""

    def __init__(self, globals_: dict[str, Any]) -> None:
        import types
        module = globals_.get("__name__")
        roots: list[types.CodeType] = []

        def add_function(fn: Any) -> None:
            code = getattr(fn, "__code__", None)
            if isinstance(code, types.CodeType) and \
                    getattr(fn, "__globals__", None) is globals_:
                roots.append(code)

        for value in list(globals_.values()):
            if isinstance(value, type) and value.__module__ == module:
                for attr in vars(value).values():
                    add_function(getattr(attr, "__func__", attr))
            else:
                add_function(value)
        self.codes: list[types.CodeType] = []
        seen: set[int] = set()
        while roots:
            code = roots.pop()
            if id(code) not in seen:
                seen.add(id(code))
                self.codes.append(code)
                roots.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
        self.uses_globals = any("globals" in c.co_names for c in self.codes)
        self._answers: dict[str, bool] = {}

    def assigns(self, name: str) -> bool:
        hit = self._answers.get(name)
        if hit is None:
            hit = self.uses_globals or any(_stores_global(code, name) for code in self.codes
                                           if name in code.co_names)
            self._answers[name] = hit
        return hit


def _stores_global(code: Any, name: str) -> bool:
    """Does ``code`` assign or delete the global ``name``? Read from the raw bytecode: a
    quick test for the opcodes first (most functions have none), then their arguments."""
    raw = code.co_code
    ops = raw[::2]
    if _STORE_GLOBAL not in ops and _DELETE_GLOBAL not in ops:
        return False
    return any(ins.opname in ("STORE_GLOBAL", "DELETE_GLOBAL") and ins.argval == name
               for ins in dis.get_instructions(code))


_STORE_GLOBAL = dis.opmap["STORE_GLOBAL"]
_DELETE_GLOBAL = dis.opmap["DELETE_GLOBAL"]


def dotted(expr: ast.expr) -> Optional[tuple[str, ...]]:
    """``a.b.c`` as ("a", "b", "c"); None for anything else."""
    parts = []
    while isinstance(expr, ast.Attribute):
        parts.append(expr.attr)
        expr = expr.value
    if isinstance(expr, ast.Name):
        parts.append(expr.id)
        return tuple(reversed(parts))
    return None


def callable_or_module(obj: Any) -> bool:
    return callable(obj) or type(obj).__name__ == "module"
