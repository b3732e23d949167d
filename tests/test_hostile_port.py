"""A flood of connections to the workers' port must not exhaust the caller's file
descriptors (issue 8, point 3).

Anyone on this machine can connect to the port the pool listens on for its workers. The
caller holds at most ``max_pending`` unauthenticated connections, for at most
``handshake_timeout`` seconds each, so that its own ``open()``, the translator and new
workers keep the descriptors they need. Real processes: a caller with a lowered
``RLIMIT_NOFILE`` in a subprocess, flooded by threads of this process that connect in a
loop and hold what they get.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings

import pytest

import pydron
from pydron.api import PydronWarning

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="uses RLIMIT_NOFILE and Linux signals")

FD_LIMIT = 256
FLOOD_THREADS = 32
HELD_PER_THREAD = 16  # 512 connections held at once: twice the caller's whole limit

CALLER = """
import os, resource, signal, sys, time, warnings
import pydron
import pydron.backend
from pydron.backend.multicore import MulticorePool

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, ({limit}, hard))
warnings.simplefilter("always")

pool = MulticorePool(2, heartbeat=0.25, heartbeat_timeout=2.0)
{tweak}
pydron.backend._pool = pool
pool.start()
print("port", pool.address[1], flush=True)
sys.stdin.readline()          # the flood has started
sys.path.insert(0, {here!r})
import flooded                # its @schedule function is translated under the flood
ok = opened = translated = 0
failures = []
start = time.monotonic()
killed = False
while time.monotonic() - start < {seconds}:
    try:
        with open(__file__) as f:
            f.read(1)
        opened += 1
    except OSError as exc:
        failures.append(f"open: {{exc}}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ok += flooded.run(6) == [i * i for i in range(6)]
        except Exception as exc:
            failures.append(f"run: {{type(exc).__name__}}: {{exc}}")
    failures += [f"warning: {{w.message}}" for w in caught]
    state = flooded.run.__pydron_schedule__
    translated += state.template is not None and state.failed is None
    if not killed and time.monotonic() - start > 1.0:
        killed = True     # a replacement worker must get through the flood
        os.kill(pool.worker_pids()[0], signal.SIGKILL)
print("ok", ok, "opened", opened, "translated", translated, flush=True)
print("failures", len(failures), flush=True)
print(*failures[:5], sep="\\n", flush=True)
deadline = time.monotonic() + 20
while time.monotonic() < deadline and not (
        len(pool.worker_pids()) == 2 and all(p.ready for p in pool._procs.values())):
    time.sleep(0.05)
print("replaced", all(p.ready for p in pool._procs.values()), flush=True)
print("fds", len(os.listdir("/proc/self/fd")), flush=True)
"""

FLOODED = """
import time
from pydron import functional, schedule

@functional
def square(x):
    return x * x

@schedule
def run(n):
    out = []
    for i in range(n):
        out.append(square(i))
    return out
"""


def _flood(port: int, stop: threading.Event, counts: list[int]) -> None:
    """Connect in a loop, holding the last HELD_PER_THREAD connections open."""
    held: list[socket.socket] = []
    made = 0
    while not stop.is_set():
        try:
            held.append(socket.create_connection(("127.0.0.1", port), timeout=1))
            made += 1
        except OSError:
            time.sleep(0.001)
        if len(held) > HELD_PER_THREAD:
            held.pop(0).close()
    for sock in held:
        sock.close()
    counts.append(made)


def run_flooded_caller(tmp_path, tweak: str = "", seconds: float = 4.0) -> tuple:
    (tmp_path / "flooded.py").write_text(FLOODED)
    script = tmp_path / "caller.py"
    script.write_text(CALLER.format(limit=FD_LIMIT, tweak=tweak, here=str(tmp_path),
                                    seconds=seconds))
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("PYDRON_CONF", None)
    proc = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=str(tmp_path))
    stop = threading.Event()
    counts: list[int] = []
    threads: list[threading.Thread] = []
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line.startswith("port "), (line, proc.stderr.read())  # type: ignore[union-attr]
        port = int(line.split()[1])
        threads = [threading.Thread(target=_flood, args=(port, stop, counts), daemon=True)
                   for _ in range(FLOOD_THREADS)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)  # the flood is on before the first call
        proc.stdin.write("go\n")  # type: ignore[union-attr]
        proc.stdin.flush()  # type: ignore[union-attr]
        out, err = proc.communicate(timeout=seconds + 40)
    finally:
        stop.set()
        for thread in threads:
            thread.join(5)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    return out, err, sum(counts)


def _value(out: str, key: str) -> str:
    for line in out.splitlines():
        words = line.split()
        if key in words:
            return words[words.index(key) + 1]
    raise AssertionError(f"no {key!r} in the caller's output:\n{out}")


def test_a_flood_on_the_port_leaves_the_caller_its_descriptors(tmp_path):
    out, err, made = run_flooded_caller(tmp_path)
    report = f"{made} connections made\n{out}\n{err[-3000:]}"
    assert made > 1000, report                       # it was a flood
    assert _value(out, "failures") == "0", report    # open(), calls, no fallback warnings
    ok, opened = int(_value(out, "ok")), int(_value(out, "opened"))
    assert ok > 0 and ok == opened == int(_value(out, "translated")), report
    assert _value(out, "replaced") == "True", report  # a new worker got through
    assert int(_value(out, "fds")) < FD_LIMIT // 2, report
    # One line per burst and reason, not one per connection.
    drops = [line for line in err.splitlines() if "dropped" in line]
    assert 0 < len(drops) < 20, report


@pydron.functional
def double(x):
    return 2 * x


@pydron.schedule
def doubled(n):
    out = []
    for i in range(n):
        out.append(double(i))
    return out


def test_a_transient_oserror_in_translation_falls_back_once(monkeypatch):
    """EMFILE while translating runs that call plainly and translates again at the next
    call, rather than giving up on parallelism for the life of the process."""
    import pydron.backend as backend
    import pydron.translation as translation
    real = translation.translate
    tries: list[int] = []

    def scarce(func):
        tries.append(1)
        if len(tries) == 1:
            raise OSError(24, "Too many open files")
        return real(func)

    monkeypatch.setattr(translation, "translate", scarce)
    previous = backend.current_config()
    pydron.configure({"workers": [{"type": "threads", "count": 2}]})
    try:
        state = doubled.__pydron_schedule__
        with pytest.warns(PydronWarning, match="Too many open files.*tries again"):
            assert doubled(4) == [0, 2, 4, 6]
        assert state.failed is None and state.template is None
        with warnings.catch_warnings():
            warnings.simplefilter("error", PydronWarning)
            assert doubled(4) == [0, 2, 4, 6]
        assert state.failed is None and state.template is not None and len(tries) == 2
    finally:
        backend.configure(previous)
