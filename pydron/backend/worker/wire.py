"""Blocking socket helpers the worker program uses with its master and its peers.

The worker has no event loop (see :mod:`pydron.backend.worker.program`): these read and
write frames on plain sockets, and pass the handshake of
:mod:`pydron.backend.protocol.handshake` from either side -- as the connecting side (to
the master, or to another worker holding a value it needs), or as the accepting side (a
peer fetching a value from this worker's store), which checks the caller knows the pool's
secret before reading anything else from it.
"""
from __future__ import annotations

import os
import socket
from typing import Any

from pydron.backend.protocol import frames, handshake

__all__ = ["sendall", "Dropped", "recv_exact", "recv_frame", "client_handshake",
           "server_handshake"]


def sendall(sock: socket.socket, pieces: list[bytes | memoryview]) -> None:
    """A gathering write of all pieces (no joining copy), whatever the kernel takes."""
    if len(pieces) == 1:
        sock.sendall(pieces[0])
        return
    views = [memoryview(p).cast("B") for p in pieces]
    while views:
        sent = sock.sendmsg(views[:512])
        while sent:
            if sent >= len(views[0]):
                sent -= len(views[0])
                views.pop(0)
            else:
                views[0] = views[0][sent:]
                sent = 0


class Dropped(handshake.HandshakeError):
    """The connection closed during the handshake, without a REFUSE: worth another try
    (the master sheds unauthenticated connections when strangers flood its port)."""


def recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        more = sock.recv(n - len(data))
        if not more:
            raise Dropped("the master closed the connection")
        data += more
    return data


def recv_frame(sock: socket.socket) -> tuple[int, bytes]:
    """Exactly one small frame, blocking (the handshake only: what follows it belongs to
    the frame decoder, with the full size limit)."""
    length, kind = frames.HEADER.unpack(recv_exact(sock, frames.HEADER.size))
    if not 1 <= length <= frames.HANDSHAKE_MAX_FRAME:
        raise frames.FrameError(f"a handshake frame of {length} bytes")
    return kind, recv_exact(sock, length - 1)


def client_handshake(sock: socket.socket, secret: bytes, index: int, timeout: float,
                     them: str = "the master") -> None:
    """Pass the handshake as the connecting side (a worker, to its master or to a peer)."""
    sock.settimeout(timeout)
    kind, hello = recv_frame(sock)
    if kind != frames.HELLO or len(hello) != frames.NONCE_SIZE:
        raise handshake.HandshakeError("the peer did not start with a HELLO")
    mine = handshake.local_info(index=index, pid=os.getpid(), host=socket.gethostname())
    auth, nonce_w = handshake.encode_auth(secret, hello, mine)
    sock.sendall(frames.frame(frames.AUTH, auth))
    kind, answer = recv_frame(sock)
    if kind == frames.REFUSE:
        raise handshake.HandshakeError(f"{them} refused this worker: " +
                                  answer.decode("utf-8", "replace"))
    if kind != frames.WELCOME:
        raise handshake.HandshakeError(f"expected WELCOME, got frame kind {kind}")
    theirs = handshake.decode_welcome(secret, hello, nonce_w, answer)
    problem = handshake.version_mismatch(mine, theirs, f"worker {index}", them)
    if problem:
        raise handshake.HandshakeError(problem)
    sock.settimeout(None)


def server_handshake(sock: socket.socket, secret: bytes, index: int,
                     timeout: float) -> dict[str, Any]:
    """Pass the handshake as the accepting side (a worker serving its store to a peer);
    the peer's info, or HandshakeError."""
    sock.settimeout(timeout)
    nonce = handshake.new_nonce()
    sock.sendall(frames.frame(frames.HELLO, nonce))
    kind, auth = recv_frame(sock)
    if kind != frames.AUTH:
        raise handshake.HandshakeError("the peer did not answer with AUTH")
    nonce_w, theirs = handshake.decode_auth(secret, nonce, auth)
    mine = handshake.local_info(index=index, pid=os.getpid(), host=socket.gethostname())
    problem = handshake.version_mismatch(mine, theirs, f"worker {index}", "a peer")
    if problem:
        sock.sendall(frames.frame(frames.REFUSE, problem.encode()))
        raise handshake.HandshakeError(problem)
    sock.sendall(frames.frame(frames.WELCOME, handshake.encode_welcome(secret, nonce, nonce_w,
                                                                       mine)))
    sock.settimeout(None)
    return theirs
