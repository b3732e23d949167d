"""The wire format between a pool (the master) and its worker processes.

Everything both ends must agree on lives here, and nothing else: frame layout and kinds,
the incremental frame decoder, the authentication handshake and the version check, and
the exit codes a worker uses to say why it stopped. The master side speaks it through
Twisted (:mod:`pydron.backend.master`), the worker through plain blocking sockets
(:mod:`pydron.backend.worker`); keeping the format free of either lets both share it.

Frames: a 4-byte big-endian length, then a 1-byte kind, then ``length - 1`` payload bytes.
A length is checked against a limit *before* any of the body is buffered, so a peer
cannot make us allocate a gigabyte by announcing one.

Handshake, before any pickle is read, authenticating both ends (a process that merely
found the port learns nothing and can make us unpickle nothing)::

    master -> worker   HELLO    nonce_m                                  (32 random bytes)
    worker -> master   AUTH     nonce_w | hmac(secret, "worker" nonce_m nonce_w info) | info
    master -> worker   WELCOME  hmac(secret, "master" nonce_w nonce_m info') | info'
                    or REFUSE   a human-readable reason (version mismatch)

``info`` is a small JSON object: the sender's Python major.minor, Pydron version, and for
a worker its index and pid. Each side checks the MAC first (constant-time) and only then
parses the JSON and compares versions. Handshake frames are limited to
:data:`HANDSHAKE_MAX_FRAME` bytes.

After the handshake, a worker that cannot import a module may ask for it
(``MODULE_REQUEST``, the name) and the master answers with its source or "not found"
(``MODULE_REPLY``, JSON); see :mod:`pydron.backend.modules`. Likewise for a shared object
it does not hold (``SHARED_REQUEST``, its digest): the master answers ``SHARED_REPLY``
(digest, found, the in-band pickle), its out-of-band buffers in BUFFER frames just before
it, as for TASKS; see :mod:`pydron.backend.sharing`.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import struct
import sys
from typing import Any

from pydron.errors import PydronError

__all__ = [
    "HEADER", "MAX_FRAME", "HANDSHAKE_MAX_FRAME", "NONCE_SIZE", "MAC_SIZE",
    "HELLO", "AUTH", "WELCOME", "REFUSE", "TASKS", "RESULTS", "BUFFER", "BUFFER_PART",
    "BUFFER_SIZE", "CANCEL", "HEARTBEAT", "OUTPUT", "BYE", "MODULE_REQUEST", "MODULE_REPLY",
    "SHARED_REQUEST", "SHARED_REPLY", "KIND_NAMES",
    "EXIT_OK", "EXIT_MASTER_LOST", "EXIT_REFUSED", "EXIT_CANCELLED", "EXIT_BAD_START",
    "EXIT_REASONS",
    "FrameError", "HandshakeError", "FrameDecoder", "BufferCollector", "frame", "buffer_frames",
    "frame_advice", "MAX_FRAME_LIMIT", "MIN_FRAME",
    "new_secret", "new_nonce", "sign", "verify", "local_info", "version_mismatch",
    "encode_auth", "decode_auth", "encode_welcome", "decode_welcome",
    "encode_module_reply", "decode_module_reply", "encode_shared_reply",
    "decode_shared_reply", "cpu_ticks",
    "Liveness",
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

KIND_NAMES = {
    HELLO: "HELLO", AUTH: "AUTH", WELCOME: "WELCOME", REFUSE: "REFUSE", TASKS: "TASKS",
    RESULTS: "RESULTS", BUFFER: "BUFFER", BUFFER_PART: "BUFFER_PART",
    BUFFER_SIZE: "BUFFER_SIZE", CANCEL: "CANCEL",
    HEARTBEAT: "HEARTBEAT", OUTPUT: "OUTPUT", BYE: "BYE",
    MODULE_REQUEST: "MODULE_REQUEST", MODULE_REPLY: "MODULE_REPLY",
    SHARED_REQUEST: "SHARED_REQUEST", SHARED_REPLY: "SHARED_REPLY",
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


class HandshakeError(PydronError):
    """Authentication or the version check failed; the connection must be dropped."""


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


# --------------------------------------------------------------------------- handshake


def new_secret() -> bytes:
    """A fresh per-pool secret (32 random bytes, from the ``secrets`` module)."""
    return secrets.token_bytes(32)


def new_nonce() -> bytes:
    """A fresh challenge."""
    return secrets.token_bytes(NONCE_SIZE)


def sign(secret: bytes, role: bytes, first: bytes, second: bytes, info: bytes) -> bytes:
    """HMAC-SHA256 over role, two fixed-size nonces and the info bytes.

    The role label keeps a worker's answer from being replayed as the master's: the two
    MACs of one handshake cover the nonces in opposite orders and different labels.
    """
    return hmac.new(secret, role + b"\0" + first + second + info, hashlib.sha256).digest()


def verify(secret: bytes, mac: bytes, role: bytes, first: bytes, second: bytes,
           info: bytes) -> bool:
    """Constant-time check of a MAC made by :func:`sign`."""
    return hmac.compare_digest(mac, sign(secret, role, first, second, info))


def local_info(**extra: Any) -> dict[str, Any]:
    """What this process says about itself in the handshake."""
    from pydron import __version__
    return {"python": f"{sys.version_info[0]}.{sys.version_info[1]}",
            "pydron": __version__, **extra}


def version_mismatch(mine: dict[str, Any], theirs: dict[str, Any], me: str,
                     them: str) -> str | None:
    """A clear message if the two ends cannot share pickles, else None.

    Pickled code and data are only compatible between the same Python major.minor, and
    the task format between the same Pydron version.
    """
    problems = []
    for key, label in (("python", "Python"), ("pydron", "Pydron")):
        if mine.get(key) != theirs.get(key):
            problems.append(f"{me} runs {label} {mine.get(key)}, {them} runs "
                            f"{label} {theirs.get(key)}")
    if not problems:
        return None
    return ("version mismatch: " + "; ".join(problems) +
            " (master and workers must use the same Python major.minor and the same "
            "Pydron version)")


def encode_auth(secret: bytes, nonce_m: bytes, info: dict[str, Any]) -> tuple[bytes, bytes]:
    """The worker's AUTH payload, and the nonce it chose (to check the WELCOME with)."""
    nonce_w = new_nonce()
    raw = json.dumps(info, sort_keys=True).encode()
    return nonce_w + sign(secret, b"worker", nonce_m, nonce_w, raw) + raw, nonce_w


def decode_auth(secret: bytes, nonce_m: bytes, payload: bytes) -> tuple[bytes, dict[str, Any]]:
    """Check a worker's AUTH payload; return its nonce and info, or raise HandshakeError."""
    if len(payload) < NONCE_SIZE + MAC_SIZE:
        raise HandshakeError("the AUTH frame is too short")
    nonce_w = payload[:NONCE_SIZE]
    mac = payload[NONCE_SIZE:NONCE_SIZE + MAC_SIZE]
    raw = payload[NONCE_SIZE + MAC_SIZE:]
    if not verify(secret, mac, b"worker", nonce_m, nonce_w, raw):
        raise HandshakeError("wrong HMAC (the peer does not know the pool's secret)")
    return nonce_w, _parse_info(raw)


def encode_welcome(secret: bytes, nonce_m: bytes, nonce_w: bytes,
                   info: dict[str, Any]) -> bytes:
    """The master's WELCOME payload: it proves the master knows the secret too."""
    raw = json.dumps(info, sort_keys=True).encode()
    return sign(secret, b"master", nonce_w, nonce_m, raw) + raw


def decode_welcome(secret: bytes, nonce_m: bytes, nonce_w: bytes,
                   payload: bytes) -> dict[str, Any]:
    """Check the master's WELCOME payload; return its info, or raise HandshakeError."""
    mac, raw = payload[:MAC_SIZE], payload[MAC_SIZE:]
    if len(mac) < MAC_SIZE or not verify(secret, mac, b"master", nonce_w, nonce_m, raw):
        raise HandshakeError("wrong HMAC from the master (it does not know the secret)")
    return _parse_info(raw)


def _parse_info(raw: bytes) -> dict[str, Any]:
    try:
        info = json.loads(raw.decode())
    except (UnicodeDecodeError, ValueError):
        raise HandshakeError("the handshake info is not valid JSON") from None
    if not isinstance(info, dict):
        raise HandshakeError("the handshake info is not a JSON object")
    return info


# --------------------------------------------------------------------------- modules


def encode_module_reply(name: str, found: bool, is_package: bool = False,
                        filename: str = "", source: str = "") -> bytes:
    """The MODULE_REPLY payload: the source of a module the master serves to a worker
    that cannot import it (see :mod:`pydron.backend.modules`), or ``found: false``."""
    return json.dumps({"name": name, "found": bool(found), "is_package": bool(is_package),
                       "filename": filename, "source": source}).encode("utf-8")


def decode_module_reply(payload: bytes | bytearray) -> dict[str, Any]:
    """A MODULE_REPLY payload as a dict; FrameError if it is not one."""
    try:
        reply = json.loads(bytes(payload).decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise FrameError("a MODULE_REPLY frame that is not valid JSON") from None
    if not isinstance(reply, dict) or not isinstance(reply.get("name"), str):
        raise FrameError("a MODULE_REPLY frame without a module name")
    return reply


# --------------------------------------------------------------------------- shared data

_SHARED_HEAD = struct.Struct(">B?II")  # digest length, found, buffer count, mapping length


def encode_shared_reply(digest: bytes, found: bool, nbuf: int = 0, body: bytes = b"",
                        mapping: dict[str, Any] | None = None) -> bytes:
    """The SHARED_REPLY payload: the in-band pickle of the shared object ``digest``,
    whose ``nbuf`` out-of-band buffers came just before it, or, for a worker on the
    master's machine, lie in the master's memory file ``mapping`` describes (JSON:
    ``pid``, ``fd``, ``layout`` [[offset, size], ...]); or, not ``found``, why not
    (UTF-8), for the worker's error message."""
    raw = json.dumps(mapping).encode() if mapping is not None else b""
    return _SHARED_HEAD.pack(len(digest), found, nbuf, len(raw)) + digest + raw + body


def decode_shared_reply(payload: bytes | bytearray
                        ) -> tuple[bytes, bool, int, dict[str, Any] | None, bytes]:
    """``(digest, found, nbuf, mapping or None, body)`` of a SHARED_REPLY; FrameError if
    it is malformed."""
    size = _SHARED_HEAD.size
    if len(payload) < size:
        raise FrameError("a SHARED_REPLY frame that is too short")
    length, found, nbuf, raw = _SHARED_HEAD.unpack_from(payload)
    if len(payload) < size + length + raw:
        raise FrameError("a SHARED_REPLY frame shorter than its header says")
    digest = bytes(payload[size:size + length])
    mapping = None
    if raw:
        try:
            mapping = json.loads(bytes(payload[size + length:size + length + raw]))
        except ValueError:
            raise FrameError("a SHARED_REPLY frame with a malformed mapping") from None
    return digest, found, nbuf, mapping, bytes(payload[size + length + raw:])


# --------------------------------------------------------------------------- liveness


def cpu_ticks(pid: int) -> int | None:
    """CPU time a process on this machine has used (clock ticks, user + system), or
    None if that cannot be known or it cannot progress: no /proc, no such process, a
    zombie, a stopped process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        fields = data.rsplit(b")", 1)[1].split()
        if fields[0] in (b"Z", b"X", b"T", b"t"):
            return None
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return None


class Liveness:
    """Tells a silent peer that is working from one that is gone or hung.

    Heartbeats come from a thread of the peer, which needs the GIL: a call that holds it
    for long (a C extension, ``sorted`` of a huge list, ``sum(range(10**9))``) silences a
    healthy worker, and a caller doing so silences the master. So, for a peer process on
    this machine, silence only counts as loss while the peer's CPU time stands still too.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.ticks: int | None = None
        self.progress = 0.0

    def working(self, now: float, within: float) -> bool:
        """Sample the peer's CPU time: True if it has advanced within the last
        ``within`` seconds (the first sample counts as an advance: the benefit of the
        doubt). False at once for a stopped or dead process, or one we cannot see."""
        ticks = cpu_ticks(self.pid) if self.pid > 0 else None
        if ticks is None:
            return False
        if ticks != self.ticks:
            self.ticks = ticks
            self.progress = now
        return now - self.progress < within
