"""``pydron.Executor``: a ``concurrent.futures.Executor`` on Pydron's pools.

It is meant to be indistinguishable from the standard executors to code that uses one
(``wait``, ``as_completed``, ``asyncio.wrap_future``, callbacks, ``with``, shutdown rules),
while the calls run wherever ``pydron.conf`` says: threads, local worker processes, SSH
hosts, cloud instances. Which pool an executor uses is decided by its constructor:

* neither ``max_workers`` nor ``conf``: the process-wide pool that ``@schedule`` uses
  too (created on first use from ``pydron.conf``, shared, never shut down by the
  executor);
* ``max_workers=N``: a pool of its own of N local worker processes, like
  ``ProcessPoolExecutor(N)``, with the other settings of ``pydron.conf``;
* ``conf=`` (a dict, a path to a pydron.conf, or a Config): a pool of its own, as
  configured.

Its ``shutdown`` stops the pools it owns; the process-wide pool is left running for
others. Inside a worker (a call that itself uses an executor) calls run one after the
other in that worker: no pool inside a pool.
"""
from __future__ import annotations

import atexit
import concurrent.futures as cf
import dataclasses
import os
import threading
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from pydron import backend
from pydron.backend.context import in_worker
from pydron.config import Config, WorkerSpec
from pydron.explicit.dispatch import (Dispatcher, OwnedPoolSource, PoolSource,
                                      SharedPoolSource, inline_source)
from pydron.explicit.outcomes import Initializer

__all__ = ["Executor", "pool_source", "default_dispatcher", "local_config"]

ConfSource = Mapping[str, object] | str | os.PathLike | Config


def local_config(count: int, base: Config | None = None) -> Config:
    """A configuration of ``count`` local worker processes, with ``base``'s other settings
    (retries, limits); what ``max_workers=N`` and ``processes=N`` mean."""
    base = base if base is not None else backend.current_config()
    return dataclasses.replace(base, workers=(WorkerSpec("multicore", count),),
                               source=f"{base.source} (with {count} local workers)")


def _check_count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, not {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be greater than 0")
    return value


def pool_source(count: int | None, conf: ConfSource | None, what: str,
                count_name: str = "max_workers") -> PoolSource:
    """The pool an explicit-API object runs on (see the module docstring)."""
    if count is not None:
        count = _check_count(count_name, count)
    if count is not None and conf is not None:
        raise TypeError(f"{what} takes {count_name} or conf, not both (conf says how many "
                        f"workers there are)")
    if in_worker():
        return inline_source()
    if conf is not None:
        return OwnedPoolSource(backend.as_config(conf, what))
    if count is not None:
        return OwnedPoolSource(local_config(count))
    return SharedPoolSource()


class Executor(cf.Executor):
    """Runs calls asynchronously on a Pydron pool; see the module docstring.

    ``initializer(*initargs)`` runs once in each worker before its first call of this
    executor (each worker process; each thread of a threads pool); if it raises, the
    executor is broken: the failing call and every queued one fail with
    ``concurrent.futures.BrokenExecutor``, as later submits do. ``call_timeout``:
    seconds a call may run before its future fails with :class:`pydron.CallTimeoutError`
    (its worker process is replaced); default: ``call_timeout`` of the configuration.
    """

    def __init__(self, max_workers: int | None = None,
                 initializer: Callable[..., Any] | None = None, initargs: tuple = (), *,
                 conf: ConfSource | None = None, call_timeout: float | None = None) -> None:
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if call_timeout is not None:
            if isinstance(call_timeout, bool) or not isinstance(call_timeout, (int, float)) \
                    or not 0 < call_timeout < float("inf"):
                raise ValueError(f"call_timeout must be a number of seconds > 0, got "
                                 f"{call_timeout!r}")
        source = pool_source(max_workers, conf, "Executor()")
        init = None
        if initializer is not None:
            init = Initializer(uuid.uuid4().hex, initializer, tuple(initargs))
        self._dispatcher = Dispatcher(source, init, call_timeout)
        self._max_workers = max_workers
        _wait_at_exit_for(self._dispatcher)

    @property
    def dispatcher(self) -> Dispatcher:
        """The dispatcher behind this executor (for pydron.map and friends)."""
        return self._dispatcher

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future:
        """Schedule ``fn(*args, **kwargs)``; its Future. RuntimeError after shutdown."""
        if _exiting:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")
        return self._dispatcher.submit(fn, args, kwargs, keep=True)

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any],
            timeout: float | None = None, chunksize: int = 1) -> Iterator[Any]:
        """``map(fn, *iterables)`` computed on the pool: results in order, raised at the
        failing item's position; ``timeout`` (seconds from this call) as the standard
        executors have it. Unlike theirs, the inputs are read lazily, a window ahead of
        the results consumed, so an endless generator works."""
        from pydron.explicit.mapping import MapRun
        if isinstance(chunksize, bool) or not isinstance(chunksize, int):
            raise TypeError(f"chunksize must be an integer, not {type(chunksize).__name__}")
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        return MapRun(self._dispatcher, fn, iterables, ordered=True, chunksize=chunksize,
                      errors="raise", timeout=timeout).results()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Refuse new calls; ``cancel_futures`` cancels those not started; ``wait`` blocks
        until every call is done and the pool this executor owns has stopped. From inside
        a future's callback it does not block (it could be waiting for itself)."""
        self._dispatcher.shutdown(wait=wait, cancel_futures=cancel_futures)


# -- interpreter exit ---------------------------------------------------------------------
# "Regardless of the value of wait, the entire Python program will not exit until all
# pending futures are done executing" (the concurrent.futures documentation): as the
# standard executors do, a hook that threading runs at interpreter exit, before the atexit
# handlers (which stop the process-wide pool), shuts every live executor down and waits
# for its calls, queued ones included. A second Ctrl-C interrupts that wait.
_live: weakref.WeakSet[Dispatcher] = weakref.WeakSet()
_exit_lock = threading.Lock()
_exiting = False
_hooked = False


def _wait_at_exit_for(dispatcher: Dispatcher) -> None:
    global _hooked
    with _exit_lock:
        if _exiting:
            raise RuntimeError("cannot create an executor after interpreter shutdown")
        if not _hooked:
            register = getattr(threading, "_register_atexit", None)
            try:
                if register is None:
                    raise RuntimeError
                register(_wait_for_executors)
            except RuntimeError:   # threading is shutting down already, or no hook
                atexit.register(_wait_for_executors)
            _hooked = True
        _live.add(dispatcher)


def _wait_for_executors() -> None:
    global _exiting
    with _exit_lock:
        _exiting = True
        dispatchers = list(_live)
    for dispatcher in dispatchers:
        dispatcher.shutdown(wait=True)


_default: Dispatcher | None = None


def default_dispatcher() -> Dispatcher:
    """The dispatcher of ``pydron.map`` and friends without an executor: the process-wide
    pool (inline, one call after the other, inside a worker)."""
    global _default
    if in_worker():
        return Dispatcher(inline_source())
    dispatcher = _default
    if dispatcher is None:
        dispatcher = _default = Dispatcher(SharedPoolSource())
    return dispatcher
