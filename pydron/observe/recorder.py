"""The run's record of calls: counts for the progress line, events for the trace file.

Pools report to the backend's active recorder (:mod:`pydron.backend.recorder`); this is
that recorder. Reports come from several threads at once (the caller's, the engine's
reactor thread, result-decoding threads, thread-pool workers), and a call costs about
10 µs on a worker process, so a report must cost well under a microsecond: no lock. Each
report appends one tuple to a deque (an append is atomic); the counts are worked out by
whoever reads them -- the progress line, five times a second -- from the reports not yet
counted (:meth:`CallRecorder.counts`, under the reader's own lock). With ``keep_events``
the reports are also kept, in order, for the trace file.

What it counts are the calls the program made: a chunk of a ``pydron.map`` is as many
calls as it has items (see :data:`CHUNK_ATTRIBUTE`), so that the progress line's counts
reach the map's length exactly, whatever the chunking.

Times are ``time.perf_counter()`` seconds; :attr:`CallRecorder.origin` is the
``perf_counter`` at the wall-clock time :attr:`CallRecorder.started`.
"""
from __future__ import annotations

import collections
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydron.backend.protocol.shipping import callable_name, callable_site
from pydron import callsite
from pydron.backend.recorder import WorkerTag

__all__ = ["CallRecorder", "CallRecord", "Counts", "CHUNK_ATTRIBUTE", "WRAPS_ATTRIBUTE",
           "SUBMITTED", "SENT", "FINISHED", "REQUEUED", "CANCELLED", "ANSWERED", "JOINED",
           "LOST", "GONE"]

CHUNK_ATTRIBUTE = "pydron_chunk"
"""A function with this attribute true runs a chunk of a map: ``fn(user_fn, items, ...)``;
it counts as ``len(items)`` calls of ``user_fn``."""
WRAPS_ATTRIBUTE = "pydron_wraps"
"""A function with this attribute (an index ``i``) runs ``args[i]`` with ``args[i + 1]``
as its arguments (an initializer's wrapper): it is recorded as that call."""

class CallRecord:
    """One call from its submit to its end (the recorder's token for the pools)."""

    __slots__ = ("name", "site", "weight", "nbytes", "submitted", "sent", "worker",
                 "attempt", "id", "running")

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
        self.running = False  # on a worker, as counted (the reader's only)


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


BACKLOG = 5_000
"""Reports left uncounted before a report counts them itself (bounds the memory they hold
when no progress line reads the counts)."""

SUBMITTED, SENT, FINISHED, REQUEUED, CANCELLED, ANSWERED, JOINED, LOST, GONE = range(9)
"""The kinds of report, the first item of each tuple in :attr:`CallRecorder.reports`."""


@dataclass
class CallRecorder:
    """Counts calls and, with ``keep_events``, keeps what the trace file is made of
    (:attr:`events`), in the order it came, as tuples of plain values:
    ``(FINISHED, end, call id, name, site, items, arg bytes, submitted, sent, worker,
    attempt, ok, run seconds, result bytes, error)``, ``(REQUEUED, when, call id, worker,
    why)`` and ``(LOST, when, worker, why)``."""

    keep_events: bool = False
    started: float = field(default_factory=time.time)
    origin: float = field(default_factory=time.perf_counter)
    events: list[tuple] = field(default_factory=list)
    workers_seen: dict[WorkerTag, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._reports: collections.deque[tuple] = collections.deque()
        self._lock = threading.Lock()  # the readers'
        self._counts = Counts()
        self._live: set[WorkerTag] = set()
        self._names: dict[int, tuple[Callable[..., Any], str, str]] = {}
        self._ids = itertools.count(1)

    def _report(self, entry: tuple) -> None:
        reports = self._reports
        reports.append(entry)
        if len(reports) > BACKLOG:  # nobody reads the counts often: count here, seldom
            with self._lock:
                self._count()

    # ------------------------------------------------------------------ reading

    def counts(self) -> Counts:
        """The counts now (the reports since the last reading counted first)."""
        with self._lock:
            self._count()
            c = self._counts
            return Counts(c.submitted, c.done, c.failed, c.running, c.cancelled, c.retries,
                          c.cached, len(self._live), time.perf_counter() - self.origin,
                          c.last_change)

    def _count(self) -> None:
        reports, c, live = self._reports, self._counts, self._live
        while reports:
            entry = reports.popleft()
            kind, when = entry[0], entry[1]
            if kind == SUBMITTED:
                c.submitted += entry[2].weight
            elif kind == SENT:
                record = entry[2]
                if not record.running:
                    record.running = True
                    c.running += record.weight
                if record.worker.pid == 0:  # a thread of an in-process pool
                    live.add(record.worker)
                    self.workers_seen.setdefault(record.worker, when)
                continue  # no change the line must wait a quiet second for
            elif kind == FINISHED:
                record = entry[2]
                if record.running:
                    record.running = False
                    c.running -= record.weight
                if entry[3]:
                    c.done += record.weight
                else:
                    c.failed += record.weight
            elif kind == REQUEUED:
                record = entry[2]
                if record.running:
                    record.running = False
                    c.running -= record.weight
                c.retries += record.weight
            elif kind == CANCELLED:
                record = entry[2]
                if record.running:
                    record.running = False
                    c.running -= record.weight
                c.cancelled += record.weight
            elif kind == ANSWERED:
                c.submitted += entry[2]
                c.done += entry[2]
                c.cached += entry[2]
            elif kind == JOINED:
                live.add(entry[2])
                self.workers_seen.setdefault(entry[2], when)
            elif kind in (LOST, GONE):
                live.discard(entry[2])
            c.last_change = max(c.last_change, when)

    def seen_workers(self) -> dict[WorkerTag, float]:
        """Every worker that took part, with when it was first seen."""
        with self._lock:
            self._count()
            return dict(self.workers_seen)

    # ------------------------------------------------------------------ the pools' reports

    def submitted(self, fn: Callable[..., Any], args: tuple, nbytes: int) -> CallRecord:
        known = self._names.get(id(fn))
        if known is None or known[0] is not fn:
            known = self._describe(fn)
        _, name, site, wraps, chunk = known
        weight = 1
        if wraps is not None and len(args) > wraps + 1:  # an initializer's wrapper
            fn, args = args[wraps], tuple(args[wraps + 1])
            _, name, site, _, chunk = self._describe(fn)
        if chunk and len(args) >= 2:  # a map's chunk: its items' function, its items
            _, name, site, _, _ = self._describe(args[0])
            weight = len(args[1])
        here = callsite.here
        where = here.where
        if where is not None:
            here.where = None
            site = where
        now = time.perf_counter()
        record = CallRecord(next(self._ids), name, site, weight, nbytes, now)
        self._report((SUBMITTED, now, record))
        return record

    def _describe(self, fn: Callable[..., Any]) -> tuple[Any, str, str, int | None, bool]:
        """``(fn, name, site, wraps, chunk)``, remembered by the function's identity."""
        known = self._names.get(id(fn))
        if known is not None and known[0] is fn:
            return known
        wraps = getattr(fn, WRAPS_ATTRIBUTE, None)
        known = (fn, callable_name(fn), callable_site(fn),
                 wraps if isinstance(wraps, int) else None,
                 bool(getattr(fn, CHUNK_ATTRIBUTE, False)))
        if len(self._names) < 10_000:  # a program making functions by the million: no cache
            self._names[id(fn)] = known  # holds fn, so its id is not reused
        return known

    def sent(self, token: CallRecord, worker: WorkerTag) -> None:
        now = time.perf_counter()
        token.sent = now
        token.worker = worker
        self._report((SENT, now, token))

    def finished(self, token: CallRecord, ok: bool, worker: WorkerTag | None,
                 run_seconds: float, result_bytes: int, error: str = "") -> None:
        if worker is not None:
            token.worker = worker
        now = time.perf_counter()
        self._report((FINISHED, now, token, ok))
        if self.keep_events:
            # Plain values only, no reference to the record: a tuple of those is one the
            # garbage collector stops tracking, so a trace of a million calls does not
            # make every collection walk a million objects.
            self.events.append((FINISHED, now, token.id, token.name, token.site,
                                token.weight, token.nbytes, token.submitted,
                                token.sent or now, token.worker, token.attempt, ok,
                                run_seconds, result_bytes, error))

    def requeued(self, token: CallRecord, worker: WorkerTag | None, why: str) -> None:
        token.attempt += 1
        now = time.perf_counter()
        self._report((REQUEUED, now, token))
        if self.keep_events:
            self.events.append((REQUEUED, now, token.id, worker, why))

    def cancelled(self, token: CallRecord) -> None:
        self._report((CANCELLED, time.perf_counter(), token))

    def answered(self, fn: Callable[..., Any], count: int) -> None:
        self._report((ANSWERED, time.perf_counter(), count))

    def worker_joined(self, worker: WorkerTag) -> None:
        self._report((JOINED, time.perf_counter(), worker))

    def worker_left(self, worker: WorkerTag, why: str) -> None:
        now = time.perf_counter()
        self._report((LOST, now, worker))
        if self.keep_events:
            self.events.append((LOST, now, worker, why))

    def worker_gone(self, worker: WorkerTag) -> None:
        """A worker that ended as asked (not lost): no longer counted as connected."""
        self._report((GONE, time.perf_counter(), worker))
