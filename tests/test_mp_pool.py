"""pydron.Pool against multiprocessing.Pool: results, exceptions, callbacks, timeouts,
close/join/terminate, the initializer, imap's laziness and a worker killed mid-map.

Every behaviour runs on three pools: the threads pool and real worker processes of
pydron.conf (``Pool()``), and a pool of its own (``Pool(processes=2)``). The functions
the workers run are at module level (worker processes get this module's source from the
master); waits inside them poll a "gate" file the test creates, never a fixed time.
"""
from __future__ import annotations

import gc
import itertools
import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import threading
import time

import pytest

import pydron
from pydron.explicit import mp_pool
from pydron.explicit.dispatch import Dispatcher
from pydron.explicit.mp_pool import Pool, PoolTerminatedError
from waiting import runs, wait_for, wait_gone

TIMEOUT = 60
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFS = {
    "threads": {"workers": [{"type": "threads", "count": 4}]},
    "multicore": {"workers": [{"type": "multicore", "cores": 2}]},
}


# ------------------------------------------------------------------ what the workers run


def square(x):
    return x * x


def add(a, b):
    return a + b


def gives_exception(x):
    """Returns (does not raise) an exception object: a result like any other."""
    return ValueError(x)


def fails_at(x, bad=(3, 7)):
    """Raises ValueError(x) chained from KeyError(x) for the bad items; item 3 takes a
    little longer, so that a later failure is done first."""
    if x in bad:
        if x == bad[0]:
            time.sleep(0.2)
        try:
            raise KeyError(x)
        except KeyError as exc:
            raise ValueError(x, "bad") from exc
    return x * 10


def wait_gate(path, value):
    """Wait (polling, at most TIMEOUT) until ``path`` exists; then ``value``."""
    deadline = time.monotonic() + TIMEOUT
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return value


def gated(path):
    return wait_gate(path, path)


def record_then_gate(record, gate, value):
    """Note this process in ``record``, then wait for the gate."""
    with open(record, "a") as f:
        f.write(f"{os.getpid()}\n")
    return wait_gate(gate, value)


def whoami(x):
    return f"{os.getpid()}-{threading.get_ident()}", x


def init_worker(path):
    with open(path, "a") as f:
        f.write(f"{os.getpid()}-{threading.get_ident()}\n")


def init_fails():
    raise RuntimeError("no init")


def nap_and_record(path, x):
    """Note this attempt in ``path`` (pid and item), then take a little while."""
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    time.sleep(0.03)
    return x * x


def nested_map(n):
    """A Pool made inside a worker: its calls run right there, one after the other."""
    from pydron.explicit.mp_pool import Pool as InnerPool
    inner = InnerPool()
    try:
        return inner.map(square, range(n)), sorted(inner.imap_unordered(square, range(n))), \
            inner.apply(add, (n, 1))
    finally:
        inner.close()
        inner.join()


def lock_at_4(x):
    """A result that cannot be pickled for item 4."""
    return threading.Lock() if x == 4 else x


def raises_base(x):
    if x == 2:
        raise SystemExit(x)
    return x


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", autouse=True)
def _reset_configuration():
    yield
    pydron.configure(None)


@pytest.fixture(scope="module", params=["threads", "multicore", "processes"])
def kind(request):
    pydron.configure(CONFS.get(request.param, CONFS["threads"]))
    yield request.param
    pydron.configure(None)


@pytest.fixture
def make(kind, tmp_path):
    """Pools made by a test: ``Pool()`` on the configured pool, or ``Pool(processes=2)``;
    terminated and joined afterwards (gates opened, so no call blocks the join)."""
    made = []

    def make(**options):
        pool = Pool(processes=2, **options) if kind == "processes" else Pool(**options)
        made.append(pool)
        return pool

    yield make
    (tmp_path / "gate").write_text("open")
    for pool in made:
        pool.terminate()
        pool.join()


@pytest.fixture(scope="module")
def mp():
    """The real multiprocessing.Pool, for side by side comparisons."""
    pool = multiprocessing.get_context("fork").Pool(2)
    yield pool
    pool.terminate()
    pool.join()


def processes(kind):
    return kind in ("multicore", "processes")


def outcomes(iterator):
    """Every outcome of an imap iterator: results, and ("raised", type, args) in place."""
    seen = []
    while True:
        try:
            seen.append(iterator.next(timeout=TIMEOUT))
        except StopIteration:
            return seen
        except (Exception, SystemExit) as exc:
            seen.append(("raised", type(exc), exc.args))


def bad_input():
    yield 1
    yield 2
    raise LookupError("input broke")


# --------------------------------------------------------------- results as multiprocessing


@pytest.mark.parametrize("items", [[], [5], list(range(37))], ids=["empty", "one", "37"])
@pytest.mark.parametrize("chunksize", [None, 1, 4])
def test_maps_equal_multiprocessing(make, mp, items, chunksize):
    pool = make()
    pairs = [(x, x + 1) for x in items]
    assert pool.map(square, items, chunksize) == mp.map(square, items, chunksize) \
        == [x * x for x in items]
    assert pool.map(square, iter(items), chunksize) == mp.map(square, iter(items),
                                                               chunksize)
    assert pool.starmap(add, pairs, chunksize) == mp.starmap(add, pairs, chunksize)
    assert pool.map_async(square, items, chunksize).get(TIMEOUT) == \
        mp.map_async(square, items, chunksize).get(TIMEOUT)
    assert pool.starmap_async(add, pairs, chunksize).get(TIMEOUT) == \
        mp.starmap_async(add, pairs, chunksize).get(TIMEOUT)
    size = chunksize or 1
    assert list(pool.imap(square, iter(items), size)) == \
        list(mp.imap(square, iter(items), size))
    assert sorted(pool.imap_unordered(square, items, size)) == \
        sorted(mp.imap_unordered(square, items, size))


def test_single_calls_equal_multiprocessing(make, mp):
    pool = make()
    assert pool.apply(add, (2, 3)) == mp.apply(add, (2, 3)) == 5
    assert pool.apply(add, (), {"a": 1, "b": 2}) == mp.apply(add, (), {"a": 1, "b": 2})
    assert pool.apply_async(square, (9,)).get(TIMEOUT) == mp.apply_async(square, (9,)).get()
    # an exception object returned is a result, not a failure
    value = pool.apply(gives_exception, (4,))
    assert type(value) is ValueError and value.args == (4,)
    assert [v.args for v in pool.map(gives_exception, range(3))] == [(0,), (1,), (2,)]


def test_a_pool_inside_a_worker_runs_its_calls_there(make):
    pool = make()
    squares = [i * i for i in range(5)]
    assert pool.apply(nested_map, (5,)) == (squares, squares, 6)
    assert pool.map(nested_map, [2, 3]) == [([0, 1], [0, 1], 3), ([0, 1, 4], [0, 1, 4], 4)]


# ------------------------------------------------------------------------------ exceptions


@pytest.mark.parametrize("chunksize", [None, 1, 3])
def test_map_raises_first_failing_item_in_input_order(make, mp, chunksize):
    pool = make()
    with pytest.raises(ValueError) as ours:
        pool.map(fails_at, range(12), chunksize)
    assert ours.value.args == (3, "bad")
    assert type(ours.value.__cause__) is KeyError and ours.value.__cause__.args == (3,)
    with pytest.raises(ValueError) as theirs:
        mp.map(fails_at, range(12), 1 if chunksize is None else chunksize)
    assert theirs.value.args[0] in (3, 7)   # multiprocessing: the first failure to arrive
    result = pool.map_async(fails_at, range(12), chunksize)
    with pytest.raises(ValueError) as again:
        result.get(TIMEOUT)
    assert again.value.args == (3, "bad") and not result.successful()
    with pytest.raises(ValueError, match="3"):
        pool.apply(fails_at, (3,))
    with pytest.raises(ValueError) as star:
        pool.starmap(fails_at, [(x,) for x in range(12)], chunksize)
    assert star.value.args == (3, "bad")


@pytest.mark.parametrize("chunksize", [1, 4])
def test_imap_raises_at_the_items_position(make, mp, chunksize):
    pool = make()
    expected = [0, 10, 20, ("raised", ValueError, (3, "bad")), 40, 50, 60,
                ("raised", ValueError, (7, "bad")), 80, 90]
    assert outcomes(pool.imap(fails_at, range(10), chunksize)) == expected
    if chunksize == 1:  # multiprocessing goes on after a failure with chunksize 1 only
        assert outcomes(mp.imap(fails_at, range(10), 1)) == expected
    unordered = outcomes(pool.imap_unordered(fails_at, range(10), chunksize))
    assert sorted(unordered, key=repr) == sorted(expected, key=repr)
    try:
        next(pool.imap(fails_at, [3]))
    except ValueError as exc:
        assert type(exc.__cause__) is KeyError and exc.__cause__.args == (3,)
    else:
        raise AssertionError("no exception")


def test_an_input_that_raises_raises_after_the_items_before_it(make, mp):
    pool = make()
    expected = [1, 4, ("raised", LookupError, ("input broke",))]
    assert outcomes(pool.imap(square, bad_input())) == expected
    assert outcomes(mp.imap(square, bad_input())) == expected
    with pytest.raises(LookupError):
        pool.map(square, bad_input())
    with pytest.raises(LookupError):
        mp.map(square, bad_input())


def test_a_base_exception_of_an_item_is_its_outcome(make):
    pool = make()
    with pytest.raises(SystemExit):
        pool.map(raises_base, range(5))
    assert outcomes(pool.imap(raises_base, range(4))) == [0, 1, ("raised", SystemExit, (2,)),
                                                          3]
    assert pool.map(square, range(3)) == [0, 1, 4]   # the pool goes on


def test_an_item_whose_call_cannot_run_ends_its_map_at_its_position(make, kind):
    if not processes(kind):
        pytest.skip("nothing is pickled on the threads pool")
    from pydron.errors import SerializationError
    pool = make()
    seen = outcomes(pool.imap(lock_at_4, range(8), 3))
    assert seen[:4] == [0, 1, 2, 3] and len(seen) == 5
    assert seen[4][:2] == ("raised", SerializationError) and "_thread.lock" in seen[4][2][0]
    with pytest.raises(SerializationError):
        pool.map(lock_at_4, range(8))
    assert pool.map(lock_at_4, [1, 2]) == [1, 2]


# ------------------------------------------------------------------------------- callbacks


def test_callbacks_run_once_in_a_pool_thread_before_ready(make, tmp_path):
    pool = make()
    seen = []
    lock = threading.Lock()
    submitted = threading.Event()

    def note(tag):
        def callback(value):
            assert submitted.wait(TIMEOUT)     # results[tag] is there
            with lock:
                seen.append((tag, value, threading.get_ident(), results[tag].ready()))
        return callback

    results = {}
    results["ok"] = pool.apply_async(square, (5,), callback=note("ok"),
                                     error_callback=note("ok-error"))
    results["bad"] = pool.apply_async(fails_at, (3,), callback=note("bad-ok"),
                                      error_callback=note("bad"))
    results["map"] = pool.map_async(square, range(6), callback=note("map"),
                                    error_callback=note("map-error"))
    results["mapbad"] = pool.map_async(fails_at, range(6), callback=note("mapbad-ok"),
                                       error_callback=note("mapbad"))
    results["star"] = pool.starmap_async(add, [(1, 2), (3, 4)], callback=note("star"))
    results["empty"] = pool.map_async(square, [], callback=note("empty"))
    submitted.set()
    for result in results.values():
        result.wait(TIMEOUT)
        assert result.ready()
    pool.close()
    pool.join()                    # every callback has run once join returns
    tags = sorted(tag for tag, *_ in seen)
    assert tags == sorted(["ok", "bad", "map", "mapbad", "star", "empty"])
    by_tag = {tag: rest for tag, *rest in seen}
    assert by_tag["ok"][0] == 25 and by_tag["map"][0] == [0, 1, 4, 9, 16, 25]
    assert by_tag["star"][0] == [3, 7] and by_tag["empty"][0] == []
    for tag in ("bad", "mapbad"):
        exc = by_tag[tag][0]
        assert type(exc) is ValueError and exc.args == (3, "bad")
        with pytest.raises(ValueError) as raised:
            results[tag].get()
        assert raised.value is exc
    assert all(not ready for _, _, _, ready in seen)   # called before ready(), as in mp
    threads = {ident for _, _, ident, _ in seen}
    assert len(threads) == 1 and threading.get_ident() not in threads
    assert results["ok"].successful() and not results["bad"].successful()


def test_a_callback_that_raises_is_logged_and_the_result_delivered(make, caplog):
    pool = make()

    def boom(value):
        raise RuntimeError("callback broke")

    result = pool.apply_async(square, (3,), callback=boom)
    assert result.get(TIMEOUT) == 9
    assert pool.apply_async(square, (4,)).get(TIMEOUT) == 16   # the result thread lives
    assert "callback broke" in caplog.text


# -------------------------------------------------------------------------------- timeouts


def test_get_and_next_time_out_while_a_call_waits(make, tmp_path):
    pool = make()
    gate = str(tmp_path / "gate1")
    result = pool.apply_async(wait_gate, (gate, "done"))
    with pytest.raises(multiprocessing.TimeoutError):
        result.get(timeout=0.2)
    assert result.wait(0.05) is None and not result.ready()
    with pytest.raises(ValueError, match="not ready"):
        result.successful()
    mapped = pool.map_async(gated, [gate, gate])
    with pytest.raises(multiprocessing.TimeoutError):
        mapped.get(0.1)
    iterator = pool.imap(gated, [gate], 1)
    with pytest.raises(multiprocessing.TimeoutError):
        iterator.next(timeout=0.1)
    with pytest.raises(multiprocessing.TimeoutError):
        iterator.next(timeout=0)
    with open(gate, "w"):
        pass
    assert iterator.next(timeout=TIMEOUT) == gate
    with pytest.raises(StopIteration):
        iterator.next(timeout=TIMEOUT)
    assert result.get(timeout=TIMEOUT) == "done" and result.successful()
    assert mapped.get(TIMEOUT) == [gate, gate]


# -------------------------------------------------------------------- close, join, terminate


def test_close_join_rules(make):
    pool = make()
    with pytest.raises(ValueError, match="Pool is still running"):
        pool.join()
    pending = [pool.apply_async(square, (i,)) for i in range(10)]
    mapped = pool.map_async(square, range(50), 1)
    lazy = pool.imap(square, range(300))       # not consumed before join
    pool.close()
    for call in (lambda: pool.apply(square, (1,)), lambda: pool.apply_async(square, (1,)),
                 lambda: pool.map(square, [1]), lambda: pool.map_async(square, [1]),
                 lambda: pool.starmap(add, [(1, 2)]), lambda: pool.imap(square, [1]),
                 lambda: pool.imap_unordered(square, [1]),
                 lambda: pool.starmap_async(add, [(1, 2)]), lambda: pool.__enter__()):
        with pytest.raises(ValueError, match="Pool not running"):
            call()
    pool.close()                                # again: nothing
    pool.join()
    assert all(r.ready() for r in pending) and mapped.ready()
    assert [r.get(0) for r in pending] == [i * i for i in range(10)]
    assert mapped.get(0) == [i * i for i in range(50)]
    assert list(lazy) == [i * i for i in range(300)]   # ran to its end before join returned
    pool.join()                                 # again: nothing


def test_terminate_fails_unfinished_results_and_stops_calls(make, kind, tmp_path):
    pool = make()
    gate = str(tmp_path / "gate")
    record = str(tmp_path / "record")
    failures = []
    blocked = pool.apply_async(record_then_gate, (record, gate, 1),
                               error_callback=failures.append)
    wait_for(lambda: runs(record), TIMEOUT, "the call to start")
    mapped = pool.map_async(gated, [gate] * 20, 1, error_callback=failures.append)
    lazy = pool.imap(gated, itertools.repeat(gate))
    pool.terminate()
    for result in (blocked, mapped):
        with pytest.raises(PoolTerminatedError):
            result.get(TIMEOUT)
        assert not result.successful()
    with pytest.raises(PoolTerminatedError):
        lazy.next(TIMEOUT)
    with pytest.raises(StopIteration):
        lazy.next(TIMEOUT)
    with pytest.raises(ValueError, match="Pool not running"):
        pool.apply_async(square, (1,))
    pool.close()
    pool.terminate()                            # again: nothing
    if not processes(kind):
        with open(gate, "w"):                   # a thread cannot be stopped
            pass
    started = time.monotonic()
    pool.join()       # processes: returns with the gate still shut (the worker was killed)
    if processes(kind):
        assert time.monotonic() - started < TIMEOUT / 3, "join waited for a stopped call"
    assert len(failures) == 2 and all(type(f) is PoolTerminatedError for f in failures)
    if processes(kind):
        assert not os.path.exists(gate)
        assert wait_gone(runs(record)) == []    # the worker that ran it was killed


def test_terminate_stops_the_pools_own_workers(kind, tmp_path):
    if kind != "processes":
        pytest.skip("a pool of its own")
    pool = Pool(processes=2)
    pids = {int(w.split("-")[0]) for w, _ in pool.map(whoami, range(40), 1)}
    assert pids and os.getpid() not in pids
    pool.terminate()
    pool.join()
    assert wait_gone(pids, timeout=0.5) == []


def test_close_and_join_stop_the_pools_own_workers(kind):
    if kind != "processes":
        pytest.skip("a pool of its own")
    pool = Pool(processes=2)
    pids = {int(w.split("-")[0]) for w, _ in pool.map(whoami, range(40), 1)}
    pool.close()
    pool.join()
    assert wait_gone(pids, timeout=0.5) == []


def test_context_manager_terminates(make, tmp_path):
    pool = make()
    with pool as entered:
        assert entered is pool
        assert pool.map(square, range(5)) == [0, 1, 4, 9, 16]
        left = pool.apply_async(wait_gate, (str(tmp_path / "gate"), 0))
    with pytest.raises(PoolTerminatedError):
        left.get(TIMEOUT)
    with pytest.raises(ValueError, match="Pool not running"):
        pool.map(square, [1])
    with pytest.raises(ValueError, match="Pool not running"):
        with pool:
            pass


def test_the_pool_on_pydron_conf_is_left_running(kind):
    if kind == "processes":
        pytest.skip("the process-wide pool")
    pool = Pool()
    assert pool.map(square, range(4)) == [0, 1, 4, 9]
    pool.close()
    pool.join()
    again = Pool()
    assert again.map(square, range(4)) == [0, 1, 4, 9]
    again.terminate()
    again.join()


# ----------------------------------------------------------------------------- initializer


def test_initializer_runs_once_per_worker(make, kind, tmp_path):
    path = tmp_path / "inits"
    pool = make(initializer=init_worker, initargs=(str(path),))
    workers = [w for w, _ in pool.map(whoami, range(200), 1)]
    workers += [pool.apply(whoami, (0,))[0] for _ in range(5)]
    pool.close()
    pool.join()
    inits = path.read_text().split()
    assert len(inits) == len(set(inits))            # never twice in one worker
    assert set(workers) <= set(inits)                # every worker that ran a call had it
    if processes(kind):
        assert {w.split("-")[0] for w in workers} <= {i.split("-")[0] for i in inits}


def test_a_failing_initializer_breaks_the_pool(make):
    import concurrent.futures as cf
    pool = make(initializer=init_fails)
    with pytest.raises(cf.BrokenExecutor):
        pool.apply(square, (2,))
    with pytest.raises(cf.BrokenExecutor):
        pool.map(square, range(5))


# ----------------------------------------------------------------------------- arguments


def test_arguments_are_validated_as_multiprocessing_does(kind):
    for bad in (0, -1, 1.5, "2"):
        with pytest.raises(ValueError, match="maxtasksperchild"):
            Pool(maxtasksperchild=bad)
        with pytest.raises(ValueError, match="maxtasksperchild"):
            multiprocessing.pool.Pool(1, maxtasksperchild=bad)
    with pytest.raises(ValueError, match="Number of processes"):
        Pool(0)
    with pytest.raises(TypeError, match="initializer"):
        Pool(initializer=3)
    with pytest.raises(TypeError):
        Pool(processes=2, conf=CONFS["threads"])
    pool = Pool(maxtasksperchild=1)     # accepted; Pydron's workers are long-lived
    try:
        with pytest.raises(ValueError, match="Chunksize must be 1\\+"):
            pool.imap(square, [1], 0)
        with pytest.raises(ValueError, match="Chunksize must be 1\\+"):
            pool.map(square, [1], 0)
        with pytest.raises(NotImplementedError):
            pickle.dumps(pool)
        assert "state=RUN" in repr(pool) and pool._processes >= 1
    finally:
        pool.terminate()
        pool.join()


# ---------------------------------------------------------------------------- imap laziness


@pytest.mark.parametrize("ordered", [True, False])
def test_imap_reads_its_inputs_lazily(make, ordered):
    pool = make()
    produced = [0]

    def endless():
        for i in itertools.count():
            produced[0] += 1
            yield i

    iterator = (pool.imap if ordered else pool.imap_unordered)(square, endless(), 2)
    parallelism = pool._processes
    on_pool = max(2 * parallelism + Dispatcher.EXTRA,
                  Dispatcher.SHORT_CALLS_PER_WORKER * parallelism)
    bound = mp_pool.READ_AHEAD + 2 * on_pool + 2
    got = []
    for consumed in range(1, 301):
        got.append(iterator.next(TIMEOUT))
        assert produced[0] - consumed <= bound
    if ordered:
        assert got == [i * i for i in range(300)]
    else:
        assert len(set(got)) == 300
    # once the window is full nothing more is read until the consumer takes more
    wait_for(lambda: pool._dispatcher.in_flight() == 0 and pool._dispatcher.queued() == 0,
             TIMEOUT, "the map to stop at its window")
    assert produced[0] - 300 <= bound
    iterator.next(TIMEOUT)
    assert produced[0] - 301 <= bound


def test_an_imap_dropped_unconsumed_stops_reading(make):
    pool = make()
    produced = [0]

    def endless():
        for i in itertools.count():
            produced[0] += 1
            yield i

    iterator = pool.imap(square, endless())
    assert [iterator.next(TIMEOUT) for _ in range(5)] == [0, 1, 4, 9, 16]
    del iterator
    gc.collect()
    wait_for(lambda: not pool._cache, TIMEOUT, "the map to stop")
    wait_for(lambda: pool._dispatcher.in_flight() == 0, TIMEOUT, "its calls to end")
    stopped_at = produced[0]
    assert pool.map(square, range(3)) == [0, 1, 4]
    assert produced[0] == stopped_at


SCRIPT = """
import os
from pydron.explicit.mp_pool import Pool
def f(x):
    return x * x, os.getpid()
if __name__ == "__main__":
    with Pool(2) as p:
        out = p.map(f, range(20))
    print(" ".join(str(pid) for pid in sorted({pid for _, pid in out})))
    print([v for v, _ in out] == [x * x for x in range(20)])
"""


def test_a_multiprocessing_script_runs_and_exits(kind, tmp_path):
    if kind != "processes":
        pytest.skip("once")
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=ROOT)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=TIMEOUT, env=env, cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr
    pids, same = done.stdout.split("\n")[:2]
    assert same == "True"
    assert wait_gone([int(p) for p in pids.split()]) == []


# ---------------------------------------------------------------------- a worker killed


@pytest.mark.parametrize("how", ["map", "imap"])
def test_a_worker_killed_mid_map_loses_and_duplicates_nothing(make, kind, tmp_path, how):
    if not processes(kind):
        pytest.skip("worker processes")
    pool = make()
    path = str(tmp_path / "attempts")
    items = list(range(60))
    args = [(path, x) for x in items]
    if how == "map":
        pending = pool.starmap_async(nap_and_record, args, 2)
    else:
        pending = pool.imap(nap_pair, args, 2)
    victim = wait_for(lambda: runs(path), TIMEOUT, "the map to start")[0]
    os.kill(victim, signal.SIGKILL)
    results = pending.get(TIMEOUT) if how == "map" else list(pending)
    assert results == [x * x for x in items]
    assert wait_gone([victim]) == []
    assert len(runs(path)) >= len(items)      # some items may have run twice, none lost


def nap_pair(pair):
    return nap_and_record(*pair)
