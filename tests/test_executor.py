"""``pydron.Executor`` held to the standard library's executors.

The cases follow what CPython's own suite (Lib/test/test_concurrent_futures/) checks for
``ThreadPoolExecutor`` and ``ProcessPoolExecutor`` -- shutdown, wait, as_completed,
futures, map, initializers, the deadlock cases -- written anew for pydron.Executor, plus
what pydron adds (per-call timeouts, lazy map, inline executors inside a worker).

Every behavioural test runs three times (the ``kind`` fixture):

* ``threads``:   ``pydron.Executor()`` on the process-wide pool of 4 threads;
* ``processes``: ``pydron.Executor()`` on the process-wide pool of 2 worker processes;
* ``owned``:     ``pydron.Executor(max_workers=2)``, a pool of 2 processes of its own.

Where ThreadPoolExecutor and ProcessPoolExecutor differ, the threads kind is held to the
first and the process kinds to the second; each such test says so. Blocking calls wait on a
file (a "gate"), so that the test decides when they end and the same call works in a thread
and in a worker process; functions that run on workers are at module level here (worker
processes import this module from the master).
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures as cf
import gc
import itertools
import os
import subprocess
import sys
import textwrap
import threading
import time
import traceback
import uuid
import weakref

import pytest

import pydron
import pydron.backend as backend
from pydron.errors import CallTimeoutError, WorkerLostError

from waiting import alive, runs, wait_for, wait_gone

THREADS = {"workers": [{"type": "threads", "count": 4}]}
PROCESSES = {"workers": [{"type": "multicore", "cores": 2}]}
LONG = 120  # seconds: a bound on waits that should take milliseconds (busy, shared machine)


# ------------------------------------------------------------------- functions on workers


def identity(x):
    return x


def square(x):
    return x * x


def mul(x, y):
    return x * y


def capture(*args, **kwargs):
    return args, kwargs


def note(path):
    """Append this process's pid to ``path`` (what ``waiting.runs`` reads)."""
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")


def gate_wait(gate, started=None, value=None, limit=LONG):
    """Note ``started`` (if given), then block until the file ``gate`` exists; ``value``."""
    if started:
        note(started)
    deadline = time.monotonic() + limit
    while not os.path.exists(gate):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the gate {gate} was never opened")
        time.sleep(0.005)
    return value


def nap(seconds, value=None):
    time.sleep(seconds)
    return value


def worker_pid(_=None):
    return os.getpid()


def pid_and_thread(x):
    return x, (os.getpid(), threading.get_ident())


class Boom(Exception):
    def __init__(self, code, detail):
        super().__init__(code, detail)
        self.code = code


def raise_chained(code):
    try:
        {}["inner"]
    except KeyError as inner:
        error = Boom(code, "outer")
        error.extra = {"code": code}
        raise error from inner


class Token:
    """A result or argument whose lifetime a test watches through a weak reference."""

    def __init__(self, n):
        self.n = n


def make_token(n):
    return Token(n)


def token_value(token):
    return token.n


class Unpicklable:
    def __reduce__(self):
        raise TypeError("Unpicklable refuses to be pickled")


def _refuse_unpickling():
    raise ValueError("this result cannot be unpickled")


class UnpicklableOnArrival:
    def __reduce__(self):
        return (_refuse_unpickling, ())


def return_unpicklable():
    return Unpicklable()


def return_unpicklable_on_arrival():
    return UnpicklableOnArrival()


def exit_worker():
    os._exit(3)


_INIT = {}


def init_worker(tag, path):
    _INIT["tag"] = tag
    note(path)


def init_status():
    return _INIT.get("tag")


def init_fail():
    raise ValueError("this initializer fails")


def nested_executor(n):
    """A functional call that itself uses executors: they run inline, in this thread."""
    here = (os.getpid(), threading.get_ident())
    with pydron.Executor() as ex:
        mapped = list(ex.map(pid_and_thread, range(n)))
        submitted = ex.submit(pid_and_thread, n).result()
    with pydron.Executor(max_workers=2) as ex:
        owned = [f.result() for f in [ex.submit(pid_and_thread, i) for i in range(3)]]
    values = [v for v, _ in mapped] + [submitted[0]] + [v for v, _ in owned]
    places = {w for _, w in mapped} | {submitted[1]} | {w for _, w in owned}
    return values, places, here


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module", autouse=True)
def _reset_configuration():
    yield
    pydron.configure(None)


@pytest.fixture(scope="module", params=["threads", "processes", "owned"])
def kind(request):
    """Module scope: the tests run grouped by kind, so each pool starts once."""
    pydron.configure(PROCESSES if request.param == "processes" else THREADS)
    return request.param


class Env:
    """Makes the executors of one test (shut down at its end) and its gates."""

    def __init__(self, kind, tmp_path):
        self.kind = kind
        self.processes = kind != "threads"
        self.parallelism = 4 if kind == "threads" else 2
        self.gate = str(tmp_path / "gate")
        self.opened = str(tmp_path / "opened")   # a gate that is open from the start
        open(self.opened, "w").close()
        self.started = str(tmp_path / "started")
        self.executors = []

    def executor(self, **kwargs):
        ex = pydron.Executor(max_workers=2, **kwargs) if self.kind == "owned" else \
            pydron.Executor(**kwargs)
        self.executors.append(ex)
        return ex

    def open_gate(self):
        open(self.gate, "a").close()

    def ready(self, ex):
        """Wait until every worker of ``ex``'s pool is up (a worker replaced by an
        earlier test may still be starting: its calls would queue on the others)."""
        source = ex.dispatcher.source
        pool = source.acquire()
        try:
            if hasattr(pool, "start"):
                pool.start(timeout=LONG)
        finally:
            source.release(pool)

    def blockers(self, ex, count=None):
        """One call per worker that blocks on the gate; returns once all have started."""
        self.ready(ex)
        count = self.parallelism if count is None else count
        futures = [ex.submit(gate_wait, self.gate, self.started, i) for i in range(count)]
        wait_for(lambda: len(runs(self.started)) >= count, LONG, "the blocking calls to start")
        return futures


@pytest.fixture
def env(kind, tmp_path):
    e = Env(kind, tmp_path)
    yield e
    e.open_gate()
    closer = threading.Thread(target=lambda: [ex.shutdown(wait=True, cancel_futures=True)
                                              for ex in e.executors], daemon=True)
    closer.start()
    closer.join(LONG)
    assert not closer.is_alive(), "shutting the test's executors down hung"


def results(futures, timeout=LONG):
    return [f.result(timeout=timeout) for f in futures]


# --------------------------------------------------------------------- submit and results


def test_submit_returns_standard_futures(env):
    ex = env.executor()
    future = ex.submit(pow, 2, 8)
    # A standard future (a subclass whose result() fetches a value kept on a worker).
    assert isinstance(future, cf.Future) and type(future).__mro__[1:] == cf.Future.__mro__
    assert type(future).result is not cf.Future.result
    assert future.result(timeout=LONG) == 256
    assert future.done() and not future.running() and not future.cancelled()
    assert future.exception() is None


def test_submit_keywords(env):
    """test_submit_keyword: keywords reach the function, ``fn`` is positional-only."""
    ex = env.executor()
    assert ex.submit(mul, 2, y=8).result(timeout=LONG) == 16
    assert ex.submit(capture, 1, self=2, fn=3).result(timeout=LONG) == \
        ((1,), {"self": 2, "fn": 3})
    with pytest.raises(TypeError):
        ex.submit(fn=capture, arg=1)


def test_exception_from_result(env):
    """The exception comes back whole: type, args, attributes, __cause__ and the worker's
    frame in its traceback (on processes too: rebuilt, not a RemoteError)."""
    ex = env.executor()
    future = ex.submit(raise_chained, 7)
    with pytest.raises(Boom) as info:
        future.result(timeout=LONG)
    error = info.value
    assert type(error) is Boom
    assert error.args == (7, "outer") and error.code == 7 and error.extra == {"code": 7}
    assert type(error.__cause__) is KeyError and error.__cause__.args == ("inner",)
    frames = traceback.extract_tb(error.__traceback__)
    assert any(f.name == "raise_chained" and f.filename.endswith("test_executor.py")
               for f in frames), frames
    assert type(future.exception()) is Boom


def test_base_exception_from_result(env):
    """A call that raises SystemExit or KeyboardInterrupt fails its future with it (as in
    ThreadPoolExecutor; the worker process survives it, as ProcessPoolExecutor's does)."""
    ex = env.executor()
    with pytest.raises(SystemExit) as info:
        ex.submit(sys.exit, 3).result(timeout=LONG)
    assert info.value.code == 3
    assert ex.submit(square, 3).result(timeout=LONG) == 9


def test_result_timeout(env):
    ex = env.executor()
    future = ex.submit(gate_wait, env.gate)
    start = time.monotonic()
    with pytest.raises(cf.TimeoutError):
        future.result(timeout=0.2)
    with pytest.raises(TimeoutError):      # the same class since Python 3.11
        future.exception(timeout=0.01)
    assert time.monotonic() - start < 30
    assert not future.done()
    env.open_gate()
    assert future.result(timeout=LONG) is None


def test_future_states(env):
    """PENDING -> RUNNING -> FINISHED, as observed through the Future."""
    ex = env.executor()
    future = ex.submit(gate_wait, env.gate, env.started, "v")
    wait_for(lambda: runs(env.started), LONG, "the call to start")
    assert future.running() and not future.done()
    assert not future.cancel()            # a running call cannot be cancelled
    env.open_gate()
    assert future.result(timeout=LONG) == "v"
    assert future.done() and not future.running()


def test_result_released_with_future(env, request):
    """test_free_reference: once the future is gone, nothing keeps its result alive."""
    ex = env.executor()
    future = ex.submit(make_token, 5)
    token = future.result(timeout=LONG)
    assert token.n == 5
    ref = weakref.ref(token)
    del token, future
    wait_for(lambda: gc.collect() >= 0 and ref() is None, 10, "the result to be collected")


def test_arguments_released_after_call(env):
    """test_no_stale_references: the call's arguments are let go once it is done, while
    its future lives on."""
    ex = env.executor()
    token = Token(9)
    ref = weakref.ref(token)
    future = ex.submit(token_value, token)
    assert future.result(timeout=LONG) == 9
    del token
    wait_for(lambda: gc.collect() >= 0 and ref() is None, 30, "the argument to be collected")
    assert future.result() == 9


# -------------------------------------------------------------------------------- shutdown


def test_shutdown_stops_owned_workers(env):
    """test_processes_terminate: shutdown() of an executor with a pool of its own stops
    its worker processes; the process-wide pool is left running for others."""
    ex = env.executor()
    busy = [ex.submit(nap, 0.2) for _ in range(2 * env.parallelism)]  # every worker
    pids = set(results([ex.submit(worker_pid) for _ in range(10)]))
    results(busy)
    ex.shutdown(wait=True)
    if env.kind == "owned":
        assert wait_gone(pids, 30) == []
    else:
        assert all(alive(pid) for pid in pids)
        with pydron.Executor() as other:
            assert other.submit(square, 4).result(timeout=LONG) == 16


@pytest.mark.parametrize("call_timeout", [None, 30])
def test_dropped_executor_stops_owned_workers(env, call_timeout):
    """test_del_shutdown: an executor with a pool of its own, dropped without shutdown,
    stops its workers once collected (with a call_timeout, whose watchdog thread must not
    keep it alive, too)."""
    if env.kind != "owned":
        pytest.skip("only an executor with a pool of its own has workers to stop")
    ex = pydron.Executor(max_workers=2, call_timeout=call_timeout)
    pids = set(ex.map(worker_pid, range(20)))
    del ex
    wait_for(lambda: gc.collect() >= 0 and not wait_gone(pids, 0.5), 30,
             "the dropped executor's workers to exit")


def test_submit_after_shutdown(env):
    ex = env.executor()
    assert ex.submit(square, 3).result(timeout=LONG) == 9
    ex.shutdown()
    with pytest.raises(RuntimeError):
        ex.submit(square, 3)
    ex.shutdown()                         # twice is fine
    with pytest.raises(RuntimeError):
        ex.map(square, [1])


def test_context_manager_waits(env):
    ex = env.executor()
    with ex as entered:
        assert entered is ex
        futures = [ex.submit(gate_wait, env.opened, None, i) for i in range(20)]
    assert all(f.done() for f in futures)
    assert results(futures) == list(range(20))
    with pytest.raises(RuntimeError):
        ex.submit(square, 1)


def test_shutdown_waits_for_queued_calls(env):
    """test_hang_issue12364: shutdown() with many calls queued returns once all are done."""
    ex = env.executor()
    futures = [ex.submit(square, i) for i in range(50)]
    ex.shutdown(wait=True)
    assert all(f.done() for f in futures)
    assert results(futures) == [i * i for i in range(50)]


def test_shutdown_no_wait(env):
    """shutdown(wait=False) returns at once; the calls still run to their end."""
    ex = env.executor()
    blocked = env.blockers(ex)
    queued = [ex.submit(square, i) for i in range(10)]
    start = time.monotonic()
    ex.shutdown(wait=False)
    assert time.monotonic() - start < 5
    with pytest.raises(RuntimeError):
        ex.submit(square, 1)
    assert not any(f.done() for f in blocked)
    env.open_gate()
    assert results(blocked) == list(range(env.parallelism))
    assert results(queued) == [i * i for i in range(10)]


def test_shutdown_after_cancel(env):
    """gh-94440: shutdown() after cancelling futures returns."""
    ex = env.executor()
    futures = [ex.submit(nap, 0.05, i) for i in range(40)]
    cancelled = [f for f in futures[::-1] if f.cancel()]
    ex.shutdown(wait=True)
    assert all(f.done() for f in futures)
    assert len(cancelled) >= 40 - ex.dispatcher.limit
    assert [f.result() for f in futures if not f.cancelled()] == \
        [i for i, f in enumerate(futures) if not f.cancelled()]


def test_shutdown_cancel_futures(env):
    """shutdown(cancel_futures=True) cancels what has not started; the rest completes."""
    ex = env.executor()
    blocked = env.blockers(ex)
    more = [ex.submit(square, i) for i in range(60)]
    ex.shutdown(wait=False, cancel_futures=True)
    cancelled = [f for f in more if f.cancelled()]
    # Calls beyond the dispatcher's window were still queued (PENDING).
    assert len(cancelled) >= 60 - ex.dispatcher.limit
    # ... and count as done for wait() and as_completed() (ThreadPoolExecutor leaves the
    # futures it cancels here unnotified: wait() does not count them).
    done, _ = cf.wait(cancelled, timeout=LONG)
    assert done == set(cancelled)
    assert set(cf.as_completed(cancelled, timeout=LONG)) == set(cancelled)
    env.open_gate()
    assert results(blocked) == list(range(env.parallelism))
    for i, f in enumerate(more):
        if not f.cancelled():
            assert f.result(timeout=LONG) == i * i
        else:
            with pytest.raises(cf.CancelledError):
                f.result()


def test_shutdown_wait_cancel_futures(env):
    """shutdown(wait=True, cancel_futures=True): cancels the queued calls at once, then
    waits for the running ones."""
    ex = env.executor()
    blocked = env.blockers(ex)
    more = [ex.submit(square, i) for i in range(60)]
    closer = threading.Thread(target=ex.shutdown, kwargs={"cancel_futures": True})
    closer.start()
    wait_for(lambda: sum(f.cancelled() for f in more) >= 60 - ex.dispatcher.limit, LONG,
             "the queued calls to be cancelled")
    assert closer.is_alive()              # the blocked calls are still running
    env.open_gate()
    closer.join(LONG)
    assert not closer.is_alive()
    assert all(f.done() for f in blocked + more)


def test_shutdown_from_done_callback(env):
    """A done callback may shut the executor down (with wait=True) without deadlock,
    even while other calls are still running; those complete."""
    ex = env.executor()
    blocked = env.blockers(ex, 1)
    called = threading.Event()

    def callback(future):
        ex.shutdown(wait=True)
        called.set()

    future = ex.submit(square, 4)
    future.add_done_callback(callback)
    assert called.wait(LONG), "shutdown() inside a done callback blocked"
    assert future.result() == 16
    with pytest.raises(RuntimeError):
        ex.submit(square, 1)
    env.open_gate()
    assert results(blocked) == [0]


def test_shutdown_from_callback_of_done_future(env):
    """add_done_callback on a finished future runs the callback at once, in this thread:
    a shutdown(wait=True) there waits as usual."""
    ex = env.executor()
    future = ex.submit(square, 5)
    future.result(timeout=LONG)
    other = ex.submit(gate_wait, env.opened, None, "x")
    future.add_done_callback(lambda f: ex.shutdown(wait=True))
    assert other.done() and other.result() == "x"


def test_submit_from_done_callback(env):
    ex = env.executor()
    chained = []
    done = threading.Event()

    def callback(future):
        chained.append(ex.submit(square, future.result()))
        done.set()

    ex.submit(square, 3).add_done_callback(callback)
    assert done.wait(LONG)
    assert chained[0].result(timeout=LONG) == 81


def test_shutdown_waits_for_done_callbacks(env):
    """shutdown(wait=True) returns after the calls' done callbacks have run, as the
    standard executors do (they join the threads that run those callbacks)."""
    ex = env.executor()
    release = threading.Event()
    finished = []

    def callback(future):
        release.wait(LONG)
        finished.append(future.result())

    future = ex.submit(square, 6)
    future.add_done_callback(callback)
    wait_for(future.done, LONG, "the call to finish")
    closer = threading.Thread(target=ex.shutdown)
    closer.start()
    closer.join(0.5)
    assert closer.is_alive(), "shutdown() returned while a done callback was still running"
    release.set()
    closer.join(LONG)
    assert finished == [36]


# ------------------------------------------------------------------------------ cancelling


def test_cancel_queued(env):
    """One blocking call per worker, then more: the calls still in the executor's queue
    can be cancelled; those handed to the pool cannot (as ProcessPoolExecutor's call queue;
    ThreadPoolExecutor would still cancel a call no thread has taken: see
    test_cancel_call_no_thread_has_taken)."""
    ex = env.executor()
    blocked = env.blockers(ex)
    limit = ex.dispatcher.limit
    more = [ex.submit(square, i) for i in range(limit + 10)]
    tail = more[-10:]
    assert ex.dispatcher.queued() >= 10
    calls = collections.Counter()
    for f in tail:
        assert not f.running()
        f.add_done_callback(lambda f: calls.update([id(f)]))
        assert f.cancel()
        assert f.cancelled() and f.done()
        assert f.cancel()                 # cancelling twice is True again
        with pytest.raises(cf.CancelledError):
            f.result(timeout=0)
    assert sorted(calls.values()) == [1] * 10
    for f in blocked:
        assert not f.cancel()
    env.open_gate()
    assert results(blocked) == list(range(env.parallelism))
    assert results(more[:-10]) == [i * i for i in range(limit)]
    assert sorted(calls.values()) == [1] * 10


def test_cancel_call_no_thread_has_taken(env, request):
    """ThreadPoolExecutor: a call that no thread has taken yet can be cancelled, however
    few calls are queued. (Process kinds: ProcessPoolExecutor too refuses to cancel the
    calls in its call queue -- max_workers + 1 of them; pydron's window is 2 * workers + 4.)"""
    if env.processes:
        pytest.skip("ProcessPoolExecutor's rule is test_cancel_queued's")
    request.applymarker(pytest.mark.xfail(reason=(
        "by design (pydron.explicit.dispatch): a call is RUNNING once handed to the pool, "
        "and the window of calls on the pool is larger than the pool's thread count"),
        strict=False))
    ex = env.executor()
    env.blockers(ex)
    extra = ex.submit(square, 2)
    assert not extra.running()
    assert extra.cancel()


# ------------------------------------------------------------------- callbacks and threads


def test_done_callback_called_once(env):
    ex = env.executor()
    lock = threading.Lock()
    counts = collections.Counter()

    def callback(future):
        with lock:
            counts[id(future)] += 1

    futures = [ex.submit(square, i) for i in range(50)]
    for f in futures:
        f.add_done_callback(callback)
    assert results(futures) == [i * i for i in range(50)]
    ex.shutdown(wait=True)
    wait_for(lambda: len(counts) == 50, LONG, "every callback")
    assert set(counts.values()) == {1}
    late = []
    futures[0].add_done_callback(late.append)   # already done: called at once
    assert late == [futures[0]]


def test_callback_exception_is_contained(env):
    """A raising callback is logged, and neither the future nor the executor suffers."""
    ex = env.executor()
    seen = []
    future = ex.submit(square, 2)
    future.add_done_callback(lambda f: 1 / 0)
    future.add_done_callback(seen.append)
    assert future.result(timeout=LONG) == 4
    wait_for(lambda: seen, LONG, "the second callback")
    assert ex.submit(square, 3).result(timeout=LONG) == 9


def test_many_threads_submitting(env):
    """8 threads submit 500 calls each at once: every result comes back exactly once."""
    ex = env.executor()
    barrier = threading.Barrier(8)
    futures = [None] * 8
    errors = []
    lock = threading.Lock()
    callbacks = collections.Counter()

    def count(future):
        with lock:
            callbacks[id(future)] += 1

    def client(t):
        try:
            barrier.wait(LONG)
            mine = []
            for i in range(500):
                f = ex.submit(identity, (t, i))
                f.add_done_callback(count)
                mine.append(f)
            futures[t] = mine
        except BaseException as exc:  # noqa: B902 -- reported below
            errors.append(exc)

    clients = [threading.Thread(target=client, args=(t,)) for t in range(8)]
    for c in clients:
        c.start()
    for c in clients:
        c.join(LONG)
    assert not errors
    got = [f.result(timeout=LONG) for mine in futures for f in mine]
    assert sorted(got) == [(t, i) for t in range(8) for i in range(500)]
    wait_for(lambda: len(callbacks) == 4000, LONG, "every done callback")
    assert set(callbacks.values()) == {1}


def test_shutdown_while_threads_submit(env):
    """test_shutdown_race_issue12456-like: threads submit and cancel while another shuts
    the executor down with cancel_futures: each submit either returns a future or raises
    RuntimeError, and every future returned ends (result or cancelled), none hangs."""
    ex = env.executor()
    barrier = threading.Barrier(5)
    futures = []
    refused = []
    lock = threading.Lock()

    def client(t):
        barrier.wait(LONG)
        for i in range(300):
            try:
                f = ex.submit(identity, (t, i))
            except RuntimeError:
                with lock:
                    refused.append((t, i))
                continue
            if i % 7 == 0:
                f.cancel()
            with lock:
                futures.append((f, (t, i)))

    clients = [threading.Thread(target=client, args=(t,)) for t in range(4)]
    for c in clients:
        c.start()
    barrier.wait(LONG)
    wait_for(lambda: len(futures) >= 100, LONG, "some calls to be submitted")
    ex.shutdown(wait=True, cancel_futures=True)
    for c in clients:
        c.join(LONG)
    assert len(futures) + len(refused) == 1200
    done, not_done = cf.wait([f for f, _ in futures], timeout=LONG)
    assert not not_done
    for f, value in futures:
        assert f.cancelled() or f.result() == value


# ---------------------------------------------------------------------- wait, as_completed


def test_wait_first_completed(env):
    ex = env.executor()
    slow = ex.submit(gate_wait, env.gate)
    quick = ex.submit(square, 3)
    done, not_done = cf.wait([slow, quick], timeout=LONG, return_when=cf.FIRST_COMPLETED)
    assert done == {quick} and not_done == {slow}
    env.open_gate()


def test_wait_first_exception(env):
    ex = env.executor()
    fine = ex.submit(square, 3)
    bad = ex.submit(raise_chained, 1)
    slow = ex.submit(gate_wait, env.gate)   # last: see test_short_call_not_stuck_behind_long
    done, not_done = cf.wait([slow, fine, bad], timeout=LONG,
                             return_when=cf.FIRST_EXCEPTION)
    assert bad in done and slow in not_done
    env.open_gate()


def test_short_call_not_stuck_behind_long(env, request):
    """A free worker runs a short call while another worker is busy with a long one (a
    ProcessPoolExecutor's workers take calls from one shared queue as they become free)."""
    if env.processes:
        request.applymarker(pytest.mark.xfail(reason=(
            "calls sent to a worker within STUCK_AFTER of its long call's start wait behind "
            "it: MulticorePool does not take unstarted calls back from a busy worker"),
            strict=False))
    ex = env.executor()
    results([ex.submit(square, i) for i in range(50)])    # short calls: prefetching on
    slow = ex.submit(gate_wait, env.gate, env.started)
    wait_for(lambda: runs(env.started), LONG, "the long call to start")
    short = [ex.submit(square, i) for i in range(10)]
    done, not_done = cf.wait(short, timeout=10)
    assert not not_done, f"{len(not_done)} short calls waited behind the long one"
    env.open_gate()
    assert slow.result(timeout=LONG) is None


def test_no_calls_for_a_worker_stuck_in_a_long_call(env):
    """Once a worker has run one call for much longer than calls take on average, it is
    given no more while it runs it (STUCK_AFTER of pydron.backend.engine.engine): calls
    submitted then run on the other workers at once."""
    ex = env.executor()
    env.ready(ex)
    results([ex.submit(square, i) for i in range(50)])    # short calls: prefetching on
    slow = ex.submit(gate_wait, env.gate, env.started)
    wait_for(lambda: runs(env.started), LONG, "the long call to start")
    time.sleep(0.3)  # the condition under test: the long call has run for a while
    short = [ex.submit(square, i) for i in range(30)]
    done, not_done = cf.wait(short, timeout=30)
    assert not not_done, f"{len(not_done)} short calls waited behind the long one"
    env.open_gate()
    assert slow.result(timeout=LONG) is None


def test_wait_first_exception_none_raised(env):
    ex = env.executor()
    futures = [ex.submit(square, i) for i in range(5)]
    done, not_done = cf.wait(futures, timeout=LONG, return_when=cf.FIRST_EXCEPTION)
    assert done == set(futures) and not not_done


def test_wait_all_completed(env):
    ex = env.executor()
    futures = [ex.submit(square, i) for i in range(5)] + [ex.submit(raise_chained, 2)]
    cf.wait(futures, timeout=LONG)
    slow = ex.submit(gate_wait, env.gate)
    done, not_done = cf.wait(futures + [slow], timeout=0.3)
    assert not_done == {slow}
    env.open_gate()
    done, not_done = cf.wait(futures + [slow], timeout=LONG,
                             return_when=cf.ALL_COMPLETED)
    assert done == set(futures + [slow]) and not not_done


def test_as_completed(env):
    ex = env.executor()
    quick = [ex.submit(square, i) for i in range(4)]
    cf.wait(quick, timeout=LONG)
    slow = ex.submit(gate_wait, env.gate, None, "slow")
    seen = []
    with pytest.raises(cf.TimeoutError):
        for f in cf.as_completed(quick + [slow, quick[0]], timeout=0.3):  # a duplicate too
            seen.append(f)
    assert len(seen) == 4 and set(seen) == set(quick)
    env.open_gate()
    assert [f.result() for f in cf.as_completed([slow], timeout=LONG)] == ["slow"]


def test_as_completed_order(env):
    """Completion order, not the order given: the blocked call, listed first, comes last."""
    ex = env.executor()
    rest = [ex.submit(square, i) for i in range(5)]
    first = ex.submit(gate_wait, env.gate, None, "late")
    order = []
    for f in cf.as_completed([first] + rest, timeout=LONG):
        order.append(f)
        if len(order) == 5:
            env.open_gate()
    assert order[-1] is first and set(order[:5]) == set(rest)


# ----------------------------------------------------------------------------------- asyncio


def test_asyncio(env):
    ex = env.executor()

    async def main():
        loop = asyncio.get_running_loop()
        a = await asyncio.wrap_future(ex.submit(pow, 2, 10))
        b = await loop.run_in_executor(ex, pow, 3, 3)
        with pytest.raises(Boom):
            await asyncio.wrap_future(ex.submit(raise_chained, 1))
        c = await asyncio.gather(*(asyncio.wrap_future(ex.submit(square, i))
                                   for i in range(20)))
        return a, b, c

    async def bounded():
        return await asyncio.wait_for(main(), LONG)

    assert asyncio.run(bounded()) == (1024, 27, [i * i for i in range(20)])


def test_asyncio_cancel_reaches_queued_call(env):
    """Cancelling the asyncio future of a queued call cancels the call."""
    ex = env.executor()
    blocked = env.blockers(ex)
    filler = [ex.submit(square, i) for i in range(ex.dispatcher.limit)]
    queued = ex.submit(square, 99)

    async def main():
        wrapped = asyncio.wrap_future(queued)
        wrapped.cancel()
        for _ in range(100):
            if queued.cancelled():
                break
            await asyncio.sleep(0.01)

    asyncio.run(main())
    assert queued.cancelled()
    env.open_gate()
    results(blocked + filler)


# ---------------------------------------------------------------------------------------- map


def test_map(env):
    ex = env.executor()
    assert list(ex.map(pow, range(10), range(10))) == list(map(pow, range(10), range(10)))
    assert list(ex.map(mul, range(10), range(4))) == [0, 1, 4, 9]   # shortest wins
    assert list(ex.map(square, [])) == []
    assert list(ex.map(square, range(30), chunksize=7)) == [i * i for i in range(30)]


def test_map_exception(env):
    """test_map_exception: the results before the failing item, then its exception."""
    ex = env.executor()
    it = ex.map(divmod, [1, 1, 1, 1], [2, 3, 0, 5])
    assert next(it) == (0, 1)
    assert next(it) == (0, 1)
    with pytest.raises(ZeroDivisionError):
        next(it)


def test_map_timeout(env):
    """test_map_timeout: the results ready in time, then TimeoutError."""
    ex = env.executor()
    assert ex.submit(square, 1).result(timeout=LONG) == 1   # the workers are up
    got = []
    with pytest.raises(cf.TimeoutError):
        for value in ex.map(gate_wait, [env.opened, env.opened, env.gate], [None] * 3,
                            ["a", "b", "c"], timeout=2):
            got.append(value)
    assert got == ["a", "b"]
    env.open_gate()


def test_map_is_lazy(env):
    """Unlike the standard executors' map (which submits everything first), inputs are
    read a bounded window ahead of the results consumed: an endless generator works."""
    ex = env.executor()
    read = [0]

    def endless():
        for i in itertools.count():
            read[0] = i + 1
            yield i

    it = ex.map(square, endless())
    assert list(itertools.islice(it, 25)) == [i * i for i in range(25)]
    assert read[0] <= 25 + 32 * env.parallelism + 8, read[0]
    it.close()
    assert ex.submit(square, 2).result(timeout=LONG) == 4


def test_map_argument_errors(env):
    ex = env.executor()
    with pytest.raises(ValueError):
        ex.map(square, [1], chunksize=0)
    with pytest.raises(TypeError):
        ex.map(square)


# ------------------------------------------------------------------------------ initializer


def test_initializer(env, tmp_path):
    """test_initializer: it runs in each worker before its calls (once per worker process;
    once per thread on the threads pool, as ThreadPoolExecutor does)."""
    tag = uuid.uuid4().hex
    inits = str(tmp_path / "inits")
    ex = env.executor(initializer=init_worker, initargs=(tag, inits))
    assert results([ex.submit(init_status) for _ in range(20)]) == [tag] * 20
    assert 1 <= len(runs(inits)) <= env.parallelism
    if env.processes:
        assert len(set(runs(inits))) == len(runs(inits))   # once per process


def test_initializer_failure_breaks_executor(env):
    """test_initializer failing: every call fails with BrokenExecutor, later submits
    raise it (BrokenThreadPool / BrokenProcessPool are its subclasses there)."""
    ex = env.executor(initializer=init_fail)
    futures = []
    for _ in range(30):
        try:
            futures.append(ex.submit(init_status))
        except cf.BrokenExecutor:
            break  # the first failure came back before all 30 were submitted: as theirs
    assert futures
    for f in futures:
        with pytest.raises(cf.BrokenExecutor):
            f.result(timeout=LONG)
    raised = []
    for _ in range(2):
        with pytest.raises(cf.BrokenExecutor) as info:
            ex.submit(init_status)
        raised.append(info.value)
    assert raised[0] is not raised[1]     # a fresh exception each time, as theirs
    assert type(raised[0].__cause__) is ValueError
    ex.shutdown(wait=True)


# ------------------------------------------------------------------- limits and failures


def test_call_timeout(env):
    """Executor(call_timeout=...): a call past it fails with CallTimeoutError; the executor
    works on (on process pools the worker running the call is killed and replaced). The
    limit leaves a loaded machine time to start the replacement worker and serve it the
    test module before the next call's clock runs out."""
    ex = env.executor(call_timeout=2.0)
    future = ex.submit(gate_wait, env.gate, env.started)
    with pytest.raises(CallTimeoutError) as info:
        future.result(timeout=LONG)
    assert "gate_wait" in str(info.value)
    if env.processes:
        pid = runs(env.started)[0]
        assert wait_gone([pid], 30) == [], "the worker running the call was not stopped"
    assert ex.submit(square, 7).result(timeout=LONG) == 49
    assert list(ex.map(square, range(10))) == [i * i for i in range(10)]


def test_call_timeout_counts_from_start(env):
    """Time waiting for a free worker is not running time: 4 calls per worker of 0.6 s
    each, under call_timeout=2.5, all succeed."""
    ex = env.executor(call_timeout=2.5)
    count = 4 * env.parallelism
    assert results([ex.submit(nap, 0.6, i) for i in range(count)]) == list(range(count))


def test_unpicklable_argument(env):
    """test_deadlock (error at pickling the call): the future fails, the executor works
    on. (The threads pool pickles nothing: the call simply runs.)"""
    ex = env.executor()
    future = ex.submit(identity, Unpicklable())
    if env.processes:
        error = future.exception(timeout=LONG)
        assert error is not None and "Unpicklable" in str(error)
    else:
        assert isinstance(future.result(timeout=LONG), Unpicklable)
    assert ex.submit(square, 3).result(timeout=LONG) == 9


def test_argument_fails_to_unpickle_on_worker(env):
    """test_deadlock (error at unpickling the call on the worker)."""
    ex = env.executor()
    future = ex.submit(identity, UnpicklableOnArrival())
    if env.processes:
        assert future.exception(timeout=LONG) is not None
    else:
        assert isinstance(future.result(timeout=LONG), UnpicklableOnArrival)
    assert results([ex.submit(square, i) for i in range(5)]) == [0, 1, 4, 9, 16]


def test_unpicklable_result(env):
    """test_deadlock (error at pickling the result on the worker, or unpickling it on
    the master): the future fails, the executor works on."""
    ex = env.executor()
    worker_side = ex.submit(return_unpicklable)
    master_side = ex.submit(return_unpicklable_on_arrival)
    if env.processes:
        assert worker_side.exception(timeout=LONG) is not None
        assert master_side.exception(timeout=LONG) is not None
    else:
        assert isinstance(worker_side.result(timeout=LONG), Unpicklable)
        assert isinstance(master_side.result(timeout=LONG), UnpicklableOnArrival)
    assert results([ex.submit(square, i) for i in range(5)]) == [0, 1, 4, 9, 16]


def test_worker_exits(env):
    """test_deadlock (a worker exits during a call). ProcessPoolExecutor breaks for
    good (BrokenProcessPool); Pydron replaces the worker, retries the call, then fails
    that one future with WorkerLostError and works on."""
    if not env.processes:
        pytest.skip("os._exit in a thread would end the test process")
    ex = env.executor()
    future = ex.submit(exit_worker)
    with pytest.raises(WorkerLostError):
        future.result(timeout=LONG)
    assert results([ex.submit(square, i) for i in range(5)]) == [0, 1, 4, 9, 16]


# ------------------------------------------------------------------------- inside a worker


def test_executor_inside_a_worker(env):
    """A call that itself uses executors: they run its calls one after the other, in the
    calling thread (no pool inside a pool), with the right answers."""
    ex = env.executor()
    values, places, here = ex.submit(nested_executor, 6).result(timeout=LONG)
    assert values == [0, 1, 2, 3, 4, 5, 6, 0, 1, 2]
    assert places == {here}


# --------------------------------------------------------------------------- construction


def test_constructor_arguments():
    """test_max_workers_negative and friends (no pool is started for any of these)."""
    for bad in (0, -1):
        with pytest.raises(ValueError):
            pydron.Executor(max_workers=bad)
    with pytest.raises(TypeError):
        pydron.Executor(max_workers="2")
    with pytest.raises(TypeError):
        pydron.Executor(max_workers=2, conf=THREADS)
    with pytest.raises(TypeError):
        pydron.Executor(initializer=5)
    for bad in (0, -1, float("inf"), True):
        with pytest.raises(ValueError):
            pydron.Executor(call_timeout=bad)


def _no_pool(config):
    raise OSError("no workers today")


def test_pool_that_cannot_start(monkeypatch):
    """A pool that fails to start fails each future with the reason (submit does not
    raise it, as the standard executors' submit raises only after shutdown or breakage),
    and shutdown() still returns."""
    saved = backend.current_config()
    pydron.configure(THREADS)
    monkeypatch.setattr(backend, "pool_from_config", _no_pool)
    try:
        ex = pydron.Executor()
        futures = [ex.submit(square, i) for i in range(3)]
        for f in futures:
            with pytest.raises(OSError, match="no workers today"):
                f.result(timeout=LONG)
        ex.shutdown(wait=True)
    finally:
        monkeypatch.undo()
        pydron.configure(saved)


def test_executor_with_conf():
    with pydron.Executor(conf=THREADS) as ex:
        assert ex.submit(square, 5).result(timeout=LONG) == 25
        assert ex.dispatcher.source.parallelism() == 4


# ------------------------------------------------------------------------ interpreter exit

ATEXIT_SCRIPT = textwrap.dedent("""
    import atexit
    import pydron

    pydron.configure({conf!r})
    ex = pydron.Executor()
    assert ex.submit(pow, 2, 3).result() == 8

    def late():
        try:
            ex.submit(pow, 2, 3)
        except RuntimeError as exc:
            print("refused:", exc, flush=True)
        else:
            print("accepted", flush=True)

    atexit.register(late)
""")


@pytest.mark.parametrize("which", ["threads", "processes"])
def test_submit_after_interpreter_shutdown(which, tmp_path):
    """test_submit_after_interpreter_shutdown: an atexit handler that submits gets
    RuntimeError."""
    conf = PROCESSES if which == "processes" else THREADS
    proc = subprocess.run([sys.executable, "-c", ATEXIT_SCRIPT.format(conf=conf)],
                          env=_script_env(), timeout=LONG, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "refused: cannot schedule new futures" in proc.stdout, (proc.stdout, proc.stderr)


def _script_env():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))


EXIT_SCRIPT = textwrap.dedent("""
    import os, sys, time
    import pydron

    def slow_write(path):
        time.sleep(0.3)
        with open(path, "w") as f:
            f.write("done")
        return path

    pydron.configure({conf!r})
    ex = pydron.Executor({args})
    for i in range(30):
        ex.submit(slow_write, os.path.join({folder!r}, f"out{{i}}"))
    if {no_wait!r}:
        ex.shutdown(wait=False)
    # the interpreter must not exit before the calls are done
""")


@pytest.mark.parametrize("no_wait", [False, True], ids=["no-shutdown", "shutdown-no-wait"])
@pytest.mark.parametrize("which", ["threads", "processes", "owned"])
def test_interpreter_exit_waits_for_pending_calls(which, no_wait, tmp_path):
    """"Regardless of the value of wait, the entire Python program will not exit until
    all pending futures are done executing" (the concurrent.futures documentation); also
    after shutdown(wait=False) (test_hang_issue39205)."""
    conf = PROCESSES if which == "processes" else THREADS
    script = EXIT_SCRIPT.format(conf=conf, args="max_workers=2" if which == "owned" else "",
                                folder=str(tmp_path), no_wait=no_wait)
    proc = subprocess.run([sys.executable, "-c", script], env=_script_env(), timeout=LONG,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    written = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("out"))
    assert len(written) == 30, (written, proc.stderr)
