"""The worker engine: functional calls run in worker processes that a launcher starts.

Modelled on ``concurrent/futures/process.py``, with TCP instead of pipes, so that the
same engine serves workers on this machine and elsewhere: a launcher
(:mod:`pydron.backend.launchers`) starts the processes and watches them end, and the
engine does everything else. A call goes through the states of
:class:`~pydron.backend.engine.states.CallState` (queued, sent, done or cancelled), a worker
through those of :class:`~pydron.backend.engine.states.WorkerState`.

Threads. ``submit`` and ``cancel`` run in the caller's threads and are cheap: submit
pickles the arguments (so that an unpicklable one raises right there, in the caller),
appends the call to an outbox and, if no flush is pending yet, schedules one with
``reactor.callFromThread``; so calls submitted in a burst travel in one batch. Everything
else -- processes, connections, dispatch, retries -- happens in the reactor thread
(:mod:`pydron.backend.reactor`). The two sides share only the outbox and each call's
state, under one lock; whoever moves a call out of QUEUED or SENT owns it, which is how
``cancel`` and a result arriving at the same moment agree on which of them wins.

Workers start on the first submit, all at once, and stay for every later call. A worker
runs one call at a time; the pool keeps at most one call in flight per worker for calls
that take long, and prefetches more for tiny ones (based on a running average of call
times), so short calls do not wait for round trips and long ones are not stuck behind
each other on one worker while another is idle. Prefetching is bounded by bytes too
(``prefetch_bytes``): a large argument passed to many short calls is not copied to every
worker several times over.

Shared data (:mod:`pydron.backend.sharing`): a handle in the arguments travels as a
reference, and the worker asks for the object once; the call keeps the handles it
pickled (``_Call.pins``) until it is done, so a worker can still fetch them after the
caller dropped its handle, and after a retry. An argument whose pickle is at least
``AUTO_SHARE_MIN`` bytes is shared that way without being asked (each call still gets its
own copy): the same large array passed to many calls reaches each worker once.

Results are unpickled in decoding threads, not in the reactor thread: unpickling runs the
user's code, which may block or raise anything (see :meth:`WorkerEngine._decode_loop`).
"""
from __future__ import annotations

import atexit
import collections
import functools
import itertools
import logging
import os
import pickle
import queue
import signal
import socket
import subprocess
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from pydron import remote_value
from pydron.backend import recorder as _recorder
from pydron.backend import sharing
from pydron.backend.engine.locality import Locality
from pydron.backend.protocol import values
from pydron.backend.recorder import WorkerTag
from pydron.backend.launchers.base import Launcher, WorkerStart
from pydron.backend.protocol import frames, handshake, liveness
from pydron.backend.pool import OnDone, Pool
from pydron.backend.protocol.liveness import MASTER_TIMEOUT, STOP_GRACE
from pydron.backend.protocol.records import (
    FUNCTION_CACHE_SIZE, KEEP_MIN, Outcome, Task, dumps_records,
)
from pydron.backend.engine.states import WORKER_MOVES, CallState, WorkerState
from pydron.backend.reactor import (
    before_twisted, call_soon, get_reactor, in_reactor_thread,
)
from pydron.backend.protocol.shipping import (
    PROTOCOL, FunctionShipper, callable_name, callable_site, dumps_args, dumps_value,
    loads_exception, type_name,
)
from pydron.errors import CallTimeoutError, SerializationError, WorkerLostError

__all__ = ["WorkerEngine", "default_respawns"]

_log = logging.getLogger("pydron.backend")

QUEUED, SENT, DONE, CANCELLED = CallState  # module names: the hot path reads these
STARTING, READY, LEAVING, DEAD = WorkerState

PREFETCH_HORIZON = 0.002
"""Calls shorter than this (seconds, on average) are queued on workers ahead of time."""
MAX_PREFETCH = 64
STUCK_AFTER = 0.05
STUCK_FACTOR = 8
"""A worker holding calls that has sent no result for max(STUCK_AFTER, STUCK_FACTOR x the
average call time) seconds is running a long call: it is given no more calls meanwhile
(they would wait behind that call while other workers may be idle)."""
LOOKAHEAD = 64
"""Queued calls considered at once for placing calls by where their data lies."""
TRANSFER_RATE = 1e9
"""Bytes per second assumed for moving a kept value to another worker: a call waits for a
busy worker holding its data when that worker should be done sooner than the move."""
DECODERS = 4
"""Most threads unpickling results at once (each result's loading may block)."""
PREFETCH_BYTES = 256 << 20
"""Default bound on the bytes of arguments queued on one worker (``"prefetch_bytes"``):
a worker holds at most this much of calls it has not finished, beyond its first."""
MAX_START_FAILURES = 3
"""Consecutive workers that fail to start before queued calls fail instead of waiting."""
POISON_DEATHS = 2
"""A call whose worker died while running it this many times in a row is not run again:
it is the call that kills them (OOM, segfault, ``os._exit``), not bad luck."""
RESPAWN_WINDOW = 60.0
"""``respawns_per_minute`` counts the workers that died unexpectedly in this many seconds."""


def default_respawns(workers: int) -> int:
    """Replacements allowed per minute by default: every worker 4 times, plus 10."""
    return 4 * workers + 10


HANDSHAKE_TIMEOUT = 3.0
"""Seconds from accepting a connection to its valid AUTH frame. A real worker sends it
right after connecting (it has started and imported before). Measured from accept to
AUTH on 2 cores: ~1 ms idle, 4 ms under a flood of connections
(tests/test_hostile_port.py), 90 ms at worst with 32 workers starting at once."""
MIN_PENDING = 16
PENDING_PER_WORKER = 4
"""At most max(MIN_PENDING, PENDING_PER_WORKER * cores) unauthenticated connections."""
LISTEN_BACKLOG = 128
"""The listening socket's accept queue: room for every worker even while strangers
crowd the port (what waits there costs the caller no file descriptor)."""

_live_pools: weakref.WeakSet[WorkerEngine] = weakref.WeakSet()


def _guarded(method: Callable[..., Any]) -> Callable[..., Any]:
    """For the pool's entry points in the reactor thread: log a bug of ours on the
    ``pydron.backend`` logger (Twisted's own log has no observer unless the program
    starts one, so it would vanish there)."""
    @functools.wraps(method)
    def run(self: WorkerEngine, *args: Any) -> Any:
        try:
            return method(self, *args)
        except Exception:
            _log.exception("pydron: internal error in the multicore pool (%s)",
                           method.__name__)
            return None
    return run


class _Call:
    """One submitted call; also its handle."""

    __slots__ = ("id", "fn", "digest", "fn_blob", "args", "buffers", "on_done", "state",
                 "proc", "attempts", "size", "deaths", "pins", "token", "elapsed",
                 "result_bytes", "keep", "inputs", "internal")

    def __init__(self, call_id: int, fn: Callable[..., Any], digest: bytes, fn_blob: bytes,
                 args: bytes, buffers: list[memoryview], on_done: OnDone,
                 pins: list[Any] | None = None) -> None:
        self.id = call_id
        self.fn = fn
        self.digest = digest
        self.fn_blob = fn_blob
        self.args = args
        self.buffers = buffers      # views of the out-of-band buffers of the arguments
        self.on_done = on_done
        self.state = QUEUED
        self.proc: _Proc | None = None
        self.attempts = 0
        self.deaths: list[str] = []  # how its workers died, each while running it, in a row
        self.size = len(args) + sum(b.nbytes for b in buffers)  # bytes a worker receives
        self.pins = pins  # the shared objects its arguments refer to (kept for the worker)
        self.token: Any = None  # the active recorder's, if one was active at submit
        self.elapsed = 0.0      # its run on the worker, and its result's bytes (recorded
        self.result_bytes = 0   # only with a token)
        self.keep = 0           # the worker may keep its result under this key (locality)
        self.inputs: list[Any] | None = None  # the kept values its arguments refer to
        self.internal = False   # run again to recompute a lost value (on_done is ours)

    def clear(self) -> None:
        """Drop the data, so that a handle the runtime keeps pins nothing large; the kept
        values it read are read by one call fewer."""
        self.fn_blob = self.args = self.on_done = None  # type: ignore[assignment]
        self.buffers = []
        self.pins = None
        inputs = self.inputs
        if inputs:
            self.inputs = None
            inputs[0].table.unread(inputs)


class _Proc:
    """One worker process, from its start to its exit."""

    def __init__(self, index: int, popen: Any) -> None:
        self.index = index
        self.popen = popen
        self.pid = popen.pid
        self.conn: Any = None
        self.state = STARTING
        self.connected = False            # it passed the handshake (stays True once it did)
        self.outstanding: dict[int, _Call] = {}   # sent, in the order sent
        self.progress_at = 0.0            # when it last sent results, or last became busy
        self.known: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        self.kill_reason = ""
        self.cancel_killed = False
        self.timed_out = False            # killed by the pool: its call ran past call_timeout
        self.head = 0                     # the call id it runs, as last seen by the timeout
        self.head_since = 0.0             # check, and since when (monotonic)
        self.refused = ""
        self.timer: Any = None
        self.unwatch: Callable[[], None] | None = None
        self.liveness = liveness.Liveness(popen.pid)  # silent, but computing?
        self.tag: WorkerTag | None = None  # who it is, for the recorder (once connected)
        self.peer: tuple[str, int] | None = None  # where other workers fetch its kept values

    @property
    def ready(self) -> bool:
        """Whether it has connected (and authenticated), at any time."""
        return self.connected

    @property
    def dead(self) -> bool:
        return self.state is DEAD

    @property
    def leaving(self) -> bool:
        """Told to go, and not dead yet."""
        return self.state is LEAVING

    def become(self, state: WorkerState) -> None:
        """Move to ``state``; a move the table does not allow is a bug of ours."""
        if state is not self.state and state not in WORKER_MOVES[self.state]:
            raise AssertionError(f"worker {self.index}: {self.state.name} -> {state.name}")
        self.state = state

    def kill(self, reason: str = "") -> None:
        if reason and not self.kill_reason:
            self.kill_reason = reason
        try:
            self.popen.kill()
        except OSError:
            pass


class WorkerEngine(Pool):
    """Worker processes that ``launcher`` starts (one per slot), talking to the caller
    over TCP; a pool is an engine and a launcher (see :mod:`pydron.backend.multicore`).

    Keyword arguments tune the protocol (the defaults are for real use; tests shorten
    them): ``max_retries`` (re-runs of a call whose worker died), ``heartbeat`` (seconds
    between heartbeats), ``heartbeat_timeout`` (silence after which a peer counts as
    lost -- unless it is using CPU: a call holding the GIL silences a healthy worker),
    ``handshake_timeout``, ``start_timeout`` (for a worker to connect) and ``max_frame``
    (the largest frame either side accepts). ``master_timeout`` is how long a worker
    waits for a master that is silent while their connection stays open (a stopped or
    briefly blocked caller must not lose its workers; a dead one closes the connection).
    ``handshake_timeout`` is short, and at most :attr:`max_pending` strangers are held
    at once (oldest dropped first): anyone on this machine can connect to the port, and
    must not be able to use up the caller's file descriptors. ``prefetch_bytes`` bounds
    the bytes of arguments waiting on one worker behind the call it runs (a large
    argument passed to many short calls must not pile up copies of itself on every
    worker); the in-band pickle of one call's arguments or result must fit in
    ``max_frame``. ``shared_cache`` bounds the bytes of shared objects each worker keeps
    (None: :data:`~pydron.backend.sharing.DEFAULT_CACHE`; the shared pool passes
    ``"shared_cache"`` of pydron.conf). ``auto_share``: an argument whose
    pickle has at least this many bytes (default ``AUTO_SHARE_MIN``, 1 MiB) travels to
    each worker once, as if passed with ``shared()``; None: never (for tests of the
    plain path).
    """

    def __init__(self, launcher: Launcher, *, max_retries: int = 3, heartbeat: float = 1.0,
                 heartbeat_timeout: float = 5.0, handshake_timeout: float = HANDSHAKE_TIMEOUT,
                 start_timeout: float = 60.0, max_frame: int = frames.MAX_FRAME,
                 master_timeout: float = MASTER_TIMEOUT,
                 prefetch_bytes: int = PREFETCH_BYTES, call_timeout: float | None = None,
                 respawns_per_minute: int | None = None,
                 shared_cache: int | None = None,
                 auto_share: int | None = sharing.AUTO_SHARE_MIN,
                 keep_min: int = KEEP_MIN) -> None:
        cores = launcher.capacity()
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or \
                max_retries < 0:
            raise ValueError(f"max_retries must be an integer >= 0, got {max_retries!r}")
        if not frames.MIN_FRAME <= max_frame <= frames.MAX_FRAME_LIMIT:
            raise ValueError(f"max_frame must be between {frames.MIN_FRAME} and "
                             f"{frames.MAX_FRAME_LIMIT} bytes, got {max_frame!r}")
        if isinstance(prefetch_bytes, bool) or not isinstance(prefetch_bytes, int) or \
                prefetch_bytes < 0:
            raise ValueError(f"prefetch_bytes must be an integer >= 0, got "
                             f"{prefetch_bytes!r}")
        self.parallelism = cores
        self.max_retries = max_retries
        self.heartbeat = heartbeat
        self.heartbeat_timeout = heartbeat_timeout
        self.handshake_timeout = handshake_timeout
        for name, value in (("handshake_timeout", handshake_timeout),
                            ("master_timeout", master_timeout)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                    not 0 < value < float("inf"):
                raise ValueError(f"{name} must be a number of seconds > 0, got {value!r}")
        self.master_timeout = master_timeout
        self.max_pending = max(MIN_PENDING, PENDING_PER_WORKER * cores)
        """Unauthenticated connections held at once (see master.WorkerFactory)."""
        self.start_timeout = start_timeout
        self.max_frame = max_frame
        self.prefetch_bytes = prefetch_bytes
        if call_timeout is not None and (
                isinstance(call_timeout, bool) or not isinstance(call_timeout, (int, float))
                or not 0 < call_timeout < float("inf")):
            raise ValueError(f"call_timeout must be a number of seconds > 0 or None, got "
                             f"{call_timeout!r}")
        self.call_timeout = call_timeout
        if respawns_per_minute is None:
            respawns_per_minute = default_respawns(cores)
        if isinstance(respawns_per_minute, bool) or not isinstance(respawns_per_minute, int) \
                or respawns_per_minute < 1:
            raise ValueError(f"respawns_per_minute must be an integer >= 1, got "
                             f"{respawns_per_minute!r}")
        self.respawns_per_minute = respawns_per_minute
        if shared_cache is None:
            shared_cache = sharing.DEFAULT_CACHE
        if isinstance(shared_cache, bool) or not isinstance(shared_cache, int) or \
                shared_cache < 0:
            raise ValueError(f"shared_cache must be an integer >= 0 (bytes), got "
                             f"{shared_cache!r}")
        self.shared_cache = shared_cache
        if auto_share is not None and (isinstance(auto_share, bool) or
                                       not isinstance(auto_share, int) or auto_share < 1):
            raise ValueError(f"auto_share must be an integer >= 1 (bytes) or None, got "
                             f"{auto_share!r}")
        self.auto_share = auto_share
        if isinstance(keep_min, bool) or not isinstance(keep_min, int) or keep_min < 0:
            raise ValueError(f"keep_min must be an integer >= 0 (bytes), got {keep_min!r}")
        self.keep_min = keep_min
        self._locality = Locality(self)
        self.secret = handshake.new_secret()
        self._launcher = launcher
        self._wants_demand = bool(launcher.wants_demand)
        self._kind: str = launcher.kind
        self._log_level = logging.getLogger().getEffectiveLevel()  # workers log at it
        self._idle_timeout: float | None = launcher.idle_timeout
        self._begun = False                # launcher.begin() called
        self._fatal = ""                   # the launcher gave up (events.failed)

        # Shared between the callers' threads and the reactor thread, under _lock.
        self._lock = threading.Lock()
        self._outbox: list[_Call] = []
        self._flush_pending = False
        self._started = False
        self._closed = False               # no more submits
        self._exiting = False              # interpreter exit: never spawn again
        self._procs: dict[int, _Proc] = {}  # index -> its current process
        self._changed = threading.Condition(self._lock)  # a worker became ready / died

        self._ids = itertools.count(1)
        self._shipper = FunctionShipper()
        self.functions_sent = 0
        """How many function blobs have been sent, all workers together (statistics)."""
        self.shared_sent = 0
        """How many shared objects have been sent, all workers together (statistics)."""
        self.shared_bytes_sent = 0
        """Their pickled bytes, all workers together (statistics)."""
        self.share_memory = True
        """Whether a worker on this machine may map a shared object from the caller's
        memory rather than receive its bytes (False: always the bytes; for tests)."""
        self.bytes_received = 0
        """Bytes the caller has received from workers, handshakes included (statistics:
        what kept values save shows here)."""
        self.shared_mapped = 0
        """Of shared_sent, how many were mapped from the caller's memory by a worker on
        this machine rather than sent through the socket (statistics)."""

        # Reactor thread only.
        self._queue: collections.deque[_Call] = collections.deque()
        self._port: Any = None             # Twisted's listening port
        self._listener: socket.socket | None = None  # listening before Twisted was there
        self._port_number = 0
        self._beat: Any = None
        self._ewma: float | None = None
        self._start_failures = 0
        self._broken = ""                  # why workers cannot start, once given up
        self._stopping = False
        self._stopped = threading.Event()
        # Results are unpickled and delivered in decoding threads (see _decode_loop),
        # never in the reactor thread; counts under _decode_lock.
        self._decoding: queue.SimpleQueue[list[tuple[_Call, Outcome, list[Any]]]] = \
            queue.SimpleQueue()
        self._decode_lock = threading.Lock()
        self._decoders = 0                 # decoding threads started
        self._idle_decoders = 0            # of which waiting for work
        self._to_take = 0                  # batches queued, not yet taken by a thread
        self._undelivered = 0              # batches queued or being decoded
        self._stop_when_delivered = False
        self._decoder_threads: set[threading.Thread] = set()
        self._forked = False               # this is a fork()ed copy of the pool's owner
        # Bounds on bad calls (reactor thread): deaths of workers the pool did not stop
        # itself, within RESPAWN_WINDOW; which slots have had a process (so a spawn there
        # is a respawn); the last death, for the message when respawning stops.
        self._deaths: collections.deque[float] = collections.deque()
        self._spawned: set[int] = set()
        self._last_death = ""
        self._respawn_stopped = False      # logged; retry scheduled
        self._respawn_timer: Any = None
        self._timeout_timer: Any = None
        _live_pools.add(self)
        launcher.bind(_Events(self))

    # ------------------------------------------------------------------ caller's side

    keeps_values = True
    """Calls may leave large results on their workers (``submit(..., keep=True)``)."""

    def submit(self, fn: Callable[..., Any], args: tuple, kwargs: dict,
               on_done: OnDone, *, keep: bool = False) -> object:
        """Queue ``fn(*args, **kwargs)`` for a worker; returns the handle for cancel().

        ``keep``: a result whose pickle has ``keep_min`` bytes or more may stay on the
        worker; on_done then gets a :class:`~pydron.remote_value.Remote` (see
        :mod:`pydron.backend.engine.locality`). Remotes of this pool among the arguments
        travel as references, whatever ``keep`` says.

        Raises SerializationError here, in the caller, if the function or an argument
        cannot be pickled (or is too large for one frame), and RuntimeError after
        shutdown().
        """
        if self._closed:
            raise RuntimeError("cannot submit to a pool that has been shut down"
                               if not self._forked else _FORKED)
        digest, fn_blob = self._shipper.prepare(fn)
        if remote_value.live_remotes():
            with self._locality.collecting() as collected:
                blob, raw, pins = self._pickle_args(fn, args, kwargs, fn_blob)
            inputs = list(collected.inputs.values()) or None
        else:
            blob, raw, pins = self._pickle_args(fn, args, kwargs, fn_blob)
            inputs = None
        # The buffers are views of the arguments' own memory, sent from there: no copy.
        # Like the other pools, this relies on the caller not to change an argument
        # before its call is done (the runtime orders a mutation after earlier readers).
        call = _Call(next(self._ids), fn, digest, fn_blob, blob, raw, on_done, pins or None)
        if keep and self.keep_min:
            call.keep = call.id << values.PART_BITS
        if inputs:
            call.inputs = inputs
            self._locality.add_readers(inputs)
        rec = _recorder.active
        if rec is not None:
            call.token = rec.submitted(fn, args, call.size)
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot submit to a pool that has been shut down")
            self._outbox.append(call)
            if self._flush_pending:
                return call
            self._flush_pending = True
            first, self._started = not self._started, True
        if first:
            before_twisted(self._prestart)
        call_soon(self._flush)
        return call

    def _pickle_args(self, fn: Callable[..., Any], args: tuple, kwargs: dict,
                     fn_blob: bytes) -> tuple[bytes, list[memoryview], list[Any]]:
        """The arguments' pickle, its buffers and the shared objects it refers to."""
        with sharing.pinning() as pins:
            blob, raw = dumps_args(fn, args, kwargs)
            if len(blob) + len(fn_blob) > self.max_frame - 256:
                raise SerializationError(
                    f"the arguments of {callable_name(fn)}(){_at(fn)} pickle to "
                    f"{len(blob)} bytes (and the function to {len(fn_blob)}), more than the "
                    f"frame limit of {self.max_frame} bytes; "
                    f"{frames.frame_advice(len(blob) + len(fn_blob))}",
                    item="the arguments", value_type="tuple")
            least = self.auto_share
            if least is not None and (raw or len(blob) >= least):  # else: nothing to share
                shared = _auto_share(fn, args, kwargs, len(blob) + sum(b.nbytes for b in raw),
                                     least)
                if shared is not None:
                    blob, raw = shared
        return blob, raw, pins

    # -- kept values (see engine.locality): the ValueSource of this pool's Remotes -------
    def fetch_value(self, remote: remote_value.Remote) -> Any:
        return self._locality.fetch(remote)

    def prefetch_value(self, remote: remote_value.Remote) -> None:
        self._locality.prefetch(remote)

    def forget_value(self, key: int) -> None:
        self._locality.forget(key)

    def value_request(self, proc: _Proc, request: int, key: int) -> None:
        """A VALUE_REQUEST frame from ``proc`` (reactor thread)."""
        self._locality.value_request(proc, request, key)

    def value_reply(self, proc: _Proc, request: int, key: int, found: bool, nbuf: int,
                    body: bytes, buffers: list[Any]) -> None:
        """A VALUE frame from ``proc`` (reactor thread)."""
        self._locality.value_reply(proc, request, key, found, nbuf, body, buffers)

    def kept_values(self) -> dict[str, int]:
        """How many values workers keep for this pool's callers, and data movement
        (statistics and tests): ``values``, ``bytes`` (of those, all holders),
        ``relayed``/``relayed_bytes`` (worker to worker through the master),
        ``direct``/``direct_bytes`` (worker to worker directly), ``fetched_bytes`` (to
        the caller), ``recomputed``."""
        loc = self._locality
        held = [v for v in loc.values.values() if v.holders]
        return {"values": len(held), "bytes": sum(v.size * len(v.holders) for v in held),
                "relayed": loc.relayed, "relayed_bytes": loc.relayed_bytes,
                "direct": loc.direct, "direct_bytes": loc.direct_bytes,
                "fetched_bytes": loc.fetched_bytes, "recomputed": loc.recomputed}

    def _tuple_of_parts(self, shown: tuple, outcome: Outcome) -> remote_value.Remote:
        """A tuple result whose large items stayed on the worker: a Remote whose parts are
        the items, kept ones as Remotes of their own (see ``Outcome.parts``)."""
        items = list(shown)
        for key, size, label, index in outcome.parts:
            items[index] = remote_value.Remote(self, key, size, label)
        total = sum(size for _, size, _, _ in outcome.parts)
        return remote_value.Remote(self, 0, total, "tuple", parts=tuple(items))

    def _recompute(self, value: Any) -> None:
        """Queue the call that made ``value`` again, first in line (reactor thread); it
        keeps what it returns whatever its size (an item of a tuple result: the whole
        tuple's items again, under the same keys)."""
        fn, digest, fn_blob, args, buffers, pins = value.lineage
        call = _Call(next(self._ids), fn, digest, fn_blob, args, list(buffers),
                     self._recomputed(value.key), pins)
        call.keep = value.base | values.KEEP_ALWAYS
        call.internal = True
        if value.inputs:
            call.inputs = list(value.inputs)
            self._locality.add_readers(call.inputs)
        self._queue.appendleft(call)
        call_soon(self._dispatch)

    def _recomputed(self, key: int) -> OnDone:
        def done(ok: bool, value: Any) -> None:
            if not ok:
                call_soon(self._locality.recompute_failed, key, value)
        return done

    def _requeue_front(self, calls: list[_Call]) -> None:
        """Calls that waited for a lost input to be computed again go first."""
        self._queue.extendleft(reversed([c for c in calls if c.state == QUEUED]))
        call_soon(self._dispatch)

    def _fail_calls(self, failed: list[tuple[_Call, BaseException]]) -> None:
        for call, error in failed:
            self._deliver(call, False, error)

    def cancel(self, handle: object) -> bool:
        """True if the call will not run to completion and on_done will not come.

        A call still queued is dropped. A call already sent to a worker is withdrawn: if
        the worker has not started it, it skips it; if it is running it, the worker is
        killed (nothing keeps computing) and a new one takes its place.
        """
        if type(handle) is not _Call:
            return False
        with self._lock:
            state = handle.state
            if state != QUEUED and state != SENT:
                return False
            handle.state = CANCELLED
        if handle.token is not None and _recorder.active is not None:
            _recorder.active.cancelled(handle.token)
        if state == SENT:
            call_soon(self._withdraw, handle)
        else:
            handle.clear()
        return True

    def shutdown(self, wait: bool = True) -> None:
        """Refuse new calls; once the calls already submitted are done, stop the workers.

        ``wait=True`` blocks until every worker process has exited (not from the
        reactor thread, where it cannot wait for itself).
        """
        if self._forked:
            return  # the workers and the reactor thread belong to the parent process
        try:
            self._stop(wait)
        finally:
            if not self._forked:
                self._launcher.close(wait, self._stopped)

    def _stop(self, wait: bool) -> None:
        with self._lock:
            first = not self._closed
            self._closed = True
            started = self._started
        if not started:
            self._stopped.set()
            _live_pools.discard(self)
            return
        if first:
            call_soon(self._begin_stop)
        if wait and not in_reactor_thread() and \
                threading.current_thread() not in self._decoder_threads:  # (a callback)
            self._stopped.wait()

    def start(self, wait: bool = True, timeout: float | None = 60.0) -> None:
        """Start the workers now rather than on the first call (for warm-up, tests).

        With ``wait``, return once all of them are connected; raise WorkerLostError if
        they cannot start (or the launcher gave up: no host, or a required one, can be
        used), TimeoutError after ``timeout`` seconds.
        """
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot start a pool that has been shut down")
            first, self._started = not self._started, True
        if first:
            before_twisted(self._prestart)
        call_soon(self._flush)
        if not wait:
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while True:
                ready = sum(1 for p in self._procs.values() if p.ready)
                if ready >= self.parallelism:
                    break
                if self._broken:
                    raise WorkerLostError(self._broken)
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"{ready} of {self.parallelism} workers started "
                                       f"within {timeout} s")
                self._changed.wait(left)
        if self._fatal:
            raise WorkerLostError(self._fatal)

    def worker_pids(self) -> list[int]:
        """Process ids of the current workers (connected or starting), by index."""
        with self._lock:
            return [self._procs[i].pid for i in sorted(self._procs)]

    @property
    def address(self) -> tuple[str, int] | None:
        """Where the pool listens for its workers, once started."""
        port = self._port
        if port is None:
            return None
        host = port.getHost()
        return host.host, host.port

    # ------------------------------------------------------------------ reactor thread

    @_guarded
    def _flush(self) -> None:
        with self._lock:
            calls, self._outbox = self._outbox, []
            self._flush_pending = False
        if self._port is None:
            self._listen()
        self._queue.extend(calls)
        if calls and self._broken:
            self._broken = ""            # new work: try starting workers again
            self._start_failures = 0
        if not self._stopping or self._has_work():
            self._ensure_workers()
        self._dispatch()

    @_guarded
    def _prestart(self) -> None:
        """Listen and start the workers, before Twisted is imported if possible (they
        need ~0.1 s to start, which then overlaps the import)."""
        if self._port is not None or self._listener is not None:
            return
        listener = socket.create_server((self._launcher.listen_host, 0),
                                        backlog=max(LISTEN_BACKLOG, 2 * self.parallelism))
        listener.setblocking(False)
        self._listener = listener
        self._port_number = listener.getsockname()[1]
        self._ensure_workers()

    def _listen(self) -> None:
        from twisted.internet.task import LoopingCall

        from pydron.backend.engine.connection import WorkerFactory
        reactor = get_reactor()
        if self._listener is not None:  # hand the early socket to Twisted
            self._port = reactor.adoptStreamPort(self._listener.fileno(), socket.AF_INET,
                                                 WorkerFactory(self))
            self._listener.close()
            self._listener = None
        else:
            self._port = reactor.listenTCP(0, WorkerFactory(self),
                                           interface=self._launcher.listen_host,
                                           backlog=max(LISTEN_BACKLOG, 2 * self.parallelism))
            self._port_number = self._port.getHost().port
        for proc in list(self._procs.values()):
            if proc.unwatch is None:
                self._watch(proc)
        self._beat = LoopingCall(self._heartbeat)
        self._beat.clock = reactor
        self._last_beat = time.monotonic()
        self._beat.start(self.heartbeat, now=False)

    def _ensure_workers(self) -> None:
        if self._fatal:
            self._give_up(self._fatal)
            return
        if not self._begun and self._port_number:
            self._begun = True
            self._launcher.begin(self._port_number)
        if self._broken:
            return
        for index in self._launcher.slots():
            if index not in self._procs:
                self._spawn(index)

    def _protocol_options(self) -> list[str]:
        """The worker's command-line options for the protocol's settings."""
        return ["--heartbeat", str(self.heartbeat), "--timeout", str(self.heartbeat_timeout),
                "--max-frame", str(self.max_frame), "--master-timeout", str(self.master_timeout),
                "--shared-cache", str(self.shared_cache),
                "--log-level", str(self._log_level), "--keep-min", str(self.keep_min)]

    def _spawn(self, index: int) -> None:
        """Start worker ``index``; it connects back on its own. A respawn (the slot had a
        process before) waits while too many workers died lately (see
        :meth:`_may_respawn`)."""
        if index in self._spawned and not self._may_respawn():
            return
        with self._lock:
            if self._exiting:
                return
            self._spawned.add(index)
            try:
                popen = self._launcher.launch(WorkerStart(
                    index, self._port_number, self._protocol_options(), self.secret))
            except Exception as exc:
                error: Exception | None = exc
            else:
                error = None
                proc = _Proc(index, popen)
                self._procs[index] = proc
        if error is not None:
            self._start_failed(f"worker {index} could not be started: {error}")
            return
        if self._port is not None:
            self._watch(proc)

    def _may_respawn(self) -> bool:
        """Whether a worker may be replaced now: not while more than
        ``respawns_per_minute`` workers died unexpectedly in the last minute.

        Without a cap, calls that crash their workers (each retried, and each new one
        crashing) make the pool start processes as fast as they die, for ever. Past the
        cap, the workers still alive go on; when none is left, the queued calls fail with
        a WorkerLostError that says why, and so do new ones until the minute has passed.
        """
        now = time.monotonic()
        deaths = self._deaths
        while deaths and now - deaths[0] > RESPAWN_WINDOW:
            deaths.popleft()
        if len(deaths) <= self.respawns_per_minute:
            self._respawn_stopped = False
            return True
        message = (f"pydron stopped replacing worker processes: {len(deaths)} died within "
                   f"the last minute, more than respawns_per_minute="
                   f"{self.respawns_per_minute} allows (the last: {self._last_death}); "
                   f"rather than start workers for ever, it starts none until a minute has "
                   f"passed, and calls that no worker is left to run fail (raise "
                   f"\"respawns_per_minute\" in pydron.conf if this many deaths are "
                   f"expected)")
        if not self._respawn_stopped:
            self._respawn_stopped = True
            _log.error("pydron: %s", message)
            wait = RESPAWN_WINDOW - (now - deaths[0]) + 0.05
            self._respawn_timer = get_reactor().callLater(wait, self._respawn_later)
        if not any(not p.dead and not p.leaving for p in self._procs.values()):
            self._fail_queued(message)  # no worker is left to run them
        return False

    @_guarded
    def _respawn_later(self) -> None:
        """The minute of too many deaths has passed: fill the empty slots again."""
        self._respawn_timer = None
        self._respawn_stopped = False
        if self._stopping or self._exiting:
            return
        self._ensure_workers()
        self._dispatch()

    def _watch(self, proc: _Proc) -> None:
        """Learn of the worker's exit, and of its not connecting in time (reactor)."""
        self._arm_timeouts()
        proc.unwatch = self._launcher.watch_exit(proc.popen,
                                                 lambda code: self._exited(proc, code))
        proc.timer = get_reactor().callLater(self.start_timeout, self._start_timed_out, proc)

    @_guarded
    def _start_timed_out(self, proc: _Proc) -> None:
        proc.timer = None
        if not proc.ready and not proc.dead:
            proc.kill(f"did not connect within {self.start_timeout} s")

    # -- connection events (called by master.WorkerProtocol) ----------------------------
    def claim(self, info: dict[str, Any], conn: Any) -> _Proc | None:
        """The process an authenticated connection belongs to, if it is one we await."""
        index = info.get("index")
        proc = self._procs.get(index)  # type: ignore[arg-type]
        if proc is None and isinstance(index, int):
            proc = self._adopt(index)
        if proc is None or (proc.pid and proc.pid != info.get("pid")) or \
                proc.conn is not None or proc.dead:
            return None
        if not proc.pid and isinstance(info.get("pid"), int):
            proc.pid = info["pid"]  # a remote worker: its pid is known from now on
        host = info.get("host")
        proc.tag = WorkerTag(self._kind, host if isinstance(host, str) else "?", proc.index,
                             proc.pid)
        proc.conn = conn
        return proc

    def _adopt(self, index: int) -> _Proc | None:
        """A worker the launcher's job started (not :meth:`_spawn`) connects: take it
        in if the launcher wants it."""
        with self._lock:
            if self._exiting or (self._stopping and not self._has_work()):
                return None
            handle = self._launcher.adopt(index)
            if handle is None:
                return None
            proc = _Proc(index, handle)
            self._procs[index] = proc
            self._spawned.add(index)
        self._watch(proc)
        return proc

    def refused(self, info: dict[str, Any], reason: str) -> None:
        proc = self._procs.get(info.get("index"))  # type: ignore[arg-type]
        if proc is not None and (not proc.pid or proc.pid == info.get("pid")) and \
                not proc.ready:
            proc.refused = reason  # said when it exits: why it could not start

    def ready(self, proc: _Proc) -> None:
        self._launcher.connected(proc.index)
        if proc.timer is not None and proc.timer.active():
            proc.timer.cancel()
        proc.timer = None
        proc.progress_at = time.monotonic()  # idle from now (see _retire_idle)
        with self._lock:
            proc.connected = True
            if proc.state is STARTING:
                proc.become(READY)
            self._changed.notify_all()
        self._start_failures = 0
        rec = _recorder.active
        if rec is not None and proc.tag is not None:
            rec.worker_joined(proc.tag)
        if self._stopping and not self._has_work():
            self._maybe_stop()
        else:
            self._dispatch()

    def connection_lost(self, proc: _Proc) -> None:
        """The socket closed. The process normally exits at the same moment (its exit
        says how it died); if it does not, it is killed after a second."""
        if not proc.dead:
            get_reactor().callLater(1.0, self._kill_if_alive, proc)

    @_guarded
    def _kill_if_alive(self, proc: _Proc) -> None:
        if not proc.dead:
            proc.kill("" if proc.leaving else "closed its connection")

    # -- dispatch ------------------------------------------------------------------------
    def _limit(self) -> int:
        """How many calls one worker may hold (running and queued) by count."""
        ewma = self._ewma
        if ewma is None:
            return 1
        return 1 + min(MAX_PREFETCH, int(PREFETCH_HORIZON / max(ewma, 1e-7)))

    def _dispatch(self) -> None:
        """Send what can be sent (:meth:`_send_queued`); then tell a launcher that asked
        for it how much work is waiting and running (a batch scheduler's launcher
        requests resources only while calls are queued)."""
        self._send_queued()
        if self._wants_demand:
            # len() counts calls cancelled while queued too, until dispatch reaches them:
            # a scan here would cost O(queue) on every dispatch.
            running = sum(len(p.outstanding) for p in self._procs.values())
            self._launcher.demand(len(self._queue), running)

    def _send_queued(self) -> None:
        """Send queued calls, in order, to the ready workers holding the fewest.

        A worker takes another call while it holds fewer than :meth:`_limit` calls and
        the arguments it holds, with this call's, stay within ``prefetch_bytes``; a
        worker holding nothing always takes the next call, however large. The first call
        no worker can take waits, and so do the ones behind it (calls keep their order).
        """
        pending = self._queue
        if not pending:
            return
        ready = [p for p in self._procs.values() if p.state is READY]
        if not ready:
            return
        limit = self._limit()
        cap = self.prefetch_bytes
        now = time.monotonic()
        if limit > 1:
            # Calls are short on average, so workers take several at once -- but not a
            # worker that has shown no progress for much longer than a call takes: it is
            # running a long one, and what it takes would wait behind it while others idle.
            stuck = max(STUCK_AFTER, STUCK_FACTOR * (self._ewma or 0.0))
            ready = [p for p in ready if not p.outstanding or now - p.progress_at < stuck]
            if not ready:
                return
        held = {p: sum(c.size for c in p.outstanding.values()) for p in ready}
        batches: dict[_Proc, list[_Call]] = {}
        failed: list[tuple[_Call, BaseException]] = []
        rec = _recorder.active

        def fewest(call: _Call) -> _Proc | None:
            """The ready worker holding fewest calls that may take ``call``."""
            proc = None
            least = limit
            for p in ready:
                n = len(p.outstanding)
                if n < least and (not n or held[p] + call.size <= cap):
                    proc, least = p, n
            return proc

        def assign(proc: _Proc, call: _Call) -> None:
            held[proc] += call.size
            if not proc.outstanding:
                proc.progress_at = now
            call.state = SENT
            call.proc = proc
            if rec is not None and call.token is not None:
                rec.sent(call.token, proc.tag)
            proc.outstanding[call.id] = call
            batch = batches.get(proc)
            if batch is None:
                batches[proc] = [call]
            else:
                batch.append(call)

        with self._lock:
            if self._locality.values or self._locality.blocked:
                self._place_by_data(ready, limit, cap, held, fewest, assign, failed)
            else:
                while pending:
                    call = pending[0]
                    if call.state != QUEUED:
                        pending.popleft()
                        continue  # cancelled while queued
                    proc = fewest(call)
                    if proc is None:
                        break
                    pending.popleft()
                    assign(proc, call)
        for proc, calls in batches.items():
            self._send(proc, calls)
        if failed:
            self._fail_calls(failed)

    def _place_by_data(self, ready: list[_Proc], limit: int, cap: int,
                       held: dict[_Proc, int], fewest: Callable[[_Call], _Proc | None],
                       assign: Callable[[_Proc, _Call], None],
                       failed: list[tuple[_Call, BaseException]]) -> None:
        """:meth:`_send_queued` while workers keep values: among the first
        :data:`LOOKAHEAD` queued calls, a call reading kept values goes to the worker
        holding most of their bytes, if it can take it; calls reading none go to the
        workers with the fewest calls; only then does a worker that would otherwise idle
        take a call whose values lie elsewhere (and fetch them). A call whose values are
        lost waits for them to be computed again (see :meth:`Locality.check`)."""
        pending = self._queue
        locality = self._locality
        window: list[_Call] = []
        while pending and len(window) < LOOKAHEAD:
            call = pending.popleft()
            if call.state == QUEUED:
                window.append(call)
        window.sort(key=lambda c: not c.internal)  # recomputing a lost value goes first
        later: list[tuple[_Call, _Proc, int]] = []  # reads values a busy worker holds
        unplaced: list[_Call] = []
        for call in window:
            if call.inputs:
                status = locality.check(call)
                if status is not True:
                    if status is not False:
                        call.state = DONE
                        failed.append((call, status))  # type: ignore[arg-type]
                    continue
                best, nbytes = locality.holder_of(call, ready)
                if best is not None:
                    if len(best.outstanding) < limit and (
                            not best.outstanding or held[best] + call.size <= cap):
                        assign(best, call)
                    else:
                        later.append((call, best, nbytes))
                    continue
            proc = fewest(call)
            if proc is None:
                unplaced.append(call)
            else:
                assign(proc, call)
        now = time.monotonic()
        wait = 0.0
        for call, holder, nbytes in later:
            proc = fewest(call)
            if proc is not None and self._soon_free(holder, nbytes / TRANSFER_RATE, now):
                wait = max(wait, nbytes / TRANSFER_RATE)
                proc = None
            if proc is None:
                unplaced.append(call)
            else:
                assign(proc, call)
        if wait:
            # Look again once the holder should be done: if it is not, the move is made.
            get_reactor().callLater(wait + 0.001, self._dispatch)
        pending.extendleft(reversed(unplaced))

    def _soon_free(self, proc: _Proc, within: float, now: float) -> bool:
        """Whether ``proc``, running one call, should finish it within ``within`` seconds
        (by the average call time; it tells its results when it does)."""
        if len(proc.outstanding) != 1 or self._ewma is None:
            return False
        running = now - proc.progress_at
        return running <= self._ewma <= running + within

    def _send(self, proc: _Proc, calls: list[_Call]) -> None:
        pieces: list[bytes | memoryview] = []
        entries: list[Task] = []
        size = 0
        known = proc.known
        limit = self.max_frame - 1024
        for call in calls:
            blob = None
            if call.digest not in known:
                blob = call.fn_blob
                self.functions_sent += 1
                known[call.digest] = None
                if len(known) > FUNCTION_CACHE_SIZE:  # mirror the worker's cache exactly
                    known.popitem(last=False)
            cost = len(call.args) + (len(blob) if blob else 0) + 64
            if entries and size + cost > limit:
                pieces.append(frames.frame(frames.TASKS, dumps_records(entries, PROTOCOL)))
                entries, size = [], 0
            for buffer in call.buffers:
                pieces += frames.buffer_frames(buffer, self.max_frame)
            sources = self._locality.sources(call, proc) if call.inputs else ()
            entries.append(Task(call.id, call.digest, blob, call.args, len(call.buffers),
                                call.keep, sources))
            size += cost
        pieces.append(frames.frame(frames.TASKS, dumps_records(entries, PROTOCOL)))
        proc.conn.send(pieces)

    def shared_served(self, proc: _Proc, nbytes: int, mapped: bool = False) -> None:
        """A worker was sent a shared object it asked for, as bytes or (``mapped``)
        where it lies in memory (statistics; reactor thread)."""
        self.shared_sent += 1
        self.shared_bytes_sent += nbytes
        self.shared_mapped += mapped

    # -- outcomes ------------------------------------------------------------------------
    def results(self, proc: _Proc, entries: list[Outcome], buffers: list[Any]) -> None:
        """A RESULTS frame from ``proc``: deliver each outcome still wanted."""
        mine: list[tuple[_Call, Outcome, list[Any]]] = []
        used = 0
        outstanding = proc.outstanding
        proc.progress_at = time.monotonic()
        again: list[_Call] = []
        with self._lock:
            for outcome in entries:
                nbuf = outcome.nbuf
                call = outstanding.pop(outcome.call_id, None)
                if call is not None and call.state == SENT:
                    if outcome.name == values.INPUT_LOST and not outcome.ok:
                        call.state = QUEUED  # an input was lost: run it once it is back
                        again.append(call)
                    else:
                        call.state = DONE
                        mine.append((call, outcome, buffers[used:used + nbuf]))
                used += nbuf
        if again:
            self._queue.extendleft(reversed(again))
        for call, outcome, _ in mine:
            if call.inputs:
                self._locality.read_on(call, proc, outcome.moves)
            if outcome.kept or outcome.parts:
                base = call.keep & ~values.KEEP_ALWAYS
                lineage = (call.fn, call.digest, call.fn_blob, call.args, call.buffers,
                           call.pins)
                inputs = list(call.inputs or ())
                if outcome.kept:
                    self._locality.kept(base, proc, outcome.kept, outcome.name or "",
                                        lineage, inputs, not call.internal, base)
                for key, size, label, _ in outcome.parts:
                    self._locality.kept(key, proc, size, label, lineage, inputs,
                                        not call.internal, base)
        ewma = self._ewma
        for call, outcome, bufs in mine:
            elapsed = outcome.elapsed
            ewma = elapsed if ewma is None else 0.8 * ewma + 0.2 * elapsed
            if call.token is not None:
                call.elapsed = elapsed
                call.result_bytes = len(outcome.blob or b"") + sum(
                    memoryview(b).nbytes for b in bufs)
        self._ewma = ewma
        if mine:
            self._after_deliveries(mine)
        if self._stopping and not self._has_work():
            self._maybe_stop()
        else:
            self._dispatch()

    def _after_deliveries(self, batch: list[tuple[_Call, Outcome, list[Any]]]) -> None:
        """Queue the outcomes of one RESULTS frame, ``(call, outcome, buffers)`` each, for
        a decoding thread; start one if none is idle (up to :data:`DECODERS`)."""
        with self._decode_lock:
            self._undelivered += 1
            self._to_take += 1
            spawn = self._to_take > self._idle_decoders and self._decoders < DECODERS
            if spawn:
                self._decoders += 1
        self._decoding.put(batch)
        if spawn:
            thread = threading.Thread(target=self._decode_loop, daemon=True,
                                      name="pydron-results")
            self._decoder_threads.add(thread)
            thread.start()

    def _decode_loop(self) -> None:
        """A decoding thread: unpickle the outcomes of a RESULTS frame and deliver them,
        in the order they came.

        Unpickling runs the user's code (``__reduce__``, ``__setstate__``): it may block
        for long, which must not stall the reactor thread (heartbeats, other runs' calls)
        nor, up to DECODERS at once, the other results; and it may raise anything,
        SystemExit included, which must reach the caller as the call's outcome rather
        than end a thread. Daemon threads: a result still loading never blocks exit."""
        lock = self._decode_lock
        while True:
            with lock:
                self._idle_decoders += 1
            batch = self._decoding.get()
            if batch is None:  # the pool has stopped (see _set_stopped)
                return
            with lock:
                self._idle_decoders -= 1
                self._to_take -= 1
            try:
                for call, outcome, bufs in batch:
                    if outcome.kept:
                        ok = True
                        value = None if call.internal else remote_value.Remote(
                            self, call.keep, outcome.kept, outcome.name or "value")
                    elif call.internal:
                        ok, value = True, None
                    else:
                        ok, value = _decode(call, outcome, bufs)
                        if ok and outcome.parts:
                            value = self._tuple_of_parts(value, outcome)
                    self._deliver(call, ok, value)
                    # While this thread waits for the next batch, its locals must not
                    # keep the last result (or its call) alive.
                    del call, outcome, bufs, ok, value
            except BaseException:  # noqa: B902 -- this thread must go on delivering
                _log.exception("pydron: internal error while delivering results")
            del batch
            with lock:
                self._undelivered -= 1
                stop = self._stop_when_delivered and not self._undelivered
            if stop:
                self._set_stopped()

    def _deliver(self, call: _Call, ok: bool, value: Any) -> None:
        if call.token is not None:
            rec = _recorder.active
            if rec is not None:
                proc = call.proc
                rec.finished(call.token, ok, proc.tag if proc is not None else None,
                             call.elapsed, call.result_bytes,
                             "" if ok else f"{type(value).__name__}: {value}"[:300])
            call.token = None
        on_done = call.on_done
        call.clear()
        call.fn = None
        try:
            on_done(ok, value)
        except BaseException:
            _log.exception("pydron: the completion callback of a call raised")

    @_guarded
    def _withdraw(self, call: _Call) -> None:
        """A call cancelled after it was sent: take it back from its worker."""
        proc = call.proc
        outstanding = proc.outstanding if proc is not None else {}
        if call.id not in outstanding:
            call.clear()
            return  # its result came meanwhile (and was dropped), or its worker died
        head = next(iter(outstanding)) == call.id  # calls run in the order sent
        del outstanding[call.id]
        if head:
            proc.cancel_killed = True  # type: ignore[union-attr]
            proc.kill()  # type: ignore[union-attr]
        elif proc.conn is not None:  # type: ignore[union-attr]
            # Not started yet, as far as we know; if it has started meanwhile, the
            # worker ends itself on reading this.
            proc.conn.send([frames.frame(frames.CANCEL, call.id.to_bytes(8, "big"))])  # type: ignore[union-attr]
        call.clear()
        self._dispatch()

    # -- deaths --------------------------------------------------------------------------
    @_guarded
    def _exited(self, proc: _Proc, code: int) -> None:
        """The process of ``proc`` has exited: re-run or fail its calls, replace it.

        The call it was running runs again elsewhere, up to ``max_retries`` times --
        unless its worker died while running it :data:`POISON_DEATHS` times in a row
        (each time another process: a dead one is replaced): such a call kills every
        worker it is given (the OOM killer, a segfault, ``os._exit``), so it fails now,
        with how each worker died. A worker lost while running other calls does not
        count against a call queued behind them. Deaths the pool caused itself (a call
        cancelled or past ``call_timeout``) count against nothing; the others count
        towards ``respawns_per_minute``.
        """
        self._launcher.exited(proc.index, proc.popen, code, connected=proc.connected,
                              expected=proc.leaving or self._stopping or self._exiting)
        leaving = proc.state is LEAVING
        proc.become(DEAD)
        if proc.timer is not None and proc.timer.active():
            proc.timer.cancel()
        if proc.conn is not None and not proc.conn.dropped:
            proc.conn.dropped = True
            proc.conn.transport.abortConnection()
        how = _death(proc, code)
        cancel_death = proc.cancel_killed or code == frames.EXIT_CANCELLED or proc.timed_out
        calls = list(proc.outstanding.values())
        proc.outstanding.clear()
        requeue: list[_Call] = []
        failed: list[_Call] = []
        running = ""
        with self._lock:
            if self._procs.get(proc.index) is proc:
                del self._procs[proc.index]
            self._changed.notify_all()
            for position, call in enumerate(calls):
                if call.state != SENT:
                    continue
                if position == 0 and not cancel_death:  # the call it was running
                    running = f" while running {callable_name(call.fn)}()"
                    call.attempts += 1
                    if self._blames_call(proc, code):
                        call.deaths.append(f"worker {proc.index} (pid {proc.pid}) {how}"
                                           f"{_oom_hint(proc, code)}")
                    else:
                        call.deaths.clear()  # not in a row any more
                    if call.attempts > self.max_retries or \
                            len(call.deaths) >= POISON_DEATHS:
                        call.state = DONE
                        failed.append(call)
                        continue
                call.state = QUEUED
                requeue.append(call)
        self._queue.extendleft(reversed(requeue))
        if self._locality.values:
            self._locality.proc_lost(proc)
        rec = _recorder.active
        if rec is not None:
            for call in requeue:
                if call.token is not None:
                    rec.requeued(call.token, proc.tag, f"worker {proc.index} {how}")
            if proc.tag is not None:
                if leaving or cancel_death or self._exiting or self._stopping:
                    rec.worker_gone(proc.tag)
                else:
                    rec.worker_left(proc.tag, how)
        for call in failed:
            self._deliver(call, False, WorkerLostError(
                self._lost_message(proc, how, call, bool(_oom_hint(proc, code)))))
        if self._exiting:
            return
        if not (leaving or cancel_death):
            self._deaths.append(time.monotonic())
            self._last_death = f"worker {proc.index} (pid {proc.pid}) {how}{running}"
        if not proc.connected and not leaving:
            problem = f"worker {proc.index} (pid {proc.pid}) {how} before it connected"
            if proc.refused:
                problem += f": {proc.refused}"
            self._start_failed(problem)
        elif not (leaving or cancel_death):
            _log.warning("pydron: worker %d (pid %d) %s%s", proc.index, proc.pid, how,
                         f"; {len(requeue)} call(s) will run elsewhere" if requeue else "")
        if self._stopping and not self._has_work():
            self._maybe_stop()
            return
        if not cancel_death or self._queued():
            self._ensure_workers()  # after a cancel: lazily, when work comes
        self._dispatch()

    def _blames_call(self, proc: _Proc, code: int) -> bool:
        """Whether the death of ``proc`` may be the doing of the call it was running
        (and so counts towards calling that call poison). Here always: a worker on this
        machine dies of what runs in it, or of something that cannot be told from it (a
        SIGKILL from outside looks like the OOM killer's). The launcher says: one whose
        workers are also lost with their host or job may say no for those."""
        return self._launcher.blames_call(proc.index, code)

    def _lost_message(self, proc: _Proc, how: str, call: _Call, oom: bool = False) -> str:
        """The WorkerLostError of a call that is not run again (``oom``: its worker died
        of a SIGKILL that the pool did not send)."""
        name = f"{callable_name(call.fn)}(){_at(call.fn)}"
        deaths = call.deaths
        if len(deaths) >= POISON_DEATHS and call.attempts <= self.max_retries:
            return (f"{name} killed {len(deaths)} workers in a row, each while running it: "
                    f"{'; '.join(deaths)}; it is not run again, as it would go on killing "
                    f"workers (max_retries={self.max_retries} is for calls whose workers "
                    f"are lost for other reasons)")
        return (f"worker {proc.index} (pid {proc.pid}) {how} while running {name}; the "
                f"call was tried {call.attempts} time{'s' if call.attempts != 1 else ''} "
                f"(max_retries={self.max_retries})"
                f"{'; the SIGKILL was possibly the OOM killer' if oom else ''}")

    def _start_failed(self, problem: str) -> None:
        self._start_failures += 1
        _log.error("pydron: %s", problem)
        if self._start_failures < MAX_START_FAILURES or \
                any(p.ready for p in self._procs.values()):
            return
        self._fail_queued(f"pydron could not start its worker processes "
                          f"({self._start_failures} failed in a row); the last: {problem}")

    def _fail_queued(self, message: str) -> None:
        """No worker can be had: fail every queued call with ``message``, and mark the
        pool broken so that later calls fail too, until new work tries again."""
        self._broken = message
        with self._lock:
            self._changed.notify_all()
            doomed = [c for c in self._queue if c.state == QUEUED]
            for call in doomed:
                call.state = DONE
        self._queue.clear()
        for call in doomed:
            self._deliver(call, False, WorkerLostError(message))

    @_guarded
    def _heartbeat(self) -> None:
        now = time.monotonic()
        late = now - self._last_beat > 2 * self.heartbeat
        self._last_beat = now
        beat = frames.frame(frames.HEARTBEAT)
        for proc in list(self._procs.values()):
            conn = proc.conn
            if not proc.connected or proc.state is DEAD or conn is None:
                continue
            if late:
                # This thread itself did not run for a while (the GIL was held); the
                # workers' frames are waiting unread. Judge them next time.
                conn.last_rx = max(conn.last_rx, now)
            elif now - conn.last_rx > self.heartbeat_timeout and \
                    not proc.liveness.working(now, self.heartbeat_timeout):
                proc.kill(f"stopped answering (nothing heard for "
                          f"{now - conn.last_rx:.1f} s)")
                continue
            conn.send([beat])
        if self._idle_timeout is not None:
            self._retire_idle(now, self._idle_timeout)

    def _retire_idle(self, now: float, idle: float) -> None:
        """Tell workers that had nothing to do for ``idle`` seconds, while no call is
        queued, to go (the launcher's :attr:`~Launcher.idle_timeout`: a batch job whose
        workers all went ends, and frees its node for others)."""
        if self._stopping or self._queued():
            return
        for proc in list(self._procs.values()):
            if proc.state is READY and not proc.outstanding and \
                    now - proc.progress_at >= idle:
                _log.info("pydron: worker %d idle for %.0f s: told to go", proc.index,
                          now - proc.progress_at)
                self._say_bye(proc)

    # -- call_timeout --------------------------------------------------------------------
    def _arm_timeouts(self) -> None:
        """Check for calls past ``call_timeout`` a tick from now (reactor thread).

        A worker runs its calls in the order sent, so the first one it holds is the one
        it runs; the check notes when each worker's first call changed and finds the ones
        that have stayed first too long. The tick is a tenth of the timeout (at least
        50 ms, at most a heartbeat), so a call is stopped between the timeout and about
        two ticks more after it started: the pool learns of a start only at the next tick.
        (It runs while the pool is idle too: a few dozen cheap wake-ups a second at most.)
        """
        if self.call_timeout is None or self._timeout_timer is not None or \
                self._exiting or self._forked:
            return
        tick = min(self.heartbeat, max(0.05, self.call_timeout / 10))
        self._timeout_timer = get_reactor().callLater(tick, self._check_timeouts)

    @_guarded
    def _check_timeouts(self) -> None:
        self._timeout_timer = None
        if self._stopping and not self._procs:
            return
        try:
            now = time.monotonic()
            for proc in list(self._procs.values()):
                outstanding = proc.outstanding
                if proc.dead or proc.timed_out or not outstanding:
                    proc.head = 0
                    continue
                head = next(iter(outstanding))
                if head != proc.head:
                    proc.head, proc.head_since = head, now
                elif now - proc.head_since >= self.call_timeout:  # type: ignore[operator]
                    self._time_out(proc, outstanding[head])
        finally:
            self._arm_timeouts()

    def _time_out(self, proc: _Proc, call: _Call) -> None:
        """``call`` ran past ``call_timeout`` on ``proc``: fail it now, and kill the
        worker (nothing keeps computing); the calls queued behind it run elsewhere."""
        with self._lock:
            if call.state != SENT or proc.outstanding.get(call.id) is not call:
                return  # its outcome came meanwhile
            call.state = DONE
            del proc.outstanding[call.id]
        name = callable_name(call.fn)
        proc.timed_out = True
        proc.kill(f"ran {name}() past call_timeout")
        self._deliver(call, False, CallTimeoutError(
            f"{name}(){_at(call.fn)} did not finish within call_timeout="
            f"{self.call_timeout:g} s; worker {proc.index} (pid {proc.pid}) running it was "
            f"killed, and a new one takes its place", function=name,
            timeout=self.call_timeout))

    # -- stopping ------------------------------------------------------------------------
    def _queued(self) -> bool:
        return any(c.state == QUEUED for c in self._queue)

    def _has_work(self) -> bool:
        return self._queued() or any(p.outstanding for p in self._procs.values())

    @_guarded
    def _begin_stop(self) -> None:
        self._stopping = True
        self._flush()
        if not self._has_work():
            self._maybe_stop()

    def _maybe_stop(self) -> None:
        """Once no work is left: say BYE to every worker; when all have exited, done."""
        for proc in list(self._procs.values()):
            if proc.state is LEAVING or proc.state is DEAD:
                continue
            self._say_bye(proc)
        if self._port is not None:
            self._port.stopListening()
            self._port = None
        if self._beat is not None and self._beat.running:
            self._beat.stop()
        if not self._procs:
            with self._decode_lock:  # stopped once every result is delivered
                self._stop_when_delivered = True
                stop = not self._undelivered
            if stop:
                self._set_stopped()

    def _say_bye(self, proc: _Proc) -> None:
        """Tell a worker to go (BYE) and close its connection; kill it if it has not
        gone after a grace period (or at once, if it never connected)."""
        proc.become(LEAVING)
        if proc.connected and proc.conn is not None:
            proc.conn.send([frames.frame(frames.BYE)])
            proc.conn.transport.loseConnection()
            get_reactor().callLater(STOP_GRACE, self._kill_if_alive, proc)
        else:
            proc.kill()

    def _set_stopped(self) -> None:
        """Every worker has exited and every result has been delivered: done. The
        decoding threads end too (a stopped pool gets no more results)."""
        with self._decode_lock:
            threads, self._decoders = self._decoders, DECODERS  # none is started again
        for _ in range(threads):
            self._decoding.put(None)  # type: ignore[arg-type]
        self._locality.stopped("it was shut down")
        self._stopped.set()
        _live_pools.discard(self)

    def _kill_now(self) -> None:
        """At interpreter exit: kill every worker and reap it, from the exiting thread."""
        with self._lock:
            self._exiting = True
            self._closed = True
            procs = list(self._procs.values())
        for proc in procs:
            proc.kill()
        for proc in procs:
            try:
                proc.popen.wait(timeout=2)
            except (subprocess.TimeoutExpired, OSError):
                pass
        self._launcher.kill_now()

    # -- the launcher's reports (see launchers.base.EngineEvents) ------------------------
    def _give_up(self, message: str) -> None:
        """Fail every queued call with ``message``, and the pool's later calls too."""
        self._fail_queued(message)
        if self._stopping and not self._has_work():
            self._maybe_stop()

    def _set_capacity(self, parallelism: int) -> None:
        with self._lock:
            self.parallelism = parallelism
            self._changed.notify_all()

    def _slots_changed(self) -> None:
        self._ensure_workers()
        self._dispatch()

    def _slots_lost(self, indexes: list[int], reason: str, counted: bool) -> None:
        for index in indexes:
            proc = self._procs.get(index)
            if proc is not None and not proc.dead:
                if not proc.kill_reason:
                    proc.kill_reason = reason
                if not counted and proc.state is not LEAVING:
                    proc.become(LEAVING)  # an end the launcher explains: no failed start
                proc.popen.kill()

    def _describe_exit(self, index: int, refused: str, how: str) -> None:
        proc = self._procs.get(index)
        if proc is None:
            return
        if refused and not proc.refused:
            proc.refused = refused
        if how and not proc.kill_reason:
            proc.kill_reason = how

    def _launcher_failed(self, message: str) -> None:
        self._fatal = message
        self._give_up(message)


class _Events:
    """What an engine offers its launcher (:class:`~pydron.backend.launchers.base.
    EngineEvents`): each report runs in the reactor thread, at once if it comes from
    there (so that it takes effect before the engine goes on), else soon."""

    __slots__ = ("_engine",)

    def __init__(self, engine: WorkerEngine) -> None:
        self._engine = engine

    @property
    def stopping(self) -> bool:
        return self._engine._stopping

    @staticmethod
    def _run(fn: Callable[..., Any], *args: Any) -> None:
        if in_reactor_thread():
            fn(*args)
        else:
            call_soon(fn, *args)

    def capacity_changed(self, parallelism: int) -> None:
        self._engine._set_capacity(parallelism)  # under the engine's lock: any thread

    def slots_changed(self) -> None:
        self._run(self._engine._slots_changed)

    def slots_lost(self, indexes: Iterable[int], reason: str, counted: bool = True) -> None:
        self._run(self._engine._slots_lost, list(indexes), reason, counted)

    def worker_start(self, index: int) -> WorkerStart:
        engine = self._engine
        return WorkerStart(index, engine._port_number, engine._protocol_options(),
                           engine.secret)

    def describe_exit(self, index: int, refused: str = "", how: str = "") -> None:
        self._engine._describe_exit(index, refused, how)  # only from Launcher.exited

    def failed(self, message: str) -> None:
        self._run(self._engine._launcher_failed, message)


def _auto_share(fn: Callable[..., Any], args: tuple, kwargs: dict, total: int, least: int
                ) -> tuple[bytes, list[memoryview]] | None:
    """The arguments pickled again with each large top-level one (its pickle at least
    ``least`` bytes) replaced by a content-hashed handle, so that it travels to each
    worker once; None if none is large (or the call's pickle is not).

    The content is hashed every time: the caller may have changed an object in place
    between calls, so knowing it by identity would not be enough."""
    if total < least:
        return None
    new_args = [_share_large(value, least) for value in args]
    new_kwargs = {key: _share_large(value, least) for key, value in kwargs.items()}
    if all(a is b for a, b in zip(new_args, args)) and \
            all(new_kwargs[k] is v for k, v in kwargs.items()):
        return None
    return dumps_args(fn, tuple(new_args), new_kwargs)


def _share_large(value: Any, least: int) -> Any:
    """A fresh handle for ``value`` if its pickle is large, else ``value`` itself."""
    if type(value) in _SMALL or isinstance(value, sharing.Shared):
        return value
    try:
        blob, buffers = dumps_value(value)
    except Exception:
        return value  # it pickled as part of the whole; leave it there
    if len(blob) + sum(b.nbytes for b in buffers) < least:
        return value
    return sharing.auto_share(blob, buffers, type_name(value))


_SMALL = frozenset({int, float, bool, complex, type(None)})
"""Types whose pickle is never large (not pickled again to find out)."""


def _decode(call: _Call, outcome: Outcome, buffers: list[Any]) -> tuple[bool, Any]:
    """The value of an outcome: ``(True, value)``, or ``(False, exception)``.

    Any exception while unpickling a value, BaseExceptions too (a ``__reduce__`` that
    returns ``(sys.exit, (3,))``), becomes a SerializationError naming the call: the
    call is done, and its caller must hear so."""
    if not outcome.ok:
        try:
            return False, loads_exception(outcome.blob, outcome.name,  # type: ignore[arg-type]
                                          outcome.message, outcome.text)  # type: ignore[arg-type]
        except BaseException as exc:  # noqa: B902
            return False, _load_error(call, "the exception raised by", exc)
    try:
        return True, pickle.loads(outcome.blob, buffers=buffers)  # type: ignore[arg-type]
    except BaseException as exc:  # noqa: B902
        return False, _load_error(call, "the result of", exc)


def _load_error(call: _Call, what: str, exc: BaseException) -> SerializationError:
    return SerializationError(
        f"{what} {callable_name(call.fn)}(){_at(call.fn)} cannot be loaded in the caller: "
        f"{type(exc).__name__}: {exc}", item="the result", value_type="unknown")


def _death(proc: _Proc, code: int) -> str:
    """How a worker died, in words, from its wait status."""
    if proc.kill_reason:
        return f"{proc.kill_reason} and was killed"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by signal {name}"
    if code in frames.EXIT_REASONS:
        return f"{frames.EXIT_REASONS[code]} (exit code {code})"
    return f"exited with code {code}"


def _oom_hint(proc: _Proc, code: int) -> str:
    """A SIGKILL nobody here sent is also how the kernel's OOM killer ends a process;
    nothing can tell which for sure (the kernel log is neither readable by everyone nor
    reliable), so the hint says "possibly"."""
    if code == -signal.SIGKILL and not proc.kill_reason:
        return " (possibly the OOM killer)"
    return ""


def _at(fn: Any) -> str:
    site = callable_site(fn)
    return f" defined at {site}" if site else ""


_FORKED = ("this process was fork()ed from the one that owns this pool: its workers and "
           "reactor thread are the parent's (start child processes with the 'spawn' "
           "method, or use pydron in the child only)")


def _after_fork_in_child() -> None:
    # The child must neither use nor, at its exit, kill the parent's workers.
    for pool in list(_live_pools):
        pool._forked = True
        pool._closed = True
        pool._exiting = True
    _live_pools.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


@atexit.register
def _kill_workers_at_exit() -> None:
    # Registered after pydron.backend's own exit hook, so it runs first: the processes
    # are gone, reaped, before anything else is torn down. Calls still running at exit
    # have no one left to report to.
    for pool in list(_live_pools):
        pool._kill_now()
