"""The master's end of one worker connection: a Twisted protocol.

It frames and unframes, runs the handshake (nothing the peer sends is unpickled before the
peer has proved it knows the pool's secret and runs the same versions), and routes the
frames of an authenticated worker to its pool. Anything wrong before that point -- a
wrong or missing MAC, garbage, an oversized frame, silence -- drops the connection and is
logged on the ``pydron.backend`` logger; the pool never hears of it.

Anyone on this machine can connect to the port, so strangers must not be able to use up
the caller's file descriptors (which its own ``open()``, the translator and new workers
need): the factory holds at most ``pool.max_pending`` unauthenticated connections,
each for at most ``pool.handshake_timeout`` seconds; past the cap the oldest one is
dropped once it has had :data:`MIN_PENDING_AGE` seconds (a real worker answers within
milliseconds), else the newcomer is. Their drops are logged once per burst and reason,
with a count of the rest, not once per connection.

The pool side of the conversation is the small interface this module calls:
``claim(info, protocol)``, ``refused(info, reason)``, ``ready(proc)``,
``results(proc, entries, buffers)`` and ``connection_lost(proc)``.
"""
from __future__ import annotations

import collections
import logging
import pickle
import re
import sys
import time
from typing import Any

from twisted.internet.protocol import Factory, Protocol

from pydron.backend.protocol import frames, log_records, handshake, replies, values
from pydron.backend.protocol.records import outcomes_of

__all__ = ["WorkerProtocol", "WorkerFactory"]

_log = logging.getLogger("pydron.backend")

CHUNK = 1 << 20
"""Bytes of out-of-band buffers handed to Twisted at a time (and sent per send())."""

MIN_PENDING_AGE = 0.25
"""Seconds an unauthenticated connection is safe from being shed for a newer one: enough
for a real worker's AUTH (it sends it as soon as HELLO arrives)."""

BURST_WINDOW = 10.0
"""Seconds over which repeated drops of strangers for one reason make one log line."""


class WorkerProtocol(Protocol):
    """One TCP connection that claims to be a worker of ``pool``."""

    def __init__(self, pool: Any, factory: WorkerFactory | None = None) -> None:
        self.pool = pool
        self.factory = factory
        self.accepted = time.monotonic()
        self.decoder = frames.FrameDecoder(frames.HANDSHAKE_MAX_FRAME)
        self.nonce = handshake.new_nonce()
        self.proc: Any = None            # set once authenticated
        self.authenticated = False
        self.dropped = False
        self.last_rx = time.monotonic()
        self.buffers = frames.BufferCollector()
        self._timer: Any = None
        self._backlog: collections.deque[bytes | memoryview] | None = None

    # -- Twisted callbacks ---------------------------------------------------------------
    def connectionMade(self) -> None:  # noqa: N802
        self.transport.setTcpNoDelay(True)
        self.transport.write(frames.frame(frames.HELLO, self.nonce))
        from pydron.backend.reactor import get_reactor
        self._timer = get_reactor().callLater(self.pool.handshake_timeout, self._too_slow)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self.dropped:
            return
        self.last_rx = time.monotonic()
        self.pool.bytes_received += len(data)
        try:
            complete = self.decoder.feed(data)
        except frames.FrameError as exc:
            self.drop(str(exc))
            return
        try:
            for kind, payload in complete:
                if not self.authenticated:
                    self._handshake(kind, payload)
                else:
                    self._frame(kind, payload)
                if self.dropped:
                    return
        except Exception:
            # A bug of ours. Twisted would log it where nobody looks (its own log has
            # no observer unless the program starts one) and drop the connection.
            _log.exception("pydron: internal error while handling frames from %s",
                           self.peer())
            self.drop("internal error (see the traceback logged above)")

    def connectionLost(self, reason: object = None) -> None:  # noqa: N802
        self.dropped = True
        self._unlist()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        if self.proc is not None:
            try:
                self.pool.connection_lost(self.proc)
            except Exception:
                _log.exception("pydron: internal error after a lost connection")

    # -- handshake -----------------------------------------------------------------------
    def peer(self) -> str:
        try:
            address = self.transport.getPeer()
            return f"{address.host}:{address.port}"
        except Exception:
            return "an unknown peer"

    def drop(self, reason: str, level: int = logging.WARNING, graceful: bool = False) -> None:
        """Close, and say why in the log: at once, discarding anything unsent (the peer
        gets nothing more from us), or ``graceful``ly, after what was written."""
        if self.dropped:
            return
        self.dropped = True
        self._unlist()
        if self.proc:
            _log.log(level, "pydron: dropped worker %s (pid %s): %s", self.proc.index,
                     self.proc.pid, reason)
        elif self.factory is not None:
            self.factory.drops.log(level, f"a connection from {self.peer()}", reason)
        else:
            _log.log(level, "pydron: dropped a connection from %s: %s", self.peer(), reason)
        if graceful:
            self.transport.loseConnection()
        else:
            self.transport.abortConnection()

    def _too_slow(self) -> None:
        self._timer = None
        if not self.authenticated:
            self.drop(f"no valid handshake within {self.pool.handshake_timeout} s")

    def _handshake(self, kind: int, payload: bytes) -> None:
        if kind != frames.AUTH:
            self.drop(f"expected an AUTH frame, got kind {kind} (not a pydron worker?)")
            return
        try:
            nonce_w, info = handshake.decode_auth(self.pool.secret, self.nonce, payload)
        except handshake.HandshakeError as exc:
            self.drop(str(exc))
            return
        problem = handshake.version_mismatch(handshake.local_info(), info, "the master",
                                        f"worker {info.get('index')} (pid {info.get('pid')})")
        if problem:
            self.transport.write(frames.frame(frames.REFUSE, problem.encode()))
            self.pool.refused(info, problem)
            self.drop(problem, logging.ERROR, graceful=True)  # let REFUSE reach it
            return
        proc = self.pool.claim(info, self)
        if proc is None:
            self.drop(f"it knows the secret but is no worker this pool is starting "
                      f"(index {info.get('index')!r}, pid {info.get('pid')!r})")
            return
        self.transport.write(frames.frame(frames.WELCOME, handshake.encode_welcome(
            self.pool.secret, self.nonce, nonce_w, handshake.local_info())))
        self.proc = proc
        self.authenticated = True
        self._unlist()
        self.decoder.limit = self.pool.max_frame
        self.transport.bufferSize = CHUNK  # big reads and writes for big buffers
        self.transport.SEND_LIMIT = CHUNK
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.pool.ready(proc)

    def _log_record(self, payload: Any) -> None:
        """A worker's log record: to the caller's logger of the same name, tagged with
        the worker and the call (see :mod:`pydron.backend.protocol.log_records`)."""
        proc = self.proc
        worker = f"worker {proc.index} (pid {proc.pid})"
        if proc.tag is not None and proc.tag.host:
            worker += f" on {proc.tag.host}"

        def call_name(call_id: int) -> str | None:
            call = proc.outstanding.get(call_id)
            fn = call.fn if call is not None else None
            return getattr(fn, "__qualname__", None) if fn is not None else None
        try:
            record = log_records.record_of(payload, worker, call_name)
        except (ValueError, UnicodeError) as exc:
            _log.warning("pydron: %s sent an unreadable log record: %s", worker, exc)
            return
        logger = logging.getLogger(record.name)
        if logger.isEnabledFor(record.levelno):
            logger.handle(record)

    def _unlist(self) -> None:
        """No longer one of the factory's unauthenticated connections."""
        if self.factory is not None:
            self.factory.pending.pop(self, None)

    # -- an authenticated worker -----------------------------------------------------------
    def _frame(self, kind: int, payload: Any) -> None:
        if kind == frames.RESULTS:
            buffers = self.buffers.take()
            try:
                entries = outcomes_of(pickle.loads(payload))
            except Exception as exc:
                self.drop(f"unreadable RESULTS frame ({type(exc).__name__}: {exc})")
                return
            self.pool.results(self.proc, entries, buffers)
        elif kind == frames.BUFFER or kind == frames.BUFFER_PART:
            self.buffers.add(kind, payload)
        elif kind == frames.OUTPUT:
            _write_output(payload)
        elif kind == frames.HEARTBEAT:
            pass
        elif kind == frames.LOG:
            self._log_record(payload)
        elif kind == frames.MODULE_REQUEST:
            self._module_request(payload)
        elif kind == frames.SHARED_REQUEST:
            self._shared_request(bytes(payload))
        elif kind == frames.VALUE:
            request, key, found, nbuf, body = values.decode_value(payload)
            buffers = self.buffers.take()
            if len(buffers) != nbuf:
                self.drop(f"a VALUE frame with {len(buffers)} buffers before it, "
                          f"announced {nbuf}")
                return
            self.pool.value_reply(self.proc, request, key, found, nbuf, body, buffers)
        elif kind == frames.VALUE_REQUEST:
            self.pool.value_request(self.proc, *values.decode_request(payload))
        elif kind == frames.PEER:
            try:
                host, port = bytes(payload).decode("ascii").split()
                self.proc.peer = (host, int(port))
            except ValueError:
                self.drop("a malformed PEER frame")
        else:
            self.drop(f"unexpected frame kind {kind}")

    def _module_request(self, payload: Any) -> None:
        """Serve the source of a module the worker cannot import (see
        :mod:`pydron.backend.engine.module_server`); "not found" if we have none to give."""
        try:
            name = bytes(payload).decode("utf-8")
        except UnicodeDecodeError:
            self.drop("a MODULE_REQUEST frame whose name is not UTF-8")
            return
        from pydron.backend.engine.module_server import lookup
        found = lookup(name)
        reply = replies.encode_module_reply(name, **found)
        if len(reply) >= self.pool.max_frame:
            _log.warning("pydron: not serving module %s to worker %s: its source is larger "
                         "than the frame limit", name, self.proc.index)
            reply = replies.encode_module_reply(name, False)
        self.send([frames.frame(frames.MODULE_REPLY, reply)])

    def _shared_request(self, payload: bytes) -> None:
        """Send a shared object the worker lacks (see :mod:`pydron.backend.sharing`):
        its buffers, then the SHARED_REPLY, through :meth:`send`, so they keep their
        order with the other frames on their way; "not found" if nothing holds it. A
        worker on this machine that says it can map our memory is sent where its buffers
        lie in a memory file instead (see ``sharing.memory_file``)."""
        from pydron.backend import sharing
        local, digest = payload[:1] == b"\x01", payload[1:]
        entry = sharing.lookup(digest)
        if entry is None:
            why = "the caller holds no such shared object any more"
            self.send([frames.frame(frames.SHARED_REPLY, replies.encode_shared_reply(
                digest, False, 0, why.encode()))])
            return
        if len(entry.blob) + 256 > self.pool.max_frame:
            why = (f"its pickle of {len(entry.blob)} bytes is larger than the frame limit "
                   f"of {self.pool.max_frame} bytes; {frames.frame_advice(len(entry.blob))}")
            self.send([frames.frame(frames.SHARED_REPLY, replies.encode_shared_reply(
                digest, False, 0, why.encode()))])
            return
        mapping = None
        if local and getattr(self.pool, "share_memory", False):
            mapping = sharing.memory_file(entry)
        pieces: list[bytes | memoryview] = []
        if mapping is None:
            for buffer in entry.buffers:
                pieces += frames.buffer_frames(buffer, self.pool.max_frame)
        pieces.append(frames.frame(frames.SHARED_REPLY, replies.encode_shared_reply(
            digest, True, 0 if mapping else len(entry.buffers), entry.blob, mapping)))
        self.send(pieces)
        served = getattr(self.pool, "shared_served", None)
        if served is not None:
            served(self.proc, entry.nbytes, mapping is not None)

    # -- sending -------------------------------------------------------------------------
    def send(self, pieces: list[bytes | memoryview]) -> None:
        """Write frames. Pieces may be memoryviews of the caller's arrays (out-of-band
        buffers): those are not copied whole into Twisted's buffer but fed to it a chunk
        at a time, as it drains, by this protocol acting as a pull producer."""
        if self.dropped:
            return
        if self._backlog is None:
            if all(type(p) is bytes for p in pieces):
                self.transport.writeSequence(pieces)
                # Send now rather than on the reactor's next turn: a loop iteration less
                # per batch. A failure shows up as the connection's loss on reading.
                self.transport.doWrite()
                return
            self._backlog = collections.deque(pieces)
            self.transport.registerProducer(self, False)  # calls resumeProducing now
        else:
            self._backlog.extend(pieces)

    def resumeProducing(self) -> None:  # noqa: N802 -- IPullProducer
        backlog = self._backlog
        if backlog is None:
            return
        out: list[bytes | memoryview] = []
        size = 0
        while backlog and size < CHUNK:
            piece = backlog.popleft()
            if size + len(piece) > CHUNK and type(piece) is not bytes:
                take = CHUNK - size
                backlog.appendleft(piece[take:])
                piece = piece[:take]
            out.append(piece)
            size += len(piece)
        if out:
            self.transport.write(b"".join(out))
        if not backlog:
            self._backlog = None
            self.transport.unregisterProducer()

    def pauseProducing(self) -> None:  # noqa: N802
        pass

    def stopProducing(self) -> None:  # noqa: N802
        self._backlog = None


def _write_output(payload: bytes) -> None:
    """A worker's print output, to the caller's *current* stdout/stderr (so that what
    replaced them -- pytest's capture, a redirect_stdout -- gets it)."""
    stream = sys.stdout if payload[:1] == b"\x01" else sys.stderr
    if stream is None:
        return
    try:
        stream.write(bytes(payload[1:]).decode("utf-8", "replace"))
        stream.flush()
    except Exception:  # a closed or broken stream must not break the connection
        pass


class _BurstLog:
    """Logs the drop of a stranger once per reason and burst: the first drop at once,
    then, every :data:`BURST_WINDOW` seconds while more come, one line with their count.
    A flood of connections must not become a flood of log lines."""

    def __init__(self) -> None:
        self.counts: dict[str, list[Any]] = {}   # key -> [count, last reason, level]
        self.timer: Any = None

    def log(self, level: int, what: str, reason: str) -> None:
        key = re.sub(r"\d+(\.\d+)?", "N", reason)  # sizes and timeouts vary, not the cause
        entry = self.counts.get(key)
        if entry is None:
            _log.log(level, "pydron: dropped %s: %s", what, reason)
            self.counts[key] = [0, reason, level]
        else:
            entry[0] += 1
            entry[1] = reason
        if self.timer is None:
            from pydron.backend.reactor import get_reactor
            self.timer = get_reactor().callLater(BURST_WINDOW, self._flush)

    def _flush(self) -> None:
        self.timer = None
        more = {k: v for k, v in self.counts.items() if v[0]}
        self.counts = {k: [0, v[1], v[2]] for k, v in more.items()}  # the burst goes on
        for count, reason, level in more.values():
            _log.log(level, "pydron: dropped %d more connection%s to the workers' port in "
                     "the last %.0f s: %s", count, "s" if count != 1 else "",
                     BURST_WINDOW, reason)
        if more:
            from pydron.backend.reactor import get_reactor
            self.timer = get_reactor().callLater(BURST_WINDOW, self._flush)


class WorkerFactory(Factory):
    """Makes a :class:`WorkerProtocol` for each connection to the pool's port, holding
    at most ``pool.max_pending`` of them unauthenticated (see the module docstring)."""

    noisy = False  # no "Starting factory" lines in Twisted's log

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.pending: dict[WorkerProtocol, None] = {}  # unauthenticated, oldest first
        self.drops = _BurstLog()

    def buildProtocol(self, addr: object) -> WorkerProtocol | None:  # noqa: N802
        limit = getattr(self.pool, "max_pending", 16)
        if len(self.pending) >= limit:
            oldest = next(iter(self.pending))
            if time.monotonic() - oldest.accepted < MIN_PENDING_AGE:
                # All are new: shed the newcomer (Twisted closes it at once), so that
                # a real worker among them still has time to answer.
                host = getattr(addr, "host", "?")
                self.drops.log(logging.WARNING, f"a connection from {host}",
                               f"{limit} connections are already waiting for a "
                               f"handshake (a flood of connections to the port?)")
                return None
            oldest.drop(f"{limit} connections are already waiting for a handshake "
                        f"(a flood of connections to the port?); this is the oldest")
        protocol = WorkerProtocol(self.pool, self)
        self.pending[protocol] = None
        return protocol
