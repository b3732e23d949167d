"""The errors a user sees: bad decorator use, missing source, failures in program order,
tracebacks that point at the user's lines, cancellation after a failure, nested schedules,
methods, and metadata kept by the decorators.

Real threads throughout (a pool of 8, or of 2 where a test counts cancelled calls).
"""
from __future__ import annotations

import functools
import inspect
import pickle
import threading
import time
import traceback

import pytest

import pydron
import pydron.backend as backend
from pydron.backend.context import in_worker

THIS_FILE = __file__


def line_of(marker: str) -> int:
    """The line number of the only line of this file that ends with ``# <marker>``."""
    with open(THIS_FILE, encoding="utf-8") as f:
        hits = [n for n, line in enumerate(f, 1) if line.rstrip().endswith(f"# {marker}")]
    assert len(hits) == 1, (marker, hits)
    return hits[0]


def frames(exc: BaseException) -> list[tuple[str, int, str]]:
    return [(f.filename, f.lineno, f.name) for f in traceback.extract_tb(exc.__traceback__)]


def has_frame(exc: BaseException, lineno: int) -> bool:
    return any(fn == THIS_FILE and ln == lineno for fn, ln, _ in frames(exc))


@pytest.fixture(scope="module", autouse=True)
def threads8():
    """A pool of 8 threads for this module; the previous configuration is restored after."""
    previous = backend._config
    pydron.configure({"workers": [{"type": "threads", "count": 8}]})
    yield
    backend.configure(previous)


@pytest.fixture
def threads2():
    """A pool of only 2 threads for one test, so most calls of a loop wait in the queue and
    cancelling them is visible; the module's pool comes back afterwards."""
    previous = backend._config
    pydron.configure({"workers": [{"type": "threads", "count": 2}]})
    yield
    backend.configure(previous)


# --------------------------------------------------------------------------- helpers


@pydron.functional
def fast(x):
    return x * 10


@pydron.functional
def fail_after(delay, exc_type, message):
    time.sleep(delay)
    raise exc_type(message)


class Counter:
    """Counts calls that started, from any thread."""

    def __init__(self) -> None:
        self.n = 0
        self.lock = threading.Lock()

    def bump(self) -> None:
        with self.lock:
            self.n += 1


started = Counter()


@pydron.functional
def counted(x, delay):
    """Fails at once for x == 0; otherwise sleeps ``delay``. Counts every start."""
    started.bump()
    if x == 0:
        raise ValueError("first item is bad")
    time.sleep(delay)
    return x


@pydron.functional
def counted_sleep(x, delay):
    started.bump()
    time.sleep(delay)
    return x


def wait_for_quiet(counter: Counter, settle: float = 0.6) -> int:
    """The count once nothing has started for ``settle`` seconds (calls still queued in the
    pool would have started by then, 2 workers freeing up every 0.2 s)."""
    last = counter.n
    while True:
        time.sleep(settle)
        if counter.n == last:
            return last
        last = counter.n


# --------------------------------------------------------------------------- bad decorator use


def test_schedule_rejects_a_generator_function():
    def numbers_gen(n):
        for i in range(n):
            yield fast(i)

    with pytest.raises(pydron.TranslationError) as info:
        pydron.schedule(numbers_gen)
    assert "numbers_gen" in str(info.value)
    assert "generator" in str(info.value)


def test_schedule_rejects_an_async_generator_function():
    async def ticks_agen(n):
        for i in range(n):
            yield i

    with pytest.raises((pydron.TranslationError, TypeError)) as info:
        pydron.schedule(ticks_agen)
    assert "ticks_agen" in str(info.value)


def test_schedule_rejects_an_async_function():
    async def fetch_async(x):
        return fast(x)

    with pytest.raises(pydron.TranslationError) as info:
        pydron.schedule(fetch_async)
    assert "fetch_async" in str(info.value)
    assert "async" in str(info.value)


def test_schedule_rejects_a_lambda():
    lam = lambda xs: [fast(x) for x in xs]  # noqa: E731
    # Either at decoration or at the first call: a clear error, naming the lambda.
    with pytest.raises((pydron.TranslationError, TypeError)) as info:
        pydron.schedule(lam)([1, 2])
    assert "<lambda>" in str(info.value)
    assert "def" in str(info.value)


@pytest.mark.parametrize("obj, name", [
    (42, "int"),
    ("fast", "str"),
    (len, "len"),
    (functools.partial(fast, 1), "partial"),
    (int, "type"),
], ids=["int", "str", "builtin", "partial", "class"])
def test_schedule_rejects_a_non_function(obj, name):
    with pytest.raises(TypeError) as info:
        pydron.schedule(obj)
    assert name in str(info.value)


def test_source_not_available_is_a_translation_error_at_the_first_call():
    namespace = {"fast": fast}
    exec("def made_by_exec(xs):\n"
         "    return [fast(x) for x in xs]\n", namespace)
    scheduled = pydron.schedule(namespace["made_by_exec"])   # lazy: no error yet
    with pytest.raises(pydron.TranslationError) as info:
        scheduled([1, 2])
    message = str(info.value)
    assert "made_by_exec" in message
    assert "source" in message and "not available" in message
    # and again on a second call: the failure is not swallowed into a plain run
    with pytest.raises(pydron.TranslationError):
        scheduled([1, 2])


@pytest.mark.parametrize("obj, name", [(42, "int"), ("text", "str"), (None, "NoneType")])
def test_functional_rejects_a_non_callable(obj, name):
    with pytest.raises(TypeError) as info:
        pydron.functional(obj)
    assert name in str(info.value)


# --------------------------------------------------------------------------- program order


@pydron.schedule
def two_failures(specs):
    out = []
    for delay, exc_type, message in specs:
        out.append(fail_after(delay, exc_type, message))
    return out


def test_earliest_failure_in_program_order_wins():
    # The later call fails at once, the earlier one only after 0.3 s: sequentially the
    # earlier one is the one raised.
    specs = [(0.3, ValueError, "earlier"), (0.0, TypeError, "later")]
    with pytest.raises(ValueError) as info:
        two_failures(specs)
    assert type(info.value) is ValueError
    assert str(info.value) == "earlier"


def test_earliest_of_three_failures_wins():
    specs = [(0.4, KeyError, "one"), (0.2, TypeError, "two"), (0.0, RuntimeError, "three")]
    with pytest.raises(KeyError) as info:
        two_failures(specs)
    assert type(info.value) is KeyError
    assert info.value.args == ("one",)


@pydron.schedule
def success_then_failures(xs):
    out = []
    for x in xs:
        if x < 2:
            out.append(fast(x))
        else:
            out.append(fail_after(0.5 - 0.1 * x, LookupError, f"item {x}"))
    return out


def test_earliest_failure_after_successes():
    with pytest.raises(LookupError) as info:
        success_then_failures([0, 1, 2, 3, 4])
    assert type(info.value) is LookupError
    assert str(info.value) == "item 2"


@pydron.functional
def chained(x):
    raise ValueError(f"outer {x}") from KeyError(f"inner {x}")


@pydron.schedule
def chained_loop(xs):
    return [chained(x) for x in xs]


def test_raise_from_keeps_the_cause():
    with pytest.raises(ValueError) as info:
        chained_loop([1, 2, 3])
    exc = info.value
    assert str(exc) == "outer 1"
    assert type(exc.__cause__) is KeyError
    assert exc.__cause__.args == ("inner 1",)


# --------------------------------------------------------------------------- tracebacks


@pydron.schedule
def fails_in_plain_code(xs):
    out = []
    for x in xs:
        out.append(fast(x))
    table = {}
    return table[out[0]]  # LINE plain-return


@pydron.schedule
def fails_in_plain_loop_body(xs):
    total = 0
    for x in xs:
        r = fast(x)
        total += 100 // (r - 20)  # LINE plain-loop
    return total


@pydron.functional
def bad_functional(x):
    if x > 1:
        raise ArithmeticError(f"cannot handle {x}")  # LINE functional-raise
    return x


@pydron.schedule
def calls_bad_functional(xs):
    out = []
    for x in xs:
        out.append(bad_functional(x))  # LINE call-site
    return out


def test_traceback_of_plain_code_points_at_the_users_line():
    with pytest.raises(KeyError) as info:
        fails_in_plain_code([1, 2, 3])
    assert info.value.args == (10,)
    assert has_frame(info.value, line_of("LINE plain-return")), frames(info.value)


def test_traceback_of_plain_code_in_a_loop_body_points_at_the_users_line():
    with pytest.raises(ZeroDivisionError) as info:
        fails_in_plain_loop_body([1, 2, 3])
    assert has_frame(info.value, line_of("LINE plain-loop")), frames(info.value)


def test_traceback_of_a_functional_call_points_at_the_functional_line():
    with pytest.raises(ArithmeticError) as info:
        calls_bad_functional([0, 1, 2, 3])
    assert str(info.value) == "cannot handle 2"
    assert has_frame(info.value, line_of("LINE functional-raise")), frames(info.value)


def test_traceback_of_a_functional_call_includes_the_call_site():
    # Plain Python shows calls_bad_functional's line `out.append(bad_functional(x))`
    # above the functional's own frame; a user needs it to know which call failed.
    with pytest.raises(ArithmeticError) as info:
        calls_bad_functional([0, 1, 2, 3])
    assert has_frame(info.value, line_of("LINE call-site")), frames(info.value)


def test_plain_python_has_both_frames():
    # The reference for the two tests above: what the undecorated function shows.
    with pytest.raises(ArithmeticError) as info:
        calls_bad_functional.__wrapped__([0, 1, 2, 3])
    assert has_frame(info.value, line_of("LINE call-site"))
    assert has_frame(info.value, line_of("LINE functional-raise"))


# --------------------------------------------------------------------------- cancellation


@pydron.schedule
def first_fails(xs):
    out = []
    for x in xs:
        out.append(counted(x, 0.2))
    return out


def test_a_failure_cancels_calls_in_flight(threads2):
    # 20 calls on 2 workers: 1 fails at once, 19 sleep 0.2 s -- run to the end that would
    # be about 19 * 0.2 / 2 = 1.9 s, and 20 starts.
    started.n = 0
    start = time.perf_counter()
    with pytest.raises(ValueError) as info:
        first_fails(list(range(20)))
    elapsed = time.perf_counter() - start
    assert str(info.value) == "first item is bad"
    assert elapsed < 1.0, f"the failed call took {elapsed:.2f} s to return"
    total = wait_for_quiet(started)
    assert total < 20, "every call started: none of the queued calls was cancelled"
    assert total <= 6, f"{total} calls started after the first failed at once"


def test_the_counter_would_see_every_call_without_a_failure(threads2):
    # The reference for the test above: the same loop with no failure starts all 20.
    started.n = 0
    assert first_fails(list(range(1, 21))) == list(range(1, 21))
    assert started.n == 20


@pydron.functional
def fails_at(x, bad, delay):
    time.sleep(delay if x == bad else 0)
    if x == bad:
        raise ValueError(f"bad {x}")
    return x


@pydron.schedule
def prints_after_each(xs, bad):
    out = []
    for x in xs:
        r = fails_at(x, bad, 0.2)
        print("got", r)
        out.append(r)
    print("finished", len(out))
    return out


def test_no_output_after_the_failure_point(capsys):
    # The call of item 3 fails after 0.2 s; the later calls finish long before. Their
    # results must be dropped: no "got 4" ... and no "finished".
    with pytest.raises(ValueError) as plain_info:
        prints_after_each.__wrapped__(list(range(8)), 3)
    plain_out = capsys.readouterr().out
    assert plain_out == "got 0\ngot 1\ngot 2\n"
    with pytest.raises(ValueError) as info:
        prints_after_each(list(range(8)), 3)
    out = capsys.readouterr().out
    assert out == plain_out
    assert str(info.value) == str(plain_info.value) == "bad 3"


# --------------------------------------------------------------------------- nesting


@pydron.schedule
def inner_schedule(xs):
    me = threading.get_ident()
    out = []
    for x in xs:
        out.append(thread_of(x))
    same_thread = all(ident == me for _, ident in out)
    return [value for value, _ in out], in_worker(), same_thread


@pydron.functional
def thread_of(x):
    time.sleep(0.01)
    return x * 2, threading.get_ident()


@pydron.functional
def outer_call(xs):
    return inner_schedule(xs)


@pydron.schedule
def outer_schedule(groups):
    return [outer_call(g) for g in groups]


def test_schedule_inside_a_functional_call_runs_sequentially_in_the_worker():
    groups = [[1, 2, 3], [4, 5], [], [6]]
    results = outer_schedule(groups)
    assert [values for values, _, _ in results] == [[2, 4, 6], [8, 10], [], [12]]
    assert all(inside for _, inside, _ in results), "in_worker() was False inside the call"
    assert all(same for _, _, same in results), "the nested schedule used other threads"


def test_schedule_outside_a_worker_is_not_in_a_worker():
    values, inside, _ = inner_schedule([1, 2])
    assert values == [2, 4]
    assert inside is False


# --------------------------------------------------------------------------- methods


class Scaler:
    """@schedule on every kind of method."""

    factor = 3

    def __init__(self, offset):
        self.offset = offset

    @pydron.schedule
    def method(self, xs):
        """Instance method."""
        return [fast(x) + self.offset for x in xs]

    @staticmethod
    @pydron.schedule
    def static_below(xs):
        return [fast(x) + 1 for x in xs]

    @pydron.schedule
    @staticmethod
    def static_above(xs):
        return [fast(x) + 2 for x in xs]

    @classmethod
    @pydron.schedule
    def class_below(cls, xs):
        return [fast(x) * cls.factor for x in xs]

    @pydron.schedule
    @classmethod
    def class_above(cls, xs):
        return [fast(x) * cls.factor + 1 for x in xs]


class SubScaler(Scaler):
    factor = 5


def test_schedule_on_an_instance_method():
    assert Scaler(7).method([1, 2, 3]) == [17, 27, 37]
    assert Scaler(0).method([]) == []


def test_schedule_on_static_methods_both_orders():
    assert Scaler.static_below([1, 2]) == [11, 21]
    assert Scaler(0).static_below([1]) == [11]
    assert Scaler.static_above([1, 2]) == [12, 22]
    assert Scaler(0).static_above([1]) == [12]


def test_schedule_on_class_methods_both_orders():
    assert Scaler.class_below([1, 2]) == [30, 60]
    assert SubScaler.class_below([1, 2]) == [50, 100]
    assert Scaler.class_above([1, 2]) == [31, 61]
    assert SubScaler(0).class_above([1]) == [51]


def documented(xs):
    """Doubles every item, in parallel."""
    return [fast(x) for x in xs]


def test_schedule_keeps_the_functions_metadata():
    scheduled = pydron.schedule(documented)
    assert scheduled.__name__ == "documented"
    assert scheduled.__qualname__ == "documented"
    assert scheduled.__doc__ == "Doubles every item, in parallel."
    assert scheduled.__wrapped__ is documented
    assert scheduled.__module__ == documented.__module__
    assert inspect.signature(scheduled) == inspect.signature(documented)
    assert scheduled([1, 2]) == [10, 20]
    assert Scaler.method.__doc__ == "Instance method."


def test_functional_function_is_still_picklable_by_reference():
    assert pickle.loads(pickle.dumps(fast)) is fast
    assert pickle.loads(pickle.dumps(counted)) is counted
    assert pydron.functional(documented) is documented   # returned unchanged


# --------------------------------------------------------------------------- plain runs


@pydron.schedule
def no_functional_calls(a, b):
    words = []
    for i in range(a):
        words.append(str(i) * b)
    return "-".join(words), len(words)


def test_function_without_functional_calls_gives_the_right_result():
    assert no_functional_calls(4, 2) == ("00-11-22-33", 4)
    assert no_functional_calls(0, 5) == ("", 0)


# --------------------------------------------------------------------------- Ctrl-C


@pydron.schedule
def interrupted(xs):
    out = []
    for x in xs:
        out.append(counted_sleep(x, 0.2))
        if x == 1:
            raise KeyboardInterrupt("stop here")
    return out


def test_keyboard_interrupt_in_plain_code_propagates_and_cancels(threads2):
    started.n = 0
    start = time.perf_counter()
    with pytest.raises(KeyboardInterrupt) as info:
        interrupted(list(range(20)))
    elapsed = time.perf_counter() - start
    assert type(info.value) is KeyboardInterrupt
    assert info.value.args == ("stop here",)
    assert elapsed < 1.2, f"the interrupted call took {elapsed:.2f} s to return"
    total = wait_for_quiet(started)
    assert total < 20, "every call started: the calls in flight were not cancelled"
    assert total <= 8, f"{total} calls started for an interrupt after the 2nd item"
