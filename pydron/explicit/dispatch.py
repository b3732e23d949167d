"""From standard futures to a Pydron pool: the one place where the explicit API meets the
backend.

A :class:`Dispatcher` turns ``submit(fn, args, kwargs)`` into a
``concurrent.futures.Future`` and feeds the calls to a pool's callback interface
(:class:`pydron.backend.pool.Pool`). Every explicit face (``Executor``, ``map``,
``reduce``, ``Pool``) goes through one, so all of them run on whatever pool
``pydron.conf`` describes, with the pools' shipping, retries and output forwarding.

The states of a call, as the standard library's executors have them::

    PENDING  --hand-off-->  RUNNING  --outcome-->  FINISHED
       \\--cancel()-->  CANCELLED

A call waits in the dispatcher's own queue (PENDING, cancellable) until fewer than
:attr:`Dispatcher.limit` calls are on the pool; it is then marked RUNNING and handed to
the pool, and from then on ``Future.cancel()`` returns False, exactly as for a call that a
``ProcessPoolExecutor`` has moved into its call queue. A pool of worker processes batches
and prefetches calls, so the limit is about twice the pool's parallelism: enough to keep
every worker busy, few enough that cancelling the rest still means something.

Where the pool comes from is a :class:`PoolSource`: the process-wide pool of
``pydron.conf`` (held for each call in flight, so that ``pydron.configure`` during a map
applies to later calls and never cuts off these), a pool the dispatcher owns (an
``Executor(max_workers=4)``), or, inside a worker, an inline pool: no pool inside a pool.

Completions arrive in the pools' own threads. Nothing here calls the pool or a user's
callback with the dispatcher's lock held, and hand-offs are a loop rather than a
recursion (an inline pool completes a call inside ``submit``), so user callbacks may
submit, wait on other futures or shut the executor down.
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
import heapq
import itertools
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from pydron import backend
from pydron.remote_value import materialize
from pydron.backend.inline import InlinePool
from pydron.backend.pool import Pool
from pydron.config import Config
from pydron.errors import CallTimeoutError
from pydron.explicit.outcomes import InitializerFailed, Initializer, run_initialized

__all__ = ["Dispatcher", "PoolSource", "SharedPoolSource", "OwnedPoolSource",
           "in_delivery", "KeptFuture"]

_delivering = threading.local()

WITHDRAW_AFTER = 1.0
"""Seconds on the pool after which a call nobody waits for any more is stopped rather
than left to finish (see :meth:`Dispatcher.withdraw`)."""


def in_delivery() -> bool:
    """True while this thread is delivering an outcome (running future callbacks): a
    blocking wait here could wait for this very thread."""
    return getattr(_delivering, "depth", 0) > 0


class PoolSource:
    """Where a dispatcher's calls run: ``acquire()`` a pool for one call, ``release`` it
    when the call's outcome is in, ``close()`` when the dispatcher is done."""

    def acquire(self) -> Pool:
        raise NotImplementedError

    def release(self, pool: Pool) -> None:
        """One call on ``pool`` is over."""

    def parallelism(self) -> int:
        raise NotImplementedError

    def close(self, wait: bool) -> None:
        """No more calls will be made."""


class SharedPoolSource(PoolSource):
    """The process-wide pool of ``pydron.conf``, held for each call in flight."""

    def acquire(self) -> Pool:
        return backend.acquire_pool()[0]

    def release(self, pool: Pool) -> None:
        backend.release_pool(pool)

    def parallelism(self) -> int:
        return backend.get_pool().parallelism


class OwnedPoolSource(PoolSource):
    """A pool of the dispatcher's own, built from ``config`` at the first call and shut
    down with the dispatcher (or when the dispatcher is collected)."""

    def __init__(self, config: Config | None = None, pool: Pool | None = None) -> None:
        self.config = config
        self._pool = pool
        self._lock = threading.Lock()
        self._closed = False
        self._finalizer: Any = None

    def acquire(self) -> Pool:
        pool = self._pool
        if pool is not None:
            return pool
        with self._lock:
            if self._pool is None:
                if self._closed:
                    raise RuntimeError("cannot schedule new futures after shutdown")
                assert self.config is not None
                self._pool = backend.pool_from_config(self.config)
                self._finalizer = weakref.finalize(self, self._pool.shutdown, False)
            return self._pool

    def parallelism(self) -> int:
        if self._pool is not None:
            return self._pool.parallelism
        return self.config.capacity if self.config is not None else 1

    def close(self, wait: bool) -> None:
        with self._lock:
            self._closed = True
            pool = self._pool
        if pool is not None:
            if self._finalizer is not None:
                self._finalizer.detach()
            pool.shutdown(wait=wait and not in_delivery())


def inline_source() -> OwnedPoolSource:
    """Inside a worker: calls run one after the other, in this thread."""
    return OwnedPoolSource(pool=InlinePool())


class KeptFuture(cf.Future):
    """The future of ``Executor.submit``: its result may stay on the worker that computed
    it (a large one, on a pool of worker processes: see
    :mod:`pydron.backend.engine.locality`). Passed as an argument to another submit, the
    result goes from worker to worker; :meth:`result` fetches it to the caller, once."""

    def result(self, timeout: float | None = None) -> Any:
        return materialize(super().result(timeout))


def _futures_in(args: tuple, kwargs: dict) -> list[cf.Future]:
    """The futures among a call's top-level arguments."""
    found = [a for a in args if isinstance(a, cf.Future)]
    found += [v for v in kwargs.values() if isinstance(v, cf.Future)]
    return found


def _outcome(future: cf.Future) -> Any:
    """A finished future's result as it came from the pool (a kept one stays a Remote)."""
    return cf.Future.result(future)


class _Work:
    """One submitted call and its future; the handle the pool gave back once handed off."""

    __slots__ = ("future", "fn", "args", "kwargs", "pool", "handle", "settled", "deadline",
                 "origin", "started", "stop_when_handed", "keep")

    def __init__(self, future: cf.Future, fn: Callable[..., Any], args: tuple,
                 kwargs: dict) -> None:
        self.future = future
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.pool: Pool | None = None
        self.handle: object = None
        self.settled = False      # its outcome has been claimed (under the lock)
        self.deadline = 0.0
        self.origin: Any = None   # the function, kept for a timeout's message
        self.started = 0.0        # when it was handed to the pool
        self.stop_when_handed = False  # withdrawn while pool.submit had not yet returned
        self.keep = False         # its result may stay on its worker (a KeptFuture's)


class Dispatcher:
    """Calls in, standard futures out (see the module docstring).

    ``initializer``: an :class:`~pydron.explicit.outcomes.Initializer` run once per worker
    before the calls of this dispatcher. ``call_timeout``: seconds a call may run on the
    pool before its future fails with :class:`~pydron.errors.CallTimeoutError` and the
    pool is told to stop it (a worker process running it is killed and replaced; a
    thread cannot be stopped and runs on unobserved). None: no limit of its own (the
    pools enforce ``call_timeout`` of ``pydron.conf`` themselves). The time counts from
    the hand-off to the pool, which then happens only while a worker is free.
    """

    EXTRA = 4
    """Calls on the pool beyond twice its parallelism."""

    SHORT_CALL = 0.005
    """Seconds from hand-off to outcome below which calls count as short: the round trip
    to a worker then dominates, and keeping more of them on the pool (up to
    :attr:`SHORT_CALLS_PER_WORKER` each) lets a pool of processes batch them."""

    SHORT_CALLS_PER_WORKER = 32

    def __init__(self, source: PoolSource, initializer: Initializer | None = None,
                 call_timeout: float | None = None) -> None:
        self.source = source
        self.initializer = initializer
        self.call_timeout = call_timeout   # the pools enforce pydron.conf's own
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._pending: collections.deque[_Work] = collections.deque()
        self._running: dict[cf.Future, _Work] = {}
        self._delivering = 0      # outcomes claimed whose futures' callbacks still run
        self._waiting = 0         # calls waiting for futures among their arguments
        self._feeding = False
        self._closed = False
        self._broken: cf.BrokenExecutor | None = None
        self._timeouts: list[tuple[float, int, _Work]] = []
        self._timeout_seq = itertools.count()
        self._watchdog: threading.Thread | None = None
        self._wake = threading.Condition(self._lock)
        self._turnaround: float | None = None  # moving average, seconds on the pool

    @property
    def limit(self) -> int:
        """How many calls may be on the pool at once: twice its parallelism and a few
        (the standard executors keep about as many in their call queues), more while
        calls are short (see :attr:`SHORT_CALL`)."""
        parallelism = self.source.parallelism()
        if self.call_timeout is not None:
            # A call's time counts from its hand-off, so it must not wait on the pool
            # behind others: only as many as can run at once.
            return parallelism
        base = 2 * parallelism + self.EXTRA
        if self._turnaround is not None and self._turnaround < self.SHORT_CALL:
            return max(base, self.SHORT_CALLS_PER_WORKER * parallelism)
        return base

    def in_flight(self) -> int:
        """Calls handed to the pool whose outcome has not come (for tests, statistics)."""
        with self._lock:
            return len(self._running)

    def queued(self) -> int:
        """Calls waiting in the dispatcher's own queue."""
        with self._lock:
            return len(self._pending)

    # -- submitting ----------------------------------------------------------------------
    def submit(self, fn: Callable[..., Any], args: tuple, kwargs: dict,
               origin: Callable[..., Any] | None = None, keep: bool = False) -> cf.Future:
        """A future for ``fn(*args, **kwargs)``; RuntimeError after :meth:`shutdown`,
        BrokenExecutor once the initializer has failed. ``origin``: the user's function
        that ``fn`` runs (a map's chunk runner runs it), named in a timeout's message.

        ``keep``: a :class:`KeptFuture`, whose large result may stay on its worker; and
        futures among the top-level arguments are waited for and replaced by their
        results (a kept one travels from worker to worker), as Dask and Ray do; a failed
        or cancelled one fails this call with its exception."""
        future: cf.Future = KeptFuture() if keep else cf.Future()
        work = _Work(future, fn, args, kwargs)
        work.origin = origin
        work.keep = keep
        inputs = _futures_in(args, kwargs) if keep else ()
        if inputs:
            with self._lock:
                if self._closed:
                    raise RuntimeError("cannot schedule new futures after shutdown")
                self._waiting += 1
            self._after(work, inputs)
            return future
        with self._lock:
            if self._broken is not None:
                # A new exception each time (as the standard executors raise): raising one
                # instance again and again would grow its traceback with every submit.
                error = cf.BrokenExecutor(*self._broken.args)
                raise error from self._broken.__cause__
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._pending.append(work)
        self._feed()
        return future

    def _after(self, work: _Work, inputs: list[cf.Future]) -> None:
        """Queue ``work`` once every future among its arguments is done."""
        left = [len(inputs)]
        lock = threading.Lock()

        def one_done(_: cf.Future) -> None:
            with lock:
                left[0] -= 1
                if left[0]:
                    return
            self._inputs_ready(work)

        for future in inputs:
            future.add_done_callback(one_done)

    def _inputs_ready(self, work: _Work) -> None:
        failed = next((f for f in _futures_in(work.args, work.kwargs)
                       if f.cancelled() or f.exception() is not None), None)
        if failed is None:
            work.args = tuple(_outcome(a) if isinstance(a, cf.Future) else a
                              for a in work.args)
            work.kwargs = {k: _outcome(v) if isinstance(v, cf.Future) else v
                           for k, v in work.kwargs.items()}
        with self._lock:
            self._waiting -= 1
            if failed is None and self._broken is None:
                self._pending.append(work)
                failed_with = None
            else:
                failed_with = (cf.CancelledError() if failed is not None and failed.cancelled()
                               else failed.exception() if failed is not None
                               else self._broken)
        if failed_with is not None:
            if work.future.set_running_or_notify_cancel():
                work.future.set_exception(failed_with)
            work.fn = work.args = work.kwargs = None  # type: ignore[assignment]
            self._notify_if_idle()
            return
        self._feed()

    def _feed(self) -> None:
        """Hand queued calls to the pool while there is room; one thread at a time."""
        with self._lock:
            if self._feeding:
                return      # that thread's loop sees the room we made
            self._feeding = True
        try:
            try:
                limit = self.limit
            except Exception:   # the pool cannot be had: each call's acquire() fails
                limit = 1       # below, and its future carries the reason
            while True:
                with self._lock:
                    if not self._pending or len(self._running) >= limit:
                        self._feeding = False
                        return
                    work = self._pending.popleft()
                    if not work.future.set_running_or_notify_cancel():
                        continue      # cancelled while queued
                    self._running[work.future] = work
                self._start(work)
        except BaseException:
            with self._lock:
                self._feeding = False
            raise

    def _start(self, work: _Work) -> None:
        fn, args, kwargs = work.fn, work.args, work.kwargs
        work.fn = work.args = work.kwargs = None  # type: ignore[assignment]
        if self.call_timeout is None:
            work.origin = None
        elif work.origin is None:
            work.origin = fn
        work.started = time.monotonic()
        if self.initializer is not None:
            fn, args, kwargs = run_initialized, (self.initializer, fn, args, kwargs), {}
        try:
            pool = self.source.acquire()
        except BaseException as exc:  # noqa: B902 -- the caller learns it from result()
            self._settle(work, False, exc)
            return
        work.pool = pool

        def on_done(ok: bool, value: Any) -> None:
            self._settle(work, ok, value)

        try:
            if work.keep and getattr(type(pool), "keeps_values", False):
                handle = pool.submit(fn, args, kwargs, on_done, keep=True)
            else:
                handle = pool.submit(fn, args, kwargs, on_done)
        except BaseException as exc:  # noqa: B902 -- unpicklable argument, shut pool ...
            self._settle(work, False, exc)
            return
        # The handle before the timeout is armed: a timeout that found no handle could not
        # stop the call. An outcome that came already (an inline pool) needs neither.
        with self._lock:
            if work.settled:
                return
            work.handle = handle
            stop = work.stop_when_handed
        if stop:  # withdrawn meanwhile (the call may even have started on a worker)
            if pool.cancel(handle):
                self._settle(work, False, cf.CancelledError())
            return
        if self.call_timeout is not None:
            self._arm(work)

    # -- outcomes --------------------------------------------------------------------------
    def _settle(self, work: _Work, ok: bool, value: Any) -> bool:
        """Deliver ``work``'s outcome unless another one (its timeout) came first."""
        with self._lock:
            if work.settled:
                return False
            work.settled = True
            self._running.pop(work.future, None)
            self._delivering += 1   # shutdown(wait=True) waits for the callbacks too
            if work.started:
                took = time.monotonic() - work.started
                old = self._turnaround
                self._turnaround = took if old is None else 0.9 * old + 0.1 * took
        # Let go of everything the call held: the work stays referenced (by a pending
        # timeout, by the pool's call) after its future has been dropped.
        future, work.future = work.future, None  # type: ignore[assignment]
        pool, work.pool, work.handle, work.origin = work.pool, None, None, None
        try:
            if pool is not None:
                self.source.release(pool)
            broken = not ok and isinstance(value, InitializerFailed)
            depth = getattr(_delivering, "depth", 0)
            _delivering.depth = depth + 1
            try:
                if ok:
                    future.set_result(value)
                elif broken:
                    self._break(future, value)
                else:
                    future.set_exception(value)
            finally:
                _delivering.depth = depth
                del value, future
        finally:
            with self._lock:
                self._delivering -= 1
        self._feed()
        self._notify_if_idle()
        return True

    def _is_idle(self) -> bool:
        return not (self._running or self._pending or self._delivering or self._waiting)

    def _notify_if_idle(self) -> None:
        with self._lock:
            if self._is_idle():
                self._idle.notify_all()

    def _break(self, future: cf.Future, failure: InitializerFailed) -> None:
        """The initializer failed on a worker: every queued call fails with
        BrokenExecutor, and so does every later submit (as the standard executors do)."""
        error = cf.BrokenExecutor(f"a worker's initializer failed, so this executor is "
                                  f"unusable: {failure}")
        error.__cause__ = failure.__cause__ or failure
        with self._lock:
            if self._broken is None:
                self._broken = error
            dropped = list(self._pending)
            self._pending.clear()
        future.set_exception(error)
        for other in dropped:
            if other.future.set_running_or_notify_cancel():
                other.future.set_exception(error)

    # -- per-call timeouts -------------------------------------------------------------------
    def _arm(self, work: _Work) -> None:
        assert self.call_timeout is not None
        work.deadline = time.monotonic() + self.call_timeout
        with self._lock:
            heapq.heappush(self._timeouts, (work.deadline, next(self._timeout_seq), work))
            if self._watchdog is None:
                # A weak reference: the thread must not keep a dropped executor (and the
                # pool of its own) alive.
                self._watchdog = threading.Thread(
                    target=Dispatcher._watch, args=(weakref.ref(self), self._lock,
                                                    self._wake, self._timeouts),
                    daemon=True, name="pydron-call-timeouts")
                self._watchdog.start()
            elif self._timeouts[0][2] is work:
                self._wake.notify()

    @staticmethod
    def _watch(ref: weakref.ref[Dispatcher], lock: threading.Lock,
               wake: threading.Condition, timeouts: list[tuple[float, int, _Work]]) -> None:
        """The timeout thread: holds the dispatcher only while it expires a call."""
        while True:
            with lock:
                while True:
                    while timeouts and timeouts[0][2].settled:
                        heapq.heappop(timeouts)
                    me = ref()
                    if me is None:
                        return      # dropped: no call of it is in flight
                    if not timeouts:
                        if me._closed and not me._running:
                            me._watchdog = None
                            return
                        del me
                        wake.wait(1.0)
                        continue
                    left = timeouts[0][0] - time.monotonic()
                    if left <= 0:
                        work = heapq.heappop(timeouts)[2]
                        pool, handle = work.pool, work.handle
                        break
                    del me
                    wake.wait(left)
            me._expire(work, pool, handle)
            del me, work, pool, handle

    def _expire(self, work: _Work, pool: Pool | None, handle: object) -> None:
        from pydron.backend.protocol.shipping import callable_name, callable_site
        if pool is not None and handle is not None:
            try:
                pool.cancel(handle)   # a worker process running it is killed and replaced
            except Exception:
                pass
        origin, work.origin = work.origin, None
        name = callable_name(origin)
        site = callable_site(origin)
        error = CallTimeoutError(
            f"{name}(){f' defined at {site}' if site else ''} did not finish within "
            f"call_timeout={self.call_timeout:g} s; it was stopped (on the threads pool a "
            f"thread cannot be stopped: it runs on, unobserved)", function=name,
            timeout=self.call_timeout)
        self._settle(work, False, error)

    def withdraw(self, future: cf.Future, younger_than: float = WITHDRAW_AFTER) -> bool:
        """Nobody wants ``future``'s outcome any more (a map that stopped early). A call
        still queued is cancelled. A call on the pool for longer than ``younger_than``
        seconds is stopped there (a worker process running it is killed and replaced,
        which costs a respawn); a younger one is left to finish, its outcome dropped: a
        chunk of a map takes tens of milliseconds, killing its worker costs more."""
        if future.cancel():
            return True
        with self._lock:
            work = self._running.get(future)
            if work is None or work.settled:
                return False
            pool, handle = work.pool, work.handle
            old = time.monotonic() - work.started >= younger_than
            if old and handle is None:
                # Being handed to the pool, whose submit has not returned yet (a loaded
                # machine may run the call on a worker first): stopped once it returns.
                work.stop_when_handed = True
                return False
        if not old or pool is None or handle is None:
            return False
        try:
            stopped = pool.cancel(handle)
        except Exception:
            return False
        if stopped:
            self._settle(work, False, cf.CancelledError())
        return stopped

    # -- the end -----------------------------------------------------------------------------
    def cancel_pending(self) -> int:
        """Cancel every call still in the queue; how many were cancelled."""
        with self._lock:
            dropped = list(self._pending)
            self._pending.clear()
        count = 0
        for work in dropped:
            if work.future.cancel():
                # Then notified, as a queued call is when its turn comes: a cancelled future
                # counts as done for wait() and as_completed() only once it is notified.
                work.future.set_running_or_notify_cancel()
                count += 1
        self._notify_if_idle()
        return count

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        """Refuse new calls; ``cancel_futures`` drops the queued ones; ``wait`` blocks until
        every call has its outcome and its future's callbacks have run (not from inside a
        delivery, which could be waiting for itself) and the resources are released."""
        with self._lock:
            self._closed = True
            self._wake.notify_all()
        if cancel_futures:
            self.cancel_pending()
        self._feed()
        if wait and not in_delivery():
            with self._lock:
                while not self._is_idle():
                    self._idle.wait()
            self.source.close(wait=True)
        else:
            threading.Thread(target=self._close_when_idle, daemon=True,
                             name="pydron-executor-close").start()

    def _close_when_idle(self) -> None:
        with self._lock:
            while not self._is_idle():
                self._idle.wait()
        self.source.close(wait=False)
