"""pydron.map, reduce and map_reduce against their sequential meaning, on every pool kind
that runs here: inline, threads, worker processes (and the ssh pool, at the end).

The model-based tests draw random programs of the API -- input length, chunk size, which
items fail and how, ordered or not, errors="raise" or "return", how far the consumer
reads -- and compare every observable (the values, the exception raised and where, its
type, args and chain) with the plain loop the call stands for."""
from __future__ import annotations

import functools
import itertools
import operator
import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest

import pydron
from pydron.explicit import mapping
from waiting import wait_for

POOLS = {
    "inline": {"workers": [{"type": "inline"}]},
    "threads": {"workers": [{"type": "threads", "count": 4}]},
    "multicore": {"workers": [{"type": "multicore", "cores": 2}]},
}


@pytest.fixture(scope="module", params=list(POOLS))
def pool_kind(request):
    pydron.configure(POOLS[request.param])
    yield request.param
    pydron.configure(None)


# ----------------------------------------------------------------------------- functions
# Module level: worker processes import this module (served by the caller).

class Odd(Exception):
    """An exception whose __init__ differs from its args: it must arrive as raised."""

    def __init__(self, value):
        super().__init__(f"odd {value}")
        self.value = value


def square(x):
    return x * x


def add(a, b):
    return a + b


def concat(a, b):
    return a + b


def failing(spec):
    """``spec``: (value, how): how 0 returns, 1 raises Odd from a KeyError, 2 ValueError."""
    value, how = spec
    if how == 1:
        try:
            raise KeyError(value)
        except KeyError as exc:
            raise Odd(value) from exc
    if how == 2:
        raise ValueError(value)
    return value * 3


def pid_of(x, delay=0.0):
    time.sleep(delay)
    return x, os.getpid()


def sleepy(x):
    time.sleep(0.05)
    return x


def noop(x):
    return x


def plain_outcomes(fn, items, errors):
    """What a plain loop yields: values, and with errors="return" exception objects;
    with "raise" the first exception ends it (returned as the second element)."""
    out = []
    for item in items:
        try:
            out.append(fn(item))
        except Exception as exc:
            if errors == "raise":
                return out, exc
            out.append(exc)
    return out, None


def same_exception(a, b):
    assert type(a) is type(b)
    assert a.args == b.args
    assert getattr(a, "value", None) == getattr(b, "value", None)
    assert type(a.__cause__) is type(b.__cause__)
    if a.__cause__ is not None:
        assert a.__cause__.args == b.__cause__.args


def run_case(seed, ordered, errors):
    rng = random.Random(seed)
    n = rng.choice([0, 1, 2, 7, 30, 200])
    fail_rate = rng.choice([0.0, 0.02, 0.2])
    items = [(i, 0 if rng.random() >= fail_rate else rng.choice([1, 2])) for i in range(n)]
    chunksize = rng.choice(["auto", 1, 3, 64])
    expected, raised = plain_outcomes(failing, items, errors)
    got, got_raised = [], None
    try:
        for value in pydron.map(failing, items, ordered=ordered, chunksize=chunksize,
                                errors=errors):
            got.append(value)
    except Exception as exc:
        got_raised = exc
    if ordered:
        assert len(got) == len(expected), (seed, got, expected)
        for a, b in zip(got, expected):
            if isinstance(b, Exception):
                same_exception(a, b)
            else:
                assert a == b
        if raised is None:
            assert got_raised is None
        else:
            same_exception(got_raised, raised)
    else:
        key = repr
        if errors == "return" or raised is None:
            assert got_raised is None
            assert sorted(map(key, got)) == sorted(map(key, expected)), seed
        else:
            # Completion order: the error comes once some failing item has finished;
            # whatever was yielded before is a subset of the items' outcomes.
            assert got_raised is not None
            assert any(isinstance(r, Exception) for r in
                       plain_outcomes(failing, items, "return")[0])
            assert set(got) <= {v for v in plain_outcomes(failing, items, "return")[0]
                                if not isinstance(v, Exception)}


@pytest.mark.parametrize("ordered", [True, False])
@pytest.mark.parametrize("errors", ["raise", "return"])
def test_random_maps_match_the_plain_loop(pool_kind, ordered, errors):
    cases = 60 if pool_kind != "multicore" else 25
    for seed in range(cases):
        run_case(seed * 7919 + ordered * 2 + (errors == "raise"), ordered, errors)


def test_zipped_iterables_stop_at_the_shortest(pool_kind):
    assert list(pydron.map(add, range(10), range(100, 105))) == \
        [a + b for a, b in zip(range(10), range(100, 105))]


def test_late_exception_keeps_its_frames(pool_kind):
    got = []
    with pytest.raises(Odd) as info:
        for value in pydron.map(failing, [(0, 0), (1, 0), (2, 1), (3, 0)]):
            got.append(value)
    assert got == [0, 3]
    names = [entry.name for entry in info.traceback]
    assert "failing" in names                     # the worker's frame, as if local
    assert isinstance(info.value.__cause__, KeyError)


def test_unordered_yields_every_result_once(pool_kind):
    got = list(pydron.map(square, range(500), ordered=False))
    assert sorted(got) == [x * x for x in range(500)]


def test_reduce_keeps_operand_order(pool_kind):
    words = [chr(97 + i % 26) * (i % 3 + 1) for i in range(333)]
    assert pydron.reduce(concat, words) == functools.reduce(concat, words)
    assert pydron.reduce(concat, words, "<") == functools.reduce(concat, words, "<")
    assert pydron.reduce(add, [5]) == 5
    assert pydron.reduce(add, [], 7) == 7
    with pytest.raises(TypeError, match="empty"):
        pydron.reduce(add, [])


def test_reduce_raises_the_first_failure(pool_kind):
    with pytest.raises(TypeError, match="str"):
        pydron.reduce(operator.add, [1, 2, "x", 4] + list(range(100)))


def test_map_reduce(pool_kind):
    assert pydron.map_reduce(square, add, range(1000)) == sum(x * x for x in range(1000))
    assert pydron.map_reduce(add, add, range(10), range(10)) == 90
    with pytest.raises(TypeError):
        pydron.map_reduce(square, add, [])


def test_bad_arguments_are_named():
    with pytest.raises(TypeError, match="callable"):
        pydron.map(3, [1])
    with pytest.raises(ValueError, match="errors"):
        pydron.map(square, [1], errors="ignore")
    with pytest.raises(ValueError, match="chunksize"):
        pydron.map(square, [1], chunksize=0)
    with pytest.raises(TypeError, match="chunksize"):
        pydron.map(square, [1], chunksize=2.5)


# ----------------------------------------------------------------------------- laziness


class Recording:
    """An endless input that records how far it has been read."""

    def __init__(self):
        self.read = 0

    def __iter__(self):
        for i in itertools.count():
            self.read = i + 1
            yield i


def test_inputs_are_read_a_window_ahead(pool_kind):
    source = Recording()
    dispatcher = mapping._dispatcher_of(None)
    # The map takes its window from the limit when it starts; the limit moves with the
    # calls' turnaround (short calls: a longer window), so it is read before, not after.
    window = dispatcher.limit
    results = pydron.map(square, source, chunksize=1)
    for consumed, value in enumerate(results, 1):
        assert value == (consumed - 1) ** 2
        # chunks of one item, at most a window of chunks ahead of what was consumed
        assert source.read <= consumed + window + 1, (source.read, consumed, window)
        if consumed == 200:
            break
    results.close()


def test_auto_chunks_grow_for_tiny_calls_and_stay_small_for_slow_ones():
    sizer = mapping.ChunkSizer("auto")
    sizes = []
    for _ in range(30):
        size = sizer.size()
        sizes.append(size)
        sizer.learn(size, size * 10e-6)        # 10 microseconds an item
    assert sizes[0] == 1
    assert all(b <= mapping.FAST_GROWTH * a for a, b in zip(sizes, sizes[1:]))
    assert sizes[-1] >= 1000
    assert sizes[-1] * 10e-6 <= 2 * mapping.TARGET_SECONDS
    slow = mapping.ChunkSizer("auto")
    for _ in range(10):
        slow.learn(slow.size(), slow.size() * 0.2)
    assert slow.size() == 1
    assert mapping.ChunkSizer(7).size() == 7


def test_a_map_dropped_early_cancels_what_is_queued():
    pydron.configure(POOLS["threads"])
    try:
        gen = pydron.map(sleepy, range(10_000), chunksize=1)
        assert next(gen) == 0
        dispatcher = mapping._dispatcher_of(None)
        gen.close()
        wait_for(lambda: dispatcher.in_flight() == 0 and dispatcher.queued() == 0,
                 what="the map's calls to end")
    finally:
        pydron.configure(None)


MEMORY_SCRIPT = r"""
import sys
import pydron

def inc(x):
    return x + 1

if __name__ == "__main__":
    pydron.configure({"workers": [{"type": sys.argv[1], **({"cores": 2} if sys.argv[1] ==
                      "multicore" else {"count": 2})}]})
    total = 0
    for value in pydron.map(inc, (i for i in range(int(sys.argv[2])))):
        total += value
    n = int(sys.argv[2])
    assert total == n * (n + 1) // 2, total
    # This process's own peak (VmHWM): getrusage's ru_maxrss would report the peak of
    # the process that exec'ed us when that was higher (Linux keeps it across exec).
    with open("/proc/self/status") as f:
        peak_kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    print(peak_kb // 1024)
"""


@pytest.mark.parametrize("kind", ["threads", "multicore"])
def test_ten_million_generated_items_run_in_constant_memory(kind, tmp_path):
    """Peak memory of the caller over a 10^7-item generator, against a 10^5 one: what a
    map holds must not grow with the input."""
    script = tmp_path / "mem.py"
    script.write_text(MEMORY_SCRIPT)
    peaks = {}
    for n in (100_000, 10_000_000):
        done = subprocess.run([sys.executable, str(script), kind, str(n)],
                              capture_output=True, text=True, timeout=600,
                              cwd=os.path.dirname(os.path.dirname(__file__)),
                              env={**os.environ, "PYTHONPATH": os.path.dirname(
                                  os.path.dirname(os.path.abspath(__file__)))})
        assert done.returncode == 0, done.stderr
        peaks[n] = int(done.stdout.split()[-1])
    assert peaks[10_000_000] < 200, peaks                # MB
    assert peaks[10_000_000] < peaks[100_000] + 40, peaks


# ----------------------------------------------------------------------------- failures


def test_a_worker_killed_mid_map_loses_and_duplicates_nothing():
    pydron.configure({"workers": [{"type": "multicore", "cores": 2}], "max_retries": 5})
    try:
        pool = pydron.backend.get_pool()
        pool.start()
        victims = list(pool.worker_pids())
        results = pydron.map(pid_of, range(120), [0.02] * 120, chunksize=1)
        got, pids = [], set()
        for i, (x, pid) in enumerate(results):
            got.append(x)
            pids.add(pid)
            if i == 10:
                os.kill(victims[0], signal.SIGKILL)
        assert got == list(range(120))
        assert pids - set(victims), "no replacement worker ran any call: was one killed?"
    finally:
        pydron.configure(None)


def test_unpicklable_item_fails_at_its_position():
    pydron.configure(POOLS["multicore"])
    try:
        items = [1, 2, threading.Lock(), 4]
        got = []
        with pytest.raises(pydron.SerializationError, match="lock") as info:
            for value in pydron.map(noop, items, chunksize=1):
                got.append(value)
        assert got == [1, 2]
        assert "noop()" in str(info.value) and "run_chunk" not in str(info.value)
    finally:
        pydron.configure(None)


def test_inside_a_worker_a_map_runs_sequentially(pool_kind):
    assert list(pydron.map(nested_map, [3, 4])) == [[0, 1, 4], [0, 1, 4, 9]]


def nested_map(n):
    from pydron.backend.context import in_worker
    assert in_worker()
    return list(pydron.map(square, range(n)))


def test_an_unsendable_item_inside_a_chunk_fails_only_at_its_position():
    """A chunk that fails as a whole (here: an item that cannot be pickled) is split, so
    the items before the bad one still yield and the error lands on that one."""
    pydron.configure(POOLS["multicore"])
    try:
        items = list(range(50)) + [threading.Lock()] + list(range(50, 100))
        got = []
        with pytest.raises(pydron.SerializationError, match="lock"):
            for value in pydron.map(noop, items, chunksize=64):
                got.append(value)
        assert got == list(range(50))
        returned = list(pydron.map(noop, items, chunksize=64, errors="return"))
        assert returned[:50] == list(range(50)) and returned[51:] == list(range(50, 100))
        assert isinstance(returned[50], pydron.SerializationError)
    finally:
        pydron.configure(None)


def test_call_timeout_stops_one_item_and_the_map_goes_on():
    pydron.configure(POOLS["multicore"])
    try:
        items = [0.05, 30, 0.05, 0.2, 0.05]
        start = time.monotonic()
        got = list(pydron.map(nap, items, call_timeout=1.5, errors="return"))
        assert time.monotonic() - start < 20
        assert [g for i, g in enumerate(got) if i != 1] == [0.05, 0.05, 0.2, 0.05]
        assert isinstance(got[1], pydron.CallTimeoutError)
        assert "nap()" in str(got[1])
        with pytest.raises(ValueError, match="call_timeout"):
            pydron.map(nap, [1], call_timeout=0)
    finally:
        pydron.configure(None)


def nap(seconds):
    time.sleep(seconds)
    return seconds


def broken_source(n):
    yield from range(n)
    raise LookupError("the input broke")


def locked(x):
    return threading.Lock() if x == 4 else x


def test_an_input_that_raises_is_raised_after_the_earlier_results(pool_kind):
    got = []
    with pytest.raises(LookupError, match="the input broke"):
        for value in pydron.map(square, broken_source(100)):
            got.append(value)
    assert got == [x * x for x in range(100)]


def test_an_unsendable_result_is_named_by_the_users_function():
    pydron.configure(POOLS["multicore"])
    try:
        got = list(pydron.map(locked, range(8), errors="return"))
        assert got[:4] == [0, 1, 2, 3] and got[5:] == [5, 6, 7]
        assert isinstance(got[4], pydron.SerializationError)
        assert "locked()" in str(got[4]) and "run_chunk" not in str(got[4])
    finally:
        pydron.configure(None)
