"""What Pydron may assume about a value: is a callable side-effect free, is an object immutable.

Both the translator (to find call sites worth a graph node) and the runtime (to decide, once a
callee's value is known, whether a call is dispatched, run inline or is a sync point) ask the
same questions, so the answers live here, below both layers.
"""
from __future__ import annotations

import builtins
import io
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
    """True if no sync point can change ``value`` (so work reading it may run early).

    A bound method is as immutable as the object it is bound to: ``box.get`` reads
    ``box``."""
    t = type(value)
    if t is types.MethodType:
        return is_immutable(value.__self__)
    if t is types.BuiltinMethodType:
        owner = value.__self__
        return owner is None or type(owner) is types.ModuleType or is_immutable(owner)
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
        if t in immutable and t is not types.MethodType and t is not types.BuiltinMethodType:
            continue
        if (t is tuple or t is frozenset or t is type or t is types.MethodType
                or t is types.BuiltinMethodType) and is_immutable(v):
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


# How freely a loop may fetch its next item (see iterator_kind).
FETCH_EFFECTS = 0   # ``next`` may run code with effects: the fetch is a sync point
FETCH_READS = 1     # ``next`` only reads the container the loop names
FETCH_FREE = 2      # the items cannot change: fetch whenever
FETCH_HIDDEN = 3    # ``next`` only reads (or moves a file's position), but what it reads
                    # is not named by the loop: ordered after every earlier sync point

_FILE_TYPES = (io.TextIOWrapper, io.BufferedReader, io.FileIO, io.StringIO, io.BytesIO)


def iterator_kind(it: Any, _depth: int = 0) -> int:
    """How freely a loop may fetch items from ``it`` ahead of program order (FETCH_*).

    Iterating an immutable container can happen at any time; a builtin container's
    iterator only reads the container; a file only reads the file; a generator whose code
    calls nothing but pure or @functional callables and stores into nothing only reads
    what its frame holds. Anything else may run code with effects when asked for an item.
    """
    t = type(it)
    if t in _IMMUTABLE_ITERATORS:
        return FETCH_FREE
    if t in _PURE_ITERATORS:
        return FETCH_READS
    if t is enumerate or t is zip:
        # Their pickling recipe names the iterators they wrap; they are as pure as the least.
        try:
            inner = it.__reduce__()[1]
        except Exception:
            return FETCH_EFFECTS
        parts = inner[:1] if t is enumerate else inner
        kinds = [iterator_kind(p, _depth + 1) for p in parts]
        if FETCH_EFFECTS in kinds:
            return FETCH_EFFECTS
        if FETCH_HIDDEN in kinds:
            return FETCH_HIDDEN
        return min(kinds, default=FETCH_FREE)
    if isinstance(it, _FILE_TYPES):
        return FETCH_HIDDEN
    if t is types.GeneratorType and _depth < 4 and _generator_reads_only(it, _depth):
        return FETCH_HIDDEN
    return FETCH_EFFECTS


# Bytecode that changes state outside a generator's own frame, or hands control to code
# we cannot see (a call through a local or an attribute, delegation, star-calls).
_EFFECT_OPS = frozenset({
    "STORE_GLOBAL", "DELETE_GLOBAL", "STORE_ATTR", "DELETE_ATTR", "STORE_SUBSCR",
    "DELETE_SUBSCR", "STORE_DEREF", "DELETE_DEREF", "IMPORT_NAME", "IMPORT_FROM",
    "IMPORT_STAR", "YIELD_FROM", "SEND", "GET_AWAITABLE", "PUSH_NULL", "CALL_FUNCTION",
    "CALL_FUNCTION_KW", "CALL_FUNCTION_EX", "PRINT_EXPR", "STORE_NAME", "DELETE_NAME",
    "SETUP_ANNOTATIONS", "STORE_SLICE", "BEFORE_WITH", "SETUP_WITH",
})


def _generator_reads_only(gen: types.GeneratorType, depth: int) -> bool:
    """Does resuming ``gen`` only read? Judged from its bytecode and its frame: every
    global it loads must be inert (so a called global is pure or @functional), every method
    it calls a reading method of the builtin types, nothing stored outside its frame, and
    any iterator it holds is itself read-only. Conservative: a call through a local
    variable counts as an effect."""
    frame = gen.gi_frame
    if frame is None:
        return True                      # finished: next() only raises StopIteration
    import dis
    globals_ = frame.f_globals
    builtins_ = globals_.get("__builtins__", builtins)
    if not isinstance(builtins_, dict):
        builtins_ = vars(builtins_)
    todo = [gen.gi_code]
    while todo:
        code = todo.pop()
        for ins in dis.get_instructions(code):
            op = ins.opname
            if op in _EFFECT_OPS:
                return False
            if op == "LOAD_GLOBAL" or op == "LOAD_NAME":
                value = globals_.get(ins.argval, builtins_.get(ins.argval, _ABSENT))
                if value is _ABSENT or not is_inert(value):
                    return False
            elif op == "LOAD_METHOD" or (op == "LOAD_ATTR" and "NULL|self" in ins.argrepr):
                if ins.argval not in PURE_METHOD_NAMES:
                    return False
        todo.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
    for value in frame.f_locals.values():
        if hasattr(type(value), "__next__") and value is not gen and \
                iterator_kind(value, depth + 1) == FETCH_EFFECTS:
            return False
    return True


_ABSENT = object()


# Pure builtins that never call or iterate their arguments (beyond dunder methods, which
# Pydron assumes free of side effects): passing them anything is harmless.
_NO_CALLBACKS = frozenset(id(getattr(builtins, n)) for n in (
    "abs", "ascii", "bin", "bool", "callable", "chr", "complex", "divmod", "float", "format",
    "hasattr", "hash", "hex", "int", "isinstance", "issubclass", "len", "oct", "ord", "pow",
    "range", "repr", "round", "slice", "str", "type",
))
_INERT_VALUES = frozenset({int, float, complex, str, bytes, bool, type(None), range, slice,
                           list, dict, set, frozenset, tuple, bytearray, type(Ellipsis)})
_GETTERS = (operator.itemgetter, operator.attrgetter)


def calls_back(callee: Any) -> bool:
    """Does the pure callable ``callee`` call or iterate what it is given (``sorted``'s
    ``key``, ``map``'s function, ``list`` of a generator)? Then its arguments decide
    whether the call is pure."""
    return id(callee) not in _NO_CALLBACKS


def is_inert(value: Any) -> bool:
    """True if a pure builtin given ``value`` runs no code with side effects because of it:
    a plain value, a callable known to be pure or @functional, an iterator whose ``next``
    only reads. A function of unknown purity, a generator, or a lazy ``map``/``filter``
    over one is not: ``sorted(xs, key=log)`` and ``list(map(print, xs))`` are sync points."""
    t = type(value)
    if t in _INERT_VALUES:
        return True
    if t is map or t is filter:
        try:
            parts = value.__reduce__()[1]
        except Exception:
            return False
        return all(is_inert(p) for p in parts)
    if t is types.GeneratorType:
        return False
    if callable(value):
        if t is type:
            return value.__module__ == "builtins"
        if isinstance(value, _GETTERS):
            return True
        if t is types.MethodDescriptorType or t is types.BuiltinMethodType:
            owner = getattr(value, "__objclass__", None) or type(getattr(value, "__self__", None))
            return owner in _INERT_VALUES and _pure_method_name(value.__name__)
        return call_kind(value) != SYNC
    if t in _IMMUTABLE_ITERATORS or t in _PURE_ITERATORS:
        return True
    if t is enumerate or t is zip:
        return iterator_kind(value) > 0
    # Other objects: only their dunder methods run, which Pydron assumes pure; but an
    # iterator of unknown kind runs its own ``__next__``.
    return not (hasattr(t, "__next__"))


def _pure_method_name(name: str) -> bool:
    return name in PURE_METHOD_NAMES


# Methods of the builtin types that only read (the translator leaves calls to them in plain
# code, pure when the receiver is a builtin value).
PURE_METHOD_NAMES = frozenset({
    "get", "keys", "values", "items", "copy", "index", "count", "join", "split", "rsplit",
    "splitlines", "strip", "lstrip", "rstrip", "replace", "format", "format_map",
    "startswith", "endswith", "lower", "upper", "title", "capitalize", "casefold", "swapcase",
    "find", "rfind", "rindex", "encode", "decode", "isdigit", "isalpha", "isalnum",
    "isspace", "isupper", "islower", "isdecimal", "isnumeric", "isidentifier", "zfill",
    "center", "ljust", "rjust", "partition", "rpartition", "expandtabs", "translate",
    "removeprefix", "removesuffix", "hex", "bit_length", "bit_count", "conjugate",
    "is_integer", "as_integer_ratio", "union", "intersection", "difference",
    "symmetric_difference", "issubset", "issuperset", "isdisjoint", "fromkeys",
})
