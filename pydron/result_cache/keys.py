"""Cache keys for functional calls: a hash of the code that runs and of the data it gets.

A key must change whenever the result could change, and should stay put when only the
text around the code changes, so that fixing a comment does not throw away hours of
results. Hence:

* **Code** (:func:`code_digest`) is the function's AST without docstrings and without
  line numbers, plus, recursively, the code of the functions and classes of *user*
  modules it refers to by global name, plus the values of module-level constants of
  simple types it reads (``THRESHOLD = 3``), plus what its closure holds. Library code
  (standard library, site-packages, pydron) is not followed: upgrading numpy does not
  invalidate a cache (delete it yourself if that matters). Module-level *mutable* data a
  function reads (a global dict or array) is not part of the key either: functional
  functions are promised not to depend on state that changes.
* **Arguments** (:func:`args_digest`) are hashed by content: their pickle, with large
  buffers (numpy arrays' memory) hashed in place rather than copied into the pickle.

The source text is only trusted while it matches the code that runs: a file edited on
disk while a long run goes on would otherwise give the old code's results the new code's
key. Each function's source is compiled once and its bytecode compared with the running
code; on a mismatch (or without source: a lambda, a REPL) the running code object itself
is hashed.

Digests are memoized per function object together with the global bindings they were
computed from; a memo is reused only while every one of those names is still bound to
the very same object (a few dict lookups per call), so rebinding ``THRESHOLD`` or a
helper between calls gives a new key at once.
"""
from __future__ import annotations

import __future__
import ast
import functools
import hashlib
import inspect
import operator
import os
import pickle
import sys
import sysconfig
import textwrap
import threading
import types
import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["FORMAT_VERSION", "code_digest", "args_digest", "call_key", "hasher",
           "is_user_module"]

FORMAT_VERSION = 1
"""Part of every key: bump it when the key's recipe changes, so old entries stop matching."""

try:
    import xxhash

    def hasher() -> Any:
        """A fresh fast 128-bit hasher: xxh3_128 (about 10 GB/s on one core)."""
        return xxhash.xxh3_128()
except ImportError:  # pragma: no cover - xxhash is a declared dependency
    def hasher() -> Any:
        """A fresh 128-bit hasher: BLAKE2b (about 0.7 GB/s on one core)."""
        return hashlib.blake2b(digest_size=16)

_MISSING = object()
_FUTURE_FLAGS = functools.reduce(
    operator.or_, (getattr(__future__, name).compiler_flag
                   for name in __future__.all_feature_names), 0)
_SIMPLE = (int, float, complex, str, bytes, bool, type(None))
_LIB_DIRS = tuple(sorted({os.path.realpath(p) + os.sep for p in (
    sysconfig.get_paths().get(name) for name in ("stdlib", "platstdlib", "purelib", "platlib"))
    if p}))
_PYDRON_DIR = os.path.dirname(os.path.dirname(os.path.realpath(__file__))) + os.sep


# --------------------------------------------------------------------------- arguments


def args_digest(args: tuple, kwargs: dict) -> bytes:
    """A content hash of a call's arguments (16 bytes).

    The arguments are pickled with protocol 5; every buffer the pickler hands out (a numpy
    array's data) is hashed where it lies, never copied into the pickle, so a 1 GB array
    costs one pass of the hash over its memory. Plain pickle first (fast; classes and
    functions by reference); cloudpickle only if plain pickle fails (lambdas, local
    classes). Raises whatever cloudpickle raises for arguments that cannot be pickled.

    Equal values may pickle differently -- dicts and sets in another insertion order, one
    object referenced twice versus two equal copies -- which only costs a cache miss, never
    a wrong hit: equal pickles mean equal contents.
    """
    data = hasher()

    def on_buffer(buffer: pickle.PickleBuffer) -> bool:
        try:
            raw = buffer.raw()
        except BufferError:  # not contiguous: let the pickler copy it in-band
            return True
        data.update(raw.nbytes.to_bytes(8, "little"))
        data.update(raw)
        return False

    value = (args, kwargs)
    try:
        blob = pickle.dumps(value, 5, buffer_callback=on_buffer)
    except Exception:
        data = hasher()
        import cloudpickle
        blob = cloudpickle.dumps(value, 5, buffer_callback=on_buffer)
    head = hasher()
    head.update(blob)
    return head.digest() + data.digest()


# --------------------------------------------------------------------------- code


@functools.lru_cache(maxsize=4096)
def is_user_module(name: str | None) -> bool:
    """True for the user's own modules: not the standard library, not installed packages
    (site-packages, dist-packages), not pydron. A module without a file (``__main__`` of
    ``python -c``, code from ``exec``) counts as the user's."""
    if name is None or name == "__main__":
        return True
    top = name.partition(".")[0]
    if top == "pydron" or top in sys.stdlib_module_names or top == "builtins":
        return False
    module = sys.modules.get(name)
    path = getattr(module, "__file__", None)
    if not path:  # unknown to this process, or file-less: following it costs only misses
        return not hasattr(module, "__path__")
    path = os.path.realpath(path)
    if "site-packages" in path or "dist-packages" in path or path.startswith(_PYDRON_DIR):
        return False
    return not path.startswith(_LIB_DIRS)


def _unwrap(obj: Any) -> Any:
    """The function behind a callable object that keeps ``__wrapped__`` (a cache wrapper,
    a scheduled function). A wrapper *function* is kept: its own code may change the
    result, and the function it wraps is followed through its closure and
    ``__wrapped__`` (see :meth:`_Walk.function`)."""
    for _ in range(100):
        if isinstance(obj, (types.FunctionType, type, types.MethodType, functools.partial)):
            return obj
        inner = getattr(obj, "__wrapped__", None)
        if inner is None or inner is obj:
            return obj
        obj = inner
    return obj


def _is_simple(value: Any) -> bool:
    if isinstance(value, _SIMPLE):
        return True
    return type(value) is tuple and all(_is_simple(v) for v in value)


def _simple_bytes(value: Any) -> bytes:
    return f"{type(value).__qualname__}:{value!r}".encode()


def _strip_docstrings(tree: ast.AST) -> None:
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and \
                    isinstance(body[0].value, ast.Constant) and \
                    isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]


def _signature(code: types.CodeType) -> tuple:
    """What a code object does, without its line numbers or file: for comparing the code
    compiled from the source on disk with the code that runs."""
    consts = tuple(_signature(c) if isinstance(c, types.CodeType) else (type(c), repr(c))
                   for c in code.co_consts)
    return (code.co_name, code.co_code, code.co_names, code.co_varnames, code.co_freevars,
            code.co_cellvars, code.co_flags, code.co_argcount, code.co_kwonlyargcount, consts)


def _matching_code(module_code: types.CodeType, code: types.CodeType) -> bool:
    """True if compiling the source gave the running code (a nested code object of the
    module's that does exactly what ``code`` does)."""
    wanted = _signature(code)
    stack = [module_code]
    while stack:
        current = stack.pop()
        if current.co_name == code.co_name and _signature(current) == wanted:
            return True
        stack.extend(c for c in current.co_consts if isinstance(c, types.CodeType))
    return False


def _source_digest(fn: types.FunctionType) -> bytes | None:
    """The AST digest of ``fn``'s source, or None if its source is missing, is not a
    ``def`` (a lambda's line), or no longer matches the code that runs."""
    try:
        source = textwrap.dedent(inspect.getsource(fn))
        tree = ast.parse(source)
    except (OSError, TypeError, SyntaxError, IndentationError):
        return None
    if len(tree.body) != 1 or \
            not isinstance(tree.body[0], (ast.FunctionDef, ast.AsyncFunctionDef)):
        return None
    try:
        compiled = compile(tree, fn.__code__.co_filename, "exec", dont_inherit=True,
                           flags=fn.__code__.co_flags & _FUTURE_FLAGS)
    except (SyntaxError, ValueError):
        return None
    if not _matching_code(compiled, fn.__code__):
        return None  # stale source (file edited since import) or context-dependent code
    _strip_docstrings(tree)
    dump = ast.dump(tree, annotate_fields=False, include_attributes=False)
    h = hasher()
    h.update(b"ast:" + dump.encode())
    return h.digest()


def _code_bytes(code: types.CodeType, doc: object, out: list[bytes]) -> None:
    """The parts of a code object that decide what it does (not its line numbers)."""
    out += [code.co_name.encode(), code.co_code, repr(code.co_names).encode(),
            repr(code.co_varnames).encode(), repr(code.co_freevars).encode(),
            repr(code.co_cellvars).encode(),
            repr((code.co_argcount, code.co_posonlyargcount, code.co_kwonlyargcount,
                  code.co_flags)).encode()]
    consts = code.co_consts
    if consts and isinstance(doc, (str, type(None))) and type(consts[0]) is type(doc) and \
            consts[0] == doc:
        out.append(b"<doc>")  # the docstring (or, before 3.12, its empty slot)
        consts = consts[1:]
    for const in consts:
        if isinstance(const, types.CodeType):
            _code_bytes(const, None, out)
        else:
            out.append(_simple_bytes(const) if _is_simple(const) else
                       type(const).__qualname__.encode())


def _bytecode_digest(fn: types.FunctionType) -> bytes:
    parts: list[bytes] = [b"code:"]
    _code_bytes(fn.__code__, fn.__doc__ if fn.__code__.co_name != "<lambda>" else 0, parts)
    for default in (fn.__defaults__ or ()) + tuple((fn.__kwdefaults__ or {}).items()):
        parts.append(_simple_bytes(default) if _is_simple(default) else
                     type(default).__qualname__.encode())
    h = hasher()
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.digest()


_own: weakref.WeakKeyDictionary[types.CodeType, bytes] = weakref.WeakKeyDictionary()
_own_lock = threading.Lock()


def _own_digest(fn: types.FunctionType) -> bytes:
    """The digest of ``fn``'s own code (memoized per code object: parsing is the slow part)."""
    code = fn.__code__
    digest = _own.get(code)
    if digest is None:
        digest = _source_digest(fn) or _bytecode_digest(fn)
        with _own_lock:
            _own[code] = digest
    return digest


def _names(code: types.CodeType) -> list[str]:
    """Every name the code (and the code nested in it) looks up as global or attribute."""
    names: dict[str, None] = {}
    stack = [code]
    while stack:
        current = stack.pop()
        names.update(dict.fromkeys(current.co_names))
        stack.extend(c for c in current.co_consts if isinstance(c, types.CodeType))
    return sorted(names)


class _Walk:
    """One computation of a code digest: the hash, the bindings it read, the cycle guard."""

    def __init__(self) -> None:
        self.h = hasher()
        self.bindings: list[tuple[dict, str, object]] = []
        self.cells: list[tuple[types.CellType, object]] = []
        self.seen: set[int] = set()

    def add(self, tag: bytes, data: bytes) -> None:
        self.h.update(len(tag).to_bytes(4, "little") + tag)
        self.h.update(len(data).to_bytes(8, "little") + data)

    def value(self, name: str, value: Any) -> None:
        """A referenced value: user code is followed, simple constants are hashed."""
        value = _unwrap(value)
        if _is_simple(value):
            self.add(b"const " + name.encode(), _simple_bytes(value))
        elif isinstance(value, types.FunctionType):
            if is_user_module(value.__module__):
                self.add(b"fn " + name.encode(), b"")
                self.function(value)
        elif isinstance(value, type):
            if is_user_module(value.__module__):
                self.add(b"class " + name.encode(), b"")
                self.klass(value)
        elif isinstance(value, functools.partial):  # scaled = partial(scale, k=2)
            self.add(b"partial " + name.encode(), b"".join(
                _simple_bytes(v) if _is_simple(v) else type(v).__qualname__.encode()
                for v in (*value.args, *sorted(value.keywords.items()))))
            self.value(name + ".func", value.func)

    def function(self, fn: types.FunctionType) -> None:
        if id(fn) in self.seen:
            self.add(b"again", fn.__qualname__.encode())
            return
        self.seen.add(id(fn))
        self.add(b"own", _own_digest(fn))
        namespace = fn.__globals__
        names = _names(fn.__code__)
        for name in names:
            value = namespace.get(name, _MISSING)
            self.bindings.append((namespace, name, value))
            if value is _MISSING:
                continue
            if isinstance(value, types.ModuleType):
                self.module(value, names)
            else:
                self.value(name, value)
        for index, cell in enumerate(fn.__closure__ or ()):
            try:
                content = cell.cell_contents
            except ValueError:  # an empty cell
                content = _MISSING
            self.cells.append((cell, content))
            if content is not _MISSING:
                self.value(f"<cell {index}>", content)
        wrapped = fn.__dict__.get("__wrapped__")
        if wrapped is not None:  # functools.wraps: the wrapped function counts too
            self.value("<wrapped>", wrapped)

    def module(self, module: types.ModuleType, names: list[str]) -> None:
        """``helpers.scale(x)``: the other names the code reads, as attributes of a user
        module it refers to (``co_names`` does not say which name belongs to what)."""
        if not is_user_module(module.__name__):
            return
        namespace = vars(module)
        for name in names:
            value = namespace.get(name, _MISSING)
            self.bindings.append((namespace, name, value))
            if value is not _MISSING and not isinstance(value, types.ModuleType):
                self.value(f"{module.__name__}.{name}", value)

    def klass(self, cls: type) -> None:
        """A user class: the code of its methods and its simple class attributes."""
        if id(cls) in self.seen:
            self.add(b"again", cls.__qualname__.encode())
            return
        self.seen.add(id(cls))
        self.add(b"bases", repr([f"{b.__module__}.{b.__qualname__}"
                                 for b in cls.__mro__]).encode())
        for name, attr in sorted(vars(cls).items()):
            if isinstance(attr, (staticmethod, classmethod)):
                attr = attr.__func__
            elif isinstance(attr, property):
                attr = attr.fget
            if isinstance(attr, types.FunctionType) or _is_simple(attr):
                self.value(f"{cls.__qualname__}.{name}", attr)


class _Memo:
    __slots__ = ("digest", "bindings", "cells")

    def __init__(self, walk: _Walk) -> None:
        self.digest = walk.h.digest()
        self.bindings = tuple(walk.bindings)
        self.cells = tuple(walk.cells)

    def valid(self) -> bool:
        for namespace, name, value in self.bindings:
            if namespace.get(name, _MISSING) is not value:
                return False
        for cell, value in self.cells:
            try:
                if cell.cell_contents is not value:
                    return False
            except ValueError:
                if value is not _MISSING:
                    return False
        return True


_memo: weakref.WeakKeyDictionary[Any, _Memo] = weakref.WeakKeyDictionary()
_memo_lock = threading.Lock()


def code_digest(fn: Callable[..., Any]) -> bytes:
    """A hash (16 bytes) of the code a call of ``fn`` runs (see the module docstring).

    Unchanged by edits of comments, docstrings and blank lines; changed by an edit of the
    function's code, of a user function or class it refers to (recursively), or of a
    simple module-level constant it reads. Functions without source are hashed by their
    code object; builtins and other C callables by their qualified name; other callable
    objects by their class's ``__call__``. Memoized per function object; a memo is
    reused only while the globals it read are bound to the same objects.
    """
    target = _unwrap(fn)
    if isinstance(target, (types.MethodType, functools.partial)):
        target = target.__func__ if isinstance(target, types.MethodType) else target.func
        return code_digest(target)
    if not isinstance(target, types.FunctionType):
        call = getattr(type(target), "__call__", None)
        if isinstance(call, types.FunctionType) and not isinstance(target, type):
            return code_digest(call)
        module = getattr(target, "__module__", None) or type(target).__module__
        name = getattr(target, "__qualname__", None) or type(target).__qualname__
        h = hasher()
        h.update(f"builtin:{module}.{name}".encode())
        return h.digest()
    memo = _memo.get(target)
    if memo is not None and memo.valid():
        return memo.digest
    walk = _Walk()
    walk.function(target)
    memo = _Memo(walk)
    with _memo_lock:
        _memo[target] = memo
    return memo.digest


def _split(fn: Callable[..., Any]) -> tuple[Any, tuple]:
    """The data a callable carries besides its code: a bound method's object, a partial's
    arguments, a callable object itself, a closure's non-simple cells."""
    target = _unwrap(fn)
    if isinstance(target, types.MethodType):
        inner, extra = _split(target.__func__)
        return inner, (target.__self__,) + extra
    if isinstance(target, functools.partial):
        inner, extra = _split(target.func)
        return inner, (target.args, target.keywords) + extra
    if isinstance(target, types.FunctionType):
        cells = []
        for cell in target.__closure__ or ():
            try:
                content = _unwrap(cell.cell_contents)
            except ValueError:
                continue
            if not (_is_simple(content) or isinstance(content, (types.FunctionType, type))):
                cells.append(content)
        return target, tuple(cells)
    if callable(target) and not isinstance(target, (type, types.BuiltinFunctionType)) and \
            isinstance(getattr(type(target), "__call__", None), types.FunctionType):
        return target, (target,)
    return target, ()


def call_key(fn: Callable[..., Any], args: tuple, kwargs: dict) -> str:
    """The cache key of ``fn(*args, **kwargs)``: hex of a hash of the key format version,
    the function's qualified name and code digest, and the content of its arguments (and
    of the data the callable carries: a bound method's object, a partial's arguments).
    Raises if the arguments cannot be pickled."""
    target, extra = _split(fn)
    module = getattr(target, "__module__", None) or ""
    name = getattr(target, "__qualname__", None) or type(target).__qualname__
    h = hasher()
    h.update(f"pydron-cache/{FORMAT_VERSION}/{module}.{name}/".encode())
    h.update(code_digest(target))
    h.update(args_digest((extra, args) if extra else args, kwargs))
    return h.hexdigest()
