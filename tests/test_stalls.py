"""Short stalls of the caller must not cost it its workers (issue 8, point 6).

A caller stopped for a while (SIGSTOP, a debugger) or whose reactor thread is blocked
for some seconds is silent, but its connections stay open: its workers wait for it
(``master_timeout``, minutes by default) instead of exiting after the heartbeat timeout
and making every call run again. A caller that is gone closes the connection, and its
workers exit at once (tests/test_worker_failures.py). Real processes, real signals.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from waiting import lines_until

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="uses Linux signals and /proc")

CALLER = """
import os, sys, time
import pydron
import pydron.backend
from pydron import functional, schedule
from pydron.backend.multicore import MulticorePool

LOG = {log!r}

@functional
def nap(i):
    with open(LOG, "a") as f:  # one line per attempt: a re-run shows as a second line
        f.write(f"{{i}} {{os.getpid()}}\\n")
    print("started", i, flush=True)
    time.sleep({nap})
    return i * i

@schedule
def run(n):
    out = []
    for i in range(n):
        out.append(nap(i))
    return out

# Short settings, so that the test is short: today's heartbeat timeout is 2 s.
pool = MulticorePool(2, heartbeat=0.25, heartbeat_timeout=2.0{extra})
pydron.backend._pool = pool  # what get_pool() returns
pool.start()
before = pool.worker_pids()
print("pids", *before, flush=True)
{block}
print("result", run(4) == [i * i for i in range(4)], flush=True)
print("same", pool.worker_pids() == before, flush=True)
"""


def _start(tmp_path, *, nap: float = 1.5, extra: str = "", block: str = "") -> tuple:
    log = tmp_path / "attempts.log"
    script = tmp_path / "caller.py"
    script.write_text(CALLER.format(log=str(log), nap=nap, extra=extra, block=block))
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("PYDRON_CONF", None)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=str(tmp_path))
    return proc, log


def _running(pid: int) -> bool:
    """True while ``pid`` exists and has not exited (a zombie has: its parent, stopped,
    cannot reap it)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except (OSError, IndexError):
        return False


def _finish(proc: subprocess.Popen, lines: list[str], timeout: float = 30) -> list[str]:
    rest, err = proc.communicate(timeout=timeout)
    return lines + rest.splitlines() + [f"stderr: {err}"]


def test_a_stopped_caller_keeps_its_workers_and_runs_each_call_once(tmp_path):
    proc, log = _start(tmp_path)
    try:
        lines = lines_until(proc, lambda ls: sum(x.startswith("started") for x in ls) >= 2,
                             30)
        assert sum(x.startswith("started") for x in lines) >= 2, (lines, proc.poll())
        pids = [int(p) for p in next(x for x in lines if x.startswith("pids")).split()[1:]]
        proc.send_signal(signal.SIGSTOP)  # longer than the heartbeat timeout (2 s)
        time.sleep(5.0)
        alive = [p for p in pids if _running(p)]
        proc.send_signal(signal.SIGCONT)
        out = _finish(proc, lines)
    finally:
        proc.kill()
        proc.send_signal(signal.SIGCONT)
        proc.wait()
    assert alive == pids, out            # the workers waited for the stopped caller
    assert "result True" in out and "same True" in out, out
    attempts = log.read_text().splitlines()
    assert sorted(a.split()[0] for a in attempts) == ["0", "1", "2", "3"], attempts
    assert {int(a.split()[1]) for a in attempts} <= set(pids), attempts
    assert "will run elsewhere" not in out[-1] and "stopped answering" not in out[-1], out


def test_a_blocked_reactor_thread_keeps_its_workers(tmp_path):
    # The reactor thread sleeps (no CPU, no heartbeats) for 5 s, longer than twice the
    # heartbeat timeout (a silent master's first CPU sample is a benefit of the doubt),
    # while the rest of the caller waits too; the workers must neither exit nor be
    # replaced.
    block = textwrap.dedent("""
        from pydron.backend.reactor import call_soon
        call_soon(time.sleep, 5.0)
        time.sleep(5.2)
    """)
    proc, log = _start(tmp_path, block=block)
    try:
        out = _finish(proc, [], timeout=40)
    finally:
        proc.kill()
        proc.wait()
    assert "result True" in out and "same True" in out, out
    attempts = log.read_text().splitlines()
    assert sorted(a.split()[0] for a in attempts) == ["0", "1", "2", "3"], attempts


def test_a_silent_caller_is_given_up_after_master_timeout(tmp_path):
    # The setting bounds the wait: stopped for longer than master_timeout, the caller
    # finds its workers gone (they exit by themselves), and its calls run again.
    proc, log = _start(tmp_path, nap=4.0, extra=", master_timeout=1.5")
    try:
        lines = lines_until(proc, lambda ls: sum(x.startswith("started") for x in ls) >= 2,
                             30)
        pids = [int(p) for p in next(x for x in lines if x.startswith("pids")).split()[1:]]
        proc.send_signal(signal.SIGSTOP)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_running(p) for p in pids):
            time.sleep(0.1)
        gone = [p for p in pids if not _running(p)]
    finally:
        proc.kill()
        proc.send_signal(signal.SIGCONT)
        proc.wait()
    assert gone == pids
