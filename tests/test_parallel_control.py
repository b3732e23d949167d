"""Control flow must not serialize independent calls (issue 13).

The idioms of tests/test_parallel.py, inside ``try``/``except``, ``with``, ``while`` and
loops that leave early: every ``@pydron.schedule`` function below makes 8 independent calls
to a ``@functional`` function that sleeps 0.3 s. On a pool of 8 threads they must overlap:
the whole call has to finish in under 0.6 s (one round of calls plus slack; in sequence it
takes 2.4 s), and give the plain function's result. The plain result comes from the
undecorated function (``__wrapped__``) with the sleep patched out.

A call may fail here (``BadFrame``, for a negative item): a parallel run starts the calls
after it before it has failed, and must still show exactly what the plain run shows. The
``*_output_*`` tests check that (result and printed output, with calls that finish in the
reverse of their order, so a failure arrives before the results in front of it), without a
bound on time.

The bounds are generous on purpose (shared, noisy 2-core machines): what is checked is
"overlapped" against "serialized", not speed. Threads that sleep need no core. The loop
without control flow shows that the bound holds where calls do overlap.

Before issue 13's compiler work, the five ``*_runs_in_parallel`` tests fail on the time
only (about 2.4 s: a try or with body is one step, and a loop that may break or whose
test reads its body starts an iteration only once the previous one has decided); their
results, and everything else here, agree with the plain runs.
"""
from __future__ import annotations

import sys
import time

import pytest

import pydron
import pydron.backend as backend

WORKERS = 8
DELAY = 0.3            # seconds each slow call sleeps; patched to 0 for the plain runs
STEP = 0.03            # uneven(x) sleeps STEP * (10 - position): later calls finish first
N = 8                  # independent calls per idiom
BOUND = 0.6            # < 2 * DELAY: one round of calls plus slack, never 8 in sequence
XS = list(range(N))


class BadFrame(Exception):
    """What a call raises for a bad item (a negative one)."""


@pydron.functional
def slow(x):
    """The heavy work: sleeps DELAY, then returns a value of ``x``; a negative ``x`` is a
    bad frame, found after the work (so it fails as late as the others finish)."""
    if DELAY:
        time.sleep(DELAY)
    if x < 0:
        raise BadFrame(f"bad frame {x}")
    return x * x + 1


@pydron.functional
def uneven(i, x):
    """Like ``slow`` but the ``i``-th call sleeps less than the ones before it: in a
    parallel run the later results (and failures) come back first."""
    if STEP:
        time.sleep(STEP * (10 - i))
    if x < 0:
        raise BadFrame(f"bad frame {x} at {i}")
    return x * 10 + i


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
    """What the undecorated function returns (or the exception it raises), without the
    sleeps."""
    with monkeypatch.context() as m:
        m.setattr(sys.modules[__name__], "DELAY", 0)
        m.setattr(sys.modules[__name__], "STEP", 0)
        return fn.__wrapped__(*args)


def timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def check_time(fn, elapsed, bound=BOUND):
    """The timing verdict, with the figures: serialized calls take N * DELAY."""
    assert elapsed < bound, (
        f"{fn.__name__} took {elapsed:.2f} s, bound {bound:.2f} s (its {N} calls of "
        f"{DELAY} s take {N * DELAY:.1f} s one after another): they were serialized")


def check(fn, *args, monkeypatch, bound=BOUND):
    """The plain result first (so a wrong answer is reported as such), then the time."""
    expected = plain_result(fn, *args, monkeypatch=monkeypatch)
    result, elapsed = timed(fn, *args)
    assert result == expected
    check_time(fn, elapsed, bound)
    return result


# --------------------------------------------------------------------------- the idioms


@pydron.schedule
def skip_bad_frames(xs):
    """(a) try/except inside the loop: the bad item is counted, the others kept."""
    out = []
    skipped = 0
    for x in xs:
        try:
            out.append(slow(x))
        except BadFrame:
            skipped += 1
    return out, skipped


@pydron.schedule
def write_while_computing(xs, path):
    """(b) a with block around the loop, a write after it inside the block."""
    out = []
    with open(path, "w") as fh:
        for x in xs:
            out.append(slow(x))
        fh.write(f"{len(out)} results, total {sum(out)}\n")
    return out


@pydron.schedule
def counted_while(n):
    """(c) a counted while loop: the test reads only the counter."""
    out = []
    i = 0
    while i < n:
        out.append(slow(i))
        i += 1
    return out


@pydron.schedule
def search(xs, target):
    """(d) a search that returns at the first hit (here the last item)."""
    for x in xs:
        r = slow(x)
        if r == target:
            return x
    return None


@pydron.schedule
def stop_at_bad_frame(xs):
    """(e) try around the whole loop: the failing call ends it, the handler keeps what was
    computed before."""
    out = []
    try:
        for x in xs:
            out.append(slow(x))
    except BadFrame as e:
        return out, e.args
    return out, None


@pydron.schedule
def append_loop(xs):
    """The baseline: the same loop without control flow around its calls (parallel before
    issue 13), so a slow machine shows apart from serialized calls."""
    out = []
    for x in xs:
        out.append(slow(x))
    return out


BAD_MIDDLE = [0, 1, 2, -3, 4, 5, 6, 7]          # one bad frame among 8
BAD_LAST = [0, 1, 2, 3, 4, 5, 6, -7]            # all 8 calls are needed, the last fails


def test_expected_values_of_the_idioms(monkeypatch, tmp_path):
    # Pin the plain results down, so a plain function that computed nothing could not
    # make the comparisons below vacuous.
    squares = [x * x + 1 for x in XS]
    assert plain_result(skip_bad_frames, BAD_MIDDLE, monkeypatch=monkeypatch) == (
        [1, 2, 5, 17, 26, 37, 50], 1)
    assert plain_result(write_while_computing, XS, str(tmp_path / "p.txt"),
                        monkeypatch=monkeypatch) == squares
    assert (tmp_path / "p.txt").read_text() == "8 results, total 148\n"
    assert plain_result(counted_while, N, monkeypatch=monkeypatch) == squares
    assert plain_result(search, XS, 50, monkeypatch=monkeypatch) == 7
    assert plain_result(stop_at_bad_frame, BAD_LAST, monkeypatch=monkeypatch) == (
        squares[:7], ("bad frame -7",))


def test_the_bound_holds_for_a_loop_without_control_flow(monkeypatch):
    check(append_loop, XS, monkeypatch=monkeypatch)


def test_try_in_a_loop_skipping_a_bad_item_runs_in_parallel(monkeypatch):
    check(skip_bad_frames, BAD_MIDDLE, monkeypatch=monkeypatch)


def test_with_open_around_a_loop_runs_in_parallel(monkeypatch, tmp_path):
    plain_path, sched_path = tmp_path / "plain.txt", tmp_path / "sched.txt"
    expected = plain_result(write_while_computing, XS, str(plain_path),
                            monkeypatch=monkeypatch)
    result, elapsed = timed(write_while_computing, XS, str(sched_path))
    assert result == expected
    assert sched_path.read_text() == plain_path.read_text()
    check_time(write_while_computing, elapsed)


def test_counted_while_runs_in_parallel(monkeypatch):
    check(counted_while, N, monkeypatch=monkeypatch)


def test_search_hitting_the_last_item_runs_in_parallel(monkeypatch):
    assert check(search, XS, 50, monkeypatch=monkeypatch) == 7       # slow(7) == 50


def test_try_around_a_loop_with_a_failing_call_runs_in_parallel(monkeypatch):
    check(stop_at_bad_frame, BAD_LAST, monkeypatch=monkeypatch)


# --------------------------------------------------------------------------- failures in flight


class Recorder:
    """A context manager that prints what its __exit__ gets and swallows BadFrame."""

    def __init__(self, tag):
        self.tag = tag

    def __enter__(self):
        print("enter", self.tag)
        return self

    def __exit__(self, kind, value, tb):
        print("exit", self.tag, None if kind is None else kind.__name__, value,
              tb is not None)
        return kind is BadFrame


@pydron.schedule
def try_output(xs):
    out = []
    try:
        for i, x in enumerate(xs):
            r = uneven(i, x)
            print("got", i, r)
            out.append(r)
    except BadFrame as e:
        print("stopped:", e)
        out.append(("stopped", e.args, type(e.__context__).__name__))
    else:
        print("no failure")
    finally:
        print("finally", len(out))
    return out


@pydron.schedule
def with_output(xs):
    out = []
    with Recorder("frames") as rec:
        for i, x in enumerate(xs):
            out.append(uneven(i, x))
            print("got", i, out[-1])
    print("after with", rec.tag, len(out))
    return out


@pydron.schedule
def while_output(xs):
    out = []
    i = 0
    while i < len(xs):
        out.append(uneven(i, xs[i]))
        print("got", i, out[-1])
        i += 1
    return out, i


@pydron.schedule
def search_output(xs, target):
    seen = []
    for i, x in enumerate(xs):
        r = uneven(i, x)
        print("look", i, r)
        if r == target:
            return ("found", i, seen)
        seen.append(r)
    return ("none", seen)


def outcome(fn, *args):
    """("return", value) or ("raise", type name, args): what a caller can see."""
    try:
        return ("return", fn(*args))
    except Exception as e:      # noqa: BLE001 - the exception is the outcome
        return ("raise", type(e).__name__, e.args)


def same_as_plain(fn, *args, capsys, monkeypatch):
    """The scheduled run's outcome and printed output are the plain run's."""
    with monkeypatch.context() as m:
        m.setattr(sys.modules[__name__], "DELAY", 0)
        m.setattr(sys.modules[__name__], "STEP", 0)
        expected = outcome(fn.__wrapped__, *args)
    expected_out = capsys.readouterr().out
    got = outcome(fn, *args)
    out = capsys.readouterr().out
    assert got == expected
    assert out == expected_out          # the lines up to the failure, in program order
    return expected, expected_out


def test_try_output_when_a_call_in_flight_raises(capsys, monkeypatch):
    result, out = same_as_plain(try_output, [0, 1, 2, -3, 4, 5, 6, 7], capsys=capsys,
                                monkeypatch=monkeypatch)
    assert result == ("return", [0, 11, 22, ("stopped", ("bad frame -3 at 3",), "NoneType")])
    assert "got 3" not in out and out.endswith("stopped: bad frame -3 at 3\nfinally 4\n")


def test_try_output_when_no_call_raises(capsys, monkeypatch):
    result, out = same_as_plain(try_output, XS, capsys=capsys, monkeypatch=monkeypatch)
    assert out.endswith("no failure\nfinally 8\n")


def test_with_output_when_a_call_in_flight_raises(capsys, monkeypatch):
    result, out = same_as_plain(with_output, [0, 1, -2, 3, 4, 5, -6, 7], capsys=capsys,
                                monkeypatch=monkeypatch)
    assert result == ("return", [0, 11])
    assert "exit frames BadFrame bad frame -2 at 2 True\nafter with frames 2\n" in out


def test_while_output_when_a_call_in_flight_raises(capsys, monkeypatch):
    result, out = same_as_plain(while_output, [0, 1, 2, 3, 4, -5, 6, -7], capsys=capsys,
                                monkeypatch=monkeypatch)
    assert result == ("raise", "BadFrame", ("bad frame -5 at 5",))
    assert out.endswith("got 4 44\n")


def test_search_output_when_a_later_call_would_raise(capsys, monkeypatch):
    # The hit is at item 3; items 4 and 6 would fail, but are never reached plainly.
    result, out = same_as_plain(search_output, [0, 1, 2, 3, -4, 5, -6, 7], 33,
                                capsys=capsys, monkeypatch=monkeypatch)
    assert result == ("return", ("found", 3, [0, 11, 22]))
    assert out.endswith("look 3 33\n")


def test_search_output_when_a_call_before_the_hit_raises(capsys, monkeypatch):
    result, out = same_as_plain(search_output, [0, 1, -2, 3, 4, 5, 6, 7], 53,
                                capsys=capsys, monkeypatch=monkeypatch)
    assert result == ("raise", "BadFrame", ("bad frame -2 at 2",))
    assert out == "look 0 0\nlook 1 11\n"
