"""A pool of threads in this process.

Threads suit functional calls that release the GIL (numpy, I/O, C extensions) and cost
nothing to start or to send arguments to, so this is also the baseline against which the
process pools are measured. It is kept lean on purpose (modelled on CPython's
``concurrent/futures/thread.py``): no Future per call, one C-level queue, and a dict whose
atomic ``pop`` decides, without a lock, whether a worker or ``cancel`` gets a call first.
"""
from __future__ import annotations

import queue
import threading
import weakref
from collections.abc import Callable
from typing import Any

from pydron.backend.context import worker_context
from pydron.backend.pool import OnDone, Pool, run_call

__all__ = ["ThreadPool"]


class _Call:
    """One submitted call; also its handle. Identity-hashed, so it can key a dict."""

    __slots__ = ("fn", "args", "kwargs", "on_done")

    def __init__(self, fn: Callable[..., Any], args: tuple, kwargs: dict,
                 on_done: OnDone) -> None:
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.on_done = on_done

    def clear(self) -> None:
        """Drop the references, so a handle kept by the runtime pins no large arguments."""
        self.fn = self.args = self.kwargs = self.on_done = None  # type: ignore[assignment]


def _work(get: Callable[[], _Call | None], claim: Callable[[_Call, bool], bool]) -> None:
    """Worker loop. Holds the queue and the pending dict, never the pool itself, so an
    abandoned pool can be collected (its finalizer then stops these threads)."""
    with worker_context():
        while True:
            call = get()
            if call is None:
                return
            if claim(call, False):  # False: cancel() got there first
                run_call(call.fn, call.args, call.kwargs, call.on_done)
                call.clear()
            del call


def _stop(put: Callable[[None], None], count: int) -> None:
    for _ in range(count):
        put(None)


class ThreadPool(Pool):
    """``count`` daemon threads, started on the first submit, serving a FIFO of calls."""

    def __init__(self, count: int) -> None:
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"ThreadPool needs an integer count >= 1, got {count!r}")
        self.parallelism = count
        self._queue: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        # Calls submitted and not yet started. Whoever pops a call from here owns it:
        # a worker (runs it) or cancel() (drops it). dict.pop is atomic.
        self._pending: dict[_Call, bool] = {}
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, fn: Callable[..., Any], args: tuple, kwargs: dict,
               on_done: OnDone) -> object:
        """Queue the call; a free thread picks it up in submission order."""
        call = _Call(fn, args, kwargs, on_done)
        with self._lock:  # orders calls before shutdown's stop markers
            if self._closed:
                raise RuntimeError("cannot submit to a pool that has been shut down")
            if not self._threads:
                self._start()
            self._pending[call] = True
            self._queue.put(call)
        return call

    def _start(self) -> None:
        get, claim = self._queue.get, self._pending.pop
        for i in range(self.parallelism):
            thread = threading.Thread(target=_work, args=(get, claim), daemon=True,
                                      name=f"pydron-thread-{i}")
            thread.start()
            self._threads.append(thread)
        weakref.finalize(self, _stop, self._queue.put, self.parallelism)

    def cancel(self, handle: object) -> bool:
        """True if the call had not started; it is then dropped and on_done never comes."""
        try:
            claimed = self._pending.pop(handle, False)  # type: ignore[call-overload]
        except TypeError:  # an unhashable object is not one of our handles
            return False
        if claimed:
            handle.clear()  # type: ignore[attr-defined]
        return claimed

    def shutdown(self, wait: bool = True) -> None:
        """Stop the threads once the calls already queued have run; wait=True joins them.

        Queued calls still run because on_done is owed for each of them; use cancel()
        first to drop them. Safe to call twice, and from a worker thread (which is then
        not joined, as a thread cannot join itself).
        """
        with self._lock:
            if not self._closed:
                self._closed = True
                _stop(self._queue.put, len(self._threads))
            threads = list(self._threads)
        if wait:
            me = threading.current_thread()
            for thread in threads:
                if thread is not me:
                    thread.join()
