"""Durable results under ``kill -9``: a caller killed mid-run and started again recomputes
only what was not stored; a worker killed mid-call costs that one call, nothing more.

Real processes: the caller is a script run with subprocess over a real MulticorePool.
Each call appends a "start" line and, when it is done, an "end" line to a log, so that
the test can tell calls that completed from calls cut off mid-execution.

What "exactly once" can mean here: a result is stored before the caller sees it, so a
call whose outcome the caller received is never executed again. A call that ended on a
worker while its result was still on its way (in the pipe, not yet stored) when the
caller died has to run again -- no cache can keep a result it never got. The caller
prints "got I" for each outcome received; the test asserts that those calls ended
exactly once over both runs, that every call ended at least once, that the calls that
ended twice are among the few that were in flight at the kill, and that the final answer
is exact.
"""
from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from waiting import wait_for, wait_gone

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="uses Linux signals")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CALLS = 40
EXPECTED = sum(i * i + 1 for i in range(CALLS))

SCRIPT = textwrap.dedent('''
    import os
    import signal
    import sys
    import threading
    import time

    from pydron.backend.multicore import MulticorePool
    from pydron.result_cache import CachingPool, ResultCache


    def step(log, i):
        """One unit of a long pipeline."""
        with open(log, "a") as f:
            f.write(f"start {i} {os.getpid()} {time.time()}\\n")
        time.sleep(0.1)
        value = i * i + 1
        with open(log, "a") as f:
            f.write(f"end {i} {os.getpid()}\\n")
        return value


    def main(log, cache_path, calls, kill_worker_after):
        pool = CachingPool(MulticorePool(2), ResultCache(cache_path))
        pool.start()
        print("pids", *pool.worker_pids(), flush=True)
        results = {}
        lock = threading.Condition()

        def callback(i):
            def done(ok, value):
                with lock:
                    results[i] = (ok, value)
                    print("got", i, flush=True)
                    lock.notify_all()
            return done

        for i in range(calls):
            pool.submit(step, (log, i), {}, callback(i))
        if kill_worker_after:
            while True:  # SIGKILL a worker in the middle of a call, once
                try:
                    with open(log) as f:
                        lines = f.read().splitlines()
                except FileNotFoundError:
                    lines = []
                ends = sum(line.startswith("end ") for line in lines)
                last = lines[-1].split() if lines else ["none"]
                # a call that started under 30 ms ago: it is sure to be mid-call
                if ends >= kill_worker_after and last[0] == "start" and \\
                        time.time() - float(last[3]) < 0.03:
                    victim = int(last[2])
                    os.kill(victim, signal.SIGKILL)
                    print("killed", last[1], victim, flush=True)
                    break
                time.sleep(0.005)
        with lock:
            assert lock.wait_for(lambda: len(results) == calls, 300), len(results)
        failed = [i for i, (ok, _) in results.items() if not ok]
        assert not failed, [results[i] for i in failed]
        print("hits", pool.hits, "misses", pool.misses, flush=True)
        print("total", sum(value for _, value in results.values()), flush=True)
        pool.shutdown()


    if __name__ == "__main__":
        main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
''')


def start(tmp_path, kill_worker_after: int = 0) -> subprocess.Popen:
    script = tmp_path / "pipeline.py"
    if not script.exists():
        script.write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("PYDRON_CONF", None)
    return subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "log"), str(tmp_path / "cache"),
         str(CALLS), str(kill_worker_after)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        cwd=str(tmp_path))


def log_lines(tmp_path) -> list[list[str]]:
    try:
        with open(tmp_path / "log") as f:
            return [line.split() for line in f.read().splitlines()]
    except FileNotFoundError:
        return []


def counts(lines: list[list[str]], what: str) -> collections.Counter:
    return collections.Counter(int(line[1]) for line in lines if line[0] == what)


def finish(proc: subprocess.Popen) -> list[str]:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, (out, err)
    return out.splitlines()


def value_of(lines: list[str], what: str) -> list[int]:
    line = next(line for line in lines if line.startswith(what + " "))
    return [int(word) for word in line.split()[1:] if word.isdigit()]


def test_caller_killed_mid_run_resumes_without_recomputing(tmp_path):
    first = start(tmp_path)
    pids_line = first.stdout.readline()
    assert pids_line.startswith("pids "), (pids_line, first.stderr.read())
    workers = [int(p) for p in pids_line.split()[1:]]
    wait_for(lambda: sum(counts(log_lines(tmp_path), "end").values()) >= 10, timeout=120,
             what="ten calls to end")
    first.send_signal(signal.SIGKILL)
    out, _ = first.communicate(timeout=30)
    got = {int(line.split()[1]) for line in out.splitlines() if line.startswith("got ")}
    # Orphaned workers notice their caller is gone and exit (finishing at most the call
    # they are in): wait, so that none of them writes into the log during the rerun.
    assert not wait_gone(workers, timeout=60)
    ended_before = counts(log_lines(tmp_path), "end")
    assert 10 <= sum(ended_before.values()) < CALLS, ended_before
    assert got <= set(ended_before)

    lines = finish(start(tmp_path))
    assert value_of(lines, "total") == [EXPECTED]  # the answer is exact
    hits, misses = value_of(lines, "hits")
    assert hits + misses == CALLS and hits >= len(got)

    log = log_lines(tmp_path)
    ended, started = counts(log, "end"), counts(log, "start")
    assert set(ended) == set(range(CALLS))  # every call completed ...
    assert all(ended[i] == 1 for i in got)  # ... and what the caller got, exactly once
    twice = {i for i, n in ended.items() if n > 1}
    assert all(n <= 2 for n in ended.values()), ended
    # Only results in flight at the kill (ended on a worker, not yet stored) ran again:
    # one call per worker at most, and a few results on the wire.
    assert len(twice) <= 4, (twice, got)
    assert twice <= set(ended_before) - got
    assert sum(ended.values()) - sum(ended_before.values()) == misses  # a miss ran once
    assert all(started[i] >= ended[i] for i in range(CALLS))

    # A third run computes nothing at all.
    lines = finish(start(tmp_path))
    assert value_of(lines, "hits") == [CALLS, 0]
    assert value_of(lines, "total") == [EXPECTED]
    assert counts(log_lines(tmp_path), "end") == ended


def test_worker_killed_mid_call_retries_that_call_only(tmp_path):
    t0 = time.monotonic()
    lines = finish(start(tmp_path, kill_worker_after=10))
    killed = value_of(lines, "killed")[0]
    assert value_of(lines, "total") == [EXPECTED]
    log = log_lines(tmp_path)
    ended, started = counts(log, "end"), counts(log, "start")
    assert set(ended) == set(range(CALLS))
    assert started[killed] == 2 and ended[killed] == 1  # cut off once, retried once
    assert all(n == 1 for n in ended.values()), ended
    assert time.monotonic() - t0 < 120

    lines = finish(start(tmp_path))  # and all of it was stored
    assert value_of(lines, "hits") == [CALLS, 0]
    assert counts(log_lines(tmp_path), "end") == ended
