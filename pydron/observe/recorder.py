"""The run's record of calls: counts for the progress line, events for the trace file.

Pools report to the backend's active recorder (:mod:`pydron.backend.recorder`); this is
that recorder. Reports come from several threads at once (the caller's, the engine's
reactor thread, result-decoding threads, thread-pool workers), and a call costs about
10 µs on a worker process, so a report must cost a fraction of a microsecond and make
no garbage: no lock, and no object per report. Each thread adds to a tally of its own
(:class:`_Tally`, one writer each, so no update is lost); whoever reads the counts --
the progress line, five times a second -- adds the tallies up. A call's "running" is
told by its record (``sent`` is set while it is on a worker), so the thread that ends a
call knows whether to take it off the running count, whichever thread sent it.

With ``keep_events`` the ends of calls, retries and lost workers are also kept, in
order, for the trace file, as tuples of plain values: the garbage collector stops
tracking such tuples, so a trace of a million calls does not make every collection walk
a million objects (a first version, with a tuple per report pointing at the call's
record, cost a fifth of the wall time of 100,000 no-op calls, most of it in collections).

What it counts are the calls the program made: a chunk of a ``pydron.map`` is as many
calls as it has items (see :data:`CHUNK_ATTRIBUTE`), so that the progress line's counts
reach the map's length exactly, whatever the chunking.

Times are ``time.perf_counter()`` seconds; :attr:`CallRecorder.origin` is the
``perf_counter`` at the wall-clock time :attr:`CallRecorder.started`.
"""
from __future__ import annotations

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
           "FINISHED", "REQUEUED", "LOST"]

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


FINISHED, REQUEUED, LOST, MOVED = range(4)
"""The kinds of event, the first item of each tuple in :attr:`CallRecorder.events`."""


class _Tally:
    """One thread's counts, in calls (written by that thread only; a plain object, as an
    attribute of a ``threading.local`` costs several times a plain one's)."""

    __slots__ = ("submitted", "sent", "ended_sent", "done", "failed", "cancelled",
                 "retries", "cached", "last_change")

    def __init__(self) -> None:
        self.submitted = self.sent = self.ended_sent = 0
        self.done = self.failed = self.cancelled = self.retries = self.cached = 0
        self.last_change = 0.0


@dataclass
class CallRecorder:
    """Counts calls and, with ``keep_events``, keeps what the trace file is made of
    (:attr:`events`), in the order it came, as tuples of plain values:
    ``(FINISHED, end, call id, name, site, items, arg bytes, submitted, sent, worker,
    attempt, ok, run seconds, result bytes, error)``, ``(REQUEUED, when, call id, worker,
    why)``, ``(LOST, when, worker, why)`` and ``(MOVED, end, kind, from worker, to worker,
    bytes, seconds)`` (a kept value moved: ``transfer`` between workers, ``fetch`` to the
    caller, whose end is None); a worker is a plain ``(pool, host, index, pid)`` tuple
    there."""

    keep_events: bool = False
    started: float = field(default_factory=time.time)
    origin: float = field(default_factory=time.perf_counter)
    events: list[tuple] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._local = threading.local()  # .tally: this thread's
        self._tallies: list[_Tally] = []  # every thread's, for the readers
        self._lock = threading.Lock()   # tallies list, workers
        self._live: set[WorkerTag] = set()
        self._seen: dict[WorkerTag, float] = {}
        self._names: dict[int, tuple[Any, str, str, int | None, bool]] = {}
        self._ids = itertools.count(1)

    def _mine(self) -> _Tally:
        try:
            return self._local.tally
        except AttributeError:
            tally = self._local.tally = _Tally()
            with self._lock:
                self._tallies.append(tally)  # kept (and counted) after its thread ends
            return tally

    # ------------------------------------------------------------------ reading

    def counts(self) -> Counts:
        """The counts now: every thread's tally added up."""
        with self._lock:
            tallies = list(self._tallies)
            workers = len(self._live)
        c = Counts(workers=workers, elapsed=time.perf_counter() - self.origin)
        sent = ended = 0
        for t in tallies:
            c.submitted += t.submitted
            c.done += t.done
            c.failed += t.failed
            c.cancelled += t.cancelled
            c.retries += t.retries
            c.cached += t.cached
            sent += t.sent
            ended += t.ended_sent
            c.last_change = max(c.last_change, t.last_change)
        c.running = max(0, sent - ended)
        return c

    def seen_workers(self) -> dict[WorkerTag, float]:
        """Every worker that took part, with when it was first seen."""
        with self._lock:
            return dict(self._seen)

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
        tally = self._mine()
        tally.submitted += weight
        tally.last_change = now
        return CallRecord(next(self._ids), name, site, weight, nbytes, now)

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

    def _see(self, worker: WorkerTag, when: float) -> None:
        with self._lock:
            self._live.add(worker)
            self._seen.setdefault(worker, when)

    def sent(self, token: CallRecord, worker: WorkerTag) -> None:
        now = time.perf_counter()
        token.sent = now
        token.worker = worker
        try:
            self._local.tally.sent += token.weight
        except AttributeError:
            self._mine().sent += token.weight
        if worker.pid == 0 and worker not in self._live:  # a thread of an in-process pool
            self._see(worker, now)

    def _ended(self, token: CallRecord) -> _Tally:
        """This thread's tally, with ``token`` taken off the running count if it was on
        a worker (its ``sent`` cleared: a call is taken off once per time it was sent)."""
        tally = self._mine()
        if token.sent:
            tally.ended_sent += token.weight
        return tally

    def finished(self, token: CallRecord, ok: bool, worker: WorkerTag | None,
                 run_seconds: float, result_bytes: int, error: str = "") -> None:
        if worker is not None:
            token.worker = worker
        now = time.perf_counter()
        try:
            tally = self._local.tally
        except AttributeError:
            tally = self._mine()
        if token.sent:
            tally.ended_sent += token.weight
        if ok:
            tally.done += token.weight
        else:
            tally.failed += token.weight
        tally.last_change = now
        if self.keep_events:
            worker = token.worker
            self.events.append((FINISHED, now, token.id, token.name, token.site,
                                token.weight, token.nbytes, token.submitted,
                                token.sent or now, tuple(worker) if worker else None,
                                token.attempt, ok, run_seconds, result_bytes, error))
        token.sent = 0.0

    def requeued(self, token: CallRecord, worker: WorkerTag | None, why: str) -> None:
        token.attempt += 1
        now = time.perf_counter()
        tally = self._ended(token)
        tally.retries += token.weight
        tally.last_change = now
        token.sent = 0.0
        if self.keep_events:
            self.events.append((REQUEUED, now, token.id, tuple(worker) if worker else None,
                                why))

    def cancelled(self, token: CallRecord) -> None:
        tally = self._ended(token)
        tally.cancelled += token.weight
        tally.last_change = time.perf_counter()
        token.sent = 0.0

    def answered(self, fn: Callable[..., Any], count: int) -> None:
        tally = self._mine()
        tally.submitted += count
        tally.done += count
        tally.cached += count
        tally.last_change = time.perf_counter()

    def worker_joined(self, worker: WorkerTag) -> None:
        self._see(worker, time.perf_counter())

    def worker_left(self, worker: WorkerTag, why: str) -> None:
        now = time.perf_counter()
        with self._lock:
            self._live.discard(worker)
        if self.keep_events:
            self.events.append((LOST, now, tuple(worker), why))

    def moved(self, kind: str, source: WorkerTag | None, target: WorkerTag | None,
              nbytes: int, seconds: float) -> None:
        """A kept value moved between workers (``transfer``) or to the caller (``fetch``),
        ``nbytes`` of it in ``seconds``, ending now."""
        if self.keep_events:
            self.events.append((MOVED, time.perf_counter(), kind,
                                tuple(source) if source else None,
                                tuple(target) if target else None, nbytes, seconds))

    def worker_gone(self, worker: WorkerTag) -> None:
        """A worker that ended as asked (not lost): no longer counted as connected."""
        with self._lock:
            self._live.discard(worker)
