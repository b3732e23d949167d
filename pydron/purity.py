"""What Pydron may assume about a value: is a callable side-effect free, is an object immutable.

Both the translator (to find call sites worth a graph node) and the runtime (to decide, once a
callee's value is known, whether a call is dispatched, run inline or is a sync point) ask the
same questions, so the answers live here, below both layers.
"""
from __future__ import annotations

import builtins
import math
import operator
import types
from typing import Any, Callable, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

#: Attribute set on functions decorated with ``@functional``.
MARK = "__pydron_functional__"

# Callables registered with ``functional(obj)`` that cannot carry the attribute (builtins,
# C functions, bound methods). Keyed by id, with the object kept alive so the id stays valid.
_registered: dict[int, Any] = {}

# Cheap, side-effect-free callables: run inline on the caller's thread, never a sync point.
# They are not worth a trip to a worker, and they may be called freely out of program order.
_PURE_BUILTINS = (
    "abs", "all", "any", "ascii", "bin", "bool", "bytes", "callable", "chr", "complex",
    "dict", "divmod", "enumerate", "filter", "float", "format", "frozenset", "hasattr",
    "hash", "hex", "int", "isinstance", "issubclass", "len", "list", "map", "max", "min",
    "oct", "ord", "pow", "range", "repr", "reversed", "round", "set", "slice", "sorted",
    "str", "sum", "tuple", "type", "zip",
)
_pure_inline: dict[int, Any] = {}


def _add_pure(obj: Any) -> None:
    _pure_inline[id(obj)] = obj


for _name in _PURE_BUILTINS:
    _add_pure(getattr(builtins, _name))
for _name in dir(math):
    if not _name.startswith("_") and callable(getattr(math, _name)):
        _add_pure(getattr(math, _name))
for _name in dir(operator):
    if not _name.startswith("_") and _name not in ("setitem", "delitem", "iadd", "iand",
                                                  "iconcat", "ifloordiv", "ilshift", "imod",
                                                  "imul", "imatmul", "ior", "ipow", "irshift",
                                                  "isub", "itruediv", "ixor"):
        _obj = getattr(operator, _name)
        if callable(_obj):
            _add_pure(_obj)


def functional(obj: F) -> F:
    """Mark ``obj`` as side-effect free, so calls to it may run in parallel on workers.

    Used as a decorator on functions and methods, or called on an existing callable (a
    library function, a builtin) to whitelist it. The object itself is returned unchanged, so
    a decorated module-level function stays picklable by reference.
    """
    if isinstance(obj, (staticmethod, classmethod)):
        functional(obj.__func__)
        return obj
    if not callable(obj):
        raise TypeError(
            f"pydron.functional expects a function or other callable, "
            f"got {type(obj).__name__} {obj!r:.80}")
    target = obj.__func__ if isinstance(obj, types.MethodType) else obj
    try:
        setattr(target, MARK, True)
    except (AttributeError, TypeError):
        _registered[id(target)] = target
    return obj


# How a call is to be executed once its callee is known.
DISPATCH = 2   # a @functional call: send it to the pool
PURE = 1       # a whitelisted cheap pure callable: run inline, out of order if need be
SYNC = 0       # anything else: a sync point, run in program order on the caller's thread


def call_kind(callee: Any) -> int:
    """Classify ``callee`` as DISPATCH, PURE or SYNC."""
    target = getattr(callee, "__func__", callee) if type(callee) is types.MethodType else callee
    try:
        if getattr(target, MARK, False) is True:
            return DISPATCH
    except Exception:  # an object whose __getattr__ misbehaves is simply not functional
        return SYNC
    key = id(target)
    if key in _registered and _registered[key] is target:
        return DISPATCH
    if key in _pure_inline and _pure_inline[key] is target:
        return PURE
    return SYNC


def is_functional(callee: Any) -> bool:
    """True if calls to ``callee`` may be dispatched to workers."""
    return call_kind(callee) == DISPATCH


# Values no operation can change. Functions count: rebinding a function's attributes
# during a scheduled call is outside what Pydron promises to preserve. Classes and modules
# do not (their attributes are state), except the builtin classes.
_IMMUTABLE_TYPES = frozenset({
    int, float, complex, str, bytes, bool, type(None), range, type(Ellipsis),
    types.FunctionType, types.BuiltinFunctionType, types.BuiltinMethodType,
    types.MethodType, slice,
})


def is_immutable(value: Any) -> bool:
    """True if no sync point can change ``value`` (so work reading it may run early)."""
    t = type(value)
    if t in _IMMUTABLE_TYPES:
        return True
    if t is tuple or t is frozenset:
        return all(is_immutable(v) for v in value)
    if t is type:
        return value.__module__ == "builtins"
    return False


def all_immutable(values: Any) -> bool:
    """True if every value in ``values`` is immutable (fast path for the scheduler)."""
    immutable = _IMMUTABLE_TYPES
    for v in values:
        t = type(v)
        if t in immutable:
            continue
        if (t is tuple or t is frozenset or t is type) and is_immutable(v):
            continue
        return False
    return True


# Iterators whose ``next`` only reads the container they walk: fetching an item early has
# no effect anybody could see.
_PURE_ITERATORS = frozenset(type(iter(x)) for x in (
    [], (), "", b"", bytearray(), range(0), range(1 << 70), {}, set(), frozenset(),
    {}.keys(), {}.values(), {}.items(), reversed([]), reversed(range(0)),
))
# ... and over immutable containers, nothing at all can change the items still to come.
_IMMUTABLE_ITERATORS = frozenset(type(iter(x)) for x in ((), "", b"", range(0), range(1 << 70)))


def iterator_kind(it: Any) -> int:
    """How freely a loop may fetch items from ``it`` ahead of program order.

    Returns 2 if the items can't change (iterating an immutable container), 1 if fetching has
    no side effects but a sync point could still change the container, 0 if ``next`` may have
    effects of its own (a generator, a file ...), so fetching is itself a sync point.
    """
    t = type(it)
    if t in _IMMUTABLE_ITERATORS:
        return 2
    if t in _PURE_ITERATORS:
        return 1
    if t is enumerate or t is zip:
        # Their pickling recipe names the iterators they wrap; they are as pure as the least.
        try:
            inner = it.__reduce__()[1]
        except Exception:
            return 0
        parts = inner[:1] if t is enumerate else inner
        return min((iterator_kind(p) for p in parts), default=2)
    return 0
