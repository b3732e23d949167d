"""The multicore pool with real worker processes over real TCP on 127.0.0.1.

What a user sees: results, parallelism, shipping of functions and data, exceptions,
unpicklable values, output, nested scheduling, start and stop of the workers.
(Failures of processes and connections: test_worker_failures.py; the wire format:
test_wire.py.)
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
import traceback
import warnings

import pytest

import pydron
import pydron.backend as backend
from pydron import functional, schedule
from pydron.backend.context import in_worker
from pydron.backend.multicore import MulticorePool
from pydron.errors import SerializationError
from waiting import alive, wait_gone

TIMEOUT = 30  # generous: the test machines are shared and noisy
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --------------------------------------------------------------------------- helpers


class Outcomes:
    """Collects on_done calls and lets a test wait for them."""

    def __init__(self) -> None:
        self.items: list[tuple[object, bool, object]] = []
        self.cond = threading.Condition()

    def callback(self, tag: object = None):
        def on_done(ok: bool, value: object) -> None:
            with self.cond:
                self.items.append((tag, ok, value))
                self.cond.notify_all()
        return on_done

    def wait(self, n: int, timeout: float = TIMEOUT) -> list[tuple[object, bool, object]]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.items) >= n, timeout), self.items
            return list(self.items)

    def one(self, tag: object = None) -> tuple[bool, object]:
        """Wait for the outcome tagged ``tag``."""
        with self.cond:
            assert self.cond.wait_for(lambda: any(t == tag for t, _, _ in self.items),
                                      TIMEOUT), self.items
            return next((ok, value) for t, ok, value in self.items if t == tag)


@pytest.fixture
def make_pool():
    """MulticorePools made by a test, shut down afterwards even if it fails."""
    made: list[MulticorePool] = []

    def make(cores: int = 2, **options) -> MulticorePool:
        pool = MulticorePool(cores, **options)
        made.append(pool)
        return pool

    yield make
    for pool in made:
        pool.shutdown(wait=True)


@pytest.fixture(scope="module")
def multicore():
    """The process-wide pool is a 2-worker multicore pool for this module's @schedule
    tests; the previous configuration comes back afterwards."""
    previous = backend._config
    backend.configure({"workers": [{"type": "multicore", "cores": 2}]})
    yield backend.get_pool()
    backend.configure(previous)


def run_script(tmp_path, body: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``body`` as a __main__ script in a fresh interpreter (with pydron importable)."""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(body))
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("PYDRON_CONF", None)
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=str(tmp_path))


# --------------------------------------------------------------------------- functions
# Module-level, so that they travel to the workers by reference.


@functional
def square(x):
    return x * x


@functional
def where(_=None):
    return os.getpid(), in_worker()


@functional
def nap(seconds, tag=None):
    time.sleep(seconds)
    return tag


@functional
def fail(message):
    raise ValueError(message)


class Unpicklable(Exception):
    def __init__(self, a, b):  # pickle calls Unpicklable(*args) with one argument: fails
        super().__init__(f"{a}/{b}")


@functional
def fail_oddly():
    raise Unpicklable(1, 2)


@functional
def chatty(n):
    print(f"hello {n} from the worker")
    sys.stdout.buffer.write("bytes too, naïve\n".encode())
    print("no newline at the end", end="")
    warnings.warn(f"careful {n}", UserWarning)
    return n


@functional
def give_lock():
    return threading.Lock()


@functional
def echo(*args, **kwargs):
    return args, kwargs


@functional
def double_array(a):
    a *= 2  # the worker's copy is writable and private
    return a


@schedule
def inner_sum(n):
    return sum(where()[0] for _ in range(n))


@functional
def nested(n):
    """A functional call that calls a @schedule function: it must run right here."""
    mine = os.getpid()
    total = inner_sum(n)
    return mine, total, in_worker()


@schedule
def run_nested(n):
    return nested(n)


@schedule
def squares(n):
    out = []
    for i in range(n):
        out.append(square(i))
    return out


@schedule
def pids(n):
    seen = []
    for i in range(n):
        seen.append(where(i))
    return seen


@schedule
def naps(n, seconds):
    out = []
    for i in range(n):
        out.append(nap(seconds, i))
    return out


@schedule
def raises(message):
    x = square(3)
    fail(message)
    return x


@schedule
def passes_a_lock():
    lock = threading.Lock()
    return echo(1, lock)


# --------------------------------------------------------------------------- @schedule


def test_config_entry_makes_a_multicore_pool(multicore):
    assert isinstance(multicore, MulticorePool)
    assert multicore.parallelism == 2
    conf = pydron.config.parse_config({"workers": [{"type": "multicore"}]})
    assert conf.workers[0].count == pydron.config.local_cores()
    assert conf.workers[0].options == {}


def test_scheduled_loop_gives_the_plain_result(multicore):
    assert squares(200) == [i * i for i in range(200)]


def test_calls_run_in_worker_processes(multicore):
    seen = pids(40)
    workers = set(multicore.worker_pids())
    assert len(workers) == 2 and os.getpid() not in workers
    assert {pid for pid, _ in seen} <= workers
    assert all(flag for _, flag in seen)  # in_worker() is True where calls run


def test_calls_run_in_parallel(multicore):
    multicore.start()
    start = time.perf_counter()
    assert naps(4, 0.4) == [0, 1, 2, 3]
    elapsed = time.perf_counter() - start
    assert 0.75 < elapsed < 1.5, elapsed  # one worker alone: 1.6 s


def test_workers_are_kept_for_later_calls_and_shared_by_threads(multicore):
    squares(4)
    before = multicore.worker_pids()
    results: list[object] = []

    def call(n: int) -> None:
        try:
            results.append(squares(n) == [i * i for i in range(n)])
        except BaseException as exc:  # pragma: no cover - reported below
            results.append(exc)

    threads = [threading.Thread(target=call, args=(50 + i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert results == [True] * 4
    assert multicore.worker_pids() == before
    assert backend.get_pool() is multicore


def test_user_exception_has_type_message_and_the_workers_frames(multicore):
    with pytest.raises(ValueError, match="^nope$") as info:
        raises("nope")
    assert info.value.__cause__ is None and not info.value.__suppress_context__
    text = "".join(traceback.format_exception(info.value))
    assert "Traceback (most recent call last)" in text
    assert f'{__file__}", line' in text and "in fail" in text
    assert 'raise ValueError(message)' in text
    assert "worker.py" not in text  # the worker's own frames are left out
    assert "direct cause" not in text


def test_unpicklable_argument_is_reported_at_the_call(multicore):
    with pytest.raises(SerializationError) as info:
        passes_a_lock()
    err = info.value
    assert err.item == "argument 2" and err.value_type == "_thread.lock"
    message = str(err)
    assert "argument 2 of echo()" in message and "_thread.lock" in message
    assert "called at" in message and __file__ in message  # the runtime adds the line


def test_nested_schedule_runs_sequentially_in_the_worker(multicore):
    outer, total, flag = run_nested(5)
    assert flag is True
    assert outer in multicore.worker_pids()
    assert total == 5 * outer  # every inner call ran in that same worker process


def test_worker_output_reaches_the_callers_streams(multicore, capsys):
    squares(1)
    pool = multicore
    seen = Outcomes()
    pool.submit(chatty, (7,), {}, seen.callback())
    assert seen.one() == (True, 7)
    out, err = capsys.readouterr()
    assert out == "hello 7 from the worker\nbytes too, naïve\nno newline at the end"
    assert "UserWarning: careful 7" in err and "test_multicore.py" in err


# --------------------------------------------------------------------------- the pool API


def test_workers_start_lazily_all_at_once_and_stop_on_shutdown(make_pool):
    pool = make_pool(3)
    assert pool.worker_pids() == [] and pool.address is None
    seen = Outcomes()
    pool.submit(square, (5,), {}, seen.callback())
    assert seen.one() == (True, 25)
    pids = pool.worker_pids()
    assert len(pids) == 3  # all started on first use, not one per call
    pool.start()
    assert pool.worker_pids() == pids
    pool.shutdown(wait=True)
    assert wait_gone(pids, 5) == []
    with pytest.raises(RuntimeError):
        pool.submit(square, (1,), {}, seen.callback())


def test_shutdown_while_workers_are_starting(make_pool, caplog):
    caplog.set_level(logging.WARNING, logger="pydron.backend")
    pool = make_pool(2)
    pool.start(wait=False)
    deadline = time.monotonic() + TIMEOUT
    while len(pool.worker_pids()) < 2 and time.monotonic() < deadline:
        time.sleep(0.001)
    pids = pool.worker_pids()
    pool.shutdown(wait=True)
    assert len(pids) == 2 and wait_gone(pids, 5) == []
    assert caplog.records == []  # stopping a worker on purpose is no failure


def test_a_forked_child_neither_uses_nor_kills_the_parents_workers(make_pool):
    from pydron.backend.engine import engine
    pool = make_pool(2)
    pool.start()
    pids = pool.worker_pids()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads
        child = os.fork()
    if child == 0:
        code = 1
        try:
            try:
                pool.submit(square, (2,), {}, lambda ok, value: None)
            except RuntimeError as exc:
                code = 0 if "fork()ed" in str(exc) else 2
            pool.shutdown(wait=True)             # returns at once, stops nothing
            engine._kill_workers_at_exit()       # what the child's exit runs
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert all(alive(p) for p in pids) and pool.worker_pids() == pids
    seen = Outcomes()
    pool.submit(square, (3,), {}, seen.callback())
    assert seen.one() == (True, 9)


def test_shutdown_lets_submitted_calls_finish(make_pool):
    pool = make_pool(1)
    seen = Outcomes()
    for i in range(3):
        pool.submit(nap, (0.1, i), {}, seen.callback(i))
    pool.shutdown(wait=True)
    assert sorted(value for _, ok, value in seen.items if ok) == [0, 1, 2]


def test_unpicklable_arguments_raise_in_submit(make_pool):
    pool = make_pool(1)
    seen = Outcomes()
    with pytest.raises(SerializationError) as info:
        pool.submit(echo, (1, threading.Lock()), {}, seen.callback())
    assert info.value.item == "argument 2" and info.value.value_type == "_thread.lock"
    assert "echo()" in str(info.value)
    with pytest.raises(SerializationError) as info:
        pool.submit(echo, (1,), {"k": (x for x in [])}, seen.callback())
    assert info.value.item == "keyword argument 'k'"
    assert info.value.value_type == "generator"
    lock = threading.Lock()
    with pytest.raises(SerializationError) as info:
        pool.submit(lambda: lock.locked(), (), {}, seen.callback())
    assert info.value.item == "the function"
    assert seen.items == []  # nothing was queued
    pool.submit(square, (3,), {}, seen.callback("ok"))  # and the pool still works
    assert seen.one("ok") == (True, 9)


def test_unpicklable_result_and_exception(make_pool):
    pool = make_pool(1)
    seen = Outcomes()
    pool.submit(give_lock, (), {}, seen.callback("lock"))
    pool.submit(fail_oddly, (), {}, seen.callback("odd"))
    pool.submit(fail, ("plain",), {}, seen.callback("plain"))
    ok, err = seen.one("lock")
    assert not ok and isinstance(err, SerializationError)
    assert err.item == "the result" and err.value_type == "_thread.lock"
    assert "give_lock()" in str(err)
    ok, err = seen.one("odd")
    # Its __init__ does not take its args: rebuilt without calling __init__, as raised.
    assert not ok and type(err) is Unpicklable
    assert str(err) == "1/2" and err.args == ("1/2",) and err.__cause__ is None
    assert "fail_oddly" in "".join(traceback.format_tb(err.__traceback__))
    ok, err = seen.one("plain")
    assert not ok and type(err) is ValueError and str(err) == "plain"


def test_closures_and_lambdas_travel_by_value_and_see_new_bindings(make_pool):
    pool = make_pool(1)
    seen = Outcomes()
    k = 10

    def add_k(x):
        return x + k

    pool.submit(add_k, (1,), {}, seen.callback("a"))
    assert seen.one("a") == (True, 11)
    k = 20  # a rebound closure cell: the worker must not keep the old function
    pool.submit(add_k, (1,), {}, seen.callback("b"))
    assert seen.one("b") == (True, 21)
    pool.submit(lambda x: -x, (4,), {}, seen.callback("c"))
    assert seen.one("c") == (True, -4)


def test_a_function_crosses_the_wire_once_per_worker(make_pool):
    pool = make_pool(1)
    seen = Outcomes()

    def count(x, _calls=[]):  # noqa: B006 -- state that lives on in the worker's copy
        _calls.append(x)
        return len(_calls)

    for i in range(20):
        pool.submit(count, (i,), {}, seen.callback(i))
    items = seen.wait(20)
    # One unpickled copy on the worker, reused by every call (which also shows that the
    # function was not sent again: a new blob would have replaced it).
    assert sorted(value for _, _, value in items) == list(range(1, 21))
    assert pool.functions_sent == 1


def test_large_numpy_arrays_travel_out_of_band(make_pool):
    from conftest_hosts import require_module
    np = require_module("numpy")
    pool = make_pool(1, max_frame=1 << 20)  # small frames: the arrays are split in parts
    seen = Outcomes()
    a = np.arange(3 * (1 << 20) // 8 + 5, dtype=np.float64)  # 3 MB: 4 frames each way
    a[0] = 0.5
    pool.submit(double_array, (a,), {}, seen.callback())
    ok, b = seen.one()
    assert ok and b.dtype == a.dtype and b.shape == a.shape
    assert b[0] == 1.0 and b[-1] == 2 * (a.size - 1)
    assert b.flags.writeable
    assert a[0] == 0.5 and a[-1] == a.size - 1  # the worker changed its own copy only
    with pytest.raises(SerializationError) as info:  # only in-band data has a limit
        pool.submit(echo, (b"x" * (1 << 20),), {}, seen.callback())
    assert info.value.item == "the arguments"


def test_main_script_functions_classes_and_exceptions(tmp_path):
    """Things defined in the caller's __main__ exist on the worker only by value; an
    instance of a __main__ class that comes back is of the caller's own class."""
    result = run_script(tmp_path, """
        import dataclasses, os
        import pydron
        from pydron import functional, schedule

        @dataclasses.dataclass
        class Point:
            x: int
            y: int

        class Oops(Exception):
            pass

        @functional
        def shift(p, d):
            if d < 0:
                raise Oops(f"negative {d}")
            return Point(p.x + d, p.y + d), os.getpid()

        @schedule
        def run(n):
            out = []
            for d in range(n):
                out.append(shift(Point(d, -d), d))
            return out

        @schedule
        def bad():
            return shift(Point(0, 0), -1)

        pydron.configure({"workers": [{"type": "multicore", "cores": 2}]})
        got = run(6)
        assert [p for p, _ in got] == [Point(2 * d, 0) for d in range(6)], got
        assert all(type(p) is Point for p, _ in got)
        assert os.getpid() not in {pid for _, pid in got}
        try:
            bad()
        except Oops as exc:
            print("caught", exc)
        print("ok")
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["caught negative -1", "ok"]


def test_workers_stop_when_the_program_exits(tmp_path):
    result = run_script(tmp_path, """
        import pydron
        from pydron.backend.multicore import MulticorePool
        pool = MulticorePool(2)
        pool.start()
        print(*pool.worker_pids())
        # no shutdown(): the exit hook must stop them
    """)
    assert result.returncode == 0, result.stderr
    pids = [int(p) for p in result.stdout.split()]
    assert len(pids) == 2
    assert wait_gone(pids, 5) == []
