"""The worker program: ``python -m pydron.backend.worker --port P --index I --master-pid M``.

A multicore pool starts one of these per core with ``sys.executable`` and the caller's
``sys.path`` (as ``PYTHONPATH``); the pool's secret comes on stdin, never on the command
line (where ``ps`` would show it). The worker connects back to the pool over TCP,
authenticates (see :mod:`pydron.backend.protocol.handshake`) and then runs the calls it
is sent, one at a time, in its main thread, in the order they came.

Threads: the main thread runs calls; a reader thread receives frames, queues tasks and
handles cancellations; a heartbeat thread says "alive" every second. The worker needs no
event loop, so it uses plain blocking sockets (and does not import Twisted: it starts
faster).

It exits by itself, without any help from the master, when:

* the connection closes (at once), or the master is silent for the *master timeout*
  (``--master-timeout``, minutes by default) while (on this machine) its CPU time
  stands still too: exit code ``EXIT_MASTER_LOST``. Silence on an open connection is
  not taken as death quickly on purpose: a caller stopped for a while (SIGSTOP, a
  debugger, a laptop lid) or a reactor thread blocked for a few seconds must find its
  workers, and their calls, still there; a caller that died closes the connection (its
  kernel does), and a master that merely holds the GIL is busy, not lost;
* on Linux, the master process dies: ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` is the second
  line of defence, for the case where the socket somehow stays open;
* the master cancels the call it is running (``EXIT_CANCELLED``): stopping a Python call
  from outside is only reliable by ending the process, and the pool starts another.

Inside a worker, ``pydron.backend.in_worker()`` is True in the main thread, so a
``@schedule`` function called by a functional call runs sequentially; in addition the
worker's own pool is configured ``inline``, so that even a scheduled function called from
a thread the user started there cannot start a pool inside the pool.
"""
from __future__ import annotations

import argparse
import codecs
import collections
import ctypes
import io
import logging
import os
import pickle
import queue
import random
import select
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from pydron.backend import sharing
from pydron.backend.worker import module_finder
from pydron.backend.protocol import shipping
from pydron.backend.protocol import frames, handshake, liveness, log_records, replies, values
from pydron.backend.worker import peers
from pydron.backend.worker.store import InputLost, ValueStore
from pydron.backend.worker.wire import Dropped as _Dropped
from pydron.backend.worker.wire import client_handshake as _handshake
from pydron.backend.worker.wire import sendall as _sendall
from pydron.backend.protocol.liveness import MASTER_TIMEOUT
from pydron.backend.protocol.records import (
    FUNCTION_CACHE_SIZE, KEEP_MIN, Outcome, dumps_records, tasks_of,
)
from pydron.backend.protocol.shipping import (
    PROTOCOL, callable_name, dumps_exception, dumps_result, type_name,
)
from pydron.errors import SerializationError

__all__ = ["main", "Worker"]

_IDS = struct.Struct(">Q")

CONNECT_ATTEMPTS = 5
"""Times a worker connects again when the master drops it during the handshake (the
pool's port sheds unauthenticated connections under a flood, oldest first)."""


def _die_with_parent(master_pid: int) -> None:
    """Ask Linux to SIGKILL us when the thread that started us ends (the master's reactor
    thread, which lives as long as the master process)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != master_pid:  # the master died before prctl took effect
        os._exit(frames.EXIT_MASTER_LOST)


class _Forward(io.TextIOBase):
    """sys.stdout / sys.stderr of a worker: complete lines go to the master as frames."""

    def __init__(self, send: Callable[[int, str], None], stream: int) -> None:
        super().__init__()
        self._send = send
        self._stream = stream
        self._pending: list[str] = []
        self._lock = threading.Lock()
        self._buffer: _BinaryForward | None = None

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, s: str) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        if "\n" in s:
            head, _, tail = s.rpartition("\n")
            with self._lock:
                text = "".join(self._pending) + head + "\n"
                self._pending = [tail] if tail else []
                self._send(self._stream, text)
        elif s:
            with self._lock:
                self._pending.append(s)
        return len(s)

    def flush(self) -> None:
        with self._lock:
            if self._pending:
                text = "".join(self._pending)
                self._pending = []
                self._send(self._stream, text)

    @property
    def buffer(self) -> _BinaryForward:
        """For code that writes bytes to ``sys.stdout.buffer``."""
        if self._buffer is None:
            self._buffer = _BinaryForward(self)
        return self._buffer


class _BinaryForward(io.RawIOBase):
    """``sys.stdout.buffer`` of a worker: UTF-8 bytes, decoded and forwarded as text."""

    def __init__(self, text: _Forward) -> None:
        super().__init__()
        self._text = text
        self._decode = codecs.getincrementaldecoder("utf-8")("replace").decode

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        data = bytes(b)
        self._text.write(self._decode(data))
        return len(data)

    def flush(self) -> None:
        self._text.flush()


class Worker:
    """One connection to the master, and the calls it brings."""

    def __init__(self, sock: socket.socket, index: int, decoder: frames.FrameDecoder,
                 max_frame: int, heartbeat: float, timeout: float,
                 master_pid: int = 0, master_timeout: float | None = None,
                 shared_cache: int = sharing.DEFAULT_CACHE, keep_min: int = KEEP_MIN,
                 secret: bytes = b"") -> None:
        self.sock = sock
        self.secret = secret
        self.master = liveness.Liveness(master_pid)  # pid 0: not on this machine
        self.index = index
        self.decoder = decoder
        self.max_frame = max_frame
        self.heartbeat = heartbeat
        self.timeout = timeout
        # How long an open but silent connection is waited on (see the module docstring).
        self.master_timeout = max(timeout, MASTER_TIMEOUT if master_timeout is None
                                  else master_timeout)
        self.send_lock = threading.Lock()
        self.tasks: queue.SimpleQueue = queue.SimpleQueue()
        self.state_lock = threading.Lock()
        self.current: int | None = None       # id of the call running now
        self.cancelled: set[int] = set()      # queued ids not to run
        self.functions: collections.OrderedDict[bytes, list[Any]] = collections.OrderedDict()
        self.buffers = frames.BufferCollector()
        self.last_rx = time.monotonic()
        self.bulk_rx = 0.0  # when bytes of a large frame last arrived (see ask_shared)
        self.module_replies: queue.SimpleQueue = queue.SimpleQueue()
        self.shared_replies: queue.SimpleQueue = queue.SimpleQueue()
        self.shared = sharing.SharedCache(shared_cache, self.ask_shared)
        self.map_shared = True  # try mapping shared objects from a local master's memory
        self.keep_min = keep_min
        self.store = ValueStore(self.send, max_frame, lambda: self.bulk_rx,
                                module_finder.REQUEST_TIMEOUT, secret, index)

    def listen_for_peers(self) -> None:
        """Serve kept values to the other workers directly (see :mod:`.peers`), on the
        address this worker reaches its master from; tell the master where."""
        if not self.secret:
            return
        host = self.sock.getsockname()[0]
        port = peers.PeerServer(self.store.serve, self.secret, self.index,
                                self.max_frame).start(host)
        if port:
            self.send([frames.frame(frames.PEER, f"{host} {port}".encode())])

    # -- sending (any thread) ------------------------------------------------------------
    def send(self, pieces: list[bytes | memoryview]) -> None:
        """Write frames atomically with respect to the other sending threads."""
        with self.send_lock:
            _sendall(self.sock, pieces)

    def send_log(self, payload: bytes) -> None:
        if len(payload) > self.max_frame - 16:
            payload = payload[:self.max_frame - 16]  # a record that large is cut, not lost
        self.send([frames.frame(frames.LOG, payload)])

    def send_output(self, stream: int, text: str) -> None:
        data = text.encode("utf-8", "backslashreplace")
        step = self.max_frame - 2
        pieces: list[bytes | memoryview] = []
        for start in range(0, len(data), step):
            pieces.append(frames.frame(frames.OUTPUT, bytes((stream,)) + data[start:start + step]))
        self.send(pieces)

    # -- the reader thread ---------------------------------------------------------------
    def read_loop(self) -> None:
        """Receive frames until the master goes away; then end the process."""
        try:
            self._read()
        except BaseException:  # noqa: B902 -- whatever happened, the master is gone
            pass
        os._exit(frames.EXIT_MASTER_LOST)

    def _read(self) -> None:
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        tick = int(min(self.heartbeat, 1.0) * 1000)
        decoder = self.decoder
        while True:
            if not poller.poll(tick):
                now = time.monotonic()
                if now - self.last_rx > self.master_timeout and \
                        not self.master.working(now, self.master_timeout):
                    return  # silent and idle for that long: hung, or unreachable
                continue
            view = decoder.pending_view()
            if view is not None:
                n = self.sock.recv_into(view)
                if not n:
                    return
                complete = decoder.advance(n)
            else:
                data = self.sock.recv(1 << 18)
                if not data:
                    return
                complete = decoder.feed(data)
            self.last_rx = time.monotonic()
            if view is not None or decoder.pending_view() is not None:
                self.bulk_rx = self.last_rx
            for kind, payload in complete:
                self._handle(kind, payload)

    def _handle(self, kind: int, payload: bytes | bytearray) -> None:
        if kind == frames.TASKS:
            self._tasks(payload)
        elif kind == frames.BUFFER or kind == frames.BUFFER_PART:
            self.buffers.add(kind, payload)
        elif kind == frames.CANCEL:
            ids = [_IDS.unpack_from(payload, i)[0] for i in range(0, len(payload), 8)]
            with self.state_lock:
                if self.current in ids:
                    os._exit(frames.EXIT_CANCELLED)  # stop computing at once
                self.cancelled.update(ids)
        elif kind == frames.HEARTBEAT:
            pass
        elif kind == frames.MODULE_REPLY:
            self.module_replies.put(replies.decode_module_reply(payload))
        elif kind == frames.SHARED_REPLY:
            digest, found, nbuf, mapping, body = replies.decode_shared_reply(payload)
            buffers = self._buffers_of("SHARED_REPLY", nbuf)
            self.shared_replies.put((digest, found, buffers, body, mapping))
        elif kind == frames.FETCH:
            self.store.serve(*values.decode_request(payload))
        elif kind == frames.VALUE:
            request, _, found, nbuf, body = values.decode_value(payload)
            self.store.replied(request, found, self._buffers_of("VALUE", nbuf), body)
        elif kind == frames.RELEASE:
            self.store.release(values.decode_keys(payload))
        elif kind == frames.BYE:
            os._exit(frames.EXIT_OK)
        else:
            raise frames.FrameError(f"unexpected frame kind {kind}")

    def _buffers_of(self, kind: str, nbuf: int) -> list[Any]:
        """The buffers that came before a ``kind`` frame announcing ``nbuf`` of them."""
        buffers = self.buffers.take()
        if len(buffers) != nbuf:
            raise frames.FrameError(f"a {kind} with {len(buffers)} buffers before it, "
                                    f"announced {nbuf}")
        return buffers

    def _tasks(self, payload: bytes | bytearray) -> None:
        functions = self.functions
        buffers = self.buffers.buffers
        used = 0
        for task in tasks_of(payload):
            if task.blob is not None:
                functions[task.digest] = [task.blob, None]
                if len(functions) > FUNCTION_CACHE_SIZE:
                    functions.popitem(last=False)
            entry = functions.get(task.digest)
            mine = buffers[used:used + task.nbuf]
            used += task.nbuf
            self.tasks.put((task.call_id, entry, task.args, mine, task.keep, task.sources))
        del buffers[:used]

    # -- the main thread -----------------------------------------------------------------
    def ask_module(self, name: str) -> dict[str, Any] | None:
        """Ask the master for the source of a module this worker cannot import (see
        :mod:`pydron.backend.worker.module_finder`); its reply, or None if none came within
        ``module_finder.REQUEST_TIMEOUT`` seconds (the finder then fails the import, naming the
        module). The wait is bounded so that a master that never answers cannot hold up
        the call, or the worker, for longer than that."""
        self.send([frames.frame(frames.MODULE_REQUEST, name.encode("utf-8"))])
        deadline = time.monotonic() + module_finder.REQUEST_TIMEOUT
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                reply = self.module_replies.get(timeout=left)
            except queue.Empty:
                return None
            if reply["name"] == name:  # not a late answer to a request that timed out
                return reply

    def ask_shared(self, digest: bytes) -> tuple[bytes, list[Any]] | str:
        """Ask the master for a shared object this worker does not hold (see
        :mod:`pydron.backend.sharing`), from the serving thread while it unpickles a
        call's arguments: ``(blob, buffers)``, or why not (the master has no such object,
        or no answer came: the call then fails rather than wait for ever).

        The wait is bounded by ``module_finder.REQUEST_TIMEOUT`` seconds *without progress*:
        while the bytes of a large frame keep arriving (the object itself, maybe
        gigabytes over a slow link) the answer is on its way and is waited for.

        A worker on the master's machine (it knows the master's pid) offers to map the
        object from the master's memory; if that fails, it asks again for the bytes."""
        local = self.map_shared and self.master.pid > 0
        answer = self._ask_shared(digest, local)
        if isinstance(answer, tuple) and isinstance(answer[1], dict):
            try:
                return answer[0], sharing.map_memory_file(answer[1])
            except (OSError, ValueError, KeyError, TypeError):
                self.map_shared = False  # not here, after all: the bytes, from now on
                answer = self._ask_shared(digest, False)
        return answer  # type: ignore[return-value]

    def _ask_shared(self, digest: bytes, local: bool
                    ) -> tuple[bytes, list[Any] | dict[str, Any]] | str:
        """One SHARED_REQUEST and its answer: (blob, buffers or the mapping), or why
        not."""
        self.send([frames.frame(frames.SHARED_REQUEST, (b"\x01" if local else b"\x00") + digest)])
        start = time.monotonic()
        timeout = module_finder.REQUEST_TIMEOUT
        while True:
            left = max(start, self.bulk_rx) + timeout - time.monotonic()
            if left <= 0:
                return (f"worker {self.index} asked the master for it and got no answer "
                        f"within {timeout:g} s")
            try:
                got, found, buffers, body, mapping = self.shared_replies.get(
                    timeout=min(left, 1.0))
            except queue.Empty:
                continue
            if got != digest:
                continue  # a late answer to a request that timed out
            if not found:
                return body.decode("utf-8", "replace")
            return body, (mapping if mapping is not None else buffers)

    def serve(self) -> None:
        """Run calls forever (the process ends from the reader thread)."""
        from pydron.backend.context import worker_context
        get = self.tasks.get
        with worker_context():
            while True:
                task = get()
                with self.state_lock:
                    if task[0] in self.cancelled:
                        self.cancelled.discard(task[0])
                        continue
                    self.current = task[0]
                pieces = self._run(*task)
                _flush_streams()
                with self.state_lock:
                    self.current = None
                self.send(pieces)  # before settling: a result may be a view of a buffer
                del task, pieces
                self.shared.settle()  # a shared argument the call changed is fetched anew

    def _run(self, call_id: int, entry: list[Any] | None, args_blob: bytes,
             buffers: list[Any], keep: int = 0, sources: tuple = ()
             ) -> list[bytes | memoryview]:
        """Run one call; the frames that report its outcome."""
        fn: Any = None
        try:
            if entry is None:
                raise RuntimeError("pydron internal error: the worker does not hold the "
                                   "function of this call")
            fn = entry[1]
            if fn is None:
                fn = pickle.loads(entry[0])
                entry[1] = fn
        except BaseException as exc:  # noqa: B902
            return self._load_failed(call_id, "the function", exc)
        store = self.store
        store.moves = []
        if sources:
            store.sources = {key: (host, port, holder) for key, host, port, holder in sources}
        try:
            args, kwargs = pickle.loads(args_blob, buffers=buffers)
        except InputLost as exc:
            # Not the call's failure: the master runs it again once the value is back.
            return [_results([Outcome(call_id, False, None, 0, 0.0, values.INPUT_LOST,
                                      str(exc.key))])]
        except BaseException as exc:  # noqa: B902
            return self._load_failed(call_id, "the arguments", exc, fn)
        finally:
            if sources:
                store.sources = {}
        moves, store.moves = tuple(store.moves), []
        del buffers[:]
        start = time.perf_counter()
        try:
            value = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: B902 -- every failure goes to the caller
            # KeyboardInterrupt and SystemExit too: raised by the user's code, they are its
            # outcome (SIGINT itself is ignored here), and this loop must go on serving.
            elapsed = time.perf_counter() - start
            tb = exc.__traceback__
            tb = tb.tb_next if tb is not None else None  # drop this frame: not user code
            blob, name, message, text = dumps_exception(exc, tb, self._exception_limit())
            del exc, tb
            return [_results([Outcome(call_id, False, blob, 0, elapsed, name, message, text,
                                      moves=moves)])]
        elapsed = time.perf_counter() - start
        del args, kwargs
        try:
            # bytes and str pickle in band: refuse one over the limit before pickling it,
            # which would hold it twice (a 1.5 GB bytes result cost 3.1 GB to refuse).
            inband = len(value) if type(value) is bytes or type(value) is str else 0
            if inband > self.max_frame - 256:
                raise SerializationError(
                    f"the result of {callable_name(fn)}() is a {type(value).__name__} of "
                    f"{inband} {'bytes' if type(value) is bytes else 'characters'}, more "
                    f"than the frame limit of {self.max_frame} bytes; "
                    f"{frames.frame_advice(inband)}",
                    item="the result", value_type=type_name(value))
            blob, raw = dumps_result(value, fn)
            if len(blob) > self.max_frame - 256:
                raise SerializationError(
                    f"the result of {callable_name(fn)}() pickles to {len(blob)} bytes, "
                    f"more than the frame limit of {self.max_frame} bytes; "
                    f"{frames.frame_advice(len(blob))}",
                    item="the result", value_type=type_name(value))
        except SerializationError as exc:
            blob, name, message, _ = dumps_exception(exc, None, self._exception_limit())
            return [_results([Outcome(call_id, False, blob, 0, elapsed, name, message)])]
        if keep:
            size = len(blob) + sum(memoryview(b).nbytes for b in raw)
            always = bool(keep & values.KEEP_ALWAYS)
            key = keep & ~values.KEEP_ALWAYS
            if type(value) is tuple and 0 < len(value) < (1 << values.PART_BITS) - 1 and \
                    (size >= self.keep_min or always):
                split = self._keep_items(call_id, key, value, fn, always, elapsed, moves)
                if split is not None:
                    return split
            if size >= self.keep_min or always:
                self.store.keep(key, value, blob, raw)
                return [_results([Outcome(call_id, True, None, 0, elapsed, type_name(value),
                                          kept=size, moves=moves)])]
        pieces: list[bytes | memoryview] = []
        for buf in raw:
            pieces += frames.buffer_frames(buf, self.max_frame)
        pieces.append(_results([Outcome(call_id, True, blob, len(raw), elapsed,
                                        moves=moves)]))
        return pieces

    def _keep_items(self, call_id: int, key: int, value: tuple, fn: Any, always: bool,
                    elapsed: float, moves: tuple) -> list[bytes | memoryview] | None:
        """Keep the large items of a tuple result each on its own (``a, b = f(x)`` then
        sends neither to the caller), and report the rest; None if no item is large."""
        parts = []
        shown: list[Any] = []
        kept: list[tuple[int, Any, bytes, list[Any]]] = []
        for i, item in enumerate(value):
            try:
                blob, raw = dumps_result(item, fn)
            except SerializationError:
                return None
            size = len(blob) + sum(memoryview(b).nbytes for b in raw)
            if always or size >= self.keep_min:
                kept.append((key + i + 1, item, blob, raw))
                parts.append((key + i + 1, size, type_name(item), i))
                shown.append(values.KeptPart(i))
            else:
                shown.append(item)
        if not parts:
            return None
        blob, raw = dumps_result(tuple(shown), fn)
        for args in kept:
            self.store.keep(*args)
        pieces: list[bytes | memoryview] = []
        for buf in raw:
            pieces += frames.buffer_frames(buf, self.max_frame)
        pieces.append(_results([Outcome(call_id, True, blob, len(raw), elapsed,
                                        parts=tuple(parts), moves=moves)]))
        return pieces

    def _load_failed(self, call_id: int, what: str, exc: BaseException,
                     fn: Any = None) -> list[bytes | memoryview]:
        where = f" of {callable_name(fn)}()" if fn is not None else ""
        hint = ("" if isinstance(exc, SerializationError) else
                " (a module the caller imported may not be importable in the worker, whose "
                "sys.path is the caller's)")
        error = SerializationError(
            f"worker {self.index} cannot load {what}{where}: {type(exc).__name__}: {exc}"
            f"{hint}", item=what, value_type=type_name(exc))
        blob, name, message, _ = dumps_exception(error, None, self._exception_limit())
        return [_results([Outcome(call_id, False, blob, 0, 0.0, name, message)])]

    def _exception_limit(self) -> int:
        """Bytes a failure's report may take: it must fit one RESULTS frame, with room to
        spare for the frame's other fields (a frame over the limit would cost the
        connection, and with it the worker)."""
        return self.max_frame - 1024

    # -- the heartbeat thread --------------------------------------------------------------
    def heartbeat_loop(self) -> None:
        beat = frames.frame(frames.HEARTBEAT)
        wait = threading.Event().wait
        while True:
            wait(self.heartbeat)
            if self.send_lock.acquire(timeout=self.heartbeat):
                try:
                    _sendall(self.sock, [beat])
                except OSError:
                    os._exit(frames.EXIT_MASTER_LOST)
                finally:
                    self.send_lock.release()


def _results(outcomes: list[Outcome]) -> bytes:
    return frames.frame(frames.RESULTS, dumps_records(outcomes, PROTOCOL))


def _flush_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except Exception:
            pass


def _connect(host: str, port: int, secret: bytes, index: int,
             timeout: float) -> socket.socket:
    """Connect to the master and pass the handshake; connect again (a few times, backing
    off) if the master drops the connection before answering: under a flood of strangers
    on its port it sheds unauthenticated connections, and this one may have been among
    them. A REFUSE, a bad MAC or a refused connection is final."""
    for attempt in range(CONNECT_ATTEMPTS):
        sock: socket.socket | None = None
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            _handshake(sock, secret, index, timeout)
            return sock
        except (_Dropped, ConnectionResetError, BrokenPipeError, TimeoutError) as exc:
            if sock is not None:
                sock.close()
            if attempt == CONNECT_ATTEMPTS - 1:
                raise handshake.HandshakeError(
                    f"the master at {host}:{port} dropped the handshake "
                    f"{CONNECT_ATTEMPTS} times (last: {exc})") from exc
            time.sleep(0.05 * 2 ** attempt * (0.5 + random.random()))
        except BaseException:
            if sock is not None:
                sock.close()
            raise
    raise AssertionError("unreachable")  # pragma: no cover


def _forward_logging(worker: "Worker", level: int) -> None:
    """Send the log records of calls to the caller's handlers (see
    :mod:`pydron.backend.protocol.log_records`), at the caller's level."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(log_records.ForwardingHandler(worker.send_log, lambda: worker.current))
    root.setLevel(level)


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pydron.backend.worker",
                                     description="A Pydron worker process (started by "
                                     "a pool; the pool's secret is read from stdin).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--master-pid", type=int, default=0)
    parser.add_argument("--heartbeat", type=float, default=1.0)
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--master-timeout", type=float, default=MASTER_TIMEOUT)
    parser.add_argument("--max-frame", type=int, default=frames.MAX_FRAME)
    parser.add_argument("--shared-cache", type=int, default=sharing.DEFAULT_CACHE)
    parser.add_argument("--log-level", type=int, default=logging.WARNING)
    parser.add_argument("--keep-min", type=int, default=KEEP_MIN)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run a worker; returns only on a start-up failure (the exit code)."""
    try:
        options = _arguments(argv)
    except SystemExit:
        return frames.EXIT_BAD_START
    if options.master_pid:
        _die_with_parent(options.master_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the master's to handle
    try:
        secret = bytes.fromhex(sys.stdin.buffer.readline().decode("ascii").strip())
    except (ValueError, OSError, AttributeError):
        secret = b""
    if not secret:
        print("pydron worker: no secret on stdin", file=sys.stderr)
        return frames.EXIT_BAD_START
    sys.stdin.close()
    sys.stdin = open(os.devnull)

    try:
        sock = _connect(options.host, options.port, secret, options.index,
                        options.timeout * 2)
    except (handshake.HandshakeError, frames.FrameError, OSError) as exc:
        print(f"pydron worker {options.index}: {exc}", file=sys.stderr)
        return frames.EXIT_REFUSED
    decoder = frames.FrameDecoder(options.max_frame)

    from pydron import backend
    backend.configure({"workers": [{"type": "inline"}]})  # no pool inside the pool

    worker = Worker(sock, options.index, decoder, options.max_frame, options.heartbeat,
                    options.timeout, options.master_pid, options.master_timeout,
                    options.shared_cache, options.keep_min, secret)
    sharing.set_fetcher(worker.shared.fetch)  # handles in arguments resolve from its cache
    values.set_resolver(worker.store.resolve)  # and kept values from its store
    shipping.share_namespaces()  # by-value functions of one module share its globals
    sys.stdout = _Forward(worker.send_output, 1)
    sys.stderr = _Forward(worker.send_output, 2)
    _forward_logging(worker, options.log_level)
    # Last: the worker's own finders always go first; the master is asked only for what
    # none of them finds and the worker's interpreter is not expected to provide.
    sys.meta_path.append(module_finder.MasterFinder(worker.ask_module))
    worker.listen_for_peers()
    threading.Thread(target=worker.read_loop, name="pydron-reader", daemon=True).start()
    threading.Thread(target=worker.heartbeat_loop, name="pydron-heartbeat",
                     daemon=True).start()
    worker.serve()
    return frames.EXIT_OK  # pragma: no cover - serve() never returns


if __name__ == "__main__":
    sys.exit(main())
