"""A pool of threads in this process.

Threads suit functional calls that release the GIL (numpy, I/O, C extensions) and cost
nothing to start or to send arguments to, so this is also the baseline against which the
process pools are measured. It is kept lean on purpose (modelled on CPython's
``concurrent/futures/thread.py``): no Future per call, one C-level queue, and a dict whose
atomic ``pop`` decides, without a lock, whether a worker or ``cancel`` gets a call first.

``call_timeout``: a thread cannot be stopped from outside, so a call that runs past it is
*abandoned*, not stopped: its caller gets :class:`~pydron.errors.CallTimeoutError` at
the deadline, a new thread takes the abandoned one's place (the pool keeps its size), and
the abandoned thread runs the call on to its end, drops its outcome, and exits.
"""
from __future__ import annotations

import itertools
import logging
import math
import queue
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from pydron.backend.context import worker_context
from pydron.backend.pool import OnDone, Pool, record_submit, run_call

_log = logging.getLogger("pydron.backend")

__all__ = ["ThreadPool"]


class _Call:
    """One submitted call; also its handle. Identity-hashed, so it can key a dict."""

    __slots__ = ("fn", "args", "kwargs", "on_done", "token")

    def __init__(self, fn: Callable[..., Any], args: tuple, kwargs: dict,
                 on_done: OnDone) -> None:
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.on_done = on_done
        self.token = record_submit(fn, args)

    def clear(self) -> None:
        """Drop the references, so a handle kept by the runtime pins no large arguments."""
        self.fn = self.args = self.kwargs = self.on_done = None  # type: ignore[assignment]


def _work(get: Callable[[], _Call | None], claim: Callable[[_Call, bool], bool],
          watchdog: _Watchdog | None = None) -> None:
    """Worker loop. Holds the queue and the pending dict, never the pool itself, so an
    abandoned pool can be collected (its finalizer then stops these threads)."""
    with worker_context():
        while True:
            call = get()
            if call is None:
                return
            if claim(call, False):  # False: cancel() got there first
                if watchdog is None:
                    run_call(call.fn, call.args, call.kwargs, call.on_done, call.token)
                elif not watchdog.run(call):
                    call.clear()
                    return  # abandoned at its deadline: another thread has our place
                call.clear()
            del call


class _Watchdog:
    """Enforces ``call_timeout`` for one pool: one thread that sleeps until the earliest
    deadline of the calls running. Every call gets the same timeout, so deadlines come
    in the order calls start, and a dict in insertion order is the schedule.

    Whoever pops a call from ``_running`` owns its outcome: the thread that ran it (on
    time) or the watchdog (past the deadline), which then delivers CallTimeoutError and
    has ``replace`` start a thread in place of the one still running the call."""

    def __init__(self, timeout: float, replace: Callable[[threading.Thread], None]) -> None:
        self.timeout = timeout
        self._replace = replace
        self._cond = threading.Condition()
        # call -> (deadline, fn, on_done, thread running it)
        self._running: dict[_Call, tuple[float, Any, OnDone, threading.Thread]] = {}
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, daemon=True,
                                        name="pydron-thread-watchdog")
        self._thread.start()

    def run(self, call: _Call) -> bool:
        """Run ``call`` in this thread under its deadline; False if it was abandoned."""
        running = self._running
        entry = (time.monotonic() + self.timeout, call.fn, call.on_done,
                 threading.current_thread())
        with self._cond:
            running[call] = entry
            if len(running) == 1:
                self._cond.notify()
        on_time = True

        def finish(ok: bool, value: Any) -> None:
            nonlocal on_time
            with self._cond:
                on_time = running.pop(call, None) is not None
            if on_time:
                entry[2](ok, value)
            # else: the caller was told at the deadline; this outcome is dropped

        run_call(call.fn, call.args, call.kwargs, finish, call.token)
        return on_time

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def _loop(self) -> None:
        running = self._running
        while True:
            with self._cond:
                while True:
                    if self._stopped and not running:
                        return
                    if not running:
                        self._cond.wait()
                        continue
                    call, entry = next(iter(running.items()))
                    left = entry[0] - time.monotonic()
                    if left <= 0:
                        del running[call]
                        break
                    self._cond.wait(left)
            self._expire(entry)
            del call, entry

    def _expire(self, entry: tuple[float, Any, OnDone, threading.Thread]) -> None:
        from pydron.backend.protocol.shipping import callable_name, callable_site
        from pydron.errors import CallTimeoutError
        _, fn, on_done, thread = entry
        try:
            self._replace(thread)
        except Exception:  # a thread that cannot start must not hide the timeout
            _log.exception("pydron: could not start a thread in place of an abandoned one")
        name = callable_name(fn)
        site = callable_site(fn)
        error = CallTimeoutError(
            f"{name}(){f' defined at {site}' if site else ''} did not finish within "
            f"call_timeout={self.timeout:g} s; a thread cannot be stopped, so it runs on in "
            f"the background (its outcome will be dropped) while a new thread takes its "
            f"place", function=name, timeout=self.timeout)
        try:
            on_done(False, error)
        except BaseException:
            _log.exception("pydron: the completion callback of %r raised", fn)


def _stop(put: Callable[[None], None], count: int) -> None:
    for _ in range(count):
        put(None)


class ThreadPool(Pool):
    """``count`` daemon threads, started on the first submit, serving a FIFO of calls.

    ``call_timeout`` (seconds, None for none): a call running longer is abandoned (see
    the module's docstring): its caller gets CallTimeoutError, though the thread runs on.
    """

    def __init__(self, count: int, *, call_timeout: float | None = None) -> None:
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"ThreadPool needs an integer count >= 1, got {count!r}")
        if call_timeout is not None and (
                isinstance(call_timeout, bool) or not isinstance(call_timeout, (int, float))
                or not math.isfinite(call_timeout) or call_timeout <= 0):
            raise ValueError(f"call_timeout must be a number of seconds > 0 or None, got "
                             f"{call_timeout!r}")
        self.parallelism = count
        self.call_timeout = call_timeout
        self._watchdog: _Watchdog | None = None
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
        threads, lock = self._threads, self._lock
        watchdog = None
        if self.call_timeout is not None:
            names = itertools.count(self.parallelism)

            def replace(abandoned: threading.Thread) -> None:
                # Holds the thread list and lock, not the pool (see _work).
                thread = threading.Thread(target=_work, args=(get, claim, watchdog),
                                          daemon=True, name=f"pydron-thread-{next(names)}")
                with lock:
                    if abandoned in threads:  # shutdown() must not wait for it
                        threads.remove(abandoned)
                    threads.append(thread)
                thread.start()

            watchdog = self._watchdog = _Watchdog(self.call_timeout, replace)
        for i in range(self.parallelism):
            thread = threading.Thread(target=_work, args=(get, claim, watchdog), daemon=True,
                                      name=f"pydron-thread-{i}")
            thread.start()
            threads.append(thread)
        weakref.finalize(self, _stop, self._queue.put, self.parallelism)
        if watchdog is not None:
            weakref.finalize(self, watchdog.stop)

    def cancel(self, handle: object) -> bool:
        """True if the call had not started; it is then dropped and on_done never comes."""
        try:
            claimed = self._pending.pop(handle, False)  # type: ignore[call-overload]
        except TypeError:  # an unhashable object is not one of our handles
            return False
        if claimed:
            if handle.token is not None:  # type: ignore[attr-defined]
                from pydron.backend import recorder
                if recorder.active is not None:
                    recorder.active.cancelled(handle.token)  # type: ignore[attr-defined]
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
            if self._watchdog is None:
                for thread in threads:
                    if thread is not me:
                        thread.join()
                return
            # A thread may be abandoned while we wait (its call times out): it leaves
            # the list then, and is not waited for.
            while True:
                with self._lock:
                    left = [t for t in self._threads if t is not me and t.is_alive()]
                if not left:
                    break
                left[0].join(0.05)
            self._watchdog.stop()
