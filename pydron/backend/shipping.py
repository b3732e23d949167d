"""Turning functional calls into bytes and back: functions, arguments, results, errors.

Rules, and why:

* A function that the worker can import (a module-level function of a module other than
  ``__main__``) travels **by reference**: plain pickle writes its module and name, a few
  dozen bytes, and the worker runs its own import of it.
* Functions from ``__main__``, closures and lambdas travel **by value** (cloudpickle): the
  worker runs ``python -m pydron.backend.worker``, so it has neither the caller's
  ``__main__`` nor the frame a closure was made in.
* Functions are identified by the sha256 of their blob, so the master can tell which
  worker already holds one and send each function to each worker once.
* Arguments and results use pickle protocol 5 with out-of-band buffers: a numpy array's
  data is not copied into the pickle but handed out as a buffer, sent as its own frame.
  Plain pickle is tried first (it is the fastest); a value it cannot pickle, or one whose
  pickle names ``__main__`` (a class or function the worker cannot import), is pickled
  again with cloudpickle, which sends such objects by value. cloudpickle tags classes it
  sends by value, so an instance of the caller's ``__main__.Point`` that comes back as a
  result is again an instance of the caller's own class.
* Whatever cannot be pickled is reported as a :class:`~pydron.errors.SerializationError`
  naming the function, the argument (or "the result") and its type.
"""
from __future__ import annotations

import hashlib
import pickle
import sys
import traceback
import types
import weakref
from collections.abc import Callable
from typing import Any

from pydron.errors import SerializationError

__all__ = [
    "PROTOCOL", "RemoteTraceback", "FunctionShipper", "dumps_value", "dumps_args",
    "dumps_result", "dumps_exception", "loads_exception", "type_name", "callable_name",
    "callable_site",
]

PROTOCOL = 5
"""Pickle protocol 5: out-of-band buffers (PEP 574)."""

_MAIN = b"__main__"
_MISSING = object()


class RemoteTraceback(Exception):
    """The traceback of a call that failed on a worker, chained as its ``__cause__``.

    The same convention as ``concurrent.futures``: the caller's traceback shows the
    failing call site, followed by "The above exception was the direct cause of ..." and
    this text, which shows the worker's frames (the user's own source lines).
    """

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


# --------------------------------------------------------------------------- naming


def type_name(value: object) -> str:
    """``module.Qualname`` of the value's type (just the name for builtins)."""
    cls = type(value)
    module = getattr(cls, "__module__", None)
    qual = getattr(cls, "__qualname__", cls.__name__)
    return qual if module in (None, "builtins") else f"{module}.{qual}"


def callable_name(fn: object) -> str:
    """A readable name for a callable: its qualname, else its repr (shortened)."""
    target = getattr(fn, "__func__", fn)
    name = getattr(target, "__qualname__", None)
    if isinstance(name, str):
        return name
    func = getattr(fn, "func", None)  # functools.partial
    if func is not None and func is not fn:
        return f"partial({callable_name(func)})"
    return f"{fn!r:.60}"


def callable_site(fn: object) -> str:
    """``file:line`` where a Python function is defined, or "" for other callables."""
    target = getattr(fn, "__func__", fn)
    target = getattr(target, "func", target)  # functools.partial
    code = getattr(target, "__code__", None)
    if code is None:
        return ""
    return f"{code.co_filename}:{code.co_firstlineno}"


def _safe_str(value: object) -> str:
    try:
        return str(value)
    except Exception:  # a broken __str__ must not hide the failure it describes
        return f"<unprintable {type_name(value)}>"


# --------------------------------------------------------------------------- values


OUT_OF_BAND_MIN = 1 << 16
"""Buffers smaller than this stay inside the pickle: a frame of their own costs more."""


def dumps_value(value: object) -> tuple[bytes, list[memoryview]]:
    """Pickle ``value``: ``(blob, buffers)``, the buffers out of band.

    The buffers are flat byte views of the value's own memory (a numpy array's data, not
    a copy); they stay valid while the value lives. Small or non-contiguous buffers are
    kept in the blob. Plain pickle first; cloudpickle if that fails or if the pickle
    refers to ``__main__`` (a scan for the module name: cheap, since large data sits in
    the buffers; a false alarm only costs the slower pickler). Raises whatever
    cloudpickle raises.
    """
    buffers: list[memoryview] = []

    def keep(buffer: pickle.PickleBuffer) -> bool:
        try:
            raw = buffer.raw()
        except BufferError:  # neither C- nor Fortran-contiguous
            return True
        if raw.nbytes < OUT_OF_BAND_MIN:
            return True      # true: serialise it in-band
        buffers.append(raw)
        return False

    try:
        blob = pickle.dumps(value, PROTOCOL, buffer_callback=keep)
        if _MAIN not in blob:
            return blob, buffers
    except Exception:
        pass
    import cloudpickle
    buffers.clear()
    blob = cloudpickle.dumps(value, PROTOCOL, buffer_callback=keep)
    return blob, buffers


def dumps_args(fn: Callable[..., Any], args: tuple, kwargs: dict
               ) -> tuple[bytes, list[memoryview]]:
    """Pickle a call's ``(args, kwargs)``; SerializationError names the culprit."""
    try:
        return dumps_value((args, kwargs))
    except Exception as exc:
        item, value, error = _culprit(args, kwargs, exc)
        raise SerializationError(
            f"cannot send {item} of {callable_name(fn)}() to a worker: "
            f"{type_name(value)} cannot be pickled ({type(error).__name__}: "
            f"{_safe_str(error)})", item=item, value_type=type_name(value)) from None


def _culprit(args: tuple, kwargs: dict, exc: Exception) -> tuple[str, object, Exception]:
    """Which argument could not be pickled (1-based positions, as Python's messages)."""
    items = [(f"argument {i}", value) for i, value in enumerate(args, 1)]
    items += [(f"keyword argument {key!r}", value) for key, value in kwargs.items()]
    for item, value in items:
        try:
            dumps_value(value)
        except Exception as error:
            return item, value, error
    return "the arguments", (args, kwargs), exc


def dumps_result(value: object, fn: Callable[..., Any]
                 ) -> tuple[bytes, list[memoryview]]:
    """Pickle a call's result on the worker; SerializationError if it cannot be."""
    try:
        return dumps_value(value)
    except Exception as exc:
        raise SerializationError(
            f"the result of {callable_name(fn)}() cannot be sent back from the worker: "
            f"{type_name(value)} cannot be pickled ({type(exc).__name__}: "
            f"{_safe_str(exc)})", item="the result", value_type=type_name(value)) from None


# --------------------------------------------------------------------------- exceptions


def dumps_exception(exc: BaseException, tb: types.TracebackType | None
                    ) -> tuple[bytes | None, str, str, str]:
    """``(blob or None, type name, message, traceback text)`` for a failed call.

    The blob is None when the exception cannot make the round trip (pickling it fails, or
    unpickling it does: an ``__init__`` with required arguments that are not in ``args``
    is a common case); the caller then gets a RuntimeError with the type name and message.
    ``tb`` is the traceback to show, normally starting at the user's function.
    """
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    blob: bytes | None
    try:
        blob, buffers = dumps_value(exc)
        if buffers:
            blob = None  # exceptions holding big buffers are not worth the trouble
        else:
            pickle.loads(blob)
    except Exception:
        blob = None
    return blob, type_name(exc), _safe_str(exc), text


def loads_exception(blob: bytes | None, name: str, message: str, text: str | None
                    ) -> BaseException:
    """Rebuild a worker's exception, its traceback text chained as the cause."""
    exc: object = None
    if blob is not None:
        try:
            exc = pickle.loads(blob)
        except Exception:  # e.g. its class exists on the worker only
            exc = None
    if not isinstance(exc, BaseException):
        exc = RuntimeError(f"{name}: {message}" if message else name)
    if text:
        exc.__cause__ = RemoteTraceback('\n"""\n' + text + '"""')
    return exc


# --------------------------------------------------------------------------- functions


class FunctionShipper:
    """The master's side of function shipping: ``prepare(fn) -> (digest, blob)``.

    Plain functions are cached per function object, so the per-call cost for a function
    seen before is one dictionary lookup. A by-value function is pickled again when any
    object its blob depends on has been rebound since (its defaults, closure cells and the
    globals its code names): a closure over a loop variable must not run with a stale
    value. An object mutated in place is not noticed; functional calls must not depend on
    mutable state anyway.
    """

    def __init__(self) -> None:
        self._cache: weakref.WeakKeyDictionary[types.FunctionType,
                                               tuple[tuple | None, bytes, bytes]] = \
            weakref.WeakKeyDictionary()
        self._names: weakref.WeakKeyDictionary[types.CodeType, tuple[str, ...]] = \
            weakref.WeakKeyDictionary()

    def prepare(self, fn: Callable[..., Any]) -> tuple[bytes, bytes]:
        """The sha256 digest and pickled bytes of ``fn``; SerializationError if none."""
        if type(fn) is types.FunctionType:
            entry = self._cache.get(fn)
            if entry is not None:
                key, digest, blob = entry
                if key is None or _same(key, self._key(fn)):
                    return digest, blob
            if _importable(fn):
                key = None
                blob = self._dump(fn, pickle.dumps)
            else:
                import cloudpickle
                key = self._key(fn)
                blob = self._dump(fn, cloudpickle.dumps)
            digest = hashlib.sha256(blob).digest()
            self._cache[fn] = (key, digest, blob)
            return digest, blob
        # Bound methods, partials, builtins, callable objects: pickled on every call,
        # since they carry state (a bound method's self) that may differ each time.
        blob = self._dump(fn, _dumps_inband)
        return hashlib.sha256(blob).digest(), blob

    @staticmethod
    def _dump(fn: Callable[..., Any], dumps: Callable[..., bytes]) -> bytes:
        try:
            return dumps(fn, PROTOCOL)
        except Exception as exc:
            raise _function_error(fn, exc) from None

    def _key(self, fn: types.FunctionType) -> tuple:
        """The objects a by-value blob of ``fn`` depends on (compared by identity)."""
        code = fn.__code__
        names = self._names.get(code)
        if names is None:
            names = self._names[code] = tuple(sorted(_code_names(code)))
        get = fn.__globals__.get
        cells = ()
        if fn.__closure__:
            cells = tuple(_cell_value(c) for c in fn.__closure__)
        return (fn.__defaults__, fn.__kwdefaults__, cells,
                tuple(get(n, _MISSING) for n in names))


def _dumps_inband(obj: object, protocol: int) -> bytes:
    """Like :func:`dumps_value`, but any buffers stay inside the one blob."""
    try:
        blob = pickle.dumps(obj, protocol)
        if _MAIN not in blob:
            return blob
    except Exception:
        pass
    import cloudpickle
    return cloudpickle.dumps(obj, protocol)


def _function_error(fn: object, exc: Exception) -> SerializationError:
    return SerializationError(
        f"cannot send the function {callable_name(fn)} to a worker: it cannot be pickled "
        f"({type(exc).__name__}: {_safe_str(exc)})", item="the function",
        value_type=type_name(fn))


def _same(a: tuple, b: tuple) -> bool:
    if a[0] is not b[0] or a[1] is not b[1] or len(a[2]) != len(b[2]):
        return False
    return all(x is y for x, y in zip(a[2], b[2])) and all(x is y for x, y in zip(a[3], b[3]))


def _cell_value(cell: types.CellType) -> object:
    try:
        return cell.cell_contents
    except ValueError:  # an empty cell
        return _MISSING


def _code_names(code: types.CodeType) -> set[str]:
    """Global names a code object and the code nested in it may read."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return names


def _importable(fn: types.FunctionType) -> bool:
    """True if pickling ``fn`` by reference finds this very function again."""
    module = fn.__module__
    qual = fn.__qualname__
    if not module or module == "__main__" or "<" in qual:
        return False
    obj: object = sys.modules.get(module)
    for part in qual.split("."):
        obj = getattr(obj, part, None)
    return obj is fn
