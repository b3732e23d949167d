"""Parallel idioms must not be serialized.

Every ``@pydron.schedule`` function below makes 8 independent calls to a ``@functional``
function that sleeps 0.3 s. On a pool of 8 threads they must overlap: the whole call has to
finish in under 0.9 s (sequentially it takes 2.4 s), and give the plain function's result.
The plain result is computed by the undecorated function (``__wrapped__``) with the sleep
patched out, so the check of the result costs no time.

The bounds are generous on purpose: the test machines are shared and noisy (2 cores), and
what is checked is "overlapped" versus "serialized", not speed. Threads that sleep need no
core, so 8 of them overlap even on 2 cores.
"""
from __future__ import annotations

import sys
import threading
import time

import pytest

import pydron
import pydron.backend as backend

WORKERS = 8
DELAY = 0.3            # seconds each slow call sleeps; patched to 0 for the plain runs
N = 8                  # independent calls per idiom
BOUND = 0.9            # < 3 * DELAY: at most 2 "rounds" of calls plus slack, never 8
XS = list(range(N))

# (start, end) of each slow call, recorded by ``slow`` while ``recording`` is set.
_spans: list[tuple[float, float]] = []
_spans_lock = threading.Lock()
_recording = threading.Event()


@pydron.functional
def slow(x):
    """The heavy work: sleeps DELAY, then returns a value that depends on ``x``."""
    start = time.perf_counter()
    if DELAY:
        time.sleep(DELAY)
    if _recording.is_set():
        with _spans_lock:
            _spans.append((start, time.perf_counter()))
    return x * x + 1


@pydron.functional
def add(a, b):
    return a + b


@pydron.functional
def is_even(r):
    return r % 2 == 0


def plain_add(a, b):
    """Not functional: a call to it is a sync point."""
    return (a, b, a + b)


@pytest.fixture(scope="module", autouse=True)
def threads8():
    """A pool of 8 threads for this module; the previous configuration is restored after.
    One call warms the pool up (threads start on the first submit), so the timed calls
    measure scheduling, not thread creation."""
    previous = backend._config
    pydron.configure({"workers": [{"type": "threads", "count": WORKERS}]})
    global DELAY
    saved, DELAY = DELAY, 0
    try:
        assert _warm_up([1, 2]) == [2, 5]
    finally:
        DELAY = saved
    yield
    backend.configure(previous)


@pydron.schedule
def _warm_up(xs):
    return [slow(x) for x in xs]


def plain_result(fn, *args, monkeypatch):
    """What the undecorated function returns, without the sleeps."""
    with monkeypatch.context() as m:
        m.setattr(sys.modules[__name__], "DELAY", 0)
        return fn.__wrapped__(*args)


def timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def check(fn, *args, monkeypatch, bound=BOUND):
    expected = plain_result(fn, *args, monkeypatch=monkeypatch)
    result, elapsed = timed(fn, *args)
    assert result == expected
    assert elapsed < bound, f"{fn.__name__} took {elapsed:.2f} s: its calls were serialized"
    return result


# --------------------------------------------------------------------------- the idioms


@pydron.schedule
def concat_loop(xs):
    outputs = []
    for x in xs:
        outputs = outputs + [slow(x)]
    return outputs


@pydron.schedule
def append_loop(xs):
    out = []
    for x in xs:
        out.append(slow(x))
    return out


@pydron.schedule
def list_comprehension(xs):
    return [slow(x) for x in xs]


@pydron.schedule
def augmented_total(xs):
    total = 0
    for x in xs:
        total += slow(x)
    return total


@pydron.schedule
def dict_store(keys):
    d = {}
    for k in keys:
        d[k] = slow(k)
    return d


@pydron.schedule
def nested_grid(rows, cols):
    grid = []
    for i in rows:
        row = []
        for j in cols:
            row.append(slow(i * 10 + j))
        grid.append(row)
    return grid


@pydron.schedule
def enumerate_loop(xs):
    out = []
    for i, x in enumerate(xs):
        out.append((i, slow(x)))
    return out


@pydron.schedule
def generator_sum(xs):
    return sum(slow(x) for x in xs)


@pydron.schedule
def set_comprehension(xs):
    return {slow(x) for x in xs}


@pydron.schedule
def dict_comprehension(xs):
    return {x: slow(x) for x in xs}


@pydron.schedule
def filter_loop(xs):
    keep = []
    for x in xs:
        r = slow(x)
        if is_even(r):
            keep.append(r)
    return keep


@pydron.schedule
def combine_functional_loop(pairs):
    out = []
    for a, b in pairs:
        out.append(add(slow(a), slow(b)))
    return out


@pydron.schedule
def combine_plain_loop(pairs):
    out = []
    for a, b in pairs:
        out.append(plain_add(slow(a), slow(b)))
    return out


@pydron.schedule
def combine_functional(a, b):
    return add(slow(a), slow(b))


@pydron.schedule
def combine_plain(a, b):
    return plain_add(slow(a), slow(b))


@pydron.schedule
def tuple_pair():
    a, b = slow(1), slow(2)
    return a, b


@pytest.mark.parametrize("fn", [
    concat_loop, append_loop, list_comprehension, augmented_total, dict_store,
    enumerate_loop, generator_sum, set_comprehension, dict_comprehension, filter_loop,
], ids=lambda fn: fn.__name__)
def test_idiom_over_8_inputs_runs_in_parallel(fn, monkeypatch):
    check(fn, XS, monkeypatch=monkeypatch)


def test_expected_values_are_what_the_idioms_compute(monkeypatch):
    # The results compared above come from the plain functions: pin a few of them down,
    # so a plain function that computed nothing could not make the comparison vacuous.
    assert plain_result(append_loop, XS, monkeypatch=monkeypatch) == [x * x + 1 for x in XS]
    assert plain_result(augmented_total, XS, monkeypatch=monkeypatch) == 148
    assert plain_result(filter_loop, XS, monkeypatch=monkeypatch) == [2, 10, 26, 50]
    assert plain_result(dict_store, XS, monkeypatch=monkeypatch) == {x: x * x + 1 for x in XS}


def test_nested_loop_over_a_2x4_grid(monkeypatch):
    result = check(nested_grid, [0, 1], [0, 1, 2, 3], monkeypatch=monkeypatch)
    assert result == [[1, 2, 5, 10], [101, 122, 145, 170]]


@pytest.mark.parametrize("fn", [combine_functional_loop, combine_plain_loop],
                         ids=["functional-combine", "plain-combine"])
def test_combine_of_two_calls_in_a_loop(fn, monkeypatch):
    pairs = [(0, 1), (2, 3), (4, 5), (6, 7)]          # 8 slow calls
    check(fn, pairs, monkeypatch=monkeypatch)


@pytest.mark.parametrize("fn", [combine_functional, combine_plain],
                         ids=["functional-combine", "plain-combine"])
def test_combine_of_two_calls(fn, monkeypatch):
    result = check(fn, 3, 4, monkeypatch=monkeypatch, bound=0.5)
    assert result in (27, (10, 17, 27))


def test_tuple_of_two_calls(monkeypatch):
    assert check(tuple_pair, monkeypatch=monkeypatch, bound=0.5) == (2, 5)


# --------------------------------------------------------------------------- printing


@pydron.schedule
def progress_after_call(xs):
    out = []
    for x in xs:
        r = slow(x)
        out.append(r)
        print("done", x, r)
    print("all done", len(out))
    return out


@pydron.schedule
def progress_before_call(xs):
    out = []
    for i, x in enumerate(xs):
        print(f"starting {i + 1}/{len(xs)}")
        out.append(slow(x))
    return out


@pytest.mark.parametrize("fn", [progress_after_call, progress_before_call],
                         ids=lambda fn: fn.__name__)
def test_progress_print_per_iteration(fn, capsys, monkeypatch):
    expected = plain_result(fn, XS, monkeypatch=monkeypatch)
    expected_out = capsys.readouterr().out
    assert expected_out.count("\n") >= N       # the plain run printed every line
    result, elapsed = timed(fn, XS)
    out = capsys.readouterr().out
    assert result == expected
    assert out == expected_out                 # same lines, in exactly the sequential order
    assert elapsed < BOUND, f"{fn.__name__} took {elapsed:.2f} s: the print serialized it"


# --------------------------------------------------------------------------- overlap


def max_overlap(spans):
    """The largest number of spans that share one instant."""
    return max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)


def test_calls_overlap_in_time():
    _spans.clear()
    _recording.set()
    try:
        result = append_loop(XS)
    finally:
        _recording.clear()
    assert result == [x * x + 1 for x in XS]
    spans = list(_spans)
    assert len(spans) == N
    assert max_overlap(spans) >= 6, spans


def test_max_overlap_helper_counts_correctly():
    assert max_overlap([(0, 1), (1, 2), (2, 3)]) == 1          # back to back: no overlap
    assert max_overlap([(0, 3), (1, 2), (1.5, 4)]) == 3
    assert max_overlap([(0, 1), (0.5, 1.5), (5, 6)]) == 2


# --------------------------------------------------------------------------- long loop


@pydron.functional
def short(x):
    time.sleep(0.02)
    return x + 1


@pydron.schedule
def long_loop(n):
    out = []
    for i in range(n):
        out.append(short(i))
    return out


def test_long_loop_keeps_the_pool_busy():
    # 200 calls of 0.02 s: 4 s one after another, 0.5 s on 8 threads. The unrolling window
    # is bounded, so this only passes if the window is refilled as iterations finish.
    result, elapsed = timed(long_loop, 200)
    assert result == list(range(1, 201))
    assert elapsed < 2.0, f"200 short calls took {elapsed:.2f} s"
