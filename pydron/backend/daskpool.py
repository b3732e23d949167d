"""Functional calls as tasks of an existing Dask cluster (``"type": "dask"`` in pydron.conf).

Where a site already runs Dask, Pydron submits its calls there rather than starting
workers of its own. The cluster is someone else's and shared by many programs, so this
pool only ever *uses* it: one ``distributed.Client``, tasks keyed by the function and the
call site (readable on Dask's dashboard), shared objects scattered once, and at shutdown
everything this run put on the cluster is released and the client closed -- never the
scheduler or its workers shut down.

Pydron's semantics do not depend on Dask's: each call runs inside
:func:`pydron.backend.dask_runner.run`, which returns an outcome record whatever the call
does, so Dask never sees (nor retries, nor logs) a user's exception, and the caller
rebuilds it with Pydron's own shipping, chain and frames intact. What Dask does report as
a task's failure is about the cluster: a worker lost while running the call (Dask reruns
such a task itself, up to the scheduler's ``allowed-failures``, then reports
``KilledWorker``); the pool then submits the call again, up to ``max_retries`` times,
before the caller gets a :class:`~pydron.errors.WorkerLostError` naming the function.

``distributed`` is imported here only, when a dask pool is made: nothing else of Pydron
needs it (``pip install 'pydron[dask]'``).
"""
from __future__ import annotations

import asyncio
import collections
import logging
import queue
import os
import pickle
import sys
import threading
import uuid
import weakref
from collections.abc import Callable
from typing import Any

from pydron import callsite
from pydron.backend import dask_runner, recorder as _recorder, sharing
from pydron.backend.pool import OnDone, Pool
from pydron.backend.protocol import log_records
from pydron.backend.protocol.shipping import (
    FunctionShipper, callable_name, callable_site, dumps_args, loads_exception, type_name,
)
from pydron.backend.recorder import WorkerTag
from pydron.errors import ConfigError, RemoteError, SerializationError, WorkerLostError

__all__ = ["DaskPool"]

_log = logging.getLogger("pydron.backend")

QUEUED, LAUNCHED, DONE, CANCELLED = range(4)

FORGET_TIMEOUT = 10.0
"""Seconds a shutdown waits for the workers to drop this run's namespaces."""


class _Call:
    """One functional call, through its attempts (each a Dask task of its own key)."""

    __slots__ = ("fn", "name", "fn_blob", "args_blob", "buffers", "shared", "on_done",
                 "token", "key_base", "future", "state", "attempts")

    def __init__(self, fn: Callable[..., Any], name: str, fn_blob: bytes, args_blob: bytes,
                 buffers: list[Any], shared: dict[bytes, Any], on_done: OnDone,
                 key_base: str, token: Any) -> None:
        self.fn = fn
        self.name = name
        self.fn_blob = fn_blob
        self.args_blob = args_blob
        self.buffers = buffers
        self.shared = shared
        self.on_done = on_done
        self.key_base = key_base
        self.token = token
        self.future: Any = None
        self.state = QUEUED
        self.attempts = 0


def _distributed() -> Any:
    try:
        import distributed
    except ImportError as exc:
        raise ConfigError(
            'workers of type "dask" need the distributed package, which cannot be imported '
            f"({exc}): python -m pip install 'pydron[dask]'") from None
    return distributed


class DaskPool(Pool):
    """Runs functional calls as tasks of the Dask cluster at ``address`` (or the one a
    ``scheduler_file`` describes); see the module docstring."""

    def __init__(self, address: str | None = None, scheduler_file: str | None = None,
                 threads: int | None = None, timeout: float = 30.0, max_retries: int = 3,
                 source: str = "pydron.conf", watch_interval: float = 1.0) -> None:
        if (address is None) == (scheduler_file is None):
            raise ConfigError(f'{source}: a "dask" entry needs exactly one of "address" '
                              'and "scheduler_file"')
        distributed = _distributed()
        self._killed = distributed.KilledWorker
        where = (f'the Dask scheduler at {address} ("address" in {source})' if address
                 else f'the Dask scheduler of {scheduler_file} ("scheduler_file" in {source})')
        if scheduler_file is not None and not os.path.exists(scheduler_file):
            raise ConfigError(f"cannot reach {where}: the file does not exist")
        try:
            self._client = distributed.Client(address=address, scheduler_file=scheduler_file,
                                              timeout=timeout, set_as_default=False,
                                              name=f"pydron-{os.getpid()}")
        except Exception as exc:
            raise ConfigError(f"cannot reach {where} within {timeout:g} s: "
                              f"{type(exc).__name__}: {exc}") from None
        self.address = self._client.scheduler.address
        _want_sites(+1)
        self.max_retries = max_retries
        self._cap = threads
        self._shipper = FunctionShipper()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._closed = False
        self._launched: dict[str, _Call] = {}  # Dask key -> its call
        self._queue: collections.deque[_Call] = collections.deque()  # waiting for the cap
        self._owed = 0  # calls submitted and not yet delivered nor cancelled
        self._scattered: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
        self._scatter_lock = threading.Lock()
        self.scatters = 0  # how many objects this pool has scattered (statistics, tests)
        self.launches = 0  # how many tasks it has submitted, retries included (the same)
        self._workers: dict[str, WorkerTag] = {}  # Dask worker address -> its tag
        self._present: set[str] = set()  # the workers the scheduler had at the last look
        self._log_level = logging.getLogger().getEffectiveLevel()
        self._scope = uuid.uuid4().hex  # this run's namespaces on the workers (dask_runner)
        self._wake = threading.Condition(self._lock)
        self._completions: queue.SimpleQueue[tuple[Any, Any] | None] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._threads = self._refresh() or 0
        self._collector = threading.Thread(target=self._collect, name="pydron-dask-results",
                                           daemon=True)
        self._collector.start()
        self._flusher = threading.Thread(target=self._flush_loop, name="pydron-dask-submit",
                                         daemon=True)
        self._flusher.start()
        self._watcher = threading.Thread(target=self._watch, args=(watch_interval,),
                                         name="pydron-dask-workers", daemon=True)
        self._watcher.start()

    # -- the Pool interface ---------------------------------------------------------------
    @property
    def parallelism(self) -> int:  # type: ignore[override]
        """The cluster's worker threads now (at most ``threads``), at least 1."""
        total = max(self._threads, 1)
        return min(total, self._cap) if self._cap else total

    def submit(self, fn: Callable[..., Any], args: tuple, kwargs: dict,
               on_done: OnDone) -> object:
        if self._closed:
            raise RuntimeError("cannot submit to a pool that has been shut down")
        rec = _recorder.active
        # The site the runtime announced for this call: taken here unless a recorder
        # will take it (below), so that none is left over for a later call.
        where = callsite.peek() if rec is not None else callsite.take()
        callsite.wanted = True  # again: a recording() block that ended may have reset it
        target = _target(fn, args)
        name = callable_name(target).replace(" ", "_")
        fn_blob = self._shipper.prepare(fn)[1]
        with sharing.pinning() as pins:
            blob, raw = dumps_args(fn, args, kwargs)
        shared = {entry.digest: self._scatter(entry) for entry in pins}
        token = rec.submitted(fn, args, len(blob) + sum(b.nbytes for b in raw)) \
            if rec is not None else None
        call = _Call(fn, name, fn_blob, blob, [pickle.PickleBuffer(b) for b in raw], shared,
                     on_done, _key_base(name, where or callable_site(target)), token)
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot submit to a pool that has been shut down")
            self._owed += 1
            self._queue.append(call)
            self._wake.notify()
        return call

    def cancel(self, handle: object) -> bool:
        """True if the call's outcome will not be delivered. A task already running on a
        Dask worker cannot be interrupted there: it is released, and its result dropped."""
        if type(handle) is not _Call:
            return False
        with self._lock:
            if handle.state not in (QUEUED, LAUNCHED):
                return False
            state, handle.state = handle.state, CANCELLED
            future = handle.future
            if state == QUEUED:
                try:
                    self._queue.remove(handle)
                except ValueError:
                    pass  # being launched right now: _launch sees CANCELLED
            elif future is not None:
                self._launched.pop(future.key, None)
            self._settled()
        if handle.token is not None and _recorder.active is not None:
            _recorder.active.cancelled(handle.token)
        if future is not None:
            self._release([future])
        self._next()
        return True

    def shutdown(self, wait: bool = True) -> None:
        """Let the calls in flight finish (``wait``) or cancel them (their callers get a
        WorkerLostError), then release everything this pool put on the cluster and close
        the client. The cluster itself is left running: it is not ours."""
        with self._lock:
            if self._closed and not wait:
                return
            self._closed = True
            if wait:
                while self._owed and not self._stop.is_set():
                    self._idle.wait(0.5)
            left = [*self._queue, *self._launched.values()]
            self._queue.clear()
            self._launched.clear()
            for call in left:
                call.state = DONE
            self._owed = 0
        futures = [call.future for call in left if call.future is not None]
        futures += list(self._scattered.values())
        self._scattered.clear()
        for call in left:
            self._deliver_error(call, WorkerLostError(
                f"{call.name}() did not run: the dask pool was shut down"), None)
        if self._stop.is_set():
            return
        self._stop.set()
        _want_sites(-1)
        with self._lock:
            self._wake.notify_all()
        self._completions.put(None)
        try:
            if futures:
                self._client.cancel(futures, force=True)
        except Exception:
            pass
        self._forget_scope()
        try:
            self._client.close(timeout=10)
        except Exception as exc:
            _log.debug("pydron: closing the Dask client: %s", exc)

    def _forget_scope(self) -> None:
        """Drop this run's by-value functions and namespaces from every Dask worker
        (:func:`~pydron.backend.dask_runner.forget`): the workers serve other programs
        long after this one, and would otherwise hold them until 64 later runs pushed
        them out. Best effort: a worker that does not answer drops them that way."""
        try:
            # callback_timeout goes to Client.sync: a shutdown must not hang on a
            # scheduler that stopped answering.
            self._client.run(dask_runner.forget, self._scope, on_error="ignore",
                             callback_timeout=FORGET_TIMEOUT)
        except Exception as exc:  # the scheduler is gone, or the client is closing
            _log.debug("pydron: forgetting this run on the Dask workers: %s", exc)

    # -- submitting ------------------------------------------------------------------------
    def _launch(self, calls: list[_Call]) -> None:
        """Submit one attempt of each call as a Dask task of its own key (one batch)."""
        keys = []
        self.launches += len(calls)
        for call in calls:
            call.attempts += 1
            keys.append(f"{call.key_base}-{uuid.uuid4().hex}")
        try:
            futures = self._client.map(
                dask_runner.run, [c.fn_blob for c in calls], [c.args_blob for c in calls],
                [c.buffers for c in calls], [c.shared for c in calls],
                [self._log_level] * len(calls), [self._scope] * len(calls), key=keys,
                pure=False)
        except Exception as exc:
            for call in calls:
                with self._lock:
                    if call.state == CANCELLED:
                        continue
                    call.state = DONE
                    self._settled()
                self._deliver_error(call, WorkerLostError(
                    f"{call.name}() could not be submitted to the Dask scheduler at "
                    f"{self.address}: {type(exc).__name__}: {exc}"), None)
            return
        dropped = []
        with self._lock:
            for call, key, future in zip(calls, keys, futures):
                if call.state == CANCELLED:
                    dropped.append(future)
                    continue
                call.future = future
                self._launched[key] = call
        if dropped:
            self._release(dropped)
        self._client.loop.add_callback(self._track, futures)

    async def _track(self, futures: list[Any]) -> None:
        """On Dask's event loop: hand each finished task, with its result, to the
        collector thread. Results of tasks finishing together are fetched together (the
        client batches concurrent gathers)."""
        await asyncio.gather(*(self._track_one(future) for future in futures))

    async def _track_one(self, future: Any) -> None:
        try:
            # The private coroutine distributed's own as_completed(with_results=True)
            # awaits: the result, or the (type, exception, traceback) of a failed task.
            result = await future._result(raiseit=False)
        except BaseException as exc:  # noqa: B902 -- cancelled, or the client closed
            result = exc
        self._completions.put((future, result))

    def _next(self) -> None:
        """A slot may have come free under the ``threads`` cap: wake the submitter."""
        if self._cap:
            with self._lock:
                self._wake.notify()

    def _flush_loop(self) -> None:
        """The submitting thread: the calls queued since its last round, as one batch.

        One ``client.map`` for many calls costs the caller a fraction of a
        ``client.submit`` each (one graph, one wake-up of Dask's event loop), and calls
        submitted while a batch is on its way simply wait for the next one."""
        while True:
            with self._lock:
                while not self._stop.is_set() and not (
                        self._queue and not (self._cap and len(self._launched) >= self._cap)):
                    self._wake.wait()
                if self._stop.is_set():
                    return
                room = self._cap - len(self._launched) if self._cap else len(self._queue)
                batch = [self._queue.popleft() for _ in range(min(room, len(self._queue)))]
                for call in batch:
                    call.state = LAUNCHED
            try:
                self._launch(batch)
            except BaseException:  # noqa: B902 -- this thread must go on submitting
                _log.exception("pydron: internal error while submitting to Dask")

    def _scatter(self, entry: Any) -> Any:
        """The Dask future of a shared object: scattered to every worker once, keyed by
        its digest, and released when the last handle of it is gone."""
        future = self._scattered.get(entry)
        if future is not None:
            return future
        with self._scatter_lock:
            future = self._scattered.get(entry)
            if future is None:
                obj = pickle.loads(entry.blob, buffers=entry.buffers)
                key = f"pydron-shared-{entry.label}-{entry.digest.hex()}"
                future = self._client.scatter({key: obj}, broadcast=True, hash=False)[key]
                self._scattered[entry] = future
                self.scatters += 1
        return future

    def _release(self, futures: list[Any]) -> None:
        try:
            self._client.cancel(futures, force=True)
        except Exception as exc:  # the client is closing
            _log.debug("pydron: cancelling Dask futures: %s", exc)

    # -- outcomes --------------------------------------------------------------------------
    def _collect(self) -> None:
        """The results thread: each finished task's outcome, to its caller."""
        get = self._completions.get
        while True:
            item = get()
            if item is None:
                return
            try:
                self._settle(*item)
            except BaseException:  # noqa: B902 -- this thread must go on delivering
                _log.exception("pydron: internal error while delivering a Dask result")
            del item

    def _settle(self, future: Any, result: Any) -> None:
        with self._lock:
            call = self._launched.pop(future.key, None)
            if call is None or call.state != LAUNCHED:
                return  # cancelled, or delivered at shutdown
            status = future.status
            retry = status != "finished" and not self._stop.is_set() and \
                call.attempts <= self.max_retries and self._lost(status, result)
            if not retry:
                call.state = DONE
                call.future = None
                self._settled()
        if status == "finished" and isinstance(result, dask_runner.Outcome):
            self._deliver(call, result)
        elif retry:
            if call.token is not None and _recorder.active is not None:
                _recorder.active.requeued(call.token, None, self._why(status, result))
            with self._lock:
                call.state = QUEUED
                call.future = None
                self._queue.appendleft(call)
                self._wake.notify()
            return
        elif self._lost(status, result):
            self._deliver_error(call, WorkerLostError(
                f"{call.name}() was lost with its Dask worker {call.attempts} times "
                f"(max_retries is {self.max_retries}): {self._why(status, result)}"), None)
        else:
            exc = result[1] if isinstance(result, tuple) and len(result) == 3 else result
            self._deliver_error(call, RemoteError(
                type_name(exc), str(exc), "",
                f"the Dask task of {call.name}() failed outside the call: is pydron "
                "installed on the Dask workers?"), None)
        self._next()

    def _lost(self, status: str, result: Any) -> bool:
        """Whether a task's failure is the loss of its worker (or of the task itself)."""
        if status == "cancelled":
            return True  # by the cluster (a restart), not by us: ours are gone already
        exc = result[1] if isinstance(result, tuple) and len(result) == 3 else result
        return isinstance(exc, self._killed)

    @staticmethod
    def _why(status: str, result: Any) -> str:
        exc = result[1] if isinstance(result, tuple) and len(result) == 3 else result
        return f"{type(exc).__name__}: {exc}" if status != "cancelled" else \
            "the task was cancelled by the cluster"

    def _settled(self) -> None:
        """One call less owed (under the lock)."""
        self._owed -= 1
        if not self._owed:
            self._idle.notify_all()

    def _deliver(self, call: _Call, outcome: dask_runner.Outcome) -> None:
        tag = self._tag(outcome.worker, outcome.host)
        _write(sys.stdout, outcome.stdout)
        _write(sys.stderr, outcome.stderr)
        self._log_records(call, outcome, tag)
        if outcome.ok:
            try:
                ok, value = True, pickle.loads(outcome.blob, buffers=outcome.buffers)
            except Exception as exc:
                ok, value = False, SerializationError(
                    f"the result of {call.name}() cannot be loaded in the caller: "
                    f"{type(exc).__name__}: {exc}", item="the result",
                    value_type=type_name(exc))
        else:
            name, message, text = outcome.error or ("", "", "")
            ok, value = False, loads_exception(outcome.blob, name, message, text)
        rec = _recorder.active
        if call.token is not None and rec is not None:
            rec.sent(call.token, tag)
            rec.finished(call.token, ok, tag, outcome.elapsed, len(outcome.blob or b""),
                         "" if ok else f"{type(value).__name__}: {value}"[:300])
        self._hand_over(call, ok, value)

    def _deliver_error(self, call: _Call, error: BaseException, tag: WorkerTag | None) -> None:
        rec = _recorder.active
        if call.token is not None and rec is not None:
            rec.finished(call.token, False, tag, 0.0, 0, f"{type(error).__name__}: {error}")
        self._hand_over(call, False, error)

    @staticmethod
    def _hand_over(call: _Call, ok: bool, value: Any) -> None:
        on_done = call.on_done
        call.on_done = call.fn = None  # type: ignore[assignment]
        call.shared = {}
        call.token = None
        try:
            on_done(ok, value)
        except BaseException:  # noqa: B902
            _log.exception("pydron: the completion callback of a call raised")

    def _log_records(self, call: _Call, outcome: dask_runner.Outcome, tag: WorkerTag) -> None:
        """The call's log records, to the caller's loggers of the same names."""
        worker = f"Dask worker {outcome.worker or tag.index} (pid {outcome.pid}) on {tag.host}"
        for payload in outcome.logs:
            try:
                record = log_records.record_of(payload, worker, lambda _: call.name)
            except (ValueError, UnicodeError) as exc:
                _log.warning("pydron: %s sent an unreadable log record: %s", worker, exc)
                continue
            record.pydron_call = call.name
            logger = logging.getLogger(record.name)
            if logger.isEnabledFor(record.levelno):
                logger.handle(record)

    # -- workers ---------------------------------------------------------------------------
    def _tag(self, address: str, host: str = "") -> WorkerTag:
        """A stable tag for a Dask worker: its host and the order it was first seen in."""
        tag = self._workers.get(address)
        if tag is None:
            with self._lock:
                tag = self._workers.get(address)
                if tag is None:
                    host = host or _host_of(address)
                    tag = self._workers[address] = WorkerTag("dask", host, len(self._workers), 0)
        return tag

    def _refresh(self) -> int | None:
        """Ask the scheduler for its workers: update the thread count, report joins and
        departures to the recorder. None if the scheduler could not be asked."""
        try:
            threads = self._client.nthreads()
        except Exception:
            return None
        present, self._present = self._present, set(threads)
        rec = _recorder.active
        for address in self._present - present:
            tag = self._tag(address)
            if rec is not None:
                rec.worker_joined(tag)
        for address in present - self._present:
            if rec is not None:
                rec.worker_left(self._workers[address], "it left the Dask cluster")
        total = sum(threads.values())
        self._threads = total
        return total

    def _watch(self, interval: float) -> None:
        """Keep ``parallelism`` current as workers join and leave."""
        while not self._stop.wait(interval):
            self._refresh()


_pools_open = 0  # dask pools not shut down, which name their tasks by the call site
_pools_lock = threading.Lock()


def _want_sites(change: int) -> None:
    """Ask the runtime to announce call sites while a dask pool is open (task keys
    name them), and stop asking when the last one shuts down and nothing records (an
    announced site nobody takes would be left for a later recorder's call)."""
    global _pools_open
    with _pools_lock:
        _pools_open += change
        if _pools_open > 0:
            callsite.wanted = True
        elif _recorder.active is None:
            callsite.wanted = False


def _write(stream: Any, text: str) -> None:
    if text and stream is not None:
        try:
            stream.write(text)
            stream.flush()
        except Exception:
            pass


def _host_of(address: str) -> str:
    """``tcp://10.0.0.5:40123`` -> ``10.0.0.5``."""
    rest = address.split("://", 1)[-1]
    return rest.rsplit(":", 1)[0] if ":" in rest else rest


def _target(fn: Callable[..., Any], args: tuple) -> Callable[..., Any]:
    """The function a call runs, for its task key: the user's function inside the
    explicit API's wrappers (a chunk of a map, a Pool's call), not the wrapper."""
    # The attributes of pydron.observe.recorder (CHUNK_ATTRIBUTE, WRAPS_ATTRIBUTE), spelt
    # out: the backend does not import the layer above it.
    wraps = getattr(fn, "pydron_wraps", None)
    if isinstance(wraps, int) and len(args) > wraps + 1:
        fn, args = args[wraps], tuple(args[wraps + 1])
    if getattr(fn, "pydron_chunk", False) and len(args) >= 2:
        fn = args[0]
    return fn


def _key_base(name: str, where: str) -> str:
    """``name-file.py:line``, what a task's key starts with on Dask's dashboard: the call
    site ``@schedule`` announced, else where the function is defined (the explicit API's
    calls announce none), else just the name (a builtin, a callable object)."""
    return f"{name}-{os.path.basename(where)}" if where else name
