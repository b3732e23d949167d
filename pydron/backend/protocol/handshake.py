"""The handshake: the first frames both ways, before any pickle is read.

It authenticates both ends (a process that merely found the port learns nothing and can
make us unpickle nothing)::

    master -> worker   HELLO    nonce_m                                  (32 random bytes)
    worker -> master   AUTH     nonce_w | hmac(secret, "worker" nonce_m nonce_w info) | info
    master -> worker   WELCOME  hmac(secret, "master" nonce_w nonce_m info') | info'
                    or REFUSE   a human-readable reason (version mismatch)

``info`` is a small JSON object: the sender's Python major.minor, Pydron version, and for
a worker its index and pid. Each side checks the MAC first (constant-time) and only then
parses the JSON and compares versions. Handshake frames are limited to
:data:`~pydron.backend.protocol.frames.HANDSHAKE_MAX_FRAME` bytes.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import sys
from typing import Any

from pydron._version import __version__
from pydron.backend.protocol.frames import MAC_SIZE, NONCE_SIZE
from pydron.errors import PydronError

__all__ = [
    "HandshakeError", "new_secret", "new_nonce", "sign", "verify", "local_info",
    "version_mismatch", "encode_auth", "decode_auth", "encode_welcome", "decode_welcome",
]


class HandshakeError(PydronError):
    """Authentication or the version check failed; the connection must be dropped."""


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
