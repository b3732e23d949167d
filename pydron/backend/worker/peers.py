"""Direct transfers of kept values between workers, bypassing the caller.

Each worker listens on a port of its own (on the address it reaches its master from) and
tells the master where (a PEER frame). When the master sends a call whose kept inputs lie
on other workers, the task names where each lies (``Task.sources``); the worker fetches
them from there itself: it connects, passes the same HMAC handshake as with the master (the
pool's secret proves both ends are of this pool, before a byte is unpickled), sends one
FETCH and reads the value's buffers and VALUE frame, straight into the buffers the value
is unpickled over. Where that fails -- workers on hosts that cannot reach each other (ssh
tunnels, NAT), a holder gone meanwhile -- the worker asks the master instead, which relays
(see :mod:`pydron.backend.worker.store`).

One connection serves one fetch: values worth keeping are at least a megabyte, so the
connection's set-up (well under a millisecond here) is small beside the transfer, and no
idle connections pile up between workers.
"""
from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from pydron.backend.protocol import frames, handshake, values
from pydron.backend.worker.wire import client_handshake, sendall, server_handshake

__all__ = ["PeerServer", "fetch"]

_log = logging.getLogger("pydron.worker")

HANDSHAKE_TIMEOUT = 5.0


class PeerServer:
    """Serves this worker's kept values to the other workers of its pool."""

    def __init__(self, serve: Callable[[int, int, Callable[[list[Any]], None]], None],
                 secret: bytes, index: int, max_frame: int) -> None:
        self._serve = serve       # store.serve(request, key, send)
        self._secret = secret
        self._index = index
        self._max_frame = max_frame
        self._sock: socket.socket | None = None

    def start(self, host: str) -> int:
        """Listen on ``host`` (a free port); the port, or 0 if none could be had."""
        try:
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
            sock.bind((host, 0))
            sock.listen(16)
        except OSError as exc:
            _log.debug("pydron worker %d: no peer port on %s: %s", self._index, host, exc)
            return 0
        self._sock = sock
        threading.Thread(target=self._accept_loop, name="pydron-peers", daemon=True).start()
        return sock.getsockname()[1]

    def _accept_loop(self) -> None:
        sock = self._sock
        while sock is not None:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve_one, args=(conn,), name="pydron-peer",
                             daemon=True).start()

    def _serve_one(self, conn: socket.socket) -> None:
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            server_handshake(conn, self._secret, self._index, HANDSHAKE_TIMEOUT)
            decoder = frames.FrameDecoder(64)
            while True:
                data = conn.recv(4096)
                if not data:
                    return
                for kind, payload in decoder.feed(data):
                    if kind != frames.FETCH:
                        return
                    request, key = values.decode_request(payload)
                    self._serve(request, key, lambda pieces: sendall(conn, pieces))
        except (OSError, handshake.HandshakeError, frames.FrameError):
            return  # a stranger, or a peer gone: nothing of ours was read or lost
        finally:
            conn.close()


def fetch(host: str, port: int, secret: bytes, index: int, key: int, max_frame: int,
          timeout: float) -> tuple[bytes, list[Any], float] | None:
    """The value ``key`` from the worker listening at ``host:port``: ``(pickle, buffers,
    seconds)``, or None if it cannot be had from there (the caller asks the master)."""
    started = time.perf_counter()
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError:
        return None
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client_handshake(sock, secret, index, timeout, "a peer")
        sock.settimeout(timeout)
        sock.sendall(frames.frame(frames.FETCH, values.encode_request(1, key)))
        decoder = frames.FrameDecoder(max_frame)
        buffers = frames.BufferCollector()
        while True:
            view = decoder.pending_view()
            if view is not None:
                n = sock.recv_into(view)
                if not n:
                    return None
                complete = decoder.advance(n)
            else:
                data = sock.recv(1 << 18)
                if not data:
                    return None
                complete = decoder.feed(data)
            for kind, payload in complete:
                if kind == frames.BUFFER or kind == frames.BUFFER_PART:
                    buffers.add(kind, payload)
                elif kind == frames.VALUE:
                    _, got, found, nbuf, body = values.decode_value(payload)
                    taken = buffers.take()
                    if not found or got != key or len(taken) != nbuf:
                        return None
                    return body, taken, time.perf_counter() - started
                else:
                    return None
    except (OSError, handshake.HandshakeError, frames.FrameError):
        return None
    finally:
        sock.close()
