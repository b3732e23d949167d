"""The run's record of calls: counts for the progress line, events for the trace file.

Pools report to the backend's active recorder (:mod:`pydron.backend.recorder`); this is
that recorder. It is fed from several threads at once (the caller's, the engine's
reactor thread, result-decoding threads, thread-pool workers), so every report takes one
lock, briefly: a report costs well under a microsecond with tracing off, and a few with it
on (one tuple appended per event), against the ~10 µs a call costs on a worker process.

What it counts are the calls the program made: a chunk of a ``pydron.map`` is as many
calls as it has items (see :data:`CHUNK_ATTRIBUTE`), so that the progress line's counts
reach the map's length exactly, whatever the chunking.

Times are ``time.perf_counter()`` seconds; :attr:`CallRecorder.origin` is the
``perf_counter`` at the wall-clock time :attr:`CallRecorder.started`.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydron.backend.protocol.shipping import callable_name, callable_site
from pydron import callsite
from pydron.backend.recorder import WorkerTag

__all__ = ["CallRecorder", "CallRecord", "Counts", "CHUNK_ATTRIBUTE", "WRAPS_ATTRIBUTE"]

CHUNK_ATTRIBUTE = "pydron_chunk"
"""A function with this attribute true runs a chunk of a map: ``fn(user_fn, items, ...)``;
it counts as ``len(items)`` calls of ``user_fn``."""
WRAPS_ATTRIBUTE = "pydron_wraps"
"""A function with this attribute (an index ``i``) runs ``args[i]`` with ``args[i + 1]``
as its arguments (an initializer's wrapper): it is recorded as that call."""

class CallRecord:
    """One call from its submit to its end (the recorder's token for the pools)."""

    __slots__ = ("name", "site", "weight", "nbytes", "submitted", "sent", "worker",
                 "attempt", "id")

    def __init__(self, id: int, name: str, site: str, weight: int, nbytes: int,
                 submitted: float) -> None:
        self.id = id
        self.name = name
        self.site = site
        self.weight = weight
        self.nbytes = nbytes
        self.submitted = submitted
        self.sent = 0.0
        self.worker: WorkerTag | None = None
        self.attempt = 1


@dataclass
class Counts:
    """The progress line's numbers, all in calls (a map's items)."""

    submitted: int = 0
    done: int = 0
    failed: int = 0
    running: int = 0
    cancelled: int = 0
    retries: int = 0
    cached: int = 0
    workers: int = 0
    elapsed: float = 0.0
    last_change: float = 0.0

    @property
    def queued(self) -> int:
        return max(0, self.submitted - self.done - self.failed - self.running -
                   self.cancelled)

    @property
    def finished(self) -> int:
        return self.done + self.failed + self.cancelled


@dataclass
class CallRecorder:
    """Counts calls and, with ``keep_events``, keeps what the trace file needs:

    * ``("call", record, end, ok, run_seconds, result_bytes, error)`` per finished call;
    * ``("retry", record, time, worker, why)``; ``("lost", worker, time, why)``;
    * ``("joined", worker, time)``.
    """

    keep_events: bool = False
    started: float = field(default_factory=time.time)
    origin: float = field(default_factory=time.perf_counter)
    events: list[tuple] = field(default_factory=list)
    workers_seen: dict[WorkerTag, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = Counts()
        self._running: set[int] = set()
        self._live: set[WorkerTag] = set()
        self._names: dict[int, tuple[Callable[..., Any], str, str]] = {}
        self._ids = 0

    # ------------------------------------------------------------------ reading

    def counts(self) -> Counts:
        """A copy of the counts now."""
        with self._lock:
            c = self._counts
            return Counts(c.submitted, c.done, c.failed, c.running, c.cancelled, c.retries,
                          c.cached, len(self._live), time.perf_counter() - self.origin,
                          c.last_change)

    # ------------------------------------------------------------------ the pools' reports

    def submitted(self, fn: Callable[..., Any], args: tuple, nbytes: int) -> CallRecord:
        weight = 1
        wraps = getattr(fn, WRAPS_ATTRIBUTE, None)
        if isinstance(wraps, int) and len(args) > wraps + 1:
            fn, args = args[wraps], tuple(args[wraps + 1])
        if getattr(fn, CHUNK_ATTRIBUTE, False) and len(args) >= 2:
            fn, weight = args[0], len(args[1])
        name, site = self._describe(fn)
        where = callsite.take()
        if where:
            site = where
        now = time.perf_counter()
        with self._lock:
            self._ids += 1
            record = CallRecord(self._ids, name, site, weight, nbytes, now)
            self._counts.submitted += weight
            self._counts.last_change = now
        return record

    def _describe(self, fn: Callable[..., Any]) -> tuple[str, str]:
        key = id(fn)
        known = self._names.get(key)
        if known is not None and known[0] is fn:
            return known[1], known[2]
        name, site = callable_name(fn), callable_site(fn)
        if len(self._names) < 10_000:  # a program making functions by the million: no cache
            self._names[key] = (fn, name, site)  # holds fn, so its id is not reused
        return name, site

    def sent(self, token: CallRecord, worker: WorkerTag) -> None:
        now = time.perf_counter()
        with self._lock:
            token.sent = now
            token.worker = worker
            if worker.pid == 0 and worker not in self._live:  # a thread of an in-process pool
                self._live.add(worker)
                self.workers_seen.setdefault(worker, now)
            if token.id not in self._running:
                self._running.add(token.id)
                self._counts.running += token.weight

    def finished(self, token: CallRecord, ok: bool, worker: WorkerTag | None,
                 run_seconds: float, result_bytes: int, error: str = "") -> None:
        now = time.perf_counter()
        with self._lock:
            counts = self._counts
            if token.id in self._running:
                self._running.discard(token.id)
                counts.running -= token.weight
            if ok:
                counts.done += token.weight
            else:
                counts.failed += token.weight
            counts.last_change = now
            if self.keep_events:
                if worker is not None:
                    token.worker = worker
                self.events.append(("call", token, now, ok, run_seconds, result_bytes, error))

    def requeued(self, token: CallRecord, worker: WorkerTag | None, why: str) -> None:
        now = time.perf_counter()
        with self._lock:
            if token.id in self._running:
                self._running.discard(token.id)
                self._counts.running -= token.weight
            self._counts.retries += token.weight
            token.attempt += 1
            if self.keep_events:
                self.events.append(("retry", token, now, worker, why))

    def answered(self, fn: Callable[..., Any], count: int) -> None:
        with self._lock:
            counts = self._counts
            counts.submitted += count
            counts.done += count
            counts.cached += count
            counts.last_change = time.perf_counter()

    def cancelled(self, token: CallRecord) -> None:
        with self._lock:
            if token.id in self._running:
                self._running.discard(token.id)
                self._counts.running -= token.weight
            self._counts.cancelled += token.weight
            self._counts.last_change = time.perf_counter()

    def worker_joined(self, worker: WorkerTag) -> None:
        now = time.perf_counter()
        with self._lock:
            self._live.add(worker)
            self.workers_seen.setdefault(worker, now)
            if self.keep_events:
                self.events.append(("joined", worker, now))

    def worker_left(self, worker: WorkerTag, why: str) -> None:
        now = time.perf_counter()
        with self._lock:
            self._live.discard(worker)
            if self.keep_events:
                self.events.append(("lost", worker, now, why))

    def worker_gone(self, worker: WorkerTag) -> None:
        """A worker that ended as asked (not lost): no longer counted as connected."""
        with self._lock:
            self._live.discard(worker)
