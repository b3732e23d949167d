"""What runs on a Dask worker for each functional call (see :mod:`pydron.backend.daskpool`).

Dask workers are shared by many programs and run several calls at once in threads, and
Dask would treat a user's exception as a failed task (retry it, log it, rebuild it with
its own rules). So a call runs inside :func:`run`, which never raises: it catches every
BaseException and returns an :class:`Outcome` carrying the exception as Pydron's shipping
encodes it (:func:`~pydron.backend.protocol.shipping.dumps_exception`: the chain and the
user's frames survive), together with what the call printed, warned and logged. Dask then
only ever sees a plain record, and the caller rebuilds everything as a Pydron worker
would have delivered it.

This module is imported on the workers by reference (``pydron`` is installed there), so
it must stay small and import nothing heavy: not ``distributed`` at module level, not
cloudpickle (functions and arguments arrive pickled by the caller).
"""
from __future__ import annotations

import collections
import io
import logging
import os
import pickle
import socket
import sys
import threading
import time
from typing import Any, NamedTuple

from pydron.backend.context import worker_context
from pydron.backend.protocol import log_records, shipping
from pydron.backend.protocol.shipping import dumps_exception, dumps_result

__all__ = ["Outcome", "run", "forget"]


class Outcome(NamedTuple):
    """One call's outcome, as the Dask task's result (it crosses the wire to the caller).

    ``ok``: ``blob`` is the result's pickle (``buffers`` its out-of-band buffers, as bytes);
    otherwise ``blob`` holds the exception records (None when even they could not be
    pickled) and ``error`` is ``(type name, message, traceback text)``. ``stdout`` and
    ``stderr`` are what the call wrote (warnings included), ``logs`` its log records
    (:func:`~pydron.backend.protocol.log_records.encode_record` payloads).
    """

    ok: bool
    blob: bytes | None
    buffers: list[Any]
    error: tuple[str, str, str] | None
    stdout: str
    stderr: str
    logs: list[bytes]
    elapsed: float
    host: str
    pid: int
    worker: str


# --------------------------------------------------------------------------- capture
#
# The worker process's sys.stdout/sys.stderr and its root logger are shared by every
# thread of the worker (Dask's own included). Capture is therefore per thread: the
# streams are replaced once by dispatchers that write to the current thread's buffer
# while it runs a call, and to the original stream otherwise.

_capture = threading.local()  # .out, .err: lists of text; .logs: list[bytes] (while a call runs)
_install_lock = threading.Lock()
_installed = False


class _ThreadStream(io.TextIOBase):
    """A stream that writes to the running call's buffer in a capturing thread."""

    def __init__(self, original: Any, which: str) -> None:
        self._original = original
        self._which = which

    def write(self, text: str) -> int:
        buffer = getattr(_capture, self._which, None)
        if buffer is not None:
            buffer.append(text)
            return len(text)
        return self._original.write(text)

    def flush(self) -> None:
        if getattr(_capture, self._which, None) is None:
            self._original.flush()

    def __getattr__(self, name: str) -> Any:  # encoding, fileno, isatty ... of the original
        return getattr(self._original, name)


class _CaptureHandler(logging.Handler):
    """The root logger's handler on a worker: a record made while a call runs in this
    thread goes with the call's outcome; others go where they went before (to the last
    resort handler when the root had no handler of its own)."""

    def __init__(self, alone: bool) -> None:
        super().__init__()
        self._alone = alone

    def emit(self, record: logging.LogRecord) -> None:
        logs = getattr(_capture, "logs", None)
        if logs is not None:
            try:
                logs.append(log_records.encode_record(record, None))
            except Exception:
                self.handleError(record)
        elif self._alone and logging.lastResort is not None \
                and record.levelno >= logging.lastResort.level:
            logging.lastResort.handle(record)


_levels_seen: set[int] = set()


def _install(log_level: int) -> None:
    """Put the dispatching streams and the capturing handler in place (once a process);
    lower the root level to the caller's so that its records are made at all."""
    global _installed
    if _installed and log_level in _levels_seen:  # every call but the first: no lock
        return
    with _install_lock:
        if not _installed:
            sys.stdout = _ThreadStream(sys.stdout, "out")
            sys.stderr = _ThreadStream(sys.stderr, "err")
            root = logging.getLogger()
            root.addHandler(_CaptureHandler(alone=not root.handlers))
            _installed = True
        root = logging.getLogger()
        if log_level < root.getEffectiveLevel():
            root.setLevel(log_level)
        _levels_seen.add(log_level)


# --------------------------------------------------------------------------- running

# Functions sent by value (the caller's __main__, closures) share one namespace per module
# within a run, as on Pydron's own workers (shipping.share_namespaces: what makes
# Pool(initializer=...) globals visible to later calls), but never across runs: a Dask
# worker serves many programs, each with its own __main__. So each run (the pool's
# ``scope``) has its own namespaces and its own cache of loaded functions, the most
# recently used runs kept.


class _Scope:
    __slots__ = ("namespaces", "functions")

    def __init__(self) -> None:
        self.namespaces: dict[str, Any] = {}  # shipping's registry, for this run only
        self.functions: dict[bytes, Any] = {}  # a function's pickle -> the function


_scopes: collections.OrderedDict[str, _Scope] = collections.OrderedDict()
_SCOPES_KEPT = 64
_FUNCTIONS_KEPT = 256
_load_lock = threading.Lock()  # shipping's registry is a module global: swapped under it


class _Loader(pickle.Unpickler):
    """Unpickles a call's arguments with each shared handle replaced by the object Dask
    delivered for it (the handle's pickle names ``pydron.backend.sharing._resolve``)."""

    def __init__(self, data: io.BytesIO, buffers: list[Any], shared: dict[bytes, Any]) -> None:
        super().__init__(data, buffers=buffers)
        self._shared = shared

    def find_class(self, module: str, name: str) -> Any:
        if module == "pydron.backend.sharing" and name == "_resolve" and self._shared:
            return self._from_scatter
        return super().find_class(module, name)

    def _from_scatter(self, digest: bytes, label: str, nbytes: int, fresh: bool = False
                      ) -> Any:
        return self._shared[digest]


def _load(scope: str, fn_blob: bytes, args_blob: bytes, buffers: list[Any],
          shared: dict[bytes, Any]) -> tuple[Any, tuple, dict]:
    """The function and the arguments of a call, unpickled in its run's namespaces."""
    with _load_lock:
        entry = _scopes.get(scope)
        if entry is None:
            entry = _scopes[scope] = _Scope()
            while len(_scopes) > _SCOPES_KEPT:
                _scopes.popitem(last=False)
        else:
            _scopes.move_to_end(scope)
        saved, shipping._namespaces = shipping._namespaces, entry.namespaces
        try:
            fn = entry.functions.get(fn_blob)
            if fn is None:
                fn = pickle.loads(fn_blob)
                if len(entry.functions) >= _FUNCTIONS_KEPT:
                    entry.functions.clear()
                entry.functions[fn_blob] = fn
            args, kwargs = _Loader(io.BytesIO(args_blob), buffers, shared).load()
        finally:
            shipping._namespaces = saved
    return fn, args, kwargs


def forget(scope: str) -> bool:
    """Drop the namespaces and loaded functions of the run ``scope`` from this worker
    (the pool's shutdown calls it on every worker through ``client.run``): a Dask worker
    outlives the programs it serves, and a finished run's globals must not stay in its
    memory. True if the run had left something here."""
    with _load_lock:
        return _scopes.pop(scope, None) is not None


def run(fn_blob: bytes, args_blob: bytes, buffers: list[Any], shared: dict[bytes, Any],
        log_level: int = logging.WARNING, scope: str = "") -> Outcome:
    """Run one call on this Dask worker; never raises (see the module docstring)."""
    _install(log_level)
    out: list[str] = []
    err: list[str] = []
    logs: list[bytes] = []
    _capture.out, _capture.err, _capture.logs = out, err, logs
    start = time.perf_counter()
    fn: Any = None
    try:
        with worker_context():  # a @schedule function called here runs sequentially
            try:
                fn, args, kwargs = _load(scope, fn_blob, args_blob, buffers, shared)
            except BaseException as exc:  # noqa: B902
                return _failed(exc, None, start, out, err, logs)
            try:
                value = fn(*args, **kwargs)
            except BaseException as exc:  # noqa: B902 -- every failure goes to the caller
                tb = exc.__traceback__
                return _failed(exc, tb.tb_next if tb is not None else None, start, out, err,
                               logs)
            del args, kwargs
            elapsed = time.perf_counter() - start
            try:
                blob, raw = dumps_result(value, fn)
            except BaseException as exc:  # noqa: B902 -- SerializationError, named
                return _failed(exc, None, start, out, err, logs)
            # Dask's serialization of a task's result refuses pickle.PickleBuffer (it
            # pickles them below protocol 5 there): the buffers travel as bytes, a copy.
            return _outcome(True, blob, [bytes(b) for b in raw], None, elapsed, out, err,
                            logs)
    finally:
        _capture.out = _capture.err = _capture.logs = None


def _failed(exc: BaseException, tb: Any, start: float, out: list[str], err: list[str],
            logs: list[bytes]) -> Outcome:
    elapsed = time.perf_counter() - start
    blob, name, message, text = dumps_exception(exc, tb)
    return _outcome(False, blob, [], (name, message, text), elapsed, out, err, logs)


def _outcome(ok: bool, blob: bytes | None, buffers: list[Any],
             error: tuple[str, str, str] | None, elapsed: float, out: list[str],
             err: list[str], logs: list[bytes]) -> Outcome:
    return Outcome(ok, blob, buffers, error, "".join(out), "".join(err), logs, elapsed,
                   _HOST, os.getpid(), _worker_address())


_HOST = socket.gethostname()


def _worker_address() -> str:
    """The Dask worker's address (what the scheduler calls it), or "" outside one."""
    module = sys.modules.get("distributed")
    if module is None:
        return ""
    try:
        return module.get_worker().address
    except ValueError:
        return ""
