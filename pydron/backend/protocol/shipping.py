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
* A failed call's exception comes back as raised: every exception of its chain with its
  own type, args, attributes, notes and frames, the frames rebuilt as real traceback
  entries (see the section on exceptions below). cloudpickle is told to keep code
  objects' real file names, so that those frames show the user's source.
"""
from __future__ import annotations

import ast
import collections
import functools
import hashlib
import io
import itertools
import linecache
import pickle
import sys
import traceback
import types
import weakref
from collections.abc import Callable
from typing import Any

from pydron.errors import RemoteError, SerializationError

__all__ = [
    "PROTOCOL", "FunctionShipper", "dumps_value", "dumps_args", "dumps_result",
    "dumps_exception", "loads_exception", "cloud_dumps", "type_name", "callable_name",
    "callable_site",
]

PROTOCOL = 5
"""Pickle protocol 5: out-of-band buffers (PEP 574)."""

_MAIN = b"__main__"
_MISSING = object()


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
    buffers.clear()
    blob = cloud_dumps(value, PROTOCOL, buffer_callback=keep)
    return blob, buffers


def cloud_dumps(obj: object, protocol: int = PROTOCOL,
                buffer_callback: Callable[[pickle.PickleBuffer], Any] | None = None) -> bytes:
    """``cloudpickle.dumps``, except that code sent by value keeps its file name.

    cloudpickle 3.1 writes ``<dynamic-code>`` as every code object's ``co_filename`` (for
    deterministic pickles); a traceback from a function of the user's ``__main__`` would
    then show no file and no source. Here each code object carries its real name.
    """
    buffer = io.BytesIO()
    _cloud_pickler()(buffer, protocol, buffer_callback=buffer_callback).dump(obj)
    return buffer.getvalue()


def _code_with_filename(build: Callable[..., types.CodeType], args: tuple,
                        filename: str) -> types.CodeType:
    """Unpickling a code object: cloudpickle's own rebuild, then its real file name."""
    code = build(*args)
    return code if code.co_filename == filename else code.replace(co_filename=filename)


def _reduce_code(cloud_reduce: Callable[[types.CodeType], tuple], code: types.CodeType
                 ) -> tuple:
    build, args = cloud_reduce(code)[:2]
    return _code_with_filename, (build, args, code.co_filename)


_CLOUD_PICKLER: type | None = None


def _cloud_pickler() -> type:
    """cloudpickle's Pickler with code objects reduced by :func:`_reduce_code` (made on
    first use: cloudpickle is imported only when something travels by value)."""
    global _CLOUD_PICKLER
    if _CLOUD_PICKLER is None:
        import cloudpickle
        base = cloudpickle.Pickler
        table: Any = base.dispatch_table
        cloud_reduce = table.get(types.CodeType)
        if cloud_reduce is not None:
            table = collections.ChainMap(
                {types.CodeType: functools.partial(_reduce_code, cloud_reduce)}, table)
        members: dict[str, Any] = {"dispatch_table": table}
        if _namespace_hooks_fit(cloudpickle):
            members["_function_getnewargs"] = _function_getnewargs
            members["_dynamic_function_reduce"] = _dynamic_function_reduce
        _CLOUD_PICKLER = type("_CloudPickler", (base,), members)
    return _CLOUD_PICKLER


# By-value functions and their module's namespace.
#
# cloudpickle gives every function sent by value a fresh dict as its globals, so two
# functions of the user's ``__main__`` sent in two messages see two namespaces. The
# standard idiom of ``multiprocessing.Pool(initializer=...)`` breaks on that: the
# initializer sets a global (``global G; G = v``) that the mapped function, arriving in
# another message, never sees. On a worker, by-value functions of one module therefore
# share one namespace per module name (never the worker's real modules). What arrives
# with a function is merged into it by one rule: a name this process has assigned itself
# since the caller last sent it (the initializer's global) keeps the worker's value;
# otherwise the caller's newest value wins, so a global the caller rebinds between calls
# still reaches the worker (FunctionShipper sends the function again when that happens).
# Elsewhere (the caller loading a result) each function keeps its fresh dict.

_namespaces: dict[str, tuple[dict[str, Any], dict[str, Any]]] | None = None
"""Module name -> (shared namespace, the values last delivered into it); None outside a
worker (see :func:`share_namespaces`)."""


def share_namespaces() -> None:
    """Called by the worker program: from now on by-value functions of one module share a
    namespace in this process (see the comment above)."""
    global _namespaces
    if _namespaces is None:
        _namespaces = {}


class _NamespaceRef:
    """Stands in for a by-value function's fresh globals in the pickle: it loads as the
    shared namespace of its module on a worker, as a fresh dict elsewhere."""

    __slots__ = ("module", "initial")

    def __init__(self, module: str, initial: dict[str, Any]) -> None:
        self.module = module
        self.initial = initial

    def __reduce__(self) -> tuple:
        return (_namespace, (self.module, self.initial))


def _namespace(module: str, initial: dict[str, Any]) -> dict[str, Any]:
    if _namespaces is None:
        return dict(initial)
    entry = _namespaces.get(module)
    if entry is None:
        entry = _namespaces[module] = (dict(initial), {})
    return entry[0]


def _namespace_hooks_fit(cloudpickle: Any) -> bool:
    """The hooks below use two private functions of cloudpickle (checked to exist)."""
    inner = getattr(cloudpickle, "cloudpickle", None)
    return all(callable(getattr(obj, name, None)) for obj, name in (
        (cloudpickle.Pickler, "_function_getnewargs"),
        (cloudpickle.Pickler, "_dynamic_function_reduce"),
        (inner, "_function_setstate")))


def _function_getnewargs(self: Any, func: types.FunctionType) -> tuple:
    from cloudpickle import Pickler
    code, base_globals, name, defaults, closure = Pickler._function_getnewargs(self, func)
    module = func.__globals__.get("__name__")
    if type(module) is str:
        refs = self.__dict__.setdefault("_pydron_namespaces", {})
        ref = refs.get(id(base_globals))
        if ref is None:  # one per namespace and pickle, as cloudpickle shares them
            ref = refs[id(base_globals)] = (_NamespaceRef(module, base_globals),
                                            base_globals)
        base_globals = ref[0]
    return code, base_globals, name, defaults, closure


def _dynamic_function_reduce(self: Any, func: types.FunctionType) -> tuple:
    from cloudpickle import Pickler
    reduced = Pickler._dynamic_function_reduce(self, func)
    return reduced[:5] + (_merge_function_state,)


def _merge_function_state(func: types.FunctionType, state: tuple) -> None:
    """cloudpickle's state setter, with the merge rule of the comment above."""
    from cloudpickle.cloudpickle import _function_setstate
    namespace = func.__globals__
    entry = _namespaces.get(namespace.get("__name__", "")) if _namespaces is not None \
        else None
    if entry is not None and entry[0] is namespace:
        delivered = entry[1]
        incoming = state[1]["__globals__"]
        kept = {}
        for key, value in incoming.items():
            current = namespace.get(key, _MISSING)
            if current is _MISSING or current is delivered.get(key, _MISSING):
                kept[key] = value
        delivered.update(kept)
        state[1]["__globals__"] = kept
    _function_setstate(func, state)


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
#
# A failed call's exception travels as a list of records, one per exception of its chain
# (``__cause__``, ``__context__``, and exceptions held in its args or attributes, such as
# an ExceptionGroup's), so each keeps its own type, args, attributes, notes, chain and
# frames. A record rebuilds its exception in one of two ways:
#
# * "whole": the exception's own pickle (its ``__reduce__``). Right for built-in classes
#   (an OSError's errno lives outside ``__dict__``) and for classes that define how they
#   pickle;
# * "parts": class, args and ``__dict__`` apart, rebuilt with ``cls.__new__`` and no
#   ``__init__``. Right for a class with a Python ``__init__`` whose parameters are not its
#   args (``E(a, b)`` calling ``super().__init__(f"{a}-{b}")``): pickle would call
#   ``E("a-b")``, which fails, or, worse, succeeds with other args.
#
# Whatever cannot be rebuilt in the caller (a class that exists on the worker only, an
# unpicklable argument) arrives as a RemoteError naming the original. Frames are carried
# as (file, name, line, columns) and rebuilt as real traceback entries.

_GENERIC_MEMBERS = frozenset({
    "args", "__traceback__", "__context__", "__cause__", "__suppress_context__",
    "__dict__", "__class__", "__weakref__",
})

_FRAME_MARK = "__pydron_remote_frame__"

FrameRecord = tuple  # (filename, name, qualname, lineno, position, module)


def dumps_exception(exc: BaseException, tb: types.TracebackType | None,
                    limit: int | None = None) -> tuple[bytes | None, str, str, str]:
    """``(blob or None, type name, message, traceback text)`` for a failed call.

    ``tb`` is the traceback to carry for ``exc`` itself, normally starting at the user's
    function (the exceptions of its chain carry their own). The blob holds the whole
    chain (see :func:`loads_exception`); it is None only if even the bare records cannot
    be pickled or fit in ``limit`` bytes, and then the caller gets a RemoteError from the
    name, message and text. Never raises: a worker must always be able to report.
    """
    name, message = type_name(exc), _safe_str(exc)
    try:
        text = "".join(traceback.format_exception(type(exc), exc, tb))
    except Exception:  # a broken __str__ in the chain, say
        text = f"{name}: {message}\n"
    if limit is not None:  # the fallbacks take at most half of it
        name, message, text = (_clip(part, limit // 8) for part in (name, message, text))
        limit -= sum(len(part.encode("utf-8", "replace")) for part in (name, message, text))
    for bare in (False, True):
        try:
            blob = pickle.dumps(_Encoder(bare).encode(exc, tb), PROTOCOL)
        except Exception:
            continue
        if limit is None or len(blob) <= limit:
            return blob, name, message, text
    return None, name, message, text


def _clip(text: str, size: int) -> str:
    """``text`` cut to at most ``size`` UTF-8 bytes, keeping its end (a traceback's end
    says the most)."""
    raw = text.encode("utf-8", "replace")
    if len(raw) <= size:
        return text
    return "..." + raw[len(raw) - size + 3:].decode("utf-8", "ignore")


def loads_exception(blob: bytes | None, name: str, message: str, text: str | None
                    ) -> BaseException:
    """Rebuild a worker's exception with its chain, attributes and frames.

    Its ``__traceback__`` holds the worker's frames (a caller that raises it adds its own
    in front). Anything that cannot be rebuilt becomes a :class:`RemoteError`.
    """
    if blob is not None:
        try:
            return _Decoder(pickle.loads(blob)).build(0)
        except BaseException:  # noqa: B902 -- a __reduce__ may raise SystemExit, say
            pass
    return RemoteError(name, message, text or "", "its details did not arrive")


def _owner(cls: type, attr: str) -> type:
    """The class of ``cls``'s MRO that defines ``attr``."""
    for base in cls.__mro__:
        if attr in vars(base):
            return base
    return object


def _by_parts(cls: type) -> bool:
    """True when the class's own pickle would call a Python ``__init__`` with its args.

    Such an ``__init__`` may take other parameters than the args it leaves, so the
    exception is rebuilt from its parts instead; a class that defines how it pickles is
    trusted to do so.
    """
    builtin = ("builtins",)
    if _owner(cls, "__reduce__").__module__ not in builtin or \
            _owner(cls, "__reduce_ex__").__module__ not in builtin:
        return False
    return _owner(cls, "__init__").__module__ not in builtin


def _members(exc: BaseException) -> dict[str, object]:
    """State kept in slots rather than ``__dict__``: ``errno``, ``name``, ``code`` ..."""
    found: dict[str, object] = {}
    for base in type(exc).__mro__:
        for key, value in vars(base).items():
            if key in found or key in _GENERIC_MEMBERS or not isinstance(
                    value, (types.MemberDescriptorType, types.GetSetDescriptorType)):
                continue
            try:
                found[key] = getattr(exc, key)
            except Exception:  # an unset slot, OSError.characters_written
                pass
    return found


def _frames(tb: types.TracebackType | None) -> list[FrameRecord]:
    """What a traceback shows of each of its frames, as plain data."""
    frames = []
    while tb is not None:
        frame = tb.tb_frame
        code = frame.f_code
        module = frame.f_globals.get("__name__")
        frames.append((code.co_filename, code.co_name, getattr(code, "co_qualname", code.co_name),
                       tb.tb_lineno, _position(code, tb.tb_lasti),
                       module if isinstance(module, str) else None))
        tb = tb.tb_next
    return frames


def _position(code: types.CodeType, lasti: int) -> tuple | None:
    """``(lineno, end_lineno, col, end_col)`` of instruction ``lasti`` (Python 3.11+)."""
    positions = getattr(code, "co_positions", None)
    if positions is None or lasti < 0:
        return None
    return next(itertools.islice(positions(), lasti // 2, None), None)


class _Encoder:
    """Turns an exception and everything it chains into a list of picklable records."""

    def __init__(self, bare: bool = False) -> None:
        self.bare = bare                 # names, messages and frames only: to fit a limit
        self.records: list[dict[str, Any] | None] = []
        self.index: dict[int, int] = {}
        self.alive: list[BaseException] = []  # keeps the ids in ``index`` valid

    def encode(self, exc: BaseException, tb: types.TracebackType | None) -> list:
        self.add(exc, tb)
        return self.records

    def add(self, exc: BaseException, tb: Any = _MISSING) -> int:
        """The index of ``exc``'s record, encoding it (and its chain) the first time."""
        key = id(exc)
        if key in self.index:
            return self.index[key]
        i = self.index[key] = len(self.records)
        self.records.append(None)
        self.alive.append(exc)
        record: dict[str, Any] = {
            "name": type_name(exc), "message": _safe_str(exc),
            "frames": _frames(exc.__traceback__ if tb is _MISSING else tb),
            "suppress": bool(exc.__suppress_context__),
        }
        record.update(self._body(exc))
        record["cause"] = None if exc.__cause__ is None else self.add(exc.__cause__)
        record["context"] = None if exc.__context__ is None else self.add(exc.__context__)
        self.records[i] = record
        return i

    def _body(self, exc: BaseException) -> dict[str, Any]:
        """How to rebuild the exception itself; why not, when it cannot be."""
        if self.bare:
            return {"how": "remote", "reason": "it was too large to send"}
        cls = type(exc)
        try:
            if not _by_parts(cls):
                whole = self._pickle(exc, exc)
                _verify(whole)
                return {"how": "whole", "whole": whole, "members": self._members(exc)}
            return {"how": "parts", "cls": self._pickle(cls, None),
                    "args": self._pickle(exc.args, None),
                    "state": self._pickle(dict(getattr(exc, "__dict__", {})), None),
                    "members": self._members(exc)}
        except Exception as error:
            return {"how": "remote", "reason": f"it cannot be pickled: "
                                               f"{type(error).__name__}: {_safe_str(error)}"}

    def _members(self, exc: BaseException) -> list[bytes]:
        """Each slot on its own: one that cannot be pickled (AttributeError.obj) is left
        out rather than costing the whole exception."""
        kept = []
        for item in _members(exc).items():
            try:
                kept.append(self._pickle(item, None))
            except Exception:
                pass
        return kept

    def _pickle(self, value: object, root: object) -> bytes:
        """Pickle ``value``; other exceptions inside it become references to their own
        records. Plain pickle first, cloudpickle for what only exists by value."""
        buffer = io.BytesIO()
        try:
            _ExceptionPickler(buffer, self, root).dump(value)
            blob = buffer.getvalue()
            if _MAIN not in blob:
                return blob
        except Exception:
            pass
        buffer = io.BytesIO()
        _cloud_exception_pickler()(buffer, self, root).dump(value)
        return buffer.getvalue()


class _LinksExceptions:
    """Mixin for picklers: an exception met inside a value is pickled as its record's
    index, so it keeps its own chain and frames and is rebuilt once, as the same object."""

    def __init__(self, file: io.BytesIO, encoder: _Encoder, root: object) -> None:
        super().__init__(file, PROTOCOL)  # type: ignore[call-arg]
        self._encoder = encoder
        self._root = root

    def persistent_id(self, obj: object) -> int | None:
        if isinstance(obj, BaseException) and obj is not self._root:
            return self._encoder.add(obj)
        return None


class _ExceptionPickler(_LinksExceptions, pickle.Pickler):
    pass


_CLOUD_EXCEPTION_PICKLER: type | None = None


def _cloud_exception_pickler() -> type:
    global _CLOUD_EXCEPTION_PICKLER
    if _CLOUD_EXCEPTION_PICKLER is None:
        _CLOUD_EXCEPTION_PICKLER = type("_CloudExceptionPickler",
                                        (_LinksExceptions, _cloud_pickler()), {})
    return _CLOUD_EXCEPTION_PICKLER


class _Placeholder(Exception):
    """Stands for a linked exception while a blob is test-loaded on the worker."""


def _verify(blob: bytes) -> None:
    """Load ``blob`` once on the worker: a class whose pickle cannot be loaded even here
    (a custom ``__reduce__`` gone wrong) is reported as such rather than sent."""
    unpickler = pickle.Unpickler(io.BytesIO(blob))
    unpickler.persistent_load = lambda pid: _Placeholder()  # type: ignore[assignment]
    unpickler.load()


class _Decoder:
    """Rebuilds exceptions from their records, each once, links included."""

    def __init__(self, records: list[dict[str, Any]]) -> None:
        self.records = records
        self.built: dict[int, BaseException] = {}
        self.building: set[int] = set()

    def build(self, i: int) -> BaseException:
        exc = self.built.get(i)
        if exc is not None:
            return exc
        if i in self.building:
            raise RecursionError("an exception that contains itself in its args")
        record = self.records[i]
        self.building.add(i)
        try:
            exc = self._create(record)
        finally:
            self.building.discard(i)
        self.built[i] = exc
        exc.__traceback__ = _rebuild_traceback(record["frames"])
        if isinstance(exc, RemoteError) and not exc.remote_traceback:
            exc.remote_traceback = _text(record, exc.__traceback__)
        exc.__cause__ = None if record["cause"] is None else self.build(record["cause"])
        exc.__context__ = None if record["context"] is None else self.build(record["context"])
        exc.__suppress_context__ = record["suppress"]
        return exc

    def _create(self, record: dict[str, Any]) -> BaseException:
        how = record["how"]
        try:
            if how == "whole":
                exc = self._load(record["whole"])
            elif how == "parts":
                exc = self._from_parts(record)
            else:
                return RemoteError(record["name"], record["message"], "", record["reason"])
            if not isinstance(exc, BaseException):
                raise TypeError(f"it unpickled as a {type_name(exc)}")
            for blob in record["members"]:
                self._set_member(exc, blob)
            return exc
        except Exception as error:
            return RemoteError(record["name"], record["message"], "",
                               f"it cannot be rebuilt in the caller: "
                               f"{type(error).__name__}: {_safe_str(error)}")

    def _from_parts(self, record: dict[str, Any]) -> BaseException:
        cls = self._load(record["cls"])
        if not (isinstance(cls, type) and issubclass(cls, BaseException)):
            raise TypeError(f"{cls!r} is not an exception class")
        args = self._load(record["args"])
        exc = cls.__new__(cls, *args)  # an ExceptionGroup's __new__ needs its args
        exc.args = args
        exc.__dict__.update(self._load(record["state"]))
        return exc

    def _set_member(self, exc: BaseException, blob: bytes) -> None:
        try:
            key, value = self._load(blob)
            if getattr(exc, key, _MISSING) is not value:
                setattr(exc, key, value)
        except Exception:  # read-only, or unloadable here: the exception stands anyway
            pass

    def _load(self, blob: bytes) -> Any:
        unpickler = pickle.Unpickler(io.BytesIO(blob))
        unpickler.persistent_load = self.build  # type: ignore[assignment]
        return unpickler.load()


def _text(record: dict[str, Any], tb: types.TracebackType | None) -> str:
    """The traceback text of one remote exception, from its rebuilt frames."""
    lines = traceback.format_tb(tb) if tb is not None else []
    head = "Traceback (most recent call last):\n" if lines else ""
    tail = f"{record['name']}: {record['message']}\n" if record["message"] else \
        f"{record['name']}\n"
    return head + "".join(lines) + tail


class _FrameMark(BaseException):
    """Raised by a rebuilt frame's stub code to obtain a real traceback entry."""


def _rebuild_traceback(frames: list[FrameRecord]) -> types.TracebackType | None:
    """Real traceback entries, one per remote frame, linked in order."""
    head: types.TracebackType | None = None
    last: types.TracebackType | None = None
    for filename, name, qualname, lineno, position, module in frames:
        code = _frame_code(filename, name, qualname, lineno, position)
        try:
            exec(code, {"__name__": module, _FRAME_MARK: _FrameMark})
        except _FrameMark as mark:
            entry = mark.__traceback__.tb_next  # type: ignore[union-attr]
            del mark
        else:  # pragma: no cover - the stub always raises
            continue
        if entry is None:  # pragma: no cover
            continue
        if last is None:
            head = entry
        else:
            last.tb_next = entry
        last = entry
    return head


@functools.lru_cache(maxsize=1024)
def _frame_code(filename: str, name: str, qualname: str, lineno: int,
                position: tuple | None) -> types.CodeType:
    """Code named like the remote frame whose ``raise`` sits at the remote frame's place:
    same file, line and columns, so the traceback shows its source line (with the same
    ``^^^`` marks) wherever the caller has that file."""
    node = ast.Raise(exc=ast.Name(id=_FRAME_MARK, ctx=ast.Load()), cause=None)
    code = None
    for span in (_span(filename, lineno, position), (lineno, lineno, 0, 0)):
        for part in (node, node.exc):
            part.lineno, part.end_lineno, part.col_offset, part.end_col_offset = span
        try:
            code = compile(ast.Module(body=[node], type_ignores=[]), filename, "exec")
            break
        except (ValueError, TypeError, SyntaxError):
            continue
    if code is None:  # pragma: no cover - the second span is always valid
        code = compile(f"raise {_FRAME_MARK}", filename, "exec")
    code = code.replace(co_name=name)
    if hasattr(code, "co_qualname"):
        code = code.replace(co_qualname=qualname)
    return code


def _span(filename: str, lineno: int, position: tuple | None) -> tuple[int, int, int, int]:
    """The remote columns; without them, the whole source line (so that no marks show)."""
    lineno = lineno if isinstance(lineno, int) and lineno > 0 else 1
    if position is not None and position[0] == lineno and None not in position:
        return tuple(position)  # type: ignore[return-value]
    line = linecache.getline(filename, lineno)
    stripped = line.strip()
    if not stripped:
        return (lineno, lineno, 0, 0)
    start = len(line.encode("utf-8")) - len(line.lstrip().encode("utf-8"))
    return (lineno, lineno, start, start + len(stripped.encode("utf-8")))


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
                key = self._key(fn)
                blob = self._dump(fn, cloud_dumps)
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
    return cloud_dumps(obj, protocol)


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
