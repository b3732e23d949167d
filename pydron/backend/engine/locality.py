"""Where each kept value lies, who still needs it, and how it is had again when lost.

A large result that a worker keeps (see :mod:`pydron.backend.protocol.values`) is known
here as a :class:`_Value`. The whole state is written down in one place, like this::

    value   state      holders     readers   remote   lineage
    ------  ---------  ----------  -------   ------   ------------------------------
    key     HELD       {workers}   calls in  a Remote the producing call (function,
            LOST       {}          flight    exists   arguments, and the values it
            COMPUTING  {}          that read in the   read in turn)
            FAILED     {}          it        caller

Moves::

    HELD --its last holder died, or it was released--> LOST --needed--> COMPUTING
    COMPUTING --its call kept it--> HELD;  COMPUTING --its call failed--> FAILED

*Needed* means a call about to be sent reads it, or the caller fetches it. A value is
*released* -- dropped from its workers (RELEASE) -- as soon as no Remote of it exists and
no call in flight reads it. Its lineage is kept as long as a value computed from it is,
so that a worker lost while holding values still needed never loses a result: the calls
that made them run again, from their own inputs, recursively (a released input is
computed again first).

Placement (:meth:`Locality.holder_of`): a call goes to the ready worker holding most of
its input bytes; another worker that would idle meanwhile takes it, and fetches what it
lacks through the master (VALUE_REQUEST, answered with the holder's VALUE as it came: the
bytes pass through the caller's memory once, and are never unpickled there).

Threads: ``readers`` and ``remote`` change in callers' threads too (submit, a Remote
going away), under :attr:`Locality.lock`; everything else happens in the reactor thread.
"""
from __future__ import annotations

import enum
import itertools
import pickle
import threading
import time
from typing import Any

from pydron import remote_value
from pydron.backend import recorder as _recorder
from pydron.backend.protocol import frames, values
from pydron.backend.reactor import call_soon
from pydron.errors import WorkerLostError

__all__ = ["Locality", "ValueState"]


class ValueState(enum.Enum):
    HELD = "held"
    """On at least one live worker."""
    LOST = "lost"
    """On no worker (its holders died, or it was released); computed again when needed."""
    COMPUTING = "computing"
    """Its producing call runs again."""
    FAILED = "failed"
    """Computing it again failed; readers get the failure."""


HELD, LOST, COMPUTING, FAILED = ValueState

VALUE_MOVES = {
    HELD: frozenset({LOST}),
    LOST: frozenset({COMPUTING}),
    COMPUTING: frozenset({HELD, FAILED}),
    FAILED: frozenset(),
}
"""The moves a value may make (what the code does, written down)."""


class _Value:
    __slots__ = ("table", "key", "size", "label", "state", "holders", "readers", "remote",
                 "lineage", "inputs", "error", "fetches", "released", "base")

    def __init__(self, table: "Locality | None", key: int, size: int, label: str) -> None:
        self.table = table
        self.key = key
        self.size = size
        self.label = label
        self.state = HELD
        self.holders: set[Any] = set()
        self.readers = 0            # calls not yet done whose arguments refer to it
        self.remote = True          # a Remote of it exists in the caller
        self.lineage: Any = None    # the producing call's data, to run it again
        self.inputs: list[_Value] = []  # the values that call read
        self.error: BaseException | None = None
        self.fetches: list[_Fetch] = []  # caller fetches waiting for it to be HELD
        self.released = False       # dropped from the table (its lineage may live on)
        self.base = key             # the producing call's key (an item's: its tuple's)


class _Fetch:
    """The caller waiting for a value's bytes (or a prefetch that will be waited for)."""

    __slots__ = ("value", "done", "body", "buffers", "error", "started")

    def __init__(self, value: _Value) -> None:
        self.value = value
        self.done = threading.Event()
        self.body: bytes | None = None
        self.buffers: list[Any] = []
        self.error: BaseException | None = None
        self.started = time.perf_counter()


class Locality:
    """The kept values of one engine (see the module docstring)."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.lock = threading.Lock()
        self.values: dict[int, _Value] = {}
        self._ids = itertools.count(1)
        # FETCH request id -> (holder, what waits: a _Fetch, or (worker, its request id))
        self._pending: dict[int, tuple[Any, Any]] = {}
        self._prefetches: dict[int, _Fetch] = {}  # key -> a fetch started ahead
        self.blocked: list[Any] = []  # calls waiting for a lost input to be computed again
        self._hooked = threading.local()
        self.relayed = 0           # values relayed by the master to a worker (statistics)
        self.relayed_bytes = 0
        self.direct = 0            # values one worker fetched from another directly
        self.direct_bytes = 0
        self.fetched_bytes = 0     # bytes of kept values fetched for the caller
        self.recomputed = 0        # values computed again after a loss

    # ------------------------------------------------------------------ callers' threads
    def reduce(self, remote: remote_value.Remote) -> Any:
        """How a Remote of this engine pickles into a call's arguments (a key), noting the
        value as one of the call's inputs (see :meth:`collecting`)."""
        if remote.parts is not None:
            return tuple, (list(remote.parts),)  # its kept items pickle as keys in turn
        if remote.here:
            # Plain code has read it, and may have changed the caller's copy in place since
            # (an item store ordered before this call): that copy is the value now.
            return remote_value.as_value(remote)
        value = self.values.get(remote.key)
        inputs = getattr(self._hooked, "inputs", None)
        if value is None or inputs is None:
            return remote_value.as_value(remote)  # not ours to refer to any more: the value
        inputs[remote.key] = value
        return values.kept_value, (remote.key, remote.nbytes, remote.label)

    def collecting(self) -> "_Collecting":
        """A context in which Remotes of this engine pickle as keys; it collects the
        values they refer to (``.inputs``)."""
        return _Collecting(self)

    def add_readers(self, inputs: list[_Value]) -> None:
        with self.lock:
            for value in inputs:
                value.readers += 1

    def unread(self, inputs: list[_Value]) -> None:
        """A call that read ``inputs`` is done (or cancelled)."""
        drop = []
        with self.lock:
            for value in inputs:
                value.readers -= 1
                if not value.readers and not value.remote:
                    drop.append(value)
        if drop:
            call_soon(self._release, drop)

    def forget(self, key: int) -> None:
        """The caller's Remote of ``key`` is gone."""
        with self.lock:
            value = self.values.get(key)
            if value is None:
                return
            value.remote = False
            drop = not value.readers
        self._prefetches.pop(key, None)
        if drop:
            call_soon(self._release, [value])

    def fetch(self, remote: remote_value.Remote) -> Any:
        """The value of ``remote``, fetched from a worker (blocking the calling thread)."""
        fetch = self._prefetches.pop(remote.key, None)
        if fetch is None:
            fetch = self._start_fetch(remote.key)
        fetch.done.wait()
        if fetch.error is not None:
            raise fetch.error
        body, buffers = fetch.body, fetch.buffers
        fetch.body, fetch.buffers = None, []
        return pickle.loads(body, buffers=buffers)  # type: ignore[arg-type]

    def prefetch(self, remote: remote_value.Remote) -> None:
        if remote.key not in self._prefetches:
            self._prefetches[remote.key] = self._start_fetch(remote.key)

    def _start_fetch(self, key: int) -> _Fetch:
        value = self.values.get(key)
        if value is None:
            fetch = _Fetch(_Value(None, key, 0, "value"))
            fetch.error = RuntimeError(f"pydron: kept value {key} is not known to its pool")
            fetch.done.set()
            return fetch
        fetch = _Fetch(value)
        call_soon(self._fetch_for_caller, fetch)
        return fetch

    # ------------------------------------------------------------------ reactor thread
    def kept(self, key: int, proc: Any, size: int, label: str, lineage: Any,
             inputs: list[_Value], remote: bool, base: int) -> None:
        """A worker keeps the result of a call (or an item of it) under ``key``, the
        first time or again."""
        value = self.values.get(key)
        if value is None:
            if not remote:
                # Computed again for another item of its tuple; nobody needs this one.
                if proc.conn is not None:
                    proc.conn.send([frames.frame(frames.RELEASE, values.encode_keys([key]))])
                return
            value = _Value(self, key, size, label)
            value.remote = remote
            value.lineage = lineage
            value.inputs = inputs
            value.base = base
            self.values[key] = value
        else:
            value.state = HELD
            value.released = False
        value.holders.add(proc)
        if value.fetches:
            waiting, value.fetches = value.fetches, []
            for fetch in waiting:
                self._fetch_for_caller(fetch)
        self._unblock()

    def recompute_failed(self, key: int, error: BaseException) -> None:
        """Computing ``key`` again failed: its readers (calls and fetches) get ``error``."""
        value = self.values.get(key)
        if value is None:
            return
        value.state = FAILED
        value.error = error
        for fetch in value.fetches:
            fetch.error = error
            fetch.done.set()
        value.fetches = []
        self._unblock()

    def check(self, call: Any) -> BaseException | bool:
        """True if every value ``call`` reads lies on a live worker. If not, False: the
        ones that do not are computed again and the call waits in :attr:`blocked`; or,
        where computing one again failed, that failure (the call fails with it)."""
        missing = False
        for value in call.inputs:
            state = value.state
            if state is HELD:
                continue
            if state is FAILED:
                return value.error  # type: ignore[return-value]
            missing = True
            if state is LOST:
                self._recompute(value)
        if missing:
            self.blocked.append(call)
        return not missing

    def holder_of(self, call: Any, ready: list[Any]) -> tuple[Any, int]:
        """The worker among ``ready`` holding most bytes of ``call``'s inputs, and how many."""
        best, most = None, 0
        for proc in ready:
            held = 0
            for value in call.inputs:
                if proc in value.holders:
                    held += value.size
            if held > most:
                best, most = proc, held
        return best, most

    def sources(self, call: Any, proc: Any) -> tuple:
        """Where ``proc`` fetches the values ``call`` reads that it does not hold: a
        holder that listens for its peers, for each (see ``worker.peers``)."""
        found = []
        for value in call.inputs:
            if proc in value.holders:
                continue
            for holder in value.holders:
                if holder.peer is not None and holder.conn is not None:
                    found.append((value.key, holder.peer[0], holder.peer[1], holder.index))
                    break
        return tuple(found)

    def read_on(self, call: Any, proc: Any, moves: tuple) -> None:
        """``call`` ran on ``proc``: it holds the values the call read from now on (it
        keeps what it fetched), and the trace hears of what moved."""
        for value in call.inputs:
            if value.state is HELD and not value.released:
                value.holders.add(proc)
        if moves:
            by_index = {p.index: p for p in self.engine._procs.values()}
            for key, size, seconds, source in moves:
                if source >= 0:
                    self.direct += 1
                    self.direct_bytes += size
                self._traced("transfer", by_index.get(source), proc, size,
                             time.perf_counter() - seconds)

    def value_request(self, proc: Any, request: int, key: int) -> None:
        """A worker asks for a value it does not hold: have a holder send it; or say it
        is lost (the worker gives its call back, and the value is computed again)."""
        value = self.values.get(key)
        if value is None or value.released:
            self._answer(proc, request, key, False, b"nothing needs it any more")
            return
        holders = [p for p in value.holders if p is not proc and p.conn is not None]
        if value.state is not HELD or not holders:
            self._answer(proc, request, key, False, values.LOST)
            return
        holder = holders[0]
        mine = next(self._ids)
        self._pending[mine] = (holder, (proc, request, key, time.perf_counter()))
        holder.conn.send([frames.frame(frames.FETCH, values.encode_request(mine, key))])

    def value_reply(self, holder: Any, request: int, key: int, found: bool, nbuf: int,
                    body: bytes, buffers: list[Any]) -> None:
        """A VALUE from a worker, answering our FETCH ``request``."""
        entry = self._pending.pop(request, None)
        if entry is None:
            return
        _, waiter = entry
        value = self.values.get(key)
        if type(waiter) is _Fetch:
            if not found:
                if value is not None and holder in value.holders:
                    value.holders.discard(holder)
                self._fetch_for_caller(waiter)  # from another holder, or computed again
                return
            waiter.body, waiter.buffers = body, buffers
            size = len(body) + sum(memoryview(b).nbytes for b in buffers)
            self.fetched_bytes += size
            self._traced("fetch", holder, None, size, waiter.started)
            waiter.done.set()
            return
        proc, their_request, _, started = waiter
        if proc.conn is None or proc.dead:
            return
        if not found:
            self._answer(proc, their_request, key, False, values.LOST)
            return
        pieces: list[bytes | memoryview] = []
        for buf in buffers:
            pieces += frames.buffer_frames(buf, self.engine.max_frame)
        pieces.append(frames.frame(frames.VALUE, values.encode_value(
            their_request, key, True, len(buffers), body)))
        proc.conn.send(pieces)
        size = len(body) + sum(memoryview(b).nbytes for b in buffers)
        self.relayed += 1
        self.relayed_bytes += size
        self._traced("transfer", holder, proc, size, started)
        if value is not None and value.state is HELD and not value.released:
            value.holders.add(proc)  # it keeps the copy (see worker.store)

    def proc_lost(self, proc: Any) -> None:
        """``proc`` is dead: what it held is held by one worker fewer; requests waiting on
        it are answered elsewhere."""
        for value in self.values.values():
            if proc in value.holders:
                value.holders.discard(proc)
                if not value.holders and value.state is HELD:
                    value.state = LOST
                    if value.readers or value.fetches:
                        self._recompute(value)
        for request, (holder, waiter) in list(self._pending.items()):
            if holder is not proc:
                if type(waiter) is not _Fetch and waiter[0] is proc:
                    del self._pending[request]  # the asker died: nobody to answer
                continue
            del self._pending[request]
            if type(waiter) is _Fetch:
                self._fetch_for_caller(waiter)
            else:
                asker, their_request, key, _ = waiter
                if asker.conn is not None and not asker.dead:
                    self._answer(asker, their_request, key, False, values.LOST)

    def stopped(self, why: str) -> None:
        """The engine has stopped: fetches still waiting fail."""
        error = RuntimeError(f"pydron: the pool holding this value has stopped ({why})")
        for _, waiter in self._pending.values():
            if type(waiter) is _Fetch:
                waiter.error = error
                waiter.done.set()
        self._pending.clear()
        for value in self.values.values():
            for fetch in value.fetches:
                fetch.error = error
                fetch.done.set()
            value.fetches = []

    # ------------------------------------------------------------------ internals
    def _fetch_for_caller(self, fetch: _Fetch) -> None:
        value = fetch.value
        if value.state is FAILED:
            fetch.error = value.error
            fetch.done.set()
            return
        holders = [p for p in value.holders if p.conn is not None and not p.dead]
        if value.state is not HELD or not holders:
            if value.state is HELD:
                value.state = LOST
            value.fetches.append(fetch)
            if value.state is LOST:
                self._recompute(value)
            return
        request = next(self._ids)
        self._pending[request] = (holders[0], fetch)
        holders[0].conn.send([frames.frame(frames.FETCH,
                                           values.encode_request(request, value.key))])

    def _recompute(self, value: _Value) -> None:
        """Run the call that made ``value`` again, keeping it under the same key."""
        if value.state is not LOST:
            return
        if value.lineage is None:
            value.state = COMPUTING
            self.recompute_failed(value.key, WorkerLostError(
                f"a {value.label} kept on a worker was lost and cannot be computed again"))
            return
        value.state = COMPUTING
        if value.released:
            value.released = False
            self.values[value.key] = value
        self.recomputed += 1
        self.engine._recompute(value)

    def _release(self, drop: list[_Value]) -> None:
        """Drop values nobody needs from their workers (and from the table)."""
        by_proc: dict[Any, list[int]] = {}
        for value in drop:
            with self.lock:
                if value.readers or value.remote or value.released:
                    continue
                value.released = True
            if self.values.get(value.key) is value:
                del self.values[value.key]
            for proc in value.holders:
                by_proc.setdefault(proc, []).append(value.key)
            value.holders = set()
            if value.state is HELD:
                value.state = LOST
        for proc, keys in by_proc.items():
            if proc.conn is not None and not proc.dead:
                proc.conn.send([frames.frame(frames.RELEASE, values.encode_keys(keys))])

    def _answer(self, proc: Any, request: int, key: int, found: bool, body: bytes) -> None:
        proc.conn.send([frames.frame(frames.VALUE, values.encode_value(
            request, key, found, 0, body))])

    def _unblock(self) -> None:
        if not self.blocked:
            return
        waiting, self.blocked = self.blocked, []
        self.engine._requeue_front(waiting)

    def _traced(self, kind: str, src: Any, dst: Any, size: int, started: float) -> None:
        rec = _recorder.active
        if rec is None:
            return
        rec.moved(kind, src.tag if src is not None else None,
                  dst.tag if dst is not None else None, size, time.perf_counter() - started)


class _Collecting:
    """See :meth:`Locality.collecting`."""

    __slots__ = ("locality", "inputs", "_outer", "_hook")

    def __init__(self, locality: Locality) -> None:
        self.locality = locality
        self.inputs: dict[int, _Value] = {}

    def __enter__(self) -> "_Collecting":
        local = self.locality._hooked
        self._outer = getattr(local, "inputs", None)
        local.inputs = self.inputs
        self._hook = remote_value.set_reduce_hook(self.locality.engine, self.locality.reduce)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.locality._hooked.inputs = self._outer
        remote_value.set_reduce_hook(self.locality.engine, self._hook)

