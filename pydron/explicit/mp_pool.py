"""``pydron.Pool``: a drop-in for ``multiprocessing.Pool`` on Pydron's pools.

Replace ``multiprocessing.Pool()`` by ``pydron.Pool()`` and the same script runs on the
workers ``pydron.conf`` describes (threads, local processes, SSH hosts, cloud instances).
Which pool it uses:

* neither ``processes`` nor ``conf``: the process-wide pool of ``pydron.conf`` (shared
  with ``@schedule`` and ``pydron.map``; ``close``/``terminate`` never stop it);
* ``processes=N``: a pool of its own of N local worker processes, with the other settings
  of ``pydron.conf`` (``multiprocessing.Pool(N)``);
* ``conf=`` (a dict, a path to a pydron.conf, or a Config): a pool of its own, as
  configured.

Every method has ``multiprocessing.Pool``'s signature, and its semantics except where
this list says otherwise (each difference is deliberate):

* ``map``/``map_async``/``starmap``/``starmap_async``: an iterable without ``len`` is
  made a list in the caller, as multiprocessing does (so its exceptions are raised by the
  call itself); the items are then read in a thread of the pool. Every item
  runs, and the result is ready once every item is done, as in multiprocessing; if items
  raised, the one raised is the *first failing item in input order* (multiprocessing: the
  first failing chunk to arrive), with its own type, args, attributes, ``__cause__`` and
  ``__context__`` (multiprocessing replaces the cause by a ``RemoteTraceback``).
  multiprocessing skips the rest of a failing chunk; here no item is skipped.
  ``chunksize=None`` means Pydron's measured chunk sizes (``chunksize="auto"`` of
  :func:`pydron.map`) rather than ``len // (4 * processes)``; results are the same.
  ``callback`` is also called for an empty input (multiprocessing never calls it then).
* ``imap``/``imap_unordered``: the inputs are read lazily, in a thread of the pool, at
  most a bounded window (:data:`READ_AHEAD` results plus the chunks on the workers) ahead
  of the results consumed, so an endless generator works (multiprocessing reads all of it
  at once). After :meth:`Pool.close` an unfinished imap reads the rest of its inputs
  without waiting for its consumer, since ``join`` waits for every item, as it does in
  multiprocessing. An exception is raised at its item's position (after the earlier
  results) for every chunksize, and iteration goes on with the later items
  (multiprocessing: with ``chunksize=1``; with a larger chunksize it loses the whole
  failing chunk and stops). An exception raised by the input iterable itself is raised
  after the results of the items before it, then the iteration ends, as in
  multiprocessing. Both always return an :class:`IMapIterator` (``next(timeout)`` works
  for every chunksize). An iterator dropped unconsumed stops reading its inputs.
* An item whose call cannot run at all (its worker lost more often than ``max_retries``
  allows, an argument or a result that cannot be pickled, ``call_timeout``; the map
  re-sends a failed chunk's items one by one to find it) ends its map: a map raises that
  error (unless an earlier item failed) and the items after it are cancelled; an imap
  raises it at the item's position and then ends (multiprocessing goes on).
* Callbacks run in one thread of the pool, one at a time, in completion order (as in
  multiprocessing: keep them short); ``ready()`` turns True after the callback returned.
  A callback that raises is logged (logger ``pydron.explicit``) and its result is still
  delivered (multiprocessing's result thread dies of it and the pool hangs).
* ``maxtasksperchild`` is validated as multiprocessing does and then **ignored**:
  Pydron's worker processes are long-lived and shared, and are replaced only when they
  die or a call is stopped. Code that needs a fresh process per N tasks for leaks must
  not rely on it here. ``context`` is accepted for compatibility and ignored (the
  workers are Pydron's, not ``multiprocessing`` children).
* ``initializer(*initargs)`` runs once in each worker before its first call of this pool:
  each worker process, each thread of a threads pool. If it raises, this pool is broken:
  every unfinished and later call fails with ``concurrent.futures.BrokenExecutor``
  (multiprocessing restarts the worker forever and the map hangs).
* ``terminate()`` cancels every queued call and stops this pool's running calls without
  waiting for them (a worker process running one is killed and replaced; a thread cannot
  be stopped and runs on, unobserved); a pool of its own is then shut down. Every
  unfinished result fails with :class:`PoolTerminatedError` (its ``error_callback`` is
  called with it) and an unfinished imap raises it after its buffered results, instead
  of hanging forever as multiprocessing's do. It returns at once; ``join()`` afterwards
  waits until the calls that could not be stopped are over and the pool's own workers
  have exited.
* ``join()`` waits for every result (and its callback), then for the pool's own workers
  to exit; the process-wide pool keeps running.

Inside a worker (a call that itself makes a Pool) calls run one after the other in that
worker: no pool inside a pool.
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
import logging
import multiprocessing
import queue
import threading
import types
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from pydron.explicit.dispatch import Dispatcher
from pydron.explicit.executor import ConfSource, pool_source
from pydron.explicit.mapping import MapRun
from pydron.explicit.outcomes import ChunkOutcome, Failure, Initializer, run_chunk

__all__ = ["Pool", "AsyncResult", "ApplyResult", "MapResult", "IMapIterator",
           "IMapUnorderedIterator", "PoolTerminatedError", "READ_AHEAD"]

_log = logging.getLogger("pydron.explicit")

RUN, CLOSE, TERMINATE = "RUN", "CLOSE", "TERMINATE"

READ_AHEAD = 64
"""Results an imap holds beyond those its consumer has taken (besides the chunks on the
workers) before it stops reading its inputs until the consumer catches up."""


class PoolTerminatedError(multiprocessing.ProcessError):
    """The outcome of a call that had not finished when its pool was terminated."""


# ----------------------------------------------------------------- what runs on a worker


class Raised:
    """An item's exception in a chunk's outcomes, told apart from a result that is an
    exception object (:class:`~pydron.explicit.outcomes.Failure` inside, for pickling)."""

    __slots__ = ("failure",)

    def __init__(self, failure: Failure) -> None:
        self.failure = failure

    def __reduce__(self) -> tuple:
        return (Raised, (self.failure,))


def run_marked(fn: Callable[..., Any], items: list, star: bool,
               stop_on_error: bool) -> ChunkOutcome:
    """:func:`~pydron.explicit.outcomes.run_chunk` on every item (``stop_on_error`` is
    ignored: no item is skipped because another failed), each failed item's outcome a
    :class:`Raised`, so that the map hands it over like a result. The map itself then
    raises only for a chunk that failed as a whole (split by MapRun down to the item),
    which ends it."""
    outcome = run_chunk(fn, items, star, False)
    outcomes = outcome[0]
    for i, value in enumerate(outcomes):
        if type(value) is Failure:
            outcomes[i] = Raised(value)
    return outcome


# ---------------------------------------------------------------------- the dispatcher


run_marked.pydron_chunk = True  # type: ignore[attr-defined]  # counted as its items (observe)
run_marked.pydron_items = Raised  # type: ignore[attr-defined]  # cached item by item


class _PoolDispatcher(Dispatcher):
    """A dispatcher that knows the futures of its unfinished calls, so that terminate can
    stop the running ones (Dispatcher.withdraw) as well as the queued ones."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._live: set[cf.Future] = set()
        self._live_lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], args: tuple, kwargs: dict, *more: Any,
               **options: Any) -> cf.Future:
        future = super().submit(fn, args, kwargs, *more, **options)
        with self._live_lock:
            self._live.add(future)
        future.add_done_callback(self._gone)
        return future

    def _gone(self, future: cf.Future) -> None:
        with self._live_lock:
            self._live.discard(future)

    def stop_all(self) -> None:
        """Cancel the queued calls, stop the running ones where the pool can."""
        self.cancel_pending()
        with self._live_lock:
            live = list(self._live)
        for future in live:
            if not future.cancel():
                try:
                    self.withdraw(future, 0.0)
                except Exception:  # noqa: BLE001 -- best effort; the call may just finish
                    _log.debug("pydron.Pool: withdrawing a call failed", exc_info=True)


# ------------------------------------------------------------------ the callback thread


def _handle(calls: queue.SimpleQueue) -> None:
    """The pool's result thread: runs deliveries (and so the users' callbacks) in order."""
    while True:
        item = calls.get()
        if item is None:
            return
        fn, args = item
        try:
            fn(*args)
        except BaseException:  # noqa: BLE001 -- the thread must survive
            _log.exception("pydron.Pool: delivering a result failed")
        del item, fn, args


class _Handler:
    def __init__(self) -> None:
        self.calls: queue.SimpleQueue = queue.SimpleQueue()
        self.thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopped = False

    def post(self, fn: Callable[..., Any], *args: Any) -> None:
        with self._lock:
            if self.thread is None and not self._stopped:
                self.thread = threading.Thread(target=_handle, args=(self.calls,),
                                               daemon=True, name="pydron-pool-results")
                self.thread.start()
        self.calls.put((fn, args))

    def stop(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            started = self.thread is not None
        if started:
            self.calls.put(None)
        else:  # deliveries posted before the thread started? none can be: post starts it
            pass

    def join(self) -> None:
        thread = self.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()


# ------------------------------------------------------------------------------ results


class ApplyResult:
    """The result of ``apply_async`` (also called ``AsyncResult``), as in multiprocessing."""

    def __init__(self, pool: Pool, callback: Callable[[Any], Any] | None,
                 error_callback: Callable[[BaseException], Any] | None) -> None:
        self._pool: Pool | None = pool
        self._callback = callback
        self._error_callback = error_callback
        self._event = threading.Event()
        self._claimed = False
        self._success: bool | None = None
        self._value: Any = None
        pool._remember(self)

    __class_getitem__ = classmethod(types.GenericAlias)

    def ready(self) -> bool:
        return self._event.is_set()

    def successful(self) -> bool:
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return bool(self._success)

    def wait(self, timeout: float | None = None) -> None:
        self._event.wait(timeout)

    def get(self, timeout: float | None = None) -> Any:
        self.wait(timeout)
        if not self.ready():
            raise multiprocessing.TimeoutError
        if self._success:
            return self._value
        raise self._value

    # -- outcomes (any thread); delivery (the pool's result thread) -----------------------
    def _outcome(self, ok: bool, value: Any) -> bool:
        """Claim this result for ``(ok, value)``; False if it had an outcome already."""
        pool = self._pool
        if pool is None:
            return False
        with pool._lock:
            if self._claimed:
                return False
            self._claimed = True
        pool._handler.post(self._deliver, ok, value)
        return True

    def _from_future(self, future: cf.Future) -> None:
        if future.cancelled():
            self._outcome(False, PoolTerminatedError("the pool was terminated before this "
                                                     "call ran"))
            return
        exc = future.exception()
        if exc is None:
            self._outcome(True, future.result())
        else:
            if isinstance(exc, cf.CancelledError):
                exc = PoolTerminatedError("the pool was terminated while this call ran")
            self._outcome(False, exc)
        del exc

    def _deliver(self, ok: bool, value: Any) -> None:
        self._success, self._value = ok, value
        callback = self._callback if ok else self._error_callback
        if callback is not None:
            try:
                callback(value)
            except BaseException:  # noqa: BLE001 -- as documented: logged
                _log.exception("pydron.Pool: the %s of a result raised",
                               "callback" if ok else "error_callback")
        self._callback = self._error_callback = None
        self._event.set()
        pool, self._pool = self._pool, None
        if pool is not None:
            pool._forget(self)

    def _terminate(self) -> None:
        self._outcome(False, PoolTerminatedError("the pool was terminated before this "
                                                 "call finished"))

    def _wake(self) -> None:
        pass


AsyncResult = ApplyResult


class MapResult(ApplyResult):
    """The result of ``map_async``/``starmap_async``: the list of results, or the first
    failing item's exception (in input order)."""


class _Stream:
    """What an imap's driver thread and its iterator share: the outcomes not yet taken."""

    def __init__(self, pool: Pool) -> None:
        self.pool: Pool | None = pool
        self.cond = threading.Condition(threading.Lock())
        self.items: collections.deque[tuple[bool, Any]] = collections.deque()
        self.done = False
        self.stopped = False      # terminated or abandoned: the driver stops
        pool._remember(self)

    def put(self, ok: bool, value: Any) -> bool:
        """Add an outcome, waiting while the consumer is far behind; False: stop."""
        pool = self.pool
        with self.cond:
            while len(self.items) >= READ_AHEAD and not self.stopped and \
                    pool is not None and pool._state == RUN:
                self.cond.wait()
            if self.stopped:
                return False
            self.items.append((ok, value))
            self.cond.notify_all()
            return True

    def end(self) -> None:
        with self.cond:
            self.done = True
            self.cond.notify_all()
        self._detach()

    def _terminate(self) -> None:
        with self.cond:
            if not self.done:
                self.items.append((False, PoolTerminatedError(
                    "the pool was terminated before this map finished")))
            self.done = self.stopped = True
            self.cond.notify_all()
        self._detach()

    def _detach(self) -> None:
        """No longer one of the pool's results (terminate need not reach it)."""
        pool, self.pool = self.pool, None
        if pool is not None:
            pool._forget(self)

    def abandon(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify_all()

    def _wake(self) -> None:
        with self.cond:
            self.cond.notify_all()


class IMapIterator:
    """The iterator ``imap`` returns: ``next(timeout=None)`` raises
    ``multiprocessing.TimeoutError`` if no result comes within ``timeout`` seconds."""

    def __init__(self, stream: _Stream) -> None:
        self._stream = stream
        weakref.finalize(self, stream.abandon)

    __class_getitem__ = classmethod(types.GenericAlias)

    def __iter__(self) -> IMapIterator:
        return self

    def next(self, timeout: float | None = None) -> Any:
        stream = self._stream
        with stream.cond:
            if not stream.items and not stream.done:
                if not stream.cond.wait_for(lambda: stream.items or stream.done, timeout):
                    raise multiprocessing.TimeoutError
            if not stream.items:
                raise StopIteration
            ok, value = stream.items.popleft()
            stream.cond.notify_all()
        if ok:
            return value
        try:
            raise value
        finally:
            del value

    __next__ = next


class IMapUnorderedIterator(IMapIterator):
    """The iterator ``imap_unordered`` returns: results in completion order."""


# ------------------------------------------------------------------------- map drivers


class _Guarded:
    """The inputs of a map; an exception of the iterable ends them and is kept, to be
    raised after the results of the items before it."""

    def __init__(self, iterable: Iterable[Any]) -> None:
        self._it: Iterator[Any] | None = None
        self._iterable = iterable
        self.error: BaseException | None = None

    def __iter__(self) -> _Guarded:
        return self

    def __next__(self) -> Any:
        if self._it is None:
            if self.error is not None:
                raise StopIteration
            try:
                self._it = iter(self._iterable)
            except Exception as exc:  # noqa: BLE001 -- raised at its position
                self.error = exc
                raise StopIteration from None
            finally:
                self._iterable = None
        try:
            return next(self._it)
        except StopIteration:
            raise
        except Exception as exc:  # noqa: BLE001 -- raised at its position
            self.error = exc
            self._it = iter(())
            raise StopIteration from None


class _ListSink:
    """A map_async's outcomes: the list, or the first failure in input order."""

    def __init__(self, result: MapResult) -> None:
        self.result = result
        self.values: list[Any] | None = []
        self.error: BaseException | None = None

    def put(self, ok: bool, value: Any) -> bool:
        if self.result._claimed:
            return False      # terminated
        if self.error is None:
            if ok:
                self.values.append(value)  # type: ignore[union-attr]
            else:
                self.error, self.values = value, None
        return True

    def end(self) -> None:
        if self.error is not None:
            self.result._outcome(False, self.error)
        else:
            self.result._outcome(True, self.values)
        self.values = self.error = None


def _drive(dispatcher: Dispatcher, func: Callable[..., Any], iterable: Iterable[Any],
           star: bool, chunksize: int | str, ordered: bool, sink: Any) -> None:
    """Run one map to its end (a thread of the pool): its outcomes go to ``sink``."""
    guard = _Guarded(iterable)
    del iterable
    gen = None
    try:
        run = MapRun(dispatcher, func, (guard,), ordered=ordered, chunksize=chunksize,
                     errors="raise", runner=run_marked, star=star)
        gen = run.results()
        del run
        for value in gen:
            if type(value) is Raised:
                ok, value = False, value.failure.exception
            else:
                ok = True
            if not sink.put(ok, value):
                break
            del value
        else:
            if guard.error is not None:
                sink.put(False, guard.error)
    except BaseException as exc:  # noqa: BLE001 -- a chunk that could not run at all
        if isinstance(exc, cf.CancelledError):
            exc = PoolTerminatedError("the pool was terminated while this map ran")
        sink.put(False, exc)
        del exc
    finally:
        if gen is not None:
            gen.close()
        guard.error = None
        sink.end()


def _check_chunksize(chunksize: object, allow_none: bool) -> int | str:
    if chunksize is None and allow_none:
        return "auto"
    if isinstance(chunksize, bool) or not isinstance(chunksize, int):
        raise TypeError(f"chunksize must be an integer{' or None' if allow_none else ''}, "
                        f"not {type(chunksize).__name__}")
    if chunksize < 1:
        raise ValueError(f"Chunksize must be 1+, not {chunksize:n}")
    return chunksize


# --------------------------------------------------------------------------------- Pool


class Pool:
    """A drop-in for ``multiprocessing.Pool`` on Pydron's pools; see the module
    docstring for which pool, and for where it differs from multiprocessing."""

    def __init__(self, processes: int | None = None,
                 initializer: Callable[..., Any] | None = None, initargs: Iterable = (),
                 maxtasksperchild: int | None = None, context: Any = None, *,
                 conf: ConfSource | None = None) -> None:
        if maxtasksperchild is not None:
            if isinstance(maxtasksperchild, bool) or not isinstance(maxtasksperchild, int) \
                    or maxtasksperchild <= 0:
                raise ValueError("maxtasksperchild must be a positive int or None")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if processes is not None and not isinstance(processes, bool) and \
                isinstance(processes, int) and processes < 1:
            raise ValueError("Number of processes must be at least 1")
        source = pool_source(processes, conf, "Pool()", count_name="processes")
        init = None
        if initializer is not None:
            init = Initializer(uuid.uuid4().hex, initializer, tuple(initargs))
        self._maxtasksperchild = maxtasksperchild   # accepted, ignored (see above)
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._state = RUN
        self._cache: set[Any] = set()
        self._handler = _Handler()
        self._dispatcher = _PoolDispatcher(source, init)
        weakref.finalize(self, self._handler.stop)

    # -- bookkeeping -----------------------------------------------------------------------
    def _remember(self, job: Any) -> None:
        with self._lock:
            self._cache.add(job)

    def _forget(self, job: Any) -> None:
        with self._lock:
            self._cache.discard(job)
            if not self._cache:
                self._idle.notify_all()

    def _check_running(self) -> None:
        if self._state != RUN:
            raise ValueError("Pool not running")

    @property
    def _processes(self) -> int:
        """How many calls run at once (multiprocessing's attribute of that name)."""
        return self._dispatcher.source.parallelism()

    def __repr__(self) -> str:
        return f"<{type(self).__module__}.{type(self).__qualname__} state={self._state}>"

    def __reduce__(self) -> tuple:
        raise NotImplementedError("pool objects cannot be passed between processes or "
                                  "pickled")

    # -- single calls ----------------------------------------------------------------------
    def apply(self, func: Callable[..., Any], args: tuple = (), kwds: dict = {}) -> Any:
        """``func(*args, **kwds)`` on a worker; blocks until it is done."""
        self._check_running()
        return self.apply_async(func, args, kwds).get()

    def apply_async(self, func: Callable[..., Any], args: tuple = (), kwds: dict = {},
                    callback: Callable[[Any], Any] | None = None,
                    error_callback: Callable[[BaseException], Any] | None = None
                    ) -> ApplyResult:
        """``func(*args, **kwds)`` on a worker: an :class:`ApplyResult`."""
        self._check_running()
        result = ApplyResult(self, callback, error_callback)
        try:
            future = self._dispatcher.submit(func, tuple(args), dict(kwds))
        except BaseException as exc:  # noqa: BLE001 -- a broken pool: the result says so
            result._outcome(False, exc)
            return result
        future.add_done_callback(result._from_future)
        return result

    # -- maps -------------------------------------------------------------------------------
    def _map_async(self, func: Callable[..., Any], iterable: Iterable[Any], star: bool,
                   chunksize: int | None, callback: Callable[[Any], Any] | None,
                   error_callback: Callable[[BaseException], Any] | None) -> MapResult:
        self._check_running()
        size = _check_chunksize(chunksize, allow_none=True)
        if not hasattr(iterable, "__len__"):
            iterable = list(iterable)
        result = MapResult(self, callback, error_callback)
        self._start(func, iterable, star, size, True, _ListSink(result))
        return result

    def _start(self, func: Callable[..., Any], iterable: Iterable[Any], star: bool,
               chunksize: int | str, ordered: bool, sink: Any) -> None:
        threading.Thread(target=_drive, args=(self._dispatcher, func, iterable, star,
                                              chunksize, ordered, sink),
                         daemon=True, name="pydron-pool-map").start()

    def map(self, func: Callable[..., Any], iterable: Iterable[Any],
            chunksize: int | None = None) -> list[Any]:
        """``list(map(func, iterable))`` on the workers; blocks until every item is done."""
        return self._map_async(func, iterable, False, chunksize, None, None).get()

    def starmap(self, func: Callable[..., Any], iterable: Iterable[Iterable[Any]],
                chunksize: int | None = None) -> list[Any]:
        """Like :meth:`map`, with ``func(*item)`` for each item."""
        return self._map_async(func, iterable, True, chunksize, None, None).get()

    def map_async(self, func: Callable[..., Any], iterable: Iterable[Any],
                  chunksize: int | None = None,
                  callback: Callable[[Any], Any] | None = None,
                  error_callback: Callable[[BaseException], Any] | None = None
                  ) -> MapResult:
        """:meth:`map` without blocking: a :class:`MapResult`."""
        return self._map_async(func, iterable, False, chunksize, callback, error_callback)

    def starmap_async(self, func: Callable[..., Any], iterable: Iterable[Iterable[Any]],
                      chunksize: int | None = None,
                      callback: Callable[[Any], Any] | None = None,
                      error_callback: Callable[[BaseException], Any] | None = None
                      ) -> MapResult:
        """:meth:`starmap` without blocking: a :class:`MapResult`."""
        return self._map_async(func, iterable, True, chunksize, callback, error_callback)

    def _imap(self, func: Callable[..., Any], iterable: Iterable[Any], chunksize: int,
              ordered: bool) -> IMapIterator:
        self._check_running()
        size = _check_chunksize(chunksize, allow_none=False)
        stream = _Stream(self)
        self._start(func, iterable, False, size, ordered, stream)
        return (IMapIterator if ordered else IMapUnorderedIterator)(stream)

    def imap(self, func: Callable[..., Any], iterable: Iterable[Any],
             chunksize: int = 1) -> IMapIterator:
        """A lazy ``map(func, iterable)`` on the workers, results in input order."""
        return self._imap(func, iterable, chunksize, True)

    def imap_unordered(self, func: Callable[..., Any], iterable: Iterable[Any],
                       chunksize: int = 1) -> IMapIterator:
        """Like :meth:`imap`, results in the order they are done."""
        return self._imap(func, iterable, chunksize, False)

    # -- the end ----------------------------------------------------------------------------
    def close(self) -> None:
        """No more work: the calls and maps already started run to their end."""
        with self._lock:
            if self._state != RUN:
                return
            self._state = CLOSE
            jobs = list(self._cache)
        for job in jobs:
            job._wake()

    def terminate(self) -> None:
        """Stop now (see the module docstring): queued calls cancelled, running ones
        stopped where the pool can, unfinished results failed with
        :class:`PoolTerminatedError`."""
        with self._lock:
            if self._state == TERMINATE:
                return
            self._state = TERMINATE
            jobs = list(self._cache)
        for job in jobs:
            job._terminate()
        # Refuse new calls first: a map's thread may still top up its window or re-send
        # a failed chunk's items, and those must not start after the calls are stopped.
        self._dispatcher.shutdown(wait=False, cancel_futures=True)
        self._dispatcher.stop_all()

    def join(self) -> None:
        """Wait for every result (and its callback) and for this pool's own workers to
        exit; only after :meth:`close` or :meth:`terminate`."""
        if self._state == RUN:
            raise ValueError("Pool is still running")
        with self._lock:
            while self._cache:
                self._idle.wait()
        self._dispatcher.shutdown(wait=True)
        self._handler.stop()
        self._handler.join()

    def __enter__(self) -> Pool:
        self._check_running()
        return self

    def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> None:
        self.terminate()
