"""A pool that answers calls it has seen before from a :class:`ResultCache`.

It wraps any other pool, so every kind of worker (threads, processes, hosts, clouds)
gets durable results without knowing about them:

* the key (:func:`~pydron.result_cache.keys.call_key`) is computed in the caller, in ``submit``;
* a hit is answered at once, inside ``submit``, as the Pool interface allows;
* a miss goes to the inner pool; a successful result is written to the store *before* the
  caller's ``on_done`` sees it, so a run killed right after it used a result has also kept
  it. The write happens in the thread that delivers the result (a result-decoding thread
  of the process pools, a worker thread of the thread pool), never on the caller's loop;
* failures are passed through and never stored: an exception may come from a lost
  worker, a timeout, a full disk -- nothing that should be replayed on the next run;
* a call whose key cannot be computed (arguments that cannot be pickled) simply runs
  uncached: the inner pool then reports its own, better error.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from pydron.backend import recorder
from pydron.backend.pool import OnDone, Pool
from pydron.result_cache.keys import call_key
from pydron.result_cache.store import ResultCache

__all__ = ["CachingPool", "ITEMS_ATTRIBUTE"]

ITEMS_ATTRIBUTE = "pydron_items"
"""A map's chunk runner with this attribute has one outcome per item, in order; the
attribute is the type of an item's failure outcome (never stored)."""

_log = logging.getLogger("pydron.result_cache")


class _Answered:
    """The handle of a call answered from the cache: there is nothing left to cancel."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<pydron.result_cache: answered from the cache>"


_ANSWERED = _Answered()


def _label(fn: Callable[..., Any]) -> str:
    target = getattr(fn, "__func__", fn)
    module = getattr(target, "__module__", None) or ""
    name = getattr(target, "__qualname__", None) or type(target).__qualname__
    return f"{module}.{name}" if module else name


def _tell_recorder(fn: Callable[..., Any], count: int) -> None:
    """Calls answered here are calls the program made: the progress line counts them."""
    rec = recorder.active
    if rec is not None:
        rec.answered(fn, count)


class CachingPool(Pool):
    """``inner`` with results kept in ``cache`` across runs (see the module docstring).

    ``hits`` and ``misses`` count the calls answered from the cache and the calls sent to
    ``inner`` (``uncached``: those of them whose key could not be computed).
    """

    keeps_values = False
    """Results are stored on disk, so they must come back: nothing stays on workers."""

    def __init__(self, inner: Pool, cache: ResultCache) -> None:
        self.inner = inner
        self.cache = cache
        self.hits = 0
        self.misses = 0
        self.uncached = 0
        self._lock = threading.Lock()

    @property
    def parallelism(self) -> int:  # type: ignore[override]
        """The inner pool's (read each time: some pools grow and shrink)."""
        return self.inner.parallelism

    def submit(self, fn: Callable[..., Any], args: tuple, kwargs: dict,
               on_done: OnDone) -> object:
        """Answer from the cache, or run on the inner pool and store the result."""
        if getattr(fn, ITEMS_ATTRIBUTE, None) is not None and len(args) >= 3:
            return self._submit_chunk(fn, args, kwargs, on_done)
        try:
            key: str | None = call_key(fn, args, kwargs)
        except Exception as exc:  # unpicklable arguments: the inner pool will say why
            _log.debug("pydron: no cache key for %s: %r", _label(fn), exc)
            key = None
        if key is not None:
            try:
                hit, value = self.cache.get(key)
            except Exception:  # a broken store must not break the run: compute instead
                _log.exception("pydron: the result cache could not be read")
                hit, value = False, None
            if hit:
                with self._lock:
                    self.hits += 1
                _tell_recorder(fn, 1)
                try:
                    on_done(True, value)
                except BaseException:
                    _log.exception("pydron: the completion callback of %r raised", fn)
                return _ANSWERED
        with self._lock:
            self.misses += 1
            if key is None:
                self.uncached += 1
        if key is None:
            return self.inner.submit(fn, args, kwargs, on_done)
        return self.inner.submit(fn, args, kwargs, self._storing(key, _label(fn), on_done))

    def _submit_chunk(self, fn: Callable[..., Any], args: tuple, kwargs: dict,
                      on_done: OnDone) -> object:
        """A chunk of a map (``fn(user_fn, items, star, stop_on_error, ...)``): each item
        is its own call of ``user_fn`` for the cache, with the key a direct call would
        have, so that a map run again finds every item done before, however the new run
        cuts its chunks. The items not stored go to the inner pool as a smaller chunk;
        the outcomes are put back in the items' order."""
        from pydron.explicit.outcomes import ChunkOutcome
        user_fn, items, star = args[0], list(args[1]), bool(args[2])
        stop_on_error = bool(args[3]) if len(args) > 3 else False
        failure_type = getattr(fn, ITEMS_ATTRIBUTE)
        try:
            keys = [call_key(user_fn, tuple(item) if star else (item,), {}) for item in items]
        except Exception:  # an item that cannot be pickled: the chunk runs as it is
            with self._lock:
                self.misses += len(items)
                self.uncached += len(items)
            return self.inner.submit(fn, args, kwargs, on_done)
        found: dict[int, Any] = {}
        for position, key in enumerate(keys):
            try:
                hit, value = self.cache.get(key)
            except Exception:
                _log.exception("pydron: the result cache could not be read")
                hit = False
            if hit:
                found[position] = value
        missing = [i for i in range(len(items)) if i not in found]
        with self._lock:
            self.hits += len(found)
            self.misses += len(missing)
        if found:
            _tell_recorder(user_fn, len(found))
        if not missing:
            try:
                on_done(True, ChunkOutcome([found[i] for i in range(len(items))], 0.0, True))
            except BaseException:
                _log.exception("pydron: the completion callback of %r raised", fn)
            return _ANSWERED
        label = _label(user_fn)
        cache = self.cache

        def done(ok: bool, value: Any) -> None:
            if not ok:  # the chunk failed as a whole: the map deals with it
                on_done(ok, value)
                return
            outcomes, elapsed, clean = value
            computed = iter(zip(missing, outcomes))
            merged: list[Any] = []
            for position in range(len(items)):
                if position in found:
                    merged.append(found[position])
                    continue
                step = next(computed, None)
                if step is None:
                    break  # stop_on_error: the chunk ended at a failure
                outcome = step[1]
                merged.append(outcome)
                if isinstance(outcome, failure_type):
                    if stop_on_error:
                        break
                    continue
                try:
                    cache.put(keys[position], outcome, label)
                except Exception:
                    _log.exception("pydron: could not store the result of %s", label)
            on_done(True, ChunkOutcome(merged, elapsed, clean))

        return self.inner.submit(fn, (user_fn, [items[i] for i in missing], *args[2:]),
                                 kwargs, done)

    def _storing(self, key: str, label: str, on_done: OnDone) -> OnDone:
        cache = self.cache

        def done(ok: bool, value: Any) -> None:
            if ok:
                try:
                    cache.put(key, value, label)
                except Exception:  # disk full, store closed: the result still counts
                    _log.exception("pydron: could not store the result of %s", label)
            on_done(ok, value)

        return done

    def cancel(self, handle: object) -> bool:
        """False for a call answered from the cache; otherwise the inner pool's answer."""
        if handle is _ANSWERED:
            return False
        return self.inner.cancel(handle)

    def shutdown(self, wait: bool = True) -> None:
        """Shut the inner pool down. The cache stays open: it may be shared."""
        self.inner.shutdown(wait)

    def __getattr__(self, name: str) -> Any:
        # The inner pool's extras (start, worker_pids, ...) stay reachable through the
        # wrapper. Only called for names the wrapper itself does not have.
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)
