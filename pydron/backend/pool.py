"""The interface between the runtime and whatever executes functional calls.

It is deliberately callback-based rather than future-based: the scheduler loop gathers
completions from many calls through one queue, and a callback lets every kind of pool
(threads, processes, remote hosts) feed that queue without allocating a Future per call
or needing a thread per wait.

Shared data (:func:`pydron.backend.sharing.shared`): whatever the pool, the function
receives the object a :class:`~pydron.backend.sharing.Shared` handle in its arguments
stands for, never the handle. Process pools get that from unpickling; in-process pools
from :func:`run_call`.
"""
from __future__ import annotations

import abc
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from pydron import remote_value
from pydron.backend import recorder as _recorder
from pydron.backend import sharing
from pydron.backend.recorder import WorkerTag

__all__ = ["Pool", "OnDone", "run_call", "thread_tag", "record_submit"]

OnDone = Callable[[bool, Any], None]
"""``on_done(ok, value)``: ok True -> value is the result; False -> the exception raised."""

_log = logging.getLogger("pydron.backend")


class Pool(abc.ABC):
    """Runs functional calls, possibly concurrently, and reports each outcome once."""

    parallelism: int
    """How many calls may run at once (the runtime keeps about this many in flight)."""

    @abc.abstractmethod
    def submit(self, fn: Callable[..., Any], args: tuple, kwargs: dict,
               on_done: OnDone) -> object:
        """Schedule ``fn(*args, **kwargs)`` and return a handle for :meth:`cancel`.

        ``on_done(ok, value)`` is called exactly once: ``ok`` True with fn's result, or
        ``ok`` False with the exception instance fn raised (its ``__traceback__`` intact).
        Any BaseException counts, KeyboardInterrupt and SystemExit included: a failure is
        never lost and never kills a worker. ``on_done`` may run in any thread, or
        synchronously inside ``submit``. It is not called if ``cancel(handle)`` returned
        True.
        """

    @abc.abstractmethod
    def cancel(self, handle: object) -> bool:
        """Best effort: return True if the call will not run (and on_done will not come)."""

    @abc.abstractmethod
    def shutdown(self, wait: bool = True) -> None:
        """Stop accepting calls and release the workers; ``wait`` blocks until they are gone.

        Calls already submitted and not cancelled still complete (their on_done is owed).
        """


def run_call(fn: Callable[..., Any], args: tuple, kwargs: dict, on_done: OnDone,
             token: Any = None, kind: str = "threads") -> None:
    """Run one call and deliver its outcome: the shared core of the in-process pools.

    An exception raised by ``on_done`` itself is a bug in the runtime, not in the user's
    call; it is logged instead of propagated so that it cannot kill a worker thread or be
    mistaken for the call's own failure.

    Shared handles in the arguments (nested in tuples, lists, dicts, sets and frozensets
    too) are replaced by their objects first; while no shared object exists in this
    process, that is one truth test. ``token``: the active recorder's for this call
    (:mod:`pydron.backend.recorder`), which hears of its start and end here.
    """
    rec = _recorder.active if token is not None else None
    if rec is not None:
        tag = thread_tag(kind)
        rec.sent(token, tag)
        started = time.perf_counter()
    try:
        if sharing._entries:
            args, kwargs = sharing.resolve_args(args, kwargs)
        if remote_value._live:
            args, kwargs = remote_value.materialize_args(args, kwargs)
        value = fn(*args, **kwargs)
        ok = True
    except BaseException as exc:  # noqa: B902 -- every failure must reach the caller
        value = exc
        ok = False
    if rec is not None:
        rec.finished(token, ok, tag, time.perf_counter() - started, 0,
                     "" if ok else f"{type(value).__name__}: {value}"[:300])
    try:
        on_done(ok, value)
    except BaseException:
        _log.exception("pydron: the completion callback of %r raised", fn)


def record_submit(fn: Callable[..., Any], args: tuple) -> Any:
    """The active recorder's token for a call submitted to an in-process pool, or None."""
    rec = _recorder.active
    return rec.submitted(fn, args, 0) if rec is not None else None


def thread_tag(kind: str) -> WorkerTag:
    """The current thread as a worker of an in-process pool (``pydron-thread-3`` is 3)."""
    thread = threading.current_thread()
    suffix = thread.name.rsplit("-", 1)[-1]
    return WorkerTag(kind, socket.gethostname(), int(suffix) if suffix.isdigit() else 0, 0)
