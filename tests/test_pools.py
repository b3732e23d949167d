"""The in-process pools and the process-wide pool, with real threads."""
from __future__ import annotations

import gc
import json
import os
import pathlib
import subprocess
import sys
import threading
import time
import traceback

import pytest

import pydron.backend as backend
import pydron.config as config
from pydron.backend import CompositePool, InlinePool, ThreadPool, in_worker, worker_context
from pydron.errors import ConfigError

TIMEOUT = 10  # generous: the test machines are shared and noisy


class Outcomes:
    """Collects on_done calls and lets a test wait for them."""

    def __init__(self) -> None:
        self.items: list[tuple[object, bool, object, int]] = []
        self.cond = threading.Condition()

    def callback(self, tag: object = None):
        def on_done(ok: bool, value: object) -> None:
            with self.cond:
                self.items.append((tag, ok, value, threading.get_ident()))
                self.cond.notify_all()
        return on_done

    def wait(self, n: int) -> list[tuple[object, bool, object, int]]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.items) >= n, TIMEOUT), self.items
            return list(self.items)


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No stray pydron.conf, no shared pool left behind by a test, and the configuration
    that other test modules chose (e.g. in conftest.py) restored afterwards."""
    previous = backend._config
    monkeypatch.delenv("PYDRON_CONF", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(config, "SYSTEM_CONF", tmp_path / "etc-pydron.conf")
    backend.configure(None)
    yield
    backend.configure(previous)


@pytest.fixture
def pools():
    """Pools made by a test, shut down afterwards even if it fails."""
    made: list = []
    yield made
    for pool in made:
        pool.shutdown(wait=True)


def boom(message: str) -> None:
    raise ValueError(message)


# --------------------------------------------------------------------------- inline


def test_inline_runs_synchronously_in_the_caller_thread():
    pool = InlinePool()
    seen = Outcomes()
    trace = []

    def fn(x, y=0):
        trace.append((threading.get_ident(), in_worker()))
        return x + y

    pool.submit(fn, (1,), {"y": 2}, seen.callback("a"))
    assert seen.items == [("a", True, 3, threading.get_ident())]  # before submit returned
    assert trace == [(threading.get_ident(), True)]
    assert not in_worker()
    assert pool.parallelism == 1


def test_inline_delivers_failures_and_refuses_after_shutdown():
    pool = InlinePool()
    seen = Outcomes()
    handle = pool.submit(boom, ("bad",), {}, seen.callback())
    (_, ok, exc, _), = seen.items
    assert not ok and isinstance(exc, ValueError) and str(exc) == "bad"
    assert exc.__traceback__ is not None
    assert pool.cancel(handle) is False
    pool.shutdown()
    with pytest.raises(RuntimeError):
        pool.submit(print, (), {}, seen.callback())


# --------------------------------------------------------------------------- threads


def test_threads_run_calls_concurrently(pools):
    pool = ThreadPool(8)
    pools.append(pool)
    seen = Outcomes()
    start = time.perf_counter()
    for i in range(8):
        pool.submit(time.sleep, (0.3,), {}, seen.callback(i))
    items = seen.wait(8)
    elapsed = time.perf_counter() - start
    assert elapsed < 0.9, elapsed  # sequentially it would take 2.4 s
    assert sorted(tag for tag, *_ in items) == list(range(8))
    assert all(ok for _, ok, _, _ in items)
    assert len({ident for *_, ident in items}) == 8
    assert pool.parallelism == 8


def test_threads_deliver_results_and_kwargs(pools):
    pool = ThreadPool(2)
    pools.append(pool)
    seen = Outcomes()
    pool.submit(divmod, (17, 5), {}, seen.callback("d"))
    pool.submit(dict, (), {"a": 1}, seen.callback("k"))
    results = {tag: (ok, value) for tag, ok, value, _ in seen.wait(2)}
    assert results == {"d": (True, (3, 2)), "k": (True, {"a": 1})}
    assert all(ident != threading.get_ident() for *_, ident in seen.items)


def test_threads_start_lazily_as_daemons(pools):
    before = set(threading.enumerate())
    pool = ThreadPool(3)
    pools.append(pool)
    assert set(threading.enumerate()) == before
    seen = Outcomes()
    pool.submit(int, (), {}, seen.callback())
    seen.wait(1)
    new = set(threading.enumerate()) - before
    assert len(new) == 3 and all(t.daemon for t in new)


def test_exception_is_delivered_with_its_traceback(pools):
    pool = ThreadPool(2)
    pools.append(pool)
    seen = Outcomes()
    pool.submit(boom, ("no good",), {}, seen.callback())
    (_, ok, exc, _), = seen.wait(1)
    assert ok is False
    assert type(exc) is ValueError and exc.args == ("no good",)
    frames = [frame.name for frame in traceback.extract_tb(exc.__traceback__)]
    assert frames[-1] == "boom"


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit, GeneratorExit])
def test_base_exceptions_are_delivered_and_the_worker_survives(pools, exc_type):
    pool = ThreadPool(1)
    pools.append(pool)
    seen = Outcomes()

    def fn():
        raise exc_type("stop")

    pool.submit(fn, (), {}, seen.callback("fail"))
    pool.submit(abs, (-4,), {}, seen.callback("next"))  # the same, only, thread
    (tag1, ok1, value1, t1), (tag2, ok2, value2, t2) = seen.wait(2)
    assert (tag1, ok1, type(value1)) == ("fail", False, exc_type)
    assert value1.__traceback__ is not None
    assert (tag2, ok2, value2) == ("next", True, 4)
    assert t1 == t2


def test_a_raising_callback_is_logged_and_the_worker_survives(pools, caplog):
    pool = ThreadPool(1)
    pools.append(pool)
    seen = Outcomes()

    def bad_callback(ok, value):
        raise RuntimeError("callback bug")

    pool.submit(int, (), {}, bad_callback)
    pool.submit(int, ("7",), {}, seen.callback())
    assert seen.wait(1)[0][1:3] == (True, 7)
    assert any("callback" in r.getMessage() and r.exc_info for r in caplog.records)


def test_calls_run_in_submission_order(pools):
    pool = ThreadPool(1)
    pools.append(pool)
    seen = Outcomes()
    for i in range(50):
        pool.submit(int, (i,), {}, seen.callback(i))
    assert [value for _, _, value, _ in seen.wait(50)] == list(range(50))


def test_cancel_a_pending_call(pools):
    pool = ThreadPool(1)
    pools.append(pool)
    seen = Outcomes()
    gate = threading.Event()
    running = threading.Event()

    def blocker():
        running.set()
        assert gate.wait(TIMEOUT)
        return "first"

    first = pool.submit(blocker, (), {}, seen.callback("first"))
    assert running.wait(TIMEOUT)
    ran = []
    second = pool.submit(ran.append, ("second",), {}, seen.callback("second"))
    pool.submit(int, (3,), {}, seen.callback("third"))

    assert pool.cancel(second) is True
    assert pool.cancel(second) is False  # already cancelled
    assert pool.cancel(first) is False   # already running
    assert pool.cancel(object()) is False
    gate.set()
    items = seen.wait(2)
    pool.shutdown(wait=True)
    assert [tag for tag, *_ in seen.items] == ["first", "third"]
    assert ran == []
    assert pool.cancel(first) is False   # finished
    assert items[0][2] == "first"


def test_shutdown_waits_for_running_and_queued_calls(pools):
    pool = ThreadPool(2)
    seen = Outcomes()
    for i in range(4):
        pool.submit(time.sleep, (0.1,), {}, seen.callback(i))
    pool.shutdown(wait=True)
    assert len(seen.items) == 4  # nothing queued was dropped: on_done is owed
    assert not any(t.is_alive() for t in pool._threads)
    assert len(pool._threads) == 2
    with pytest.raises(RuntimeError):
        pool.submit(int, (), {}, seen.callback())
    pool.shutdown()  # twice is harmless


def test_shutdown_without_wait_returns_at_once(pools):
    pool = ThreadPool(1)
    seen = Outcomes()
    gate = threading.Event()
    pool.submit(gate.wait, (TIMEOUT,), {}, seen.callback())
    start = time.perf_counter()
    pool.shutdown(wait=False)
    assert time.perf_counter() - start < 0.5
    assert seen.items == []
    gate.set()
    assert seen.wait(1)[0][1:3] == (True, True)
    pool._threads[0].join(TIMEOUT)
    assert not pool._threads[0].is_alive()


def test_shutdown_from_inside_a_worker_does_not_deadlock(pools):
    pool = ThreadPool(2)
    seen = Outcomes()
    pool.submit(pool.shutdown, (), {"wait": True}, seen.callback())
    assert seen.wait(1)[0][1] is True
    for thread in pool._threads:
        thread.join(TIMEOUT)
        assert not thread.is_alive()


def test_an_abandoned_pool_stops_its_threads():
    pool = ThreadPool(2)
    seen = Outcomes()
    pool.submit(int, (), {}, seen.callback())
    seen.wait(1)
    threads = list(pool._threads)
    del pool
    gc.collect()
    for thread in threads:
        thread.join(TIMEOUT)
        assert not thread.is_alive()


def test_thread_pool_rejects_bad_counts():
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError):
            ThreadPool(bad)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- worker context


def test_in_worker_inside_a_worker_thread_only(pools):
    pool = ThreadPool(2)
    pools.append(pool)
    seen = Outcomes()
    assert in_worker() is False
    pool.submit(in_worker, (), {}, seen.callback())
    assert seen.wait(1)[0][1:3] == (True, True)
    assert in_worker() is False
    # other plain threads are not workers either
    flag = []
    plain = threading.Thread(target=lambda: flag.append(in_worker()))
    plain.start()
    plain.join()
    assert flag == [False]


def test_worker_context_nests_and_restores():
    assert not in_worker()
    with worker_context():
        assert in_worker()
        with worker_context():
            assert in_worker()
        assert in_worker()
    assert not in_worker()
    with pytest.raises(KeyError):
        with worker_context():
            raise KeyError
    assert not in_worker()


# --------------------------------------------------------------------------- composite


def test_composite_spreads_calls_over_members(pools):
    a, b = ThreadPool(2), ThreadPool(2)
    pool = CompositePool([a, b])
    pools.append(pool)
    assert pool.parallelism == 4
    gate = threading.Event()
    seen = Outcomes()
    names = []

    def record():
        names.append(threading.current_thread())
        assert gate.wait(TIMEOUT)

    for i in range(4):
        pool.submit(record, (), {}, seen.callback(i))
    assert pool.in_flight() == [2, 2]
    deadline = time.monotonic() + TIMEOUT
    while len(names) < 4 and time.monotonic() < deadline:  # all four running at once
        time.sleep(0.01)
    gate.set()
    seen.wait(4)
    assert pool.in_flight() == [0, 0]
    assert set(names) == set(a._threads) | set(b._threads)


def test_composite_prefers_free_capacity_and_cancels(pools):
    big, small = ThreadPool(3), ThreadPool(1)
    pool = CompositePool([small, big])
    pools.append(pool)
    gate = threading.Event()
    seen = Outcomes()
    running = threading.Semaphore(0)

    def hold():
        running.release()
        return gate.wait(TIMEOUT)

    handles = [pool.submit(hold, (), {}, seen.callback(i)) for i in range(4)]
    assert pool.in_flight() == [1, 3]  # each member exactly full
    for _ in range(4):
        assert running.acquire(timeout=TIMEOUT)
    extra = pool.submit(int, (), {}, seen.callback("extra"))  # tie at 0 free: first member
    assert pool.in_flight() == [2, 3]
    assert pool.cancel(extra) is True
    assert pool.in_flight() == [1, 3]
    assert pool.cancel(handles[0]) is False
    gate.set()
    seen.wait(4)
    assert "extra" not in [tag for tag, *_ in seen.items]
    assert pool.in_flight() == [0, 0]


def test_composite_shutdown_reaches_every_member():
    a, b = ThreadPool(1), InlinePool()
    pool = CompositePool([a, b])
    pool.shutdown()
    for member in (a, b):
        with pytest.raises(RuntimeError):
            member.submit(int, (), {}, lambda ok, value: None)


# --------------------------------------------------------------------------- shared pool


def test_get_pool_is_shared_across_threads():
    backend.configure({"workers": [{"type": "threads", "count": 3}]})
    barrier = threading.Barrier(8)
    got = []

    def grab():
        barrier.wait(TIMEOUT)
        got.append(backend.get_pool())

    threads = [threading.Thread(target=grab) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert len(got) == 8
    assert all(p is got[0] for p in got)
    assert isinstance(got[0], ThreadPool) and got[0].parallelism == 3
    assert backend.get_pool() is got[0]


def test_default_pool_without_a_file():
    from pydron.backend.multicore import MulticorePool
    pool = backend.get_pool()
    assert isinstance(pool, MulticorePool)
    assert pool.parallelism == config.local_cores()
    assert backend.current_config().source == "<default>"


def test_configure_switches_pools(tmp_path):
    backend.configure({"workers": [{"type": "inline"}]})
    inline = backend.get_pool()
    assert isinstance(inline, InlinePool)
    assert backend.current_config().source == "<dict>"

    path = tmp_path / "other.conf"
    path.write_text(json.dumps({"workers": [{"type": "threads", "count": 2}], "window": 5}))
    backend.configure(path)
    threads = backend.get_pool()
    assert isinstance(threads, ThreadPool) and threads.parallelism == 2
    assert backend.current_config().window == 5
    with pytest.raises(RuntimeError):  # the old pool was shut down
        inline.submit(int, (), {}, lambda ok, value: None)

    backend.configure(config.parse_config(
        {"workers": [{"type": "threads", "count": 1}, {"type": "inline"}]}))
    composite = backend.get_pool()
    assert isinstance(composite, CompositePool) and composite.parallelism == 2
    assert not any(t.is_alive() for t in threads._threads)


def test_configure_with_a_bad_config_changes_nothing():
    backend.configure({"workers": [{"type": "inline"}]})
    pool = backend.get_pool()
    with pytest.raises(ConfigError, match=r"workers\[0\]\.count"):
        backend.configure({"workers": [{"type": "threads", "count": 0}]})
    with pytest.raises(TypeError):
        backend.configure(42)  # type: ignore[arg-type]
    assert backend.get_pool() is pool
    seen = Outcomes()
    pool.submit(int, (), {}, seen.callback())  # still usable
    assert seen.items[0][1] is True


def test_configure_none_discovers_again(tmp_path):
    backend.configure({"workers": [{"type": "inline"}]})
    assert isinstance(backend.get_pool(), InlinePool)
    (tmp_path / "pydron.conf").write_text(json.dumps({"workers": [{"type": "threads",
                                                                     "count": 4}]}))
    backend.configure(None)
    pool = backend.get_pool()
    assert isinstance(pool, ThreadPool) and pool.parallelism == 4
    assert backend.current_config().source == str(tmp_path / "pydron.conf")


def test_shutdown_then_get_pool_makes_a_new_pool():
    backend.configure({"workers": [{"type": "threads", "count": 1}]})
    first = backend.get_pool()
    seen = Outcomes()
    first.submit(int, (), {}, seen.callback())
    seen.wait(1)
    backend.shutdown()
    assert not first._threads[0].is_alive()
    second = backend.get_pool()
    assert second is not first
    second.submit(int, ("5",), {}, seen.callback())
    assert seen.wait(2)[1][2] == 5


def test_the_pool_is_shut_down_at_interpreter_exit(tmp_path):
    # Handlers run last-registered first, so `report` (registered before pydron is
    # imported) sees the pool after pydron's own exit handler has run.
    script = """if True:
        import atexit, os, sys
        atexit.register(lambda: print("closed:", pool._closed, flush=True))
        import pydron.backend as backend
        backend.configure({"workers": [{"type": "threads", "count": 2}]})
        pool = backend.get_pool()
        pool.submit(int, (), {}, lambda ok, value: None)
    """
    root = pathlib.Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "closed: True" in proc.stdout.splitlines(), proc.stdout
