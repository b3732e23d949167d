"""The values a worker keeps for later calls, instead of sending them to the caller.

A kept value is held as the object the call returned together with its pickle (the
in-band bytes and views of its out-of-band buffers, which lie in the object itself): a
later call on this worker gets the object as it is, without a copy; a request from the
master (FETCH, for the caller or for another worker) is answered from the pickle, without
pickling again. A value this worker lacks is asked for from the master
(:meth:`ValueStore.resolve`), which has the worker keeping it send it; the copy received
is kept too, until released, so that further calls here use it where it lies.

The master tells the worker when a value is not needed any more (RELEASE); nothing is
evicted otherwise -- the master's bookkeeping of who holds what must stay exact, for
placing calls by their data and for knowing what a lost worker took with it.

Threads: the main thread keeps values and resolves references while it unpickles a call's
arguments; the reader thread serves FETCH and applies RELEASE. One lock covers the table.
"""
from __future__ import annotations

import pickle
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from pydron.backend.protocol import frames, values
from pydron.backend.worker import peers
from pydron.errors import SerializationError

__all__ = ["ValueStore", "InputLost"]


class InputLost(Exception):
    """A value a call needs was lost with the worker that kept it; the master computes it
    again and runs the call once it has."""

    def __init__(self, key: int) -> None:
        super().__init__(key)
        self.key = key


class ValueStore:
    """Kept values by key; ``send`` writes frames to the master, ``progress`` is when
    bytes of a large frame last arrived (a long transfer is not a silent master)."""

    def __init__(self, send: Callable[[list[bytes | memoryview]], None], max_frame: int,
                 progress: Callable[[], float], timeout: float, secret: bytes = b"",
                 index: int = 0) -> None:
        self._send = send
        self._secret = secret
        self._index = index
        self.sources: dict[int, tuple[str, int, int]] = {}  # the running task's (see peers)
        self.moves: list[tuple[int, int, float, int]] = []   # what it fetched, for the trace
        self._max_frame = max_frame
        self._progress = progress
        self._timeout = timeout
        self._items: dict[int, tuple[Any, bytes, list[Any]]] = {}
        self._lock = threading.Lock()
        self._replies: queue.SimpleQueue = queue.SimpleQueue()
        self._requests = 0
        self.fetched = 0   # values received from the master (statistics, tests)

    def __len__(self) -> int:
        return len(self._items)

    def nbytes(self) -> int:
        """Bytes of pickle this worker keeps."""
        with self._lock:
            return sum(len(b) + sum(memoryview(r).nbytes for r in raw)
                       for _, b, raw in self._items.values())

    # -- the main thread -------------------------------------------------------------------
    def keep(self, key: int, value: Any, blob: bytes, raw: list[Any]) -> None:
        with self._lock:
            self._items[key] = (value, blob, raw)

    def resolve(self, key: int, nbytes: int, label: str) -> Any:
        """The value of ``key``: this worker's own, or fetched through the master."""
        item = self._items.get(key)
        if item is not None:
            return item[0]
        source = self.sources.get(key)
        if source is not None and self._secret:
            host, port, holder = source
            got = peers.fetch(host, port, self._secret, self._index, key, self._max_frame,
                              self._timeout)
            if got is not None:
                body, buffers, seconds = got
                self.moves.append((key, len(body) + sum(len(b) for b in buffers), seconds,
                                   holder))
                return self._keep_copy(key, body, buffers)
        started = time.perf_counter()
        self._requests += 1
        request = self._requests
        self._send([frames.frame(frames.VALUE_REQUEST, values.encode_request(request, key))])
        start = time.monotonic()
        while True:
            left = max(start, self._progress()) + self._timeout - time.monotonic()
            if left <= 0:
                raise SerializationError(
                    f"a {label} of {nbytes} bytes kept on another worker did not arrive "
                    f"within {self._timeout:g} s", item="a kept value", value_type=label)
            try:
                got, found, buffers, body = self._replies.get(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            if got != request:
                continue  # a late answer to a request that timed out
            break
        if not found:
            if body == values.LOST:
                raise InputLost(key)
            raise SerializationError(
                f"a {label} kept on another worker cannot be had: "
                f"{body.decode('utf-8', 'replace')}", item="a kept value", value_type=label)
        self.moves.append((key, len(body) + sum(len(b) for b in buffers),
                           time.perf_counter() - started, -1))
        return self._keep_copy(key, body, buffers)

    def _keep_copy(self, key: int, body: bytes, buffers: list[Any]) -> Any:
        value = pickle.loads(body, buffers=buffers)
        self.fetched += 1
        with self._lock:
            # Keep the copy: the master counts this worker as holding it from now on.
            self._items[key] = (value, body, buffers)
        return value

    # -- the reader thread -------------------------------------------------------------------
    def replied(self, request: int, found: bool, buffers: list[Any], body: bytes) -> None:
        """A VALUE frame answering one of this worker's requests."""
        self._replies.put((request, found, buffers, body))

    def serve(self, request: int, key: int,
              send: Callable[[list[Any]], None] | None = None) -> None:
        """Answer a FETCH (from the master, or on a peer's connection: ``send``): the
        value's buffers, then the VALUE frame."""
        send = send or self._send
        with self._lock:
            item = self._items.get(key)
        if item is None:
            send([frames.frame(frames.VALUE, values.encode_value(
                request, key, False, 0, b"this worker does not keep it"))])
            return
        _, blob, raw = item
        pieces: list[bytes | memoryview] = []
        for buf in raw:
            pieces += frames.buffer_frames(buf, self._max_frame)
        pieces.append(frames.frame(frames.VALUE, values.encode_value(
            request, key, True, len(raw), blob)))
        send(pieces)

    def release(self, keys: list[int]) -> None:
        with self._lock:
            for key in keys:
                self._items.pop(key, None)
