"""The wire format and the shipping rules, and a real worker process driven by a fake
master over real TCP (so the worker's side of the handshake is checked on its own)."""
from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
import threading
import traceback

import pytest

from pydron.backend import protocol as wire
from pydron.backend.protocol import shipping
from pydron.backend.protocol.shipping import FunctionShipper
from pydron.errors import RemoteError, SerializationError

from test_multicore import ROOT, square

TESTS = os.path.dirname(os.path.abspath(__file__))


# --------------------------------------------------------------------------- frames


def frames_of(decoder: wire.FrameDecoder, data: bytes, step: int) -> list[tuple[int, bytes]]:
    out = []
    for i in range(0, len(data), step):
        out += [(k, bytes(p)) for k, p in decoder.feed(data[i:i + step])]
    return out


@pytest.mark.parametrize("step", [1, 3, 7, 100, 1 << 20])
def test_decoder_reassembles_frames_however_the_bytes_arrive(step):
    frames = [(wire.TASKS, b"a" * n) for n in (0, 1, 5, 300, 70_000, 200_000)]
    frames.insert(3, (wire.HEARTBEAT, b""))
    stream = b"".join(wire.frame(k, p) for k, p in frames)
    assert frames_of(wire.FrameDecoder(1 << 20, big=1000), stream, step) == frames


def test_decoder_fills_big_frames_in_place():
    decoder = wire.FrameDecoder(1 << 20, big=100)
    payload = bytes(range(256)) * 4
    data = wire.frame(wire.BUFFER, payload) + wire.frame(wire.HEARTBEAT)
    assert decoder.feed(data[:50]) == []
    view = decoder.pending_view()
    assert view is not None and len(view) == len(payload) - 45
    view[:10] = data[50:60]
    assert decoder.advance(10) == []
    (kind, got), = decoder.feed(data[60:-5])
    assert kind == wire.BUFFER and got == payload and isinstance(got, bytearray)
    assert decoder.pending_view() is None
    assert decoder.feed(data[-5:]) == [(wire.HEARTBEAT, b"")]


@pytest.mark.parametrize("length", [0, 4097, 1 << 31])
def test_decoder_refuses_oversized_frames_before_buffering(length):
    decoder = wire.FrameDecoder(4096)
    with pytest.raises(wire.FrameError, match="frame"):
        decoder.feed(wire.HEADER.pack(length, wire.AUTH))
    assert decoder.feed(wire.frame(wire.HELLO, b"x")) == [(wire.HELLO, b"x")]  # reset


def test_big_buffers_are_split_into_parts_within_the_limit():
    data = bytes(range(256)) * 40  # 10240 bytes, limit 4096 per frame
    pieces = wire.buffer_frames(data, 4096)
    stream = b"".join(bytes(p) for p in pieces)
    frames = frames_of(wire.FrameDecoder(4096), stream, 999)
    # A handshake-sized decoder leaves the BUFFER_SIZE announcement and the parts apart.
    assert frames.pop(0) == (wire.BUFFER_SIZE, len(data).to_bytes(8, "big"))
    assert [k for k, _ in frames] == [wire.BUFFER_PART, wire.BUFFER_PART, wire.BUFFER]
    assert b"".join(p for _, p in frames) == data
    assert wire.buffer_frames(b"abc", 4096)[1] == b"abc"  # small: the object itself


# --------------------------------------------------------------------------- handshake


def test_handshake_macs_bind_secret_nonces_roles_and_info():
    secret, nonce_m = wire.new_secret(), wire.new_nonce()
    payload, nonce_w = wire.encode_auth(secret, nonce_m, {"index": 1})
    assert wire.decode_auth(secret, nonce_m, payload) == (nonce_w, {"index": 1})
    with pytest.raises(wire.HandshakeError, match="wrong HMAC"):
        wire.decode_auth(wire.new_secret(), nonce_m, payload)       # another secret
    with pytest.raises(wire.HandshakeError, match="wrong HMAC"):
        wire.decode_auth(secret, wire.new_nonce(), payload)         # a replay
    with pytest.raises(wire.HandshakeError, match="wrong HMAC"):
        wire.decode_auth(secret, nonce_m, payload[:-1] + b"2")      # tampered info
    with pytest.raises(wire.HandshakeError, match="too short"):
        wire.decode_auth(secret, nonce_m, b"x")
    welcome = wire.encode_welcome(secret, nonce_m, nonce_w, {"pydron": "1"})
    assert wire.decode_welcome(secret, nonce_m, nonce_w, welcome) == {"pydron": "1"}
    with pytest.raises(wire.HandshakeError):  # a worker's MAC is no master's MAC
        wire.decode_welcome(secret, nonce_m, nonce_w, payload[32:])


def test_version_mismatch_says_who_runs_what():
    mine = wire.local_info()
    assert wire.version_mismatch(mine, dict(mine), "the master", "worker 0") is None
    message = wire.version_mismatch(mine, dict(mine, python="3.9", pydron="0.0.1"),
                                    "the master", "worker 0")
    assert message.startswith("version mismatch: ")
    assert f"the master runs Python {mine['python']}, worker 0 runs Python 3.9" in message
    assert f"the master runs Pydron {mine['pydron']}, worker 0 runs Pydron 0.0.1" in message


# --------------------------------------------------------------------------- shipping


def test_importable_functions_travel_by_reference_others_by_value():
    shipper = FunctionShipper()
    digest, blob = shipper.prepare(square)
    assert len(blob) < 100 and b"test_multicore" in blob and b"square" in blob
    assert shipper.prepare(square) == (digest, blob)
    assert pickle.loads(blob) is square
    lam = lambda x: x + 1  # noqa: E731
    _, blob = shipper.prepare(lam)
    assert pickle.loads(blob)(1) == 2 and pickle.loads(blob) is not lam


def test_by_value_functions_are_repickled_when_what_they_read_is_rebound():
    shipper = FunctionShipper()
    n = 1

    def f():
        return n

    first = shipper.prepare(f)
    assert shipper.prepare(f) is not first and shipper.prepare(f) == first  # cached
    n = 2
    second = shipper.prepare(f)
    assert second[0] != first[0] and pickle.loads(second[1])() == 2


def test_values_naming_main_are_pickled_by_value(monkeypatch):
    import types
    main = types.ModuleType("__main__")
    exec("class Point:\n    def __init__(self, x): self.x = x\n", main.__dict__)
    monkeypatch.setitem(sys.modules, "__main__", main)
    blob, buffers = shipping.dumps_value(main.Point(3))
    monkeypatch.setitem(sys.modules, "__main__", types.ModuleType("__main__"))
    assert pickle.loads(blob).x == 3  # no __main__.Point needed to load it


def test_out_of_band_buffers_keep_array_data_out_of_the_pickle():
    from conftest_hosts import require_module
    np = require_module("numpy")
    a = np.arange(100_000, dtype=np.int64)
    blob, buffers = shipping.dumps_value(a)
    assert len(blob) < 1000 and len(buffers) == 1
    assert buffers[0].nbytes == a.nbytes and buffers[0].obj is a  # a view, no copy
    b = pickle.loads(blob, buffers=[bytearray(buffers[0])])
    assert (a == b).all() and b.flags.writeable
    small = np.arange(10)
    blob, buffers = shipping.dumps_value(small)  # small arrays stay in the pickle
    assert buffers == [] and (pickle.loads(blob) == small).all()


def test_argument_errors_name_the_culprit():
    lock = threading.Lock()
    with pytest.raises(SerializationError) as info:
        shipping.dumps_args(square, (1, 2, lock), {})
    assert info.value.item == "argument 3" and info.value.value_type == "_thread.lock"
    assert str(info.value).startswith("cannot send argument 3 of square() to a worker: "
                                      "_thread.lock cannot be pickled (TypeError: ")
    with pytest.raises(SerializationError) as info:
        shipping.dumps_args(square, (), {"key": lock})
    assert info.value.item == "keyword argument 'key'"


def test_exceptions_round_trip_with_their_frames_or_degrade_to_remote_error():
    """The exception itself comes back, its frames as real traceback entries (no cause
    is invented); a report whose blob is lost becomes a RemoteError naming the original."""
    try:
        raise KeyError("k")
    except KeyError as exc:
        packed = shipping.dumps_exception(exc, exc.__traceback__)
    exc = shipping.loads_exception(*packed)
    assert type(exc) is KeyError and exc.args == ("k",)
    assert exc.__cause__ is None and exc.__context__ is None
    assert not exc.__suppress_context__
    (frame, line), = traceback.walk_tb(exc.__traceback__)
    assert frame.f_code.co_filename == __file__
    assert frame.f_code.co_name.startswith("test_exceptions_round_trip_with_their_frames")
    assert 'raise KeyError("k")' in "".join(traceback.format_tb(exc.__traceback__))
    exc = shipping.loads_exception(None, "mod.Weird", "it broke", "tb text")
    assert type(exc) is RemoteError and str(exc).startswith("mod.Weird: it broke")
    assert exc.type_name == "mod.Weird" and exc.remote_traceback == "tb text"


# --------------------------------------------------------------------------- a real worker


class FakeMaster:
    """A listening socket that plays the master's part by hand."""

    def __init__(self, secret: bytes = b"s" * 32, stdin: bytes | None = None) -> None:
        self.secret = secret
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(30)
        port = self.server.getsockname()[1]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, TESTS]))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pydron.backend.worker", "--port", str(port),
             "--index", "3", "--master-pid", str(os.getpid()), "--timeout", "5"],
            stdin=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        self.proc.stdin.write(secret.hex().encode() + b"\n" if stdin is None else stdin)
        self.proc.stdin.close()
        self.sock: socket.socket | None = None

    def accept(self) -> None:
        self.sock, _ = self.server.accept()
        self.sock.settimeout(30)

    def recv(self) -> tuple[int, bytes]:
        from test_worker_failures import read_frame
        return read_frame(self.sock)

    def greet(self) -> tuple[bytes, bytes, dict]:
        """HELLO, then check the worker's AUTH; returns both nonces and its info."""
        self.accept()
        nonce_m = wire.new_nonce()
        self.sock.sendall(wire.frame(wire.HELLO, nonce_m))
        kind, payload = self.recv()
        assert kind == wire.AUTH
        nonce_w, info = wire.decode_auth(self.secret, nonce_m, payload)
        return nonce_m, nonce_w, info

    def finish(self) -> tuple[int, str]:
        code = self.proc.wait(30)
        err = self.proc.stderr.read().decode()
        if self.sock is not None:
            self.sock.close()
        self.server.close()
        return code, err


def test_worker_authenticates_and_runs_tasks_for_a_master_that_knows_the_secret():
    master = FakeMaster()
    nonce_m, nonce_w, info = master.greet()
    assert info["index"] == 3 and info["pid"] == master.proc.pid
    assert info["python"] == wire.local_info()["python"]
    master.sock.sendall(wire.frame(wire.WELCOME, wire.encode_welcome(
        master.secret, nonce_m, nonce_w, wire.local_info())))
    fn = pickle.dumps(square)
    tasks = [(1, b"d" * 32, fn, pickle.dumps(((7,), {})), 0),
             (2, b"d" * 32, None, pickle.dumps(((8,), {})), 0)]  # same function: no blob
    master.sock.sendall(wire.frame(wire.TASKS, pickle.dumps(tasks)))
    got = {}
    while len(got) < 2:
        kind, payload = master.recv()
        if kind == wire.RESULTS:
            for entry in pickle.loads(payload):
                got[entry[0]] = pickle.loads(entry[2])
    assert got == {1: 49, 2: 64}
    master.sock.close()  # the master "dies": the worker must leave by itself
    code, _ = master.finish()
    assert code == wire.EXIT_MASTER_LOST


@pytest.mark.parametrize("answer, expected", [
    ("forged", "wrong HMAC from the master"),
    ("version", "version mismatch: worker 3 runs Python"),
    ("refuse", "the master refused this worker: go away"),
])
def test_worker_leaves_a_master_that_fails_the_handshake(answer, expected):
    master = FakeMaster()
    nonce_m, nonce_w, _ = master.greet()
    if answer == "forged":
        frame = wire.frame(wire.WELCOME, wire.encode_welcome(
            b"another secret", nonce_m, nonce_w, wire.local_info()))
    elif answer == "version":
        frame = wire.frame(wire.WELCOME, wire.encode_welcome(
            master.secret, nonce_m, nonce_w, dict(wire.local_info(), python="4.0")))
    else:
        frame = wire.frame(wire.REFUSE, b"go away")
    master.sock.sendall(frame)
    code, err = master.finish()
    assert code == wire.EXIT_REFUSED and expected in err, err


def test_worker_without_a_secret_does_not_start():
    master = FakeMaster(stdin=b"")
    code, err = master.finish()
    assert code == wire.EXIT_BAD_START and "no secret on stdin" in err
    assert "s" * 8 not in " ".join(master.proc.args)  # and it is never on the command line


def test_buffer_collector_joins_a_buffer_split_into_parts():
    data = bytes(range(256)) * 40                     # 10,240 bytes
    pieces = wire.buffer_frames(data, max_frame=4096)  # 2 parts and a last frame
    stream = b"".join(bytes(p) for p in pieces) + wire.frame(wire.BUFFER, b"small")
    decoder = wire.FrameDecoder(limit=4096)
    collector = wire.BufferCollector()
    kinds = []
    for kind, payload in decoder.feed(stream):
        kinds.append(kind)
        collector.add(kind, payload)
    assert kinds.count(wire.BUFFER_PART) == 2
    assert [bytes(b) for b in collector.take()] == [data, b"small"]
    assert collector.take() == []
