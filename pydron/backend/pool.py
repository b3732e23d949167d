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
from collections.abc import Callable
from typing import Any

from pydron.backend import sharing

__all__ = ["Pool", "OnDone", "run_call"]

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


def run_call(fn: Callable[..., Any], args: tuple, kwargs: dict, on_done: OnDone) -> None:
    """Run one call and deliver its outcome: the shared core of the in-process pools.

    An exception raised by ``on_done`` itself is a bug in the runtime, not in the user's
    call; it is logged instead of propagated so that it cannot kill a worker thread or be
    mistaken for the call's own failure.

    Shared handles in the arguments (nested in tuples, lists, dicts, sets and frozensets
    too) are replaced by their objects first; while no shared object exists in this
    process, that is one truth test.
    """
    try:
        if sharing._entries:
            args, kwargs = sharing.resolve_args(args, kwargs)
        value = fn(*args, **kwargs)
        ok = True
    except BaseException as exc:  # noqa: B902 -- every failure must reach the caller
        value = exc
        ok = False
    try:
        on_done(ok, value)
    except BaseException:
        _log.exception("pydron: the completion callback of %r raised", fn)
