"""When things go wrong around the multicore pool: dead, hung or cancelled workers, a
caller interrupted or killed, workers that cannot start, and strangers on the pool's port.
Real processes, real signals, real TCP on 127.0.0.1.
"""
from __future__ import annotations

import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import pydron
import pydron.backend as backend
from pydron import functional, schedule
from pydron.backend.engine.states import CallState
from pydron.backend import protocol as wire
from pydron.errors import WorkerLostError

from test_multicore import ROOT, TIMEOUT, Outcomes, make_pool, square  # noqa: F401
from waiting import alive, lines_until, runs, wait_for, wait_gone

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="uses /proc and Linux signals")


# --------------------------------------------------------------------------- functions


def record_and_nap(path, seconds):
    """Note which process runs this attempt, then take a while."""
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    time.sleep(seconds)
    return os.getpid()


def touch(path):
    with open(path, "a") as f:
        f.write("ran\n")
    return path


def kill_myself():
    os.kill(os.getpid(), signal.SIGKILL)


def exit_3():
    os._exit(3)


@functional
def kill_myself_f():
    os.kill(os.getpid(), signal.SIGKILL)


@schedule
def scheduled_death():
    return kill_myself_f()


def gil_hog(seconds):
    """Hold the GIL for about ``seconds`` (at least, as far as the calibration can tell)
    in one C call (no heartbeat thread can run). Calibrated on the fastest of three
    short runs, so that a slow first run (a cold cache, a busy core) cannot make the
    long one too short."""
    fastest = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        sum(range(10 ** 6))
        fastest = min(fastest, time.perf_counter() - start)
    n = int(10 ** 6 * seconds / max(fastest, 1e-6))
    start = time.perf_counter()
    sum(range(n))
    return os.getpid(), time.perf_counter() - start


def start_script(tmp_path, body: str) -> subprocess.Popen:
    script = tmp_path / "caller.py"
    script.write_text(textwrap.dedent(body))
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("PYDRON_CONF", None)
    return subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=str(tmp_path))


def read_until(proc: subprocess.Popen, predicate, timeout: float = TIMEOUT) -> list[str]:
    """Lines of the script's stdout until ``predicate(lines)`` holds."""
    lines = lines_until(proc, predicate, timeout)
    assert predicate(lines), (lines, proc.poll())
    return lines


LONG_LOOP = """
    import os, sys, time
    import pydron
    from pydron import functional, schedule
    from pydron.backend.multicore import MulticorePool

    @functional
    def long(i):
        print("started", i, flush=True)
        time.sleep(60)
        return i

    @schedule
    def run(n):
        out = []
        for i in range(n):
            out.append(long(i))
        return out

    {setup}
    pool.start()
    print("pids", *pool.worker_pids(), flush=True)
    run(8)
    print("finished?!", flush=True)
"""


def pids_of(lines: list[str]) -> list[int]:
    line = next(line for line in lines if line.startswith("pids "))
    return [int(p) for p in line.split()[1:]]


def two_started(lines: list[str]) -> bool:
    return sum(line.startswith("started") for line in lines) >= 2


# --------------------------------------------------------------------------- dead workers


def test_sigkill_mid_call_reruns_elsewhere_and_replaces_the_worker(make_pool, tmp_path,
                                                                   caplog):
    caplog.set_level(logging.WARNING, logger="pydron.backend")
    pool = make_pool(2)
    pool.start()
    before = pool.worker_pids()
    seen = Outcomes()
    path = tmp_path / "runs"
    pool.submit(record_and_nap, (str(path), 1.0), {}, seen.callback())
    victim, = wait_for(lambda: runs(path), what="the call to start")
    os.kill(victim, signal.SIGKILL)
    ok, pid = seen.one()
    assert ok and pid != victim
    assert runs(path) == [victim, pid]  # ran again, on another worker
    wait_for(lambda: len(pool.worker_pids()) == 2 and victim not in pool.worker_pids(),
             what="a replacement worker")
    assert set(before) - {victim} <= set(pool.worker_pids())
    assert any("SIGKILL" in r.getMessage() and "will run elsewhere" in r.getMessage()
               for r in caplog.records), caplog.text
    seen2 = Outcomes()  # and the pool goes on working, on both workers
    for i in range(20):
        pool.submit(square, (i,), {}, seen2.callback(i))
    assert sorted(v for _, ok, v in seen2.wait(20) if ok) == [i * i for i in range(20)]


@pytest.mark.parametrize("fn, how", [
    (kill_myself, "was killed by signal SIGKILL"),
    (exit_3, "exited with code 3"),
])
def test_past_the_retry_limit_the_caller_gets_worker_lost_error(make_pool, fn, how):
    pool = make_pool(2, max_retries=1)
    seen = Outcomes()
    pool.submit(fn, (), {}, seen.callback())
    ok, err = seen.one()
    assert not ok and isinstance(err, WorkerLostError)
    message = str(err)
    assert message.startswith("worker "), message
    assert "(pid " in message and how in message, message
    assert f"while running {fn.__name__}() defined at {__file__}:" in message, message
    assert "tried 2 times (max_retries=1)" in message, message
    wait_for(lambda: len(pool.worker_pids()) == 2, what="replacements")


def test_scheduled_call_names_its_line_when_its_worker_is_lost():
    previous = backend._config
    backend.configure({"workers": [{"type": "multicore", "cores": 1}], "max_retries": 0})
    try:
        with pytest.raises(pydron.WorkerLostError) as info:
            scheduled_death()
        message = str(info.value)
        assert "was killed by signal SIGKILL while running kill_myself_f()" in message
        assert "tried 1 time (max_retries=0)" in message
        assert f"kill_myself_f() called at {__file__}:" in message
    finally:
        backend.configure(previous)


def test_a_hung_worker_is_killed_and_its_call_runs_elsewhere(make_pool, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="pydron.backend")
    pool = make_pool(2, heartbeat=0.2, heartbeat_timeout=1.0)
    pool.start()
    seen = Outcomes()
    path = tmp_path / "runs"
    pool.submit(record_and_nap, (str(path), 0.5), {}, seen.callback())
    victim, = wait_for(lambda: runs(path), what="the call to start")
    os.kill(victim, signal.SIGSTOP)  # alive, but silent
    try:
        ok, pid = seen.one()
        assert ok and pid != victim
        assert wait_gone([victim], 5) == []
        assert any("stopped answering" in r.getMessage() for r in caplog.records), caplog.text
    finally:
        if alive(victim):
            os.kill(victim, signal.SIGKILL)


def test_a_worker_holding_the_gil_is_busy_not_hung(make_pool):
    pool = make_pool(1, heartbeat=0.2, heartbeat_timeout=1.0, max_retries=0)
    pool.start()
    before = pool.worker_pids()
    seen = Outcomes()
    pool.submit(gil_hog, (3.0,), {}, seen.callback())
    ok, value = seen.one()
    assert ok, value
    pid, took = value
    assert took > 2.0  # silent for twice the timeout, but computing: not killed
    assert [pid] == before == pool.worker_pids()


def test_workers_that_cannot_start_fail_the_calls_instead_of_hanging(make_pool, monkeypatch,
                                                                     caplog):
    monkeypatch.setattr(sys, "executable", "/bin/false")  # every worker exits at once
    pool = make_pool(2)
    seen = Outcomes()
    pool.submit(square, (2,), {}, seen.callback())
    ok, err = seen.one()
    assert not ok and isinstance(err, WorkerLostError)
    assert "could not start its worker processes" in str(err)
    assert "exited with code 1 before it connected" in str(err)
    with pytest.raises(WorkerLostError):
        pool.start()


# --------------------------------------------------------------------------- cancel


def test_cancel_drops_queued_calls_and_kills_the_worker_of_a_running_one(make_pool,
                                                                         tmp_path):
    pool = make_pool(1)
    seen = Outcomes()
    pool.submit(square, (1,), {}, seen.callback("warm"))  # calls are quick: prefetch on
    assert seen.one("warm") == (True, 1)
    path = tmp_path / "runs"
    marker = tmp_path / "b-ran"
    a = pool.submit(record_and_nap, (str(path), 30), {}, seen.callback("a"))
    b = pool.submit(touch, (str(marker),), {}, seen.callback("b"))
    victim, = wait_for(lambda: runs(path), what="the call to start")
    wait_for(lambda: b.state == CallState.SENT, what="b to be sent to the worker")
    assert pool.cancel(b) is True    # queued on the worker: it will skip it
    assert pool.cancel(a) is True    # running: its worker is killed
    assert wait_gone([victim], 5) == []
    c = pool.submit(touch, (str(tmp_path / "c-ran"),), {}, seen.callback("c"))
    assert seen.one("c")[0] is True  # a new worker took over
    assert not marker.exists()
    assert [tag for tag, _, _ in seen.items] == ["warm", "c"]  # no on_done for a or b
    assert pool.cancel(c) is False   # finished: too late
    assert pool.cancel(object()) is False


def test_cancel_of_a_call_still_in_the_pool_queue(make_pool, tmp_path):
    pool = make_pool(1)
    seen = Outcomes()
    path = tmp_path / "runs"
    marker = tmp_path / "b-ran"
    a = pool.submit(record_and_nap, (str(path), 0.5), {}, seen.callback("a"))
    b = pool.submit(touch, (str(marker),), {}, seen.callback("b"))
    wait_for(lambda: runs(path), what="the call to start")
    assert b.state == CallState.QUEUED  # one call per worker until calls prove quick
    assert pool.cancel(b) is True
    assert seen.one("a") == (True, runs(path)[0])
    pool.shutdown(wait=True)
    assert not marker.exists()
    assert [tag for tag, _, _ in seen.items] == ["a"]
    assert a.state == CallState.DONE


def test_ctrl_c_stops_the_run_within_2_s_and_leaves_no_worker(tmp_path):
    proc = start_script(tmp_path, LONG_LOOP.format(setup="""
    pydron.configure({"workers": [{"type": "multicore", "cores": 2}]})
    pool = pydron.backend.get_pool()
    """))
    try:
        lines = read_until(proc, two_started)
        pids = pids_of(lines)
        assert len(pids) == 2 and all(alive(p) for p in pids)
        start = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(10)
        elapsed = time.monotonic() - start
        stderr = proc.stderr.read()  # type: ignore[union-attr]
        assert "KeyboardInterrupt" in stderr, stderr
        assert elapsed < 2.0, elapsed
        assert wait_gone(pids, 2) == []
    finally:
        proc.kill()
        proc.wait()


def test_workers_exit_by_themselves_when_the_caller_is_killed(tmp_path):
    proc = start_script(tmp_path, LONG_LOOP.format(setup="""
    pool = MulticorePool(2)
    pydron.backend._pool = pool  # what get_pool() returns
    """))
    try:
        pids = pids_of(read_until(proc, two_started))
        proc.kill()
        proc.wait()
        assert wait_gone(pids, 10) == []
    finally:
        proc.kill()
        proc.wait()


def test_workers_exit_by_themselves_when_the_caller_hangs(tmp_path):
    proc = start_script(tmp_path, LONG_LOOP.format(setup="""
    # A silent master whose connection stays open is waited on for master_timeout
    # (minutes by default: tests/test_stalls.py), then given up.
    pool = MulticorePool(2, heartbeat=0.25, heartbeat_timeout=1.5, master_timeout=2.0)
    pydron.backend._pool = pool
    """))
    try:
        pids = pids_of(read_until(proc, two_started))
        proc.send_signal(signal.SIGSTOP)  # alive, connections open, but silent
        assert wait_gone(pids, 10) == []
    finally:
        proc.kill()
        proc.send_signal(signal.SIGCONT)
        proc.wait()


def test_workers_wait_for_a_caller_that_holds_the_gil(tmp_path):
    result = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import sys, time
        sys.path[:0] = [%r, %r]
        from test_worker_failures import gil_hog
        from test_multicore import square
        from pydron.backend.multicore import MulticorePool
        pool = MulticorePool(2, heartbeat=0.2, heartbeat_timeout=1.0)
        pool.start()
        before = pool.worker_pids()
        gil_hog(3.0)  # the reactor thread cannot run: no heartbeats go out
        done = []
        pool.submit(square, (4,), {}, lambda ok, value: done.append(value))
        deadline = time.monotonic() + 30
        while not done and time.monotonic() < deadline:
            time.sleep(0.01)
        print(done, pool.worker_pids() == before)
    """ % (ROOT, os.path.dirname(__file__)))], capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["[16]", "True"], result.stderr


# --------------------------------------------------------------------------- strangers


class Evil:
    """Unpickling this creates a file: proof that something was unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def read_frame(sock: socket.socket) -> tuple[int, bytes]:
    header = b""
    while len(header) < wire.HEADER.size:
        more = sock.recv(wire.HEADER.size - len(header))
        assert more, "closed"
        header += more
    length, kind = wire.HEADER.unpack(header)
    body = b""
    while len(body) < length - 1:
        more = sock.recv(length - 1 - len(body))
        assert more, "closed"
        body += more
    return kind, body


def closed_by_peer(sock: socket.socket, timeout: float = 5.0) -> bool:
    """True once the other end has closed the connection (within ``timeout``)."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def test_strangers_are_dropped_and_logged_while_real_workers_serve(make_pool, tmp_path,
                                                                   caplog):
    caplog.set_level(logging.WARNING, logger="pydron.backend")
    pool = make_pool(2, handshake_timeout=1.0)
    pool.start()
    before = pool.worker_pids()
    host, port = pool.address
    evil_marker = tmp_path / "unpickled"

    # Real work goes on during the attacks.
    stop = threading.Event()
    served: list[bool] = []

    def traffic() -> None:
        while not stop.is_set():
            seen = Outcomes()
            for i in range(10):
                pool.submit(square, (i,), {}, seen.callback(i))
            served.append(sorted(v for _, ok, v in seen.wait(10) if ok) ==
                          [i * i for i in range(10)])

    worker = threading.Thread(target=traffic)
    worker.start()

    def connect() -> socket.socket:
        return socket.create_connection((host, port), timeout=5)

    def hello(sock: socket.socket) -> bytes:
        kind, nonce = read_frame(sock)
        assert kind == wire.HELLO and len(nonce) == wire.NONCE_SIZE
        return nonce

    cases = []
    try:
        # 1. does not know the secret: a made-up MAC
        with connect() as s:
            hello(s)
            s.sendall(wire.frame(wire.AUTH, os.urandom(64) + b'{"index": 0}'))
            cases.append(("wrong HMAC", closed_by_peer(s)))
        # 2. knows a wrong secret
        with connect() as s:
            payload, _ = wire.encode_auth(b"not the secret", hello(s), wire.local_info())
            s.sendall(wire.frame(wire.AUTH, payload))
            cases.append(("wrong secret", closed_by_peer(s)))
        # 3. garbage (an HTTP request: "GET " announces a 1.2 GB frame)
        with connect() as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: pydron\r\n\r\n")
            cases.append(("garbage", closed_by_peer(s)))
        # 4. a frame larger than the limit, announced before authenticating
        with connect() as s:
            s.sendall(wire.HEADER.pack(10_000_000, wire.AUTH) + b"x" * 1000)
            cases.append(("too large", closed_by_peer(s)))
        # 5. a pickle instead of a handshake
        with connect() as s:
            s.sendall(wire.frame(wire.RESULTS, pickle.dumps(Evil(str(evil_marker)))))
            cases.append(("pickle first", closed_by_peer(s)))
        # 6. silence
        with connect() as s:
            hello(s)
            cases.append(("silence", closed_by_peer(s, timeout=5.0)))
        # 7. the right secret, but no worker this pool started
        with connect() as s:
            payload, _ = wire.encode_auth(pool.secret, hello(s),
                                          wire.local_info(index=99, pid=1))
            s.sendall(wire.frame(wire.AUTH, payload))
            cases.append(("impostor", closed_by_peer(s)))
        # 8. the right secret, another version: told why, then dropped
        with connect() as s:
            info = dict(wire.local_info(index=0, pid=before[0]), python="2.7")
            payload, _ = wire.encode_auth(pool.secret, hello(s), info)
            s.sendall(wire.frame(wire.AUTH, payload))
            kind, reason = read_frame(s)
            cases.append(("refused", kind == wire.REFUSE and b"Python 2.7" in reason))
            cases.append(("version", closed_by_peer(s)))
    finally:
        stop.set()
        worker.join(TIMEOUT)

    assert cases == [(name, True) for name, _ in cases]
    assert not evil_marker.exists()  # nothing was unpickled
    assert served and all(served)     # the real workers kept serving...
    assert pool.worker_pids() == before  # ...and none of them was replaced
    messages = [r.getMessage() for r in caplog.records if r.name == "pydron.backend"]
    text = "\n".join(messages)
    # One line per reason and burst (see master._BurstLog): the two wrong MACs share one,
    # as do the two oversized frames (the HTTP request announces one).
    assert text.count("dropped a connection from 127.0.0.1") >= 6, text
    for expected in ("wrong HMAC", "announced (limit 4096", "expected an AUTH frame",
                     "no valid handshake within 1.0 s", "no worker this pool is starting",
                     "version mismatch: the master runs Python"):
        assert expected in text, (expected, text)
    version = [r for r in caplog.records if "version mismatch" in r.getMessage()]
    assert version and version[0].levelno == logging.ERROR
