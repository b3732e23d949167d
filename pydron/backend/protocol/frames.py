"""The frame format between a pool (the master) and its worker processes.

Frames: a 4-byte big-endian length, then a 1-byte kind, then ``length - 1`` payload bytes.
A length is checked against a limit *before* any of the body is buffered, so a peer
cannot make us allocate a gigabyte by announcing one. This module holds the frame kinds,
the limits, the incremental decoder and the exit codes a worker uses to say why it
stopped: what both ends must agree on about bytes, and nothing else. The master speaks it
through Twisted (:mod:`pydron.backend.engine.connection`), the worker through plain
blocking sockets (:mod:`pydron.backend.worker.program`); keeping the format free of
either lets both share it. What the frames carry is in the sibling modules:
:mod:`.handshake` (the first frames), :mod:`.records` (TASKS and RESULTS),
:mod:`.replies` (the answers to a worker's requests).
"""
from __future__ import annotations

import struct

from pydron.errors import PydronError

__all__ = [
    "HEADER", "MAX_FRAME", "HANDSHAKE_MAX_FRAME", "NONCE_SIZE", "MAC_SIZE",
    "HELLO", "AUTH", "WELCOME", "REFUSE", "TASKS", "RESULTS", "BUFFER", "BUFFER_PART",
    "BUFFER_SIZE", "CANCEL", "HEARTBEAT", "OUTPUT", "BYE", "MODULE_REQUEST", "MODULE_REPLY",
    "SHARED_REQUEST", "SHARED_REPLY", "LOG", "KIND_NAMES",
    "EXIT_OK", "EXIT_MASTER_LOST", "EXIT_REFUSED", "EXIT_CANCELLED", "EXIT_BAD_START",
    "EXIT_REASONS",
    "FrameError", "FrameDecoder", "BufferCollector", "frame", "buffer_frames",
    "frame_advice", "MAX_FRAME_LIMIT", "MIN_FRAME",
]

HEADER = struct.Struct(">IB")
"""Frame header: length of (kind + payload), then the kind."""

MAX_FRAME = 1 << 30
"""Default largest frame (1 GiB): the ``"max_frame"`` setting of ``pydron.conf``. It bounds
the in-band pickle of one call's arguments or result; larger out-of-band buffers (numpy
arrays, bytearrays) travel split in parts and are not limited by it."""

MAX_FRAME_LIMIT = (1 << 32) - 1
"""The largest frame the 4-byte length field can announce."""

MIN_FRAME = 8192
"""The smallest frame limit a pool may use: above :data:`HANDSHAKE_MAX_FRAME`, which is
how a :class:`FrameDecoder` knows that its peer is authenticated."""

MAX_JOINED = 1 << 46
"""The largest split buffer a receiver preallocates (64 TiB: a sanity bound only)."""

HANDSHAKE_MAX_FRAME = 4096
"""Largest frame accepted before the peer is authenticated."""

NONCE_SIZE = 32
MAC_SIZE = 32  # sha256

# Frame kinds. Handshake:
HELLO = 1        # master -> worker: nonce
AUTH = 2         # worker -> master: nonce, mac, info
WELCOME = 3      # master -> worker: mac, info
REFUSE = 4       # master -> worker: utf-8 reason; the connection closes after it
# After the handshake:
TASKS = 10       # master -> worker: pickled list of tasks (see multicore / worker)
RESULTS = 11     # worker -> master: pickled list of outcomes
BUFFER = 12      # either way: one out-of-band pickle buffer (or its last part)
BUFFER_PART = 13  # either way: a leading part of a buffer larger than the frame limit
BUFFER_SIZE = 20  # either way: 8-byte total size of the split buffer whose parts follow
CANCEL = 14      # master -> worker: 8-byte big-endian call ids not to run
HEARTBEAT = 15   # either way: empty; any frame proves the peer alive
OUTPUT = 16      # worker -> master: 1 byte stream (1 stdout, 2 stderr) + utf-8 text
BYE = 17         # master -> worker: the pool is done with you; exit normally
MODULE_REQUEST = 18  # worker -> master: utf-8 name of a module the worker cannot import
MODULE_REPLY = 19    # master -> worker: JSON {name, found, is_package, filename, source}
SHARED_REQUEST = 21  # worker -> master: 1 byte (1: I can map your memory), then a digest
SHARED_REPLY = 22    # master -> worker: digest, found, buffers or mapping, pickle (or why not)
LOG = 23             # worker -> master: JSON of a logging record (see protocol.log_records)
# Values kept on workers (see pydron.backend.protocol.values):
FETCH = 24           # master -> worker: request id, key: send me the value you keep as key
VALUE = 25           # either way: request id, key, found, buffer count, pickle (or why not)
RELEASE = 26         # master -> worker: 8-byte keys of kept values nobody needs any more
VALUE_REQUEST = 27   # worker -> master: request id, key: a value another worker keeps
PEER = 28            # worker -> master: utf-8 "host port" where other workers fetch from it

KIND_NAMES = {
    HELLO: "HELLO", AUTH: "AUTH", WELCOME: "WELCOME", REFUSE: "REFUSE", TASKS: "TASKS",
    RESULTS: "RESULTS", BUFFER: "BUFFER", BUFFER_PART: "BUFFER_PART",
    BUFFER_SIZE: "BUFFER_SIZE", CANCEL: "CANCEL",
    HEARTBEAT: "HEARTBEAT", OUTPUT: "OUTPUT", BYE: "BYE",
    MODULE_REQUEST: "MODULE_REQUEST", MODULE_REPLY: "MODULE_REPLY",
    SHARED_REQUEST: "SHARED_REQUEST", SHARED_REPLY: "SHARED_REPLY", LOG: "LOG",
    FETCH: "FETCH", VALUE: "VALUE", RELEASE: "RELEASE", VALUE_REQUEST: "VALUE_REQUEST",
    PEER: "PEER",
}

# Worker exit codes: the master turns them into words in WorkerLostError messages.
EXIT_OK = 0            # told BYE, or its connection closed after BYE
EXIT_MASTER_LOST = 70  # the master went away (connection closed, or silent too long)
EXIT_REFUSED = 71      # the handshake failed (wrong secret, version mismatch)
EXIT_CANCELLED = 72    # the master cancelled the call it was running
EXIT_BAD_START = 73    # bad command line or no secret on stdin

EXIT_REASONS = {
    EXIT_OK: "exited normally",
    EXIT_MASTER_LOST: "exited because it lost contact with the master",
    EXIT_REFUSED: "exited because the handshake with the master failed",
    EXIT_CANCELLED: "exited because its running call was cancelled",
    EXIT_BAD_START: "exited because it was started wrongly",
}


class FrameError(PydronError):
    """The byte stream is not a valid sequence of frames (too large, malformed)."""


# --------------------------------------------------------------------------- frames


def frame(kind: int, payload: bytes = b"") -> bytes:
    """One complete frame as bytes."""
    return HEADER.pack(len(payload) + 1, kind) + payload


def buffer_frames(data: bytes | memoryview, max_frame: int) -> list[bytes | memoryview]:
    """The pieces (headers and slices, ready for a gathering write) that carry one
    out-of-band buffer: BUFFER_PART frames for all but the last part, then a BUFFER.

    A buffer larger than the frame limit is split rather than refused, so the limit
    protects memory without capping the size of a numpy array. A split buffer is
    announced first by a BUFFER_SIZE frame with its total size, so that the receiver's
    :class:`FrameDecoder` reads every part straight into one preallocated bytearray:
    joining parts after the fact would hold the buffer twice.
    """
    view = memoryview(data).cast("B")
    step = max_frame - 1
    pieces: list[bytes | memoryview] = []
    start, total = 0, len(view)
    if total > step:
        pieces.append(frame(BUFFER_SIZE, total.to_bytes(8, "big")))
    while total - start > step:
        pieces.append(HEADER.pack(step + 1, BUFFER_PART))
        pieces.append(view[start:start + step])
        start += step
    pieces.append(HEADER.pack(total - start + 1, BUFFER))
    pieces.append(view[start:] if start else data)
    return pieces


def frame_advice(size: int) -> str:
    """What to do about an in-band pickle of ``size`` bytes over the frame limit: the
    setting to raise, and to what."""
    need = size + 1024
    if need <= MAX_FRAME_LIMIT:
        return (f'set "max_frame" in pydron.conf to at least {need} (or pass the large '
                f"data as a numpy array or bytearray, which travels outside the frame)")
    return ("this is more than any frame can carry: pass the large data as a numpy array "
            "or bytearray, which travels outside the frame")


class BufferCollector:
    """Gathers the out-of-band buffers that precede a TASKS or RESULTS frame, joining a
    buffer that arrived split into BUFFER_PART frames (see :func:`buffer_frames`)."""

    __slots__ = ("buffers", "_parts")

    def __init__(self) -> None:
        self.buffers: list[bytes | bytearray] = []
        self._parts: list[bytes | bytearray] = []

    def add(self, kind: int, payload: bytes | bytearray) -> None:
        """Take a BUFFER or BUFFER_PART frame's payload (a BUFFER_SIZE announcement that
        the decoder did not act on is ignored: the parts are joined here then)."""
        if kind == BUFFER_SIZE:
            return
        if kind == BUFFER_PART:
            self._parts.append(payload)
            return
        if self._parts:
            self._parts.append(payload)
            payload = bytearray().join(self._parts)
            self._parts = []
        self.buffers.append(payload)

    def take(self) -> list[bytes | bytearray]:
        """The buffers gathered so far, in order; the collector starts afresh."""
        buffers, self.buffers = self.buffers, []
        return buffers


class FrameDecoder:
    """Turns a byte stream into ``(kind, payload)`` frames, incrementally.

    Small frames are cut out of one growing buffer. A frame above ``big`` bytes gets its
    own ``bytearray`` of exactly its size, filled in place: :meth:`pending_view` lets a
    socket reader ``recv_into`` it directly (no copy), and the payload handed out is that
    writable bytearray, so an array unpickled over it is writable, as after a local pickle
    round trip. ``limit`` may be changed between frames (raised after the handshake).

    A buffer split into parts (BUFFER_SIZE, BUFFER_PART..., BUFFER; see
    :func:`buffer_frames`) is received into one bytearray of its announced size, each
    part written in place, and handed out as a single BUFFER frame: the parts never exist
    apart from it. BUFFER_SIZE is honoured only once ``limit`` has been raised above
    :data:`HANDSHAKE_MAX_FRAME` (after authentication), so an unauthenticated peer
    cannot make us allocate anything.
    """

    __slots__ = ("limit", "big", "_buf", "_pos", "_frame", "_filled", "_kind", "_join",
                 "_join_at")

    def __init__(self, limit: int, big: int = 1 << 16) -> None:
        self.limit = limit
        self.big = big
        self._buf = bytearray()
        self._pos = 0
        self._frame: bytearray | memoryview | None = None   # a big frame being filled
        self._filled = 0
        self._kind = 0
        self._join: bytearray | None = None  # a split buffer being received
        self._join_at = 0

    def _target(self, kind: int, size: int) -> memoryview | None:
        """Where the body of a ``size``-byte frame goes while a split buffer is being
        received: its next slice (None for other frames, or when none is)."""
        join = self._join
        if join is None or (kind != BUFFER and kind != BUFFER_PART):
            return None
        at = self._join_at
        if at + size > len(join):
            raise FrameError(f"the parts of a split buffer exceed its announced size of "
                             f"{len(join)} bytes")
        self._join_at = at + size
        return memoryview(join)[at:at + size]

    def _completed(self, kind: int, body: bytes | bytearray | memoryview,
                   frames: list[tuple[int, bytes | bytearray]]) -> None:
        """A frame is complete: hand it out, or account for it in a split buffer."""
        if type(body) is memoryview:  # a slice of the split buffer, filled
            if kind == BUFFER_PART:
                return
            join, self._join = self._join, None
            if self._join_at != len(join):  # type: ignore[arg-type]
                raise FrameError(f"a split buffer of {self._join_at} bytes, announced as "
                                 f"{len(join)}")  # type: ignore[arg-type]
            frames.append((BUFFER, join))  # type: ignore[arg-type]
            return
        if kind == BUFFER_SIZE and self.limit > HANDSHAKE_MAX_FRAME:
            if len(body) != 8 or self._join is not None:
                raise FrameError("a malformed BUFFER_SIZE frame")
            total = int.from_bytes(body, "big")
            if not 0 < total <= MAX_JOINED:
                raise FrameError(f"a split buffer of {total} bytes announced")
            self._join = bytearray(total)  # zeroed pages the kernel maps lazily
            self._join_at = 0
            return
        frames.append((kind, body))  # type: ignore[arg-type]

    def pending_view(self) -> memoryview | None:
        """The unfilled rest of a big frame in progress, for ``recv_into``; else None."""
        if self._frame is None:
            return None
        return memoryview(self._frame)[self._filled:]

    def advance(self, n: int) -> list[tuple[int, bytes | bytearray]]:
        """Account for ``n`` bytes written into :meth:`pending_view`; frames completed."""
        self._filled += n
        if self._filled < len(self._frame):  # type: ignore[arg-type]
            return []
        done: list[tuple[int, bytes | bytearray]] = []
        body, self._frame = self._frame, None
        self._completed(self._kind, body, done)  # type: ignore[arg-type]
        return done

    def feed(self, data: bytes) -> list[tuple[int, bytes | bytearray]]:
        """Add received bytes; return the frames they complete, in order.

        Raises FrameError for a frame announced larger than ``limit`` (or of length 0),
        before buffering its body.
        """
        frames: list[tuple[int, bytes | bytearray]] = []
        if self._frame is not None:
            view = memoryview(data)
            room = len(self._frame) - self._filled
            take = min(room, len(view))
            self._frame[self._filled:self._filled + take] = view[:take]
            self._filled += take
            if self._filled < len(self._frame):
                return frames
            body, self._frame = self._frame, None
            self._completed(self._kind, body, frames)
            data = bytes(view[take:]) if take < len(view) else b""
            if not data:
                return frames
        buf = self._buf
        buf += data
        pos = self._pos
        end = len(buf)
        unpack = HEADER.unpack_from
        size = HEADER.size
        view = memoryview(buf)
        try:
            while end - pos >= size:
                length, kind = unpack(buf, pos)
                if length < 1 or length > self.limit:
                    raise FrameError(f"a frame of {length} bytes announced (limit "
                                     f"{self.limit}, kind {kind})" if length else
                                     "a frame of length 0")
                body = pos + size
                target = self._target(kind, length - 1)
                if end - body >= length - 1:
                    if target is not None:
                        target[:] = view[body:body + length - 1]
                        self._completed(kind, target, frames)
                    else:
                        self._completed(kind, bytes(view[body:body + length - 1]), frames)
                    pos = body + length - 1
                    continue
                if target is not None or length - 1 > self.big:
                    # Start a big frame of its own (or the next slice of a split buffer);
                    # move what we have of it there.
                    self._frame = target if target is not None else bytearray(length - 1)
                    self._frame[:end - body] = view[body:end]
                    self._filled = end - body
                    self._kind = kind
                    pos = end
                break
        except FrameError:
            view.release()
            self._buf = bytearray()
            self._pos = 0
            self._join = None
            raise
        view.release()
        if pos >= end:
            buf.clear()
            self._pos = 0
        elif pos > 1 << 16:
            del buf[:pos]
            self._pos = 0
        else:
            self._pos = pos
        return frames
