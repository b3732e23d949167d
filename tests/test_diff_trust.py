"""Differential cases for the miscompilation classes of the trust issue (issue 7).

Each class below is a family of programs, not one reproduction: the shapes vary the
construct that triggered the bug (while tests with and without calls in the body, every
way of naming the scheduled function from inside itself, every kind of container mutated
right before a loop, every way of unbinding a name, loops longer than the window ...).
tests/test_diff_generated.py draws random members of the same classes.

PYTEST_DONT_REWRITE
"""
import io

import pytest

import diffcheck
from diffcheck import Cases, assert_same, assert_same_factory, run_case, schedule
from funcs import ident, inc, square

pytestmark = pytest.mark.usefixtures("threads_pool")

CASES = Cases()


# ------------------------------------------------ 1. while tests that hold a dispatch site

def while_len_test(q):
    n = ident(0)
    while q.__len__() > n:
        n += 1
    return n


def while_functional_test(k):
    n = 0
    while ident(n) < k:
        n += 1
    return n


def while_functional_test_with_calls(k):
    n, out = 0, []
    while square(n) < k:
        out.append(inc(n))
        n += 1
    return n, out


def while_not_empty(items):
    q = list(items)
    seen = ident(0)
    while not q.__len__() == 0:
        seen += q.pop()
    return seen


def while_test_nested_in_if(q, flag):
    n = ident(0)
    if flag:
        for _ in range(2):
            while q.__len__() > n:
                n += 1
    return n


def while_test_return(k):
    n = 0
    while ident(n) < 10:
        if n == k:
            return ("early", n)
        n += 1
    return ("late", n)


CASES.add(while_len_test, ([5, 6, 7],), ([],))
CASES.add(while_functional_test, (0,), (4,))
CASES.add(while_functional_test_with_calls, (10,), (0,))
CASES.add(while_not_empty, ([1, 2, 3],), ([],))
CASES.add(while_test_nested_in_if, ([1, 2], True), ([1, 2], False))
CASES.add(while_test_return, (3,), (20,))


# ------------------------------------------------ 4. names unbound in a run of plain code

def del_after_bind(a):
    x = a
    del x
    return ident(a)


def del_conditional(a):
    x = a + 1
    if a > 2:
        del x
    y = ident(a)
    try:
        return y, x
    except NameError as e:
        return y, str(e)


def except_as_unbinds(a):
    e = ident(a)
    try:
        1 / a
    except ZeroDivisionError as e:   # noqa: F841 - Python unbinds ``e`` at the end
        pass
    try:
        return e
    except NameError:
        return "unbound"


def del_then_rebind(a):
    x = a
    del x
    x = ident(a) * 2
    return x


def del_read_raises(a):
    x = ident(a)
    y = x
    del y
    return y  # noqa: F821 - raises UnboundLocalError, as plainly


CASES.add(del_after_bind, (3,))
CASES.add(del_conditional, (1,), (5,))
CASES.add(except_as_unbinds, (0,), (2,))
CASES.add(del_then_rebind, (4,))
CASES.add(del_read_raises, (1,))


# ------------------------------------------------ 3. containers changed before a loop

def list_item_store_before_for(xs):
    a = ident(1)
    xs[0] = 5 + a
    out = []
    for x in xs:
        out.append(ident(x))
    return out


def dict_new_key_before_for(d):
    a = ident(1)
    d["new"] = a
    return [ident(k) for k in d]


def dict_del_before_for(d):
    a = ident(1)
    del d["a"]
    d.setdefault("z", a)
    out = []
    for k in d:
        out.append(ident(k))
    return out


def set_add_before_for(s):
    a = ident(10)
    s.add(a)
    return sorted(ident(v) for v in s)


def slice_store_before_for(xs):
    a = ident(7)
    xs[1:] = [a, a]
    return [ident(x) for x in xs]


def _mutate(xs):
    xs.append(99)


def helper_mutates_before_for(xs):
    a = ident(1)
    _mutate(xs)
    return [ident(x + a) for x in xs]


def row_swap_before_comprehension(rows):
    n = ident(len(rows))
    rows[0], rows[n - 1] = rows[n - 1], rows[0]
    return [[ident(v) for v in row] for row in rows]


def method_before_for(xs):
    a = ident(0)
    xs.insert(0, a)
    xs.sort()
    return [ident(x) for x in xs]


CASES.add(list_item_store_before_for, ([0, 0],))
CASES.add(dict_new_key_before_for, ({"a": 1},))
CASES.add(dict_del_before_for, ({"a": 1, "b": 2},))
CASES.add(set_add_before_for, ({1, 2},))
CASES.add(slice_store_before_for, ([1, 2, 3],))
CASES.add(helper_mutates_before_for, ([1, 2],))
CASES.add(row_swap_before_comprehension, ([[1, 2], [3, 4], [5, 6]],))
CASES.add(method_before_for, ([3, 1, 2],))


# ------------------------------------------------ 8. walrus after a lowered comprehension

def walrus_after_comprehension(xs):
    x = 0
    return diffcheck_tuple([ident(v) for v in xs], x, (x := 5))


def walrus_after_comprehension_in_list(xs):
    x = 1
    return [ident(sum(ident(v) for v in xs)), x, (x := x + 1), x]


CASES.add(walrus_after_comprehension, ([1, 2],))
CASES.add(walrus_after_comprehension_in_list, ([1, 2],))


# ------------------------------------------------ f-string format specs that call

def width(x):
    return 3 + x % 3


def fstring_spec_calls(xs):
    out = []
    for x in xs:
        out.append(f"{ident(x):{width(x)}}|{ident(x + 1):>{width(x + 1)}}")
    return out


CASES.add(fstring_spec_calls, ([1, 2, 3],))


@pytest.mark.parametrize("fn, inst", CASES.params())
def test_case(fn, inst):
    run_case(fn, inst)


# ------------------------------------------------ 2. the scheduled function names itself

def test_module_level_recursion_through_the_scheduled_name():
    def make(deco):
        @deco
        def fact(n):
            ident(n)
            return 1 if n <= 1 else n * fact(n - 1)
        return fact
    assert_same_factory(make, 5)


def test_self_reference_in_plain_code():
    def make(deco):
        @deco
        def describe_self(n):
            r = ident(n)
            return r, describe_self.__name__, callable(describe_self)
        return describe_self
    assert_same_factory(make, 2)


def total_of(xs):
    return sum(xs)


class Summer:
    def total_of(self, xs):     # same name as the module-level function it calls
        parts = [ident(x) for x in xs]
        return total_of(parts)


def test_method_calling_the_global_of_its_own_name():
    diffcheck.assert_same(Summer().total_of, [1, 2, 3])


# ------------------------------------------------ 5/6. reads after loops with sync points

COUNTER = 0


def _reset():
    global COUNTER
    COUNTER = 0


def while_global_then_read():
    global COUNTER
    i = 0
    while i < 3:
        i += 1
        COUNTER += ident(1)
    return COUNTER


def for_longer_than_window_then_read(n):
    global COUNTER
    for i in range(n):
        COUNTER += ident(1)
    return COUNTER


def for_mutating_list_then_read(n):
    log = [0]
    for i in range(n):
        log[0] = log[0] + ident(i)
    return log[0]


def while_list_then_read(n):
    box = {"n": 0}
    i = 0
    while i < n:
        box["n"] = box["n"] + ident(1)
        i += 1
    return box["n"]


@pytest.mark.parametrize("fn, args", [
    (while_global_then_read, ()),
    (for_longer_than_window_then_read, (200,)),
    (for_longer_than_window_then_read, (17,)),
    (for_mutating_list_then_read, (150,)),
    (while_list_then_read, (120,)),
])
def test_reads_after_loops_wait_for_the_loop(fn, args):
    for _ in range(3):          # timing-dependent before the fix: try more than once
        _reset()
        plain = fn(*args)
        _reset()
        assert schedule(fn)(*args) == plain


# ------------------------------------------------ 9. effectful callables given to builtins

LOG = []


def note(v):
    LOG.append(v)
    print("note", v)
    return v


def bump(v):
    LOG.append(-v)
    return -v


def sorted_key_effect(xs):
    LOG.clear()
    a = ident(1)
    print("before")
    s = sorted(xs, key=note)
    return s, a, list(LOG)


def map_print(xs):
    a = ident(2)
    m = list(map(print, xs))
    return a, m


def min_key_effect(xs):
    LOG.clear()
    a = ident(3)
    return min(xs, key=bump), a, list(LOG)


def filter_effect(xs):
    LOG.clear()
    a = ident(4)
    kept = list(filter(note, xs))
    return kept, a


def local_callable(xs, loud):
    LOG.clear()
    f = note if loud else abs
    a = ident(5)
    return sorted(xs, key=f), a, list(LOG)


def join_generator(xs):
    a = ident(6)

    def gen():
        for x in xs:
            print("gen", x)
            yield str(x)
    return ",".join(gen()), a


@pytest.mark.parametrize("fn, args", [
    (sorted_key_effect, ([3, 1, 2],)),
    (map_print, ([1, 2],)),
    (min_key_effect, ([3, 1, 2],)),
    (filter_effect, ([0, 1, 2],)),
    (local_callable, ([3, -1], True)),
    (local_callable, ([3, -1], False)),
    (join_generator, ([1, 2],)),
])
def test_effectful_callables_given_to_builtins(fn, args):
    LOG.clear()
    assert_same(fn, *args)
    LOG.clear()


def diffcheck_tuple(*parts):
    return parts


diffcheck_tuple = __import__("pydron").functional(diffcheck_tuple)


# ------------------------------------------------ loops over generators and files

def loop_over_generator(n):
    out = []
    for x in (v * 2 for v in range(n)):
        out.append(ident(x))
    return out


def loop_over_file(text):
    out = []
    for line in io.StringIO(text):
        out.append(ident(line.strip()))
    return out


def loop_over_user_generator(n):
    def gen():
        for i in range(n):
            print("yield", i)
            yield i
    out = []
    for x in gen():
        out.append(square(x))
    return out


@pytest.mark.parametrize("fn, args", [
    (loop_over_generator, (5,)),
    (loop_over_file, ("a\nb\nc\n",)),
    (loop_over_user_generator, (4,)),
])
def test_loops_over_generators_and_files(fn, args):
    assert_same(fn, *args)


# ------------------------------------------------ the scheduler's own exceptions stay its own
# User code must never run inside one of the scheduler's ``except`` blocks (a loop's
# StopIteration, an earlier failure being recorded): it would see that exception as the
# __context__ of what it raises, and in sys.exc_info().

def context_after_loop_ends(xs):
    out = [ident(x) for x in xs]
    try:
        raise ValueError("v")
    except ValueError as e:
        return out, repr(e.__context__), __import__("sys").exc_info()[0] is ValueError


def context_after_generator_loop(n):
    out = []
    for x in (v for v in range(n)):
        out.append(ident(x))
    info = repr(__import__("sys").exc_info()[1])
    try:
        {}["missing"]
    except KeyError as e:
        return out, info, repr(e.__context__)


def context_after_while_loop(n):
    i = 0
    while ident(i) < n:
        i += 1
    try:
        1 / 0
    except ZeroDivisionError as e:
        return i, repr(e.__context__)


CTX = Cases()
CTX.add(context_after_loop_ends, ([1, 2],))
CTX.add(context_after_generator_loop, (3,))
CTX.add(context_after_while_loop, (2,))


@pytest.mark.parametrize("fn, inst", CTX.params())
def test_no_scheduler_exception_as_context(fn, inst):
    run_case(fn, inst)


# ------------------------------------------------ functional methods bound to mutable objects

class Counter:
    def __init__(self):
        self.v = 0

    @__import__("pydron").functional
    def get(self):
        return self.v

    @__import__("pydron").functional
    def scaled(self, k):
        return self.v * k


SHARED = Counter()


def bound_method_of_global_after_sync():
    SHARED.v = 0
    for i in range(20):
        SHARED.v += ident(1)
    return SHARED.get(), SHARED.scaled(2)


def bound_method_of_local_after_sync(c):
    a = ident(3)
    c.v = a
    m = c.scaled
    return c.get(), m(2)


def test_functional_methods_read_their_object_in_order():
    assert_same(bound_method_of_global_after_sync)
    assert_same(bound_method_of_local_after_sync, Counter())


# ------------------------------------------------ a global callee rebound during the run

def _shout(x):
    print("shout", x)
    return -x


FN = ident
FN2 = ident
FN3 = ident


def _retarget():
    global FN
    FN = _shout


class _Switch:
    def flip(self):
        global FN2
        FN2 = _shout


def _via_globals():
    globals()["FN3"] = _shout


def callee_rebound_by_helper(n):
    a = FN(n)
    _retarget()
    return a, FN(n), [FN(i) for i in range(2)]


def callee_rebound_by_method(n):
    a = FN2(n)
    _Switch().flip()
    return a, FN2(n)


def callee_rebound_through_globals(n):
    a = FN3(n)
    _via_globals()
    return a, FN3(n)


@pytest.mark.parametrize("fn", [callee_rebound_by_helper, callee_rebound_by_method,
                                callee_rebound_through_globals])
def test_global_callee_rebound_during_the_run(fn):
    global FN, FN2, FN3
    FN = FN2 = FN3 = ident
    plain = run_plain(fn, 3)
    FN = FN2 = FN3 = ident
    sched = run_plain(schedule(fn), 3)
    FN = FN2 = FN3 = ident
    assert plain == sched


def run_plain(fn, *args):
    import contextlib
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        result = fn(*args)
    return result, buf.getvalue()


# ------------------------------------------------ lambdas in comprehensions lowered to loops

def lambda_defaults_in_lowered_comprehension(n):
    fs = [lambda x, i=i: x + i + j for i in range(n) for j in range(ident(2))]
    gs = [lambda x, k=i * 2: x - k for i in range(ident(n))]
    return [f(1) for f in fs], [g(10) for g in gs]


def test_lambda_defaults_in_lowered_comprehension():
    assert_same(lambda_defaults_in_lowered_comprehension, 3)


# ------------------------------------------------ a method or attribute callee rebound

def _plain_get(self):
    print("plain get", self.v)
    return -self.v


class Holder:
    def __init__(self, v):
        self.v = v

    @__import__("pydron").functional
    def get(self):
        return self.v


HOLDER = Holder(1)


def class_method_rebound(n):
    h = Holder(ident(n))
    a = h.get()
    Holder.get = _plain_get
    return a, h.get(), HOLDER.get()


def instance_attribute_rebound(n):
    a = HOLDER.get()
    HOLDER.get = lambda: "replaced"
    return a, HOLDER.get(), ident(n)


@pytest.mark.parametrize("fn", [class_method_rebound, instance_attribute_rebound])
def test_method_callee_rebound_during_the_run(fn):
    global HOLDER
    original = Holder.get
    try:
        HOLDER = Holder(1)
        plain = run_plain(fn, 3)
        Holder.get = original
        HOLDER = Holder(1)
        sched = run_plain(schedule(fn), 3)
    finally:
        Holder.get = original
        HOLDER = Holder(1)
    assert plain == sched
