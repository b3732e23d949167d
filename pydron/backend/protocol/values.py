"""Values kept on workers: the frames that move them, and how a reference to one pickles.

A worker told it may keep a call's result (``Task.keep``, a key) keeps a large one
(``records.KEEP_MIN`` bytes or more of pickle) in its store and reports only its size
(``Outcome.kept``). The caller then holds a :class:`pydron.remote_value.Remote`. Passed to
a later call, it pickles as :func:`kept_value` of its key: the worker running that call
uses the value from its own store when it holds it, and otherwise asks the master for it
(``VALUE_REQUEST``); the master has the worker that keeps it send it (``FETCH``) and passes
the reply (``VALUE``, its out-of-band buffers in BUFFER frames before it, as for TASKS)
on as it came, bytes never unpickled in the caller. The caller fetches a value it reads
itself the same way. ``RELEASE`` tells a worker to drop values nobody needs any more.

Payloads (big-endian): FETCH and VALUE_REQUEST are ``request id (8), key (8)``; RELEASE
is a run of 8-byte keys; VALUE is ``request id (8), key (8), found (1), buffer count (4)``
then the in-band pickle, or, not found, why not in UTF-8.
"""
from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from pydron.backend.protocol.frames import FrameError
from pydron.errors import SerializationError

__all__ = ["KeptPart", "encode_request", "decode_request", "encode_value", "decode_value",
           "encode_keys", "decode_keys", "kept_value", "set_resolver", "LOST", "INPUT_LOST",
           "KEEP_ALWAYS"]

_REQUEST = struct.Struct(">QQ")
_VALUE = struct.Struct(">QQ?I")
_KEY = struct.Struct(">Q")

LOST = b"lost"
"""The body of a not-found VALUE whose value must be computed again (its worker was
lost): the asking worker gives its call back to be run once the value is there again."""

KEEP_ALWAYS = 1 << 62
"""Set in a :class:`~pydron.backend.protocol.records.Task`'s ``keep``: keep the result
under the rest of the key whatever its size (a lost value computed again must be kept
where its readers expect it, even by a function whose result's size varies)."""

INPUT_LOST = "pydron:input-lost"
"""The ``name`` of a failed :class:`~pydron.backend.protocol.records.Outcome` that is no
failure of the call: an input was lost (``message``: its key); the master runs the call
again once the value is computed again."""


class KeptPart:
    """In a tuple result whose large items the worker kept each on its own: where item
    ``index`` was (kept under the task's key plus ``index + 1``; see
    ``Outcome.parts``)."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def __reduce__(self) -> tuple:
        return KeptPart, (self.index,)


PART_BITS = 8
"""Keys of kept values leave their low byte to the items of a tuple result: a call's
value is kept under ``id << PART_BITS``, item i of its tuple under that plus i + 1."""


def encode_request(request: int, key: int) -> bytes:
    return _REQUEST.pack(request, key)


def decode_request(payload: bytes | bytearray) -> tuple[int, int]:
    if len(payload) != _REQUEST.size:
        raise FrameError("a FETCH or VALUE_REQUEST frame of the wrong size")
    return _REQUEST.unpack(payload)


def encode_value(request: int, key: int, found: bool, nbuf: int, body: bytes) -> bytes:
    return _VALUE.pack(request, key, found, nbuf) + body


def decode_value(payload: bytes | bytearray) -> tuple[int, int, bool, int, bytes]:
    """``(request, key, found, nbuf, body)`` of a VALUE frame."""
    if len(payload) < _VALUE.size:
        raise FrameError("a VALUE frame that is too short")
    request, key, found, nbuf = _VALUE.unpack_from(payload)
    return request, key, found, nbuf, bytes(payload[_VALUE.size:])


def encode_keys(keys: list[int]) -> bytes:
    return b"".join(_KEY.pack(k) for k in keys)


def decode_keys(payload: bytes | bytearray) -> list[int]:
    if len(payload) % 8:
        raise FrameError("a RELEASE frame whose size is not a multiple of 8")
    return [_KEY.unpack_from(payload, i)[0] for i in range(0, len(payload), 8)]


_resolver: Callable[[int, int, str], Any] | None = None


def set_resolver(resolve: Callable[[int, int, str], Any] | None) -> None:
    """Install how this process turns a kept value's key into the value (a worker
    installs its store, which asks the master for what it lacks)."""
    global _resolver
    _resolver = resolve


def kept_value(key: int, nbytes: int, label: str) -> Any:
    """What a reference to a kept value becomes when a call's arguments are unpickled."""
    resolve = _resolver
    if resolve is None:
        raise SerializationError(
            f"a {label} kept on a pydron worker (key {key}) was unpickled outside a worker",
            item="a kept value", value_type=label)
    return resolve(key, nbytes, label)
