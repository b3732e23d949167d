"""The answers to a worker's requests, after the handshake.

A worker that cannot import a module may ask for it (``MODULE_REQUEST``, the name) and
the master answers with its source or "not found" (``MODULE_REPLY``, JSON); see
:mod:`pydron.backend.engine.module_server`. Likewise for a shared object it does not hold
(``SHARED_REQUEST``, its digest): the master answers ``SHARED_REPLY`` (digest, found, the
in-band pickle), its out-of-band buffers in BUFFER frames just before it, as for TASKS;
see :mod:`pydron.backend.sharing`.
"""
from __future__ import annotations

import json
import struct
from typing import Any

from pydron.backend.protocol.frames import FrameError

__all__ = ["encode_module_reply", "decode_module_reply", "encode_shared_reply",
           "decode_shared_reply"]


def encode_module_reply(name: str, found: bool, is_package: bool = False,
                        filename: str = "", source: str = "") -> bytes:
    """The MODULE_REPLY payload: the source of a module the master serves to a worker
    that cannot import it (see :mod:`pydron.backend.engine.module_server`), or ``found: false``."""
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
