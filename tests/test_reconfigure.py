"""configure() and shutdown() while a run is in progress in another thread, with real
worker processes: the run keeps the pool it started with until it ends, later runs get
the new configuration, and the old pool's workers are gone once its last run ended."""
from __future__ import annotations

import os
import threading
import time

import pytest

import pydron
import pydron.backend as backend
from pydron import functional, schedule
from pydron.backend.multicore import MulticorePool
from waiting import alive, wait_gone

TIMEOUT = 30
CALL_S = 0.5


@functional
def slow(i: int, after: int = 0) -> tuple[int, int]:
    time.sleep(CALL_S)
    return i * i, os.getpid()


@schedule
def squares(n: int) -> list[tuple[int, int]]:
    """One call after the other (each waits for the one before), so that the run submits
    calls long after it started: after a configure() or shutdown() from another thread."""
    out = []
    previous = 0
    for i in range(n):
        square, pid = slow(i, previous)
        out.append((square, pid))
        previous = square
    return out


@schedule
def squares_stopping_itself(n: int) -> list[tuple[int, int]]:
    first = slow(0)
    pydron.shutdown()  # a sync point of this very run: must not wait for the run
    rest = [slow(i, first[0]) for i in range(1, n)]
    return [first, *rest]


@pytest.fixture
def two_workers():
    """The shared pool is 2 started worker processes; the configuration comes back after."""
    previous = backend._config
    backend.configure({"workers": [{"type": "multicore", "cores": 2}]})
    pool = backend.get_pool()
    assert isinstance(pool, MulticorePool)
    pool.start(wait=True)
    yield pool
    backend.configure(previous)
    pool.shutdown(wait=True)


class Run(threading.Thread):
    """``func(n)`` in a thread; :meth:`wait_running` returns once its calls are running."""

    def __init__(self, pool: MulticorePool, n: int, func=squares) -> None:
        super().__init__(daemon=True)
        self.pool, self.n, self.func = pool, n, func
        self.result: object = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.func(self.n)
        except BaseException as exc:  # reported by the test
            self.error = exc

    def wait_running(self, runs: int = 1) -> None:
        """Until ``runs`` runs (this one included) hold the pool and calls are running."""
        deadline = time.monotonic() + TIMEOUT
        while backend._runs.get(self.pool, 0) < runs:
            assert time.monotonic() < deadline, "the run never started"
            assert self.is_alive(), self.error
            time.sleep(0.01)
        time.sleep(0.2)  # its first calls (0.5 s each) are on the started workers now

    def outcome(self) -> list[tuple[int, int]]:
        self.join(TIMEOUT)
        assert not self.is_alive(), "the run did not end"
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[return-value]


def test_configure_during_a_run_applies_to_later_runs(two_workers):
    old = two_workers
    old_pids = set(old.worker_pids())
    run = Run(old, 4)
    run.start()
    run.wait_running()

    start = time.monotonic()
    backend.configure({"workers": [{"type": "multicore", "cores": 1}]})
    assert time.monotonic() - start < CALL_S, "configure() waited for the run"
    assert run.is_alive()  # the run is still going, on the old workers

    result = run.outcome()
    assert [square for square, _ in result] == [0, 1, 4, 9]
    assert {pid for _, pid in result} <= old_pids  # every call ran on the old pool
    assert wait_gone(old_pids) == []  # stopped once its last run ended
    assert old not in backend._runs and old not in backend._retired

    new = backend.get_pool()
    assert new is not old and isinstance(new, MulticorePool) and new.parallelism == 1
    later = squares(2)
    assert [square for square, _ in later] == [0, 1]
    assert not {pid for _, pid in later} & old_pids
    assert set(new.worker_pids()) == {pid for _, pid in later}
    new.shutdown(wait=True)


def test_shutdown_during_a_run_lets_it_finish_then_stops(two_workers):
    old_pids = set(two_workers.worker_pids())
    run = Run(two_workers, 4)
    run.start()
    run.wait_running()

    pydron.shutdown()  # waits: for the run, then for the workers
    assert not run.is_alive()
    assert [square for square, _ in run.outcome()] == [0, 1, 4, 9]
    assert [p for p in old_pids if alive(p)] == []
    # A later run starts a fresh pool (of the same configuration).
    assert backend.get_pool() is not two_workers
    assert [square for square, _ in squares(1)] == [0]


def test_shutdown_without_wait_during_a_run_returns_at_once(two_workers):
    old_pids = set(two_workers.worker_pids())
    run = Run(two_workers, 4)
    run.start()
    run.wait_running()

    start = time.monotonic()
    pydron.shutdown(wait=False)
    assert time.monotonic() - start < CALL_S
    assert [square for square, _ in run.outcome()] == [0, 1, 4, 9]
    assert wait_gone(old_pids) == []


def test_configure_and_shutdown_from_several_threads_during_two_runs(two_workers):
    """Two runs hold the old pool; it stops only after the second one ends."""
    old_pids = set(two_workers.worker_pids())
    short, long = Run(two_workers, 2), Run(two_workers, 4)
    short.start()
    short.wait_running()
    long.start()
    long.wait_running(runs=2)
    changers = [threading.Thread(target=backend.configure,
                                 args=({"workers": [{"type": "threads", "count": 2}]},)),
                threading.Thread(target=pydron.shutdown, kwargs={"wait": False})]
    for t in changers:
        t.start()
    for t in changers:
        t.join(TIMEOUT)
    assert [square for square, _ in short.outcome()] == [0, 1]
    assert all(alive(p) for p in old_pids)  # the long run still holds them
    assert [square for square, _ in long.outcome()] == [0, 1, 4, 9]
    assert wait_gone(old_pids) == []


def test_shutdown_from_the_runs_own_sync_point_does_not_deadlock(two_workers):
    old_pids = set(two_workers.worker_pids())
    run = Run(two_workers, 3, squares_stopping_itself)
    run.start()
    result = run.outcome()
    assert [square for square, _ in result] == [0, 1, 4]
    assert {pid for _, pid in result} <= old_pids
    assert wait_gone(old_pids) == []
