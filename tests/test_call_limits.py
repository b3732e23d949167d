"""Bounds on what a bad call may cost: ``call_timeout`` (a call that never ends), poison
calls (a call that kills every worker it runs on) and ``respawns_per_minute`` (workers
dying faster than is sane). Real worker processes, real signals, real TCP on 127.0.0.1.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time

import pytest

import pydron
import pydron.backend as backend
from pydron import functional, schedule
from pydron.backend.engine.engine import default_respawns
from pydron.backend.multicore import MulticorePool
from pydron.backend.threads import ThreadPool
from pydron.config import parse_config
from pydron.errors import CallTimeoutError, ConfigError, WorkerLostError

from test_multicore import Outcomes, alive, make_pool, square, wait_gone  # noqa: F401
from waiting import runs, wait_for

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="uses /proc and Linux signals")


# --------------------------------------------------------------------------- functions


def note(path):
    """Append this process's pid to ``path``: which worker ran an attempt."""
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")


def note_and_sleep(path, seconds):
    note(path)
    time.sleep(seconds)
    return os.getpid()


def note_and_die(path, how):
    note(path)
    if how == "exit":
        os._exit(3)
    os.kill(os.getpid(), getattr(signal, how))
    time.sleep(10)  # the signal arrives first


def exit_3():
    os._exit(3)


@functional
def sleep_f(seconds):
    time.sleep(seconds)
    return seconds


@schedule
def scheduled_sleep(seconds):
    return sleep_f(seconds)


@functional
def die_f(path):
    note(path)
    os.kill(os.getpid(), signal.SIGKILL)


@schedule
def scheduled_poison(path):
    return die_f(path)


def workers() -> list[threading.Thread]:
    """The threads pool's worker threads (its watchdog left out)."""
    return [t for t in threading.enumerate()
            if t.name.startswith("pydron-thread-") and "watchdog" not in t.name]


@pytest.fixture
def configured():
    """Set the process-wide configuration for one test; the previous one comes back."""
    previous = backend._config
    yield backend.configure
    backend.configure(previous)


# --------------------------------------------------------------------------- call_timeout


def test_a_call_past_call_timeout_fails_and_its_worker_is_replaced(make_pool, tmp_path):
    pool = make_pool(1, call_timeout=0.5)
    pool.start()
    seen = Outcomes()
    path = tmp_path / "runs"
    start = time.monotonic()
    pool.submit(note_and_sleep, (str(path), 60), {}, seen.callback("long"))
    for i in range(3):  # queued behind it: they must still run, elsewhere
        pool.submit(square, (i,), {}, seen.callback(i))
    ok, err = seen.one("long")
    elapsed = time.monotonic() - start
    assert not ok and isinstance(err, CallTimeoutError), err
    assert 0.5 <= elapsed < 3, elapsed
    message = str(err)
    assert f"note_and_sleep() defined at {__file__}:" in message, message
    assert "did not finish within call_timeout=0.5 s" in message, message
    victim, = runs(path)
    assert f"(pid {victim}) running it was killed" in message, message
    assert err.function == "note_and_sleep" and err.timeout == 0.5
    assert not wait_gone([victim], 5), "the worker running the call still runs"
    assert sorted(v for t, ok, v in seen.wait(4) if t != "long") == [0, 1, 4]
    wait_for(lambda: len(pool.worker_pids()) == 1 and victim not in pool.worker_pids(),
             what="a replacement worker")
    assert runs(path) == [victim]  # not run again


def test_calls_within_call_timeout_are_not_affected(make_pool):
    pool = make_pool(2, call_timeout=2)
    seen = Outcomes()
    for i in range(40):
        pool.submit(square, (i,), {}, seen.callback(i))
    pool.submit(time.sleep, (0.5,), {}, seen.callback("nap"))
    assert all(ok for _, ok, _ in seen.wait(41))
    assert len(pool.worker_pids()) == 2


def test_call_timeout_from_pydron_conf_names_the_line_of_the_call(configured):
    configured({"workers": [{"type": "multicore", "cores": 1}], "call_timeout": 0.5})
    start = time.monotonic()
    with pytest.raises(pydron.CallTimeoutError) as info:
        scheduled_sleep(60)
    assert time.monotonic() - start < 10
    message = str(info.value)
    assert "sleep_f() defined at" in message and "call_timeout=0.5 s" in message, message
    assert f"[sleep_f() called at {__file__}:" in message, message
    assert scheduled_sleep(0.01) == 0.01  # and the pool goes on


def test_call_timeout_on_the_threads_pool_abandons_the_thread(configured):
    configured({"workers": [{"type": "threads", "count": 1}], "call_timeout": 0.3})
    start = time.monotonic()
    with pytest.raises(pydron.CallTimeoutError) as info:
        scheduled_sleep(2)
    assert len(workers()) == 2  # the abandoned one runs on, and its replacement
    assert time.monotonic() - start < 1.5
    message = str(info.value)
    assert "call_timeout=0.3 s" in message and "runs on in the background" in message
    assert f"[sleep_f() called at {__file__}:" in message, message
    assert scheduled_sleep(0.01) == 0.01  # a new thread took the abandoned one's place
    wait_for(lambda: len(workers()) == 1, 5, what="the abandoned thread to end with its call")


def test_threads_pool_shutdown_does_not_wait_for_an_abandoned_thread():
    pool = ThreadPool(1, call_timeout=0.2)
    seen = Outcomes()
    pool.submit(time.sleep, (30,), {}, seen.callback("long"))
    pool.submit(square, (3,), {}, seen.callback("next"))
    start = time.monotonic()
    pool.shutdown(wait=True)  # the sleep is abandoned at 0.2 s; square runs after
    assert time.monotonic() - start < 5
    assert isinstance(seen.one("long")[1], CallTimeoutError)
    assert seen.one("next") == (True, 9)


@pytest.mark.parametrize("value", [0, -1, float("nan"), True, "5"])
def test_call_timeout_must_be_a_positive_number(value):
    with pytest.raises(ValueError, match="call_timeout"):
        MulticorePool(1, call_timeout=value)
    with pytest.raises(ValueError, match="call_timeout"):
        ThreadPool(1, call_timeout=value)
    with pytest.raises(ConfigError, match="call_timeout: expected a number of seconds > 0"):
        parse_config({"call_timeout": value})


# --------------------------------------------------------------------------- poison calls


@pytest.mark.parametrize("how, said", [
    ("SIGKILL", "was killed by signal SIGKILL (possibly the OOM killer)"),
    ("SIGSEGV", "was killed by signal SIGSEGV"),
    ("exit", "exited with code 3"),
])
def test_a_call_that_kills_its_worker_twice_in_a_row_is_not_run_again(make_pool, tmp_path,
                                                                      how, said):
    pool = make_pool(2, max_retries=100)
    seen = Outcomes()
    path = tmp_path / "runs"
    pool.submit(note_and_die, (str(path), how), {}, seen.callback())
    ok, err = seen.one()
    assert not ok and isinstance(err, WorkerLostError), err
    first, second = runs(path)  # two runs, on two different workers, and no more
    assert first != second
    message = str(err)
    assert message.startswith(f"note_and_die() defined at {__file__}:"), message
    assert "killed 2 workers in a row, each while running it" in message, message
    assert f"(pid {first}) {said}" in message and f"(pid {second}) {said}" in message, message
    assert "it is not run again" in message, message
    assert "max_retries=100" in message, message
    seen2 = Outcomes()  # the pool goes on
    pool.submit(square, (7,), {}, seen2.callback())
    assert seen2.one() == (True, 49)


def test_a_poison_call_in_a_schedule_function_names_its_line(configured, tmp_path):
    # The case that respawned 704 workers in 20 s: now two deaths and an error.
    configured({"workers": [{"type": "multicore", "cores": 2}], "max_retries": 100})
    path = tmp_path / "runs"
    start = time.monotonic()
    with pytest.raises(pydron.WorkerLostError) as info:
        scheduled_poison(str(path))
    assert time.monotonic() - start < 15
    assert len(runs(path)) == 2
    message = str(info.value)
    assert "die_f() defined at" in message and "killed 2 workers" in message, message
    assert f"[die_f() called at {__file__}:" in message, message


def test_calls_whose_workers_are_killed_from_outside_still_run_again(make_pool, tmp_path):
    """Unlucky, not poison: two workers killed from outside, each running another call;
    and one call killed once. Every call is retried and completes."""
    pool = make_pool(2, max_retries=3)
    pool.start()
    seen = Outcomes()
    a, b = tmp_path / "a", tmp_path / "b"
    pool.submit(note_and_sleep, (str(a), 1.0), {}, seen.callback("a"))
    pool.submit(note_and_sleep, (str(b), 1.0), {}, seen.callback("b"))
    victim_a, = wait_for(lambda: runs(a), what="a to start")
    victim_b, = wait_for(lambda: runs(b), what="b to start")
    os.kill(victim_a, signal.SIGKILL)
    os.kill(victim_b, signal.SIGKILL)
    ok_a, pid_a = seen.one("a")
    ok_b, pid_b = seen.one("b")
    assert ok_a and ok_b, (pid_a, pid_b)
    assert runs(a) == [victim_a, pid_a] and runs(b) == [victim_b, pid_b]


# --------------------------------------------------------------------------- respawns


def test_respawning_stops_past_respawns_per_minute_and_the_queued_calls_fail(make_pool,
                                                                             caplog):
    pool = make_pool(1, max_retries=0, respawns_per_minute=3)
    pool.start()
    first = pool.worker_pids()
    seen = Outcomes()
    for i in range(6):
        pool.submit(exit_3, (), {}, seen.callback(i))
    outcomes = {t: value for t, ok, value in seen.wait(6)}
    assert all(isinstance(v, WorkerLostError) for v in outcomes.values()), outcomes
    # Deaths 1 to 3 are replaced; the 4th is not, so the calls still queued fail.
    for i in range(4):
        assert "exited with code 3" in str(outcomes[i]), outcomes[i]
    for i in (4, 5):
        message = str(outcomes[i])
        assert "stopped replacing worker processes: 4 died within the last minute" in \
            message, message
        assert "respawns_per_minute=3" in message and "exited with code 3" in message
    assert pool.worker_pids() == [] and first
    assert sum("stopped replacing" in r.getMessage() for r in caplog.records) == 1
    later = Outcomes()  # within the minute, a new call fails at once instead of spawning
    pool.submit(square, (2,), {}, later.callback())
    ok, err = later.one()
    assert not ok and "stopped replacing worker processes" in str(err)
    assert pool.worker_pids() == []


def test_respawns_per_minute_setting():
    assert MulticorePool(3).respawns_per_minute == default_respawns(3) == 22
    assert parse_config({"respawns_per_minute": 50}).respawns_per_minute == 50
    assert parse_config({}).respawns_per_minute is None
    for value in (0, 10**9, 1.5):
        with pytest.raises(ConfigError, match="respawns_per_minute: expected an integer"):
            parse_config({"respawns_per_minute": value})
