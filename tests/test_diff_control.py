"""Differential cases: raise/from, re-raise, nested functions and classes, generators
defined in the body, match, try/except/else/finally, with, super(), static and class
methods under schedule, recursion.

PYTEST_DONT_REWRITE: the case functions use ``assert`` and must keep Python's own messages.
"""
from dataclasses import dataclass

import sys

import pytest

from diffcheck import A, Cases, assert_same, assert_same_factory, run_case, schedule
from funcs import (NotFound, add, concat, fail_if, inc, is_even, lookup, neg, slow_fail,
                   slow_square, square, total, upper)

pytestmark = pytest.mark.usefixtures("threads_pool")

CASES = Cases()
POOL_CASES = Cases()
FACTORY_CASES = []


# ---------------------------------------------------------------------- raise, raise from, re-raise

class AppError(Exception):
    pass


def raise_plain(x):
    v = square(x)
    if v > 10:
        raise AppError(f"too big: {v}")
    return v


CASES.add(raise_plain, (2,), (4,))


def raise_from(x):
    try:
        return fail_if(x, 3)
    except ValueError as e:
        raise AppError(f"wrapped {x}") from e


CASES.add(raise_from, (1,), (3,))


def raise_from_none(d, k):
    try:
        return d[k]
    except KeyError:
        raise LookupError(concat("missing ", k)) from None


CASES.add(raise_from_none, ({"a": 1}, "a"), ({"a": 1}, "b"))


def raise_from_other(x):
    cause = RuntimeError(concat("cause ", square(x)))
    raise TypeError("effect") from cause


CASES.add(raise_from_other, (3,))


def reraise_bare(x):
    try:
        fail_if(x, 2)
    except ValueError:
        print("handling", x)
        raise
    return "fine"


CASES.add(reraise_bare, (1,), (2,))


def reraise_stored(xs):
    saved = None
    for x in xs:
        try:
            fail_if(x, 2)
        except ValueError as e:
            saved = e
    if saved is not None:
        raise saved
    return len(xs)


CASES.add(reraise_stored, ([1, 2, 3],), ([1, 3],))


def raise_class_not_instance(x):
    if is_even(x):
        raise KeyError
    return x


CASES.add(raise_class_not_instance, (1,), (2,))


def raise_non_exception(x):
    raise square(x)


CASES.add(raise_non_exception, (2,))


def exception_variable_cleared(x):
    try:
        fail_if(x, x)
    except ValueError as err:
        msg = str(err)
    return msg, err


CASES.add(exception_variable_cleared, (5,))


def custom_exception_attrs(table, key):
    try:
        return lookup(table, key)
    except NotFound as e:
        return "not found", str(e), e.args


CASES.add(custom_exception_attrs, ({"a": 1}, "a"), ({"a": 1}, "zz"))


def uncaught_custom_exception(table, key):
    v = lookup(table, key)
    return square(v)


CASES.add(uncaught_custom_exception, ({"a": 2}, "a"), ({"a": 2}, "b"))


# --------------------------------------------------------------------- nested functions and classes

def nested_function(xs):
    def helper(v):
        return add(square(v), 1)

    return [helper(x) for x in xs]


CASES.add(nested_function, ([1, 2, 3],), ([],))


def nested_function_defaults(x):
    k = square(x)

    def f(a, b=k, *, c=inc(k)):
        return a + b + c

    k = 0
    return f(1), f(1, 2), f(1, c=0)


CASES.add(nested_function_defaults, (3,))


def nested_recursive_helper(n):
    def fib(k):
        return k if k < 2 else fib(k - 1) + fib(k - 2)

    return [fib(square(i)) for i in range(n)]


CASES.add(nested_recursive_helper, (4,))


def nested_class(x):
    class Point:
        def __init__(self, a, b):
            self.a, self.b = a, b

        def norm2(self):
            return add(square(self.a), square(self.b))

        def __repr__(self):
            return f"Point({self.a}, {self.b})"

    p = Point(x, inc(x))
    return p.norm2(), repr(p), type(p).__name__, p


CASES.add(nested_class, (2,), (-3,))


def nested_class_attribute_scope(x):
    k = square(x)

    class C:
        k = 1
        doubled = k * 2
        items = [k for _ in range(2)]

    return C.k, C.doubled, C.items


CASES.add(nested_class_attribute_scope, (3,))


def nested_dataclass(xs):
    @dataclass
    class Item:
        name: str
        weight: int = 0

    items = [Item(str(x), square(x)) for x in xs]
    items.sort(key=lambda it: -it.weight)
    return [repr(it) for it in items], Item("z") == Item("z", 0)


CASES.add(nested_dataclass, ([1, 3, 2],))


def decorator_in_body(xs):
    def logged(fn):
        def wrapper(*a):
            print("call", fn.__name__, a)
            return fn(*a)
        return wrapper

    @logged
    def work(v):
        return inc(v)

    return [work(square(x)) for x in xs]


CASES.add(decorator_in_body, ([1, 2],))


# ------------------------------------------------------------------- generators defined in the body

def generator_in_body(n):
    def gen(k):
        for i in range(k):
            yield square(i)

    return list(gen(n)), sum(gen(n))


CASES.add(generator_in_body, (4,), (0,))


def generator_with_prints(n):
    def gen():
        for i in range(n):
            print("yield", i)
            yield i
        print("gen done")

    out = []
    for v in gen():
        print("got", v)
        out.append(square(v))
    return out


CASES.add(generator_with_prints, (3,), (0,))


def generator_send_and_return(xs):
    def acc():
        total_ = 0
        while True:
            v = yield total_
            if v is None:
                return total_
            total_ += v

    g = acc()
    next(g)
    for x in xs:
        g.send(square(x))
    try:
        g.send(None)
    except StopIteration as stop:
        return "stopped", stop.value


CASES.add(generator_send_and_return, ([1, 2, 3],))


def generator_yield_from(n):
    def inner():
        yield from range(n)
        return "inner-done"

    def outer():
        r = yield from inner()
        yield r

    return [inc(v) if isinstance(v, int) else v for v in outer()]


CASES.add(generator_yield_from, (3,))


def generator_raises(n):
    def gen():
        for i in range(n):
            yield fail_if(i, 2)

    out = []
    for v in gen():
        out.append(v)
        print("got", v)
    return out


CASES.add(generator_raises, (2,), (5,))


def generator_expression_lazy(xs):
    g = (square(x) for x in xs)
    first = next(g, None)
    rest = list(g)
    return first, rest, list(g)


CASES.add(generator_expression_lazy, ([1, 2, 3],), ([],))


# -------------------------------------------------------------------------------------------- match

def match_literals(x):
    match square(x):
        case 0:
            return "zero"
        case 1 | 4:
            return "small"
        case 9:
            return "nine"
        case _:
            return "other"


CASES.add(match_literals, (0,), (-2,), (3,), (5,))


def match_captures_and_guards(x):
    match inc(x):
        case n if n < 0:
            kind = "negative"
        case n if is_even(n):
            kind = "even"
        case n:
            kind = "odd"
    return kind, n


CASES.add(match_captures_and_guards, (-5,), (1,), (2,))


def match_sequences(xs):
    match [square(x) for x in xs]:
        case []:
            return "empty"
        case [a]:
            return ("one", a)
        case [a, b]:
            return ("two", add(a, b))
        case [first, *rest] if len(rest) > 3:
            return ("long", first, rest)
        case [first, *_, last]:
            return ("many", first, last)


CASES.add(match_sequences, ([],), ([3],), ([1, 2],), ([1, 2, 3],), ([1, 2, 3, 4, 5],))


def match_mappings(d):
    match d:
        case {"type": "point", "x": x, "y": y}:
            return ("point", add(square(x), square(y)))
        case {"type": "name", "value": str(v), **rest}:
            return ("name", upper(v), rest)
        case {"type": t}:
            return ("unknown", t)
        case _:
            return "no type"


CASES.add(match_mappings, ({"type": "point", "x": 3, "y": 4},),
          ({"type": "name", "value": "ab", "extra": 1},), ({"type": "name", "value": 3},),
          ({"kind": 1},))


@dataclass
class Circle:
    r: int


@dataclass
class Rect:
    w: int
    h: int


def match_class_patterns(shapes):
    areas = []
    for s in shapes:
        match s:
            case Circle(r=0):
                areas.append("degenerate")
            case Circle(r=r):
                areas.append(3 * square(r))
            case Rect(w, h) if w == h:
                areas.append(("square", square(w)))
            case Rect(w=w, h=h):
                areas.append(w * h)
            case int() | float() as num:
                areas.append(("number", num))
            case _:
                areas.append(None)
    return areas


CASES.add(match_class_patterns, ([Circle(2), Rect(2, 3), Rect(4, 4), Circle(0), 7, "x"],))


def match_or_and_as(cmd):
    match cmd.split():
        case ["go", ("north" | "south") as direction]:
            return concat("going ", direction)
        case ["go", other]:
            return concat("cannot go ", other)
        case ["say", *words] if words:
            return upper(" ".join(words))
        case ["quit" | "exit"]:
            return "bye"
    return "unknown"


CASES.add(match_or_and_as, ("go north",), ("go west",), ("say hi there",), ("say",),
          ("exit",), ("dance",))


def match_value_patterns(x):
    import enum

    class Color(enum.Enum):
        RED = 1
        GREEN = 2

    c = Color(1 if is_even(x) else 2)
    match c:
        case Color.RED:
            return "red"
        case Color.GREEN:
            return "green"


CASES.add(match_value_patterns, (2,), (3,))


def match_no_case_taken(x):
    result = "unset"
    match x:
        case 1:
            result = square(x)
    return result


CASES.add(match_no_case_taken, (1,), (2,))


def match_guard_raises(x):
    match x:
        case n if fail_if(n, 3):
            return "truthy"
        case _:
            return "fallback"


CASES.add(match_guard_raises, (1,), (0,), (3,))


# -------------------------------------------------------------------- try / except / else / finally

def try_catch_functional(xs):
    out = []
    for x in xs:
        try:
            out.append(fail_if(x, 2))
        except ValueError as e:
            out.append(str(e))
    return out


CASES.add(try_catch_functional, ([1, 2, 3],), ([],))


def try_else_finally(x):
    log = []
    try:
        v = fail_if(square(x), 4)
    except ValueError:
        log.append("except")
        v = -1
    else:
        log.append("else")
        v = inc(v)
    finally:
        log.append("finally")
    return v, log


CASES.add(try_else_finally, (1,), (2,), (-2,))


def return_in_finally(x):
    try:
        return fail_if(x, 0)
    finally:
        return "finally wins"  # noqa: B012


CASES.add(return_in_finally, (0,), (1,))


def finally_runs_on_return(x):
    try:
        print("body")
        return square(x)
    finally:
        print("cleanup")


CASES.add(finally_runs_on_return, (3,))


def finally_runs_on_error(x):
    try:
        print("body")
        return fail_if(x, 1)
    finally:
        print("cleanup")


CASES.add(finally_runs_on_error, (1,), (2,))


def bare_except(x):
    try:
        v = 10 // (square(x) - 4)
    except:  # noqa: E722
        v = "caught"
    return v


CASES.add(bare_except, (2,), (1,))


def except_tuple_and_order(d, k):
    try:
        v = d[k]
        return square(v)
    except (KeyError, IndexError) as e:
        return ("lookup", type(e).__name__)
    except TypeError:
        return "type"
    except Exception as e:
        return ("other", str(e))


CASES.add(except_tuple_and_order, ({"a": 2}, "a"), ({"a": 2}, "b"), ({"a": "s"}, "a"),
          ([1], 5))


def except_not_matching(x):
    try:
        fail_if(x, 0)
    except KeyError:
        return "key"
    return "no error"


CASES.add(except_not_matching, (0,), (1,))


def nested_try(x):
    try:
        try:
            fail_if(x, 1)
            raise KeyError(square(x))
        except ValueError as e:
            raise RuntimeError(f"inner {e}")
        finally:
            print("inner finally")
    except RuntimeError as e:
        return ("outer caught", str(e), type(e.__context__).__name__)
    except KeyError as e:
        return ("key", e.args)


CASES.add(nested_try, (1,), (3,))


def exception_in_handler(x):
    try:
        fail_if(x, x)
    except ValueError:
        return neg(None)


CASES.add(exception_in_handler, (1,))


def exception_context_chain(x):
    try:
        try:
            fail_if(x, x)
        except ValueError:
            {}["missing"]
    except KeyError as e:
        return type(e.__context__).__name__, str(e.__context__), e.__suppress_context__


CASES.add(exception_context_chain, (4,))


def finally_overrides_exception(x):
    try:
        fail_if(x, x)
    finally:
        if is_even(x):
            raise KeyError("from finally")


CASES.add(finally_overrides_exception, (1,), (2,))


def try_in_loop_with_continue(xs):
    out = []
    for x in xs:
        try:
            if x < 0:
                continue
            out.append(fail_if(square(x), 4))
        except ValueError:
            out.append("bad")
            continue
        finally:
            out.append("f")
    return out


CASES.add(try_in_loop_with_continue, ([1, -1, 2, 3],))


if sys.version_info >= (3, 11):      # except* is a SyntaxError before 3.11
    from diff_cases_311 import exception_group_star
    CASES.add(exception_group_star, ([1, 2, 3, 4],), ([2],))


def try_with_calls_in_flight(xs, bad):
    out = []
    try:
        for x in xs:
            out.append(slow_square(x, 0.02))
            out.append(fail_if(x, bad))
    except ValueError as e:
        out.append(("caught", str(e)))
    else:
        out.append("no error")
    return out


CASES.add(try_with_calls_in_flight, ([1, 2, 3, 4], 3), ([1, 2], 0))


def try_earliest_failure_caught(x):
    try:
        a = slow_fail(x, 0.1)
        b = fail_if(x, x)
        return a, b
    except ValueError as e:
        return "caught", str(e)


CASES.add(try_earliest_failure_caught, (6,))


# --------------------------------------------------------------------------------------------- with

class Managed:
    def __init__(self, name, suppress=False):
        self.name = name
        self.suppress = suppress

    def __enter__(self):
        print("enter", self.name)
        return self.name.upper()

    def __exit__(self, et, ev, tb):
        print("exit", self.name, et.__name__ if et else None, ev)
        return self.suppress


def with_basic(x):
    with Managed("a") as tag:
        v = square(x)
        print("inside", tag, v)
    return v


CASES.add(with_basic, (3,))


def with_calls_in_flight(xs):
    with Managed("pool"):
        results = [slow_square(x, 0.01 * (len(xs) - i)) for i, x in enumerate(xs)]
        print("collected", results)
    return results


CASES.add(with_calls_in_flight, ([1, 2, 3, 4],))


def with_suppress(x):
    v = "before"
    with Managed("quiet", suppress=True):
        v = fail_if(x, 2)
        print("not reached when failing")
    return v


CASES.add(with_suppress, (2,), (5,))


def with_propagates(x):
    with Managed("loud"):
        fail_if(square(x), 4)
    return "done"


CASES.add(with_propagates, (2,), (3,))


def with_multiple_and_return(xs):
    with Managed("outer") as o, Managed("inner") as i:
        for x in xs:
            if x < 0:
                return o, i, "early", x
            print(inc(x))
    return "late"


CASES.add(with_multiple_and_return, ([1, -2, 3],), ([1, 2],))


def with_in_loop_break(xs):
    out = []
    for x in xs:
        with Managed(str(x)):
            if x == 2:
                break
            out.append(square(x))
    return out


CASES.add(with_in_loop_break, ([1, 2, 3],))


def with_contextlib(xs):
    import contextlib

    @contextlib.contextmanager
    def section(name):
        print("start", name)
        try:
            yield len(name)
        finally:
            print("end", name)

    out = []
    with section("work") as n:
        for x in xs:
            out.append(add(square(x), n))
    with contextlib.suppress(ZeroDivisionError):
        out.append(1 // (len(xs) - 2))
    return out


CASES.add(with_contextlib, ([1, 2],), ([1, 2, 3],))


def with_enter_raises(x):
    class Bad:
        def __enter__(self):
            raise RuntimeError(concat("no entry ", x))

        def __exit__(self, *a):
            print("never")

    with Bad():
        print("body")


CASES.add(with_enter_raises, (1,))


# -------------------------------------------------------------------- methods: super, static, class

class Base:
    factor = 2

    def __init__(self, k):
        self.k = k
        self.history = []

    def value(self, x):
        return add(x, self.k)


class Derived(Base):
    def value(self, x):
        base = super().value(square(x))
        self.history.append(base)
        return base * self.factor

    def run(self, xs):
        out = []
        for x in xs:
            out.append(self.value(x))
        return out, super().value(0), self.history


CASES.add(Derived(3).run, ([1, 2, 3],), ([],))
CASES.add(Derived(1).value, (4,))


class Account:
    def __init__(self, balance):
        self.balance = balance
        self.log = []

    def deposit_all(self, amounts):
        for a in amounts:
            if a <= 0:
                raise ValueError(f"bad amount {a}")
            self.balance += square(a)
            self.log.append(a)
        return self.balance


CASES.add(Account(10).deposit_all, ([1, 2],), ([1, -1, 2],))


def make_static_and_class_methods(deco):
    class Geometry:
        unit = 10

        @staticmethod
        @deco
        def area(w, h):
            return add(square(w), square(h))

        @classmethod
        @deco
        def scaled(cls, xs):
            return [cls.unit * inc(x) for x in xs]

        @deco
        def method(self, x):
            return self.area(x, 1), self.scaled([x]), type(self).__name__

    g = Geometry()

    def run(x):
        return Geometry.area(x, 2), g.area(1, x), Geometry.scaled([x, x]), g.method(x)

    return run


FACTORY_CASES.append((make_static_and_class_methods, A(3)))


def make_super_in_scheduled_method(deco):
    class Shape:
        def describe(self, x):
            return concat("shape ", x)

    class Square(Shape):
        @deco
        def describe(self, x):
            parent = super().describe(square(x))
            return upper(parent), __class__.__name__

    def run(x):
        return Square().describe(x)

    return run


FACTORY_CASES.append((make_super_in_scheduled_method, A(4)))


def make_class_attribute_update(deco):
    class Registry:
        count = 0

        @classmethod
        @deco
        def register(cls, xs):
            for x in xs:
                cls.count += square(x)
            return cls.count

    return Registry.register, lambda: Registry.count


FACTORY_CASES.append((make_class_attribute_update, A([1, 2])))


# ---------------------------------------------------------------- recursion of a scheduled function

def make_recursive_fact(deco):
    def fact(n):
        if n <= 1:
            return 1
        return n * fact(n - 1)

    fact = deco(fact)
    return fact


FACTORY_CASES.append((make_recursive_fact, A(6)))
FACTORY_CASES.append((make_recursive_fact, A(0)))


def make_recursive_tree_sum(deco):
    def tree_sum(node):
        if isinstance(node, int):
            return square(node)
        parts = [tree_sum(child) for child in node]
        return total(parts)

    tree_sum = deco(tree_sum)
    return tree_sum


FACTORY_CASES.append((make_recursive_tree_sum, A([1, [2, 3], [[4], 5]])))


def make_recursive_with_error(deco):
    def countdown(n):
        print("at", n)
        if n == 0:
            return fail_if(n, 0)
        return countdown(n - 1)

    countdown = deco(countdown)
    return countdown


FACTORY_CASES.append((make_recursive_with_error, A(3)))


def fib_plain(n):
    return n if n < 2 else fib_scheduled(n - 1) + fib_scheduled(n - 2)


fib_scheduled = None     # the test binds the scheduled version here, as @schedule would


def test_module_level_recursion_through_scheduled_name(monkeypatch):
    # The recursive calls go through the module global bound to the scheduled function;
    # the outer call is plain in one run and scheduled in the other.
    monkeypatch.setitem(globals(), "fib_scheduled", schedule(fib_plain))
    out = assert_same(fib_plain, 7)
    assert out.value == 13


# --------------------------------------------------------------------------------------- both pools

for _fn, _args in [(raise_from, (3,)), (try_catch_functional, ([1, 2, 3],)),
                   (match_sequences, ([1, 2, 3],)), (with_suppress, (2,)),
                   (generator_with_prints, (3,)), (try_else_finally, (2,))]:
    POOL_CASES.add(_fn, _args)


@pytest.mark.parametrize("fn,inst", CASES.params())
def test_control(fn, inst):
    run_case(fn, inst)


@pytest.mark.parametrize("make,inst", [pytest.param(m, i, id=f"{m.__name__}({i!r})")
                                       for m, i in FACTORY_CASES])
def test_control_factory(make, inst):
    assert_same_factory(make, *inst.args, **inst.kwargs)


@pytest.mark.parametrize("fn,inst", POOL_CASES.params())
def test_control_pools(fn, inst, pool):
    run_case(fn, inst)
