"""Differential cases: straight-line code, operators, assignments, calls, expressions,
del/assert/import/global/nonlocal.

PYTEST_DONT_REWRITE: the case functions use ``assert`` and must keep Python's own messages.
"""
import pytest

from diffcheck import A, Cases, assert_same_factory, run_case
from funcs import (Scaler, add, concat, describe, fail_if, gcd, inc, is_even, kw, length,
                   make_list, mul, mul3, neg, pair, show, slow_square, square,
                   total, upper)

pytestmark = pytest.mark.usefixtures("threads_pool")

CASES = Cases()
POOL_CASES = Cases()


# ----------------------------------------------------------------- straight-line arithmetic

def arith(a, b):
    x = square(a)
    y = square(b)
    s = x + y
    d = x - y
    p = x * y
    q = p // b
    r = p % 7
    t = s / 4
    e = a ** 3
    return s, d, p, q, r, t, e


CASES.add(arith, (3, 4), (-2, 5), (0, 1), (2, 0))


def float_arith(a, b):
    x = slow_square(a) / 3
    y = round(x * b, 3)
    z = divmod(square(b), 7)
    return x, y, z, abs(neg(a)), -x, float(inc(b)), int(x)


CASES.add(float_arith, (1.5, 2), (4, -3))


def bitwise(a, b):
    x = inc(a)
    return x & b, x | b, x ^ b, ~x, x << 2, x >> 1, -x, +x


CASES.add(bitwise, (5, 12), (-7, 3))


def comparisons(a, b):
    x = square(a)
    y = square(b)
    return (x < y, x <= y, x == y, x != y, x > y, x >= y, a is None, b is not None,
            x in [1, 4, 9], y not in (1, 4))


CASES.add(comparisons, (1, 2), (3, 3), (2, -1))


def chained(a, b, c):
    return a < inc(b) < c, a <= b == c, 0 < square(a) <= 100 != c, a < b > c < a


CASES.add(chained, (1, 2, 4), (3, 3, 3), (0, 9, 2))


def chained_order(a, b, c):
    # The middle operand is evaluated once; the chain stops at the first false link.
    return show("left", a) < show("mid", inc(b)) < show("right", square(c))


CASES.add(chained_order, (1, 2, 3), (5, 2, 3), (0, 0, 0))


def string_ops(s, n):
    t = upper(s)
    u = t * n
    v = t + "-" + s
    return u, v, t[1:], t[::-1], s.split("a"), "x".join([t, s]), len(u), t in v, s % ()


CASES.add(string_ops, ("banana", 2), ("", 3))


def conversions(x):
    v = square(x)
    return (str(v), repr(str(v)), bool(v), list(str(v)), tuple(range(inc(x))), hex(v),
            chr(65 + v % 26))


CASES.add(conversions, (3,), (0,), (12,))


# ----------------------------------------------------------------- augmented assignment

def aug_ints(n):
    x = square(n)
    x += 1
    x -= 2
    x *= 3
    x //= 2
    x %= 1000
    x **= 2
    x <<= 1
    x >>= 2
    x |= 5
    x &= 0xFFF
    x ^= 3
    return x


CASES.add(aug_ints, (3,), (-4,), (0,))


def aug_float_div(n):
    x = square(n)
    x /= 4
    x -= inc(n)
    return x


CASES.add(aug_float_div, (3,), (0,))


def aug_list(xs):
    out = []
    for x in xs:
        out += [square(x)]
    out *= 2
    return out


CASES.add(aug_list, ([1, 2, 3],), ([],))


def aug_list_alias(xs):
    a = [0]
    b = a
    a += [inc(x) for x in xs]
    return a, b, a is b


CASES.add(aug_list_alias, ([1, 2],), ([],))


def aug_tuple_rebinds(x):
    t = (1,)
    u = t
    t += (square(x),)
    return t, u, t is u


CASES.add(aug_tuple_rebinds, (4,))


def aug_str(words):
    s = ""
    for w in words:
        s += upper(w)
        s += "-"
    return s


CASES.add(aug_str, (["ab", "cd", "e"],), ([],))


def aug_subscript_and_attr(d, xs, box):
    d["a"] += square(3)
    xs[0] += inc(xs[-1])
    xs[1:2] += [neg(1)]
    box.k += square(box.k)
    return d, xs, box.k


CASES.add(aug_subscript_and_attr, ({"a": 1}, [1, 2, 3], Scaler(2)))


def aug_param_list(xs):
    xs += [square(len(xs))]
    xs.extend([inc(v) for v in xs[:2]])


CASES.add(aug_param_list, ([5, 6],), ([],))


def aug_missing_key(d):
    d["missing"] += square(2)
    return d


CASES.add(aug_missing_key, ({"a": 1},))


# ----------------------------------------------------------------- unpacking

def star_targets(xs):
    first, *middle, last = [square(x) for x in xs]
    return first, middle, last


CASES.add(star_targets, ([1, 2, 3, 4],), ([1, 2],), ([1],))


def star_head(xs):
    *init, tail = make_list(xs)
    return init, tail


CASES.add(star_head, (4,), (1,), (0,))


def nested_unpack(a):
    (p, q), r = pair(a, inc(a)), square(a)
    [s, (t, *u)] = [neg(a), (1, 2, 3)]
    return p, q, r, s, t, u


CASES.add(nested_unpack, (3,), (-1,))


def swap(a, b):
    a, b = square(b), a
    x = y = inc(a)
    a, b = b, a
    return a, b, x, y


CASES.add(swap, (1, 2))


def unpack_too_many(n):
    a, b = make_list(n)
    return a, b


CASES.add(unpack_too_many, (2,), (3,), (1,))


def unpack_into_containers(xs):
    d = {}
    out = [0, 0]
    d["x"], out[1] = pair(square(xs[0]), inc(xs[1]))
    return d, out


CASES.add(unpack_into_containers, ([2, 5],))


def star_calls_and_displays(xs, d):
    a = add(*pair(square(xs[0]), 1))
    b = concat(*xs, *[inc(x) for x in xs])
    c = [*xs, *map(square, xs)]
    e = {**d, "z": square(2), **{"y": inc(1)}}
    f = (*xs, neg(xs[0]))
    g = {*xs, square(xs[-1])}
    h = describe(a, **d)
    return a, b, c, e, f, sorted(g), h


CASES.add(star_calls_and_displays, ([1, 2, 3], {"k": 1}), ([4], {}))


# ----------------------------------------------------------------- calls and displays

def two_calls(a, b):
    x, y = square(a), square(b)
    return x, y


CASES.add(two_calls, (2, 3), (0, -1))


def nested_calls(a, b):
    return add(square(a), square(b))


CASES.add(nested_calls, (3, 4), (-1, 0))


def deep_nested(a):
    return add(add(square(a), inc(a)), neg(add(a, mul3(a, 2, 3))))


CASES.add(deep_nested, (2,), (-5,))


def displays(a):
    lst = [square(a), inc(a), [neg(a)]]
    tup = (neg(a),)
    dct = {square(a): inc(a), "k": [a]}
    st = {is_even(a), True}
    return lst, tup, dct, st, [], (), {}, set()


CASES.add(displays, (2,), (3,))


def call_kwargs(a):
    return kw(a), kw(a, 5), kw(a, c=square(a)), kw(b=inc(a), a=a), kw(a, *[7], c=8)


CASES.add(call_kwargs, (1,), (4,))


def call_bad_kwarg(a):
    x = square(a)
    return kw(x, d=1)


CASES.add(call_bad_kwarg, (2,))


def call_bad_arity(a):
    return add(square(a))


CASES.add(call_bad_arity, (2,))


def call_non_callable(a):
    f = square(a)
    return f(1)


CASES.add(call_non_callable, (2,))


def method_calls(xs, s):
    ys = sorted(xs, reverse=True)
    n = s.count("a")
    parts = s.split(",")
    parts.sort(key=len)
    return ys, n, parts, s.replace("a", upper("b")), ",".join(map(str, xs))


CASES.add(method_calls, ([3, 1, 2], "a,bb,aaa,c"))


def functional_method(k, xs):
    s = Scaler(k)
    out = [s.apply(x) for x in xs]
    return out, s.combine(2, y=square(k)), total(out)


CASES.add(functional_method, (3, [1, 2, 3]), (0, []))


def whitelisted_builtins(xs):
    return (len(xs), max(xs), min(xs), sum(map(square, xs)), sorted(xs), abs(neg(xs[0])),
            gcd(12, square(xs[1])), mul(xs[0], 7))


CASES.add(whitelisted_builtins, ([3, 2, 5],), ([-4, 6],))


def builtin_error(xs):
    a = total(xs)
    return max(a, 1), min([])


CASES.add(builtin_error, ([1, 2],))


# ----------------------------------------------------------------- parameters

def params_defaults(a, b=2, *args, c=3, d=None, **kws):
    return a, b, args, c, d, sorted(kws.items()), add(a, b), concat(*args)


CASES.add(params_defaults, A(1), A(1, 5, 6, 7, c=8, e=9), A(a=1, d=4), A(b=1, a=0, z=3))


def posonly(a, b, /, c, *, d=4):
    return mul3(a, b, c) + d


CASES.add(posonly, A(1, 2, 3), A(1, 2, c=3, d=5), A(1, 2), A(1, 2, 3, 4), A(a=1, b=2, c=3))


def kwonly_required(*, x, y=square(3)):
    return add(x, y)


CASES.add(kwonly_required, A(x=1), A(x=1, y=2), A(), A(1))


def mutable_default_shared(x, acc=[]):   # noqa: B006 - the classic trap, on purpose
    acc = list(acc)
    acc.append(square(x))
    return acc


CASES.add(mutable_default_shared, (2,), (3,))


def varargs_only(*args, **kwargs):
    total_ = 0
    for a in args:
        total_ += square(a)
    return total_, kwargs, len(args)


CASES.add(varargs_only, A(), A(1, 2, 3), A(4, key="v"))


# ----------------------------------------------------------------- f-strings

def fstrings(x, name):
    v = square(x)
    w = v / 7
    a = f"{name}: {v}"
    b = f"{v:>8}|{w:08.3f}|{v:x}|{v * 1000:,}|{w:.2%}"
    c = f"{name!r} {name!s:>10} {name:^9}"
    d = f"{v=} {inc(x) = } {name=!s}"
    e = f"{'nested ' + f'{inc(v):03d}'}"
    g = f"{v:{x}}|{w:{x}.{x}}"
    h = f"{{literal}} {upper(name)}"
    return a, b, c, d, e, g, h


CASES.add(fstrings, (3, "ann"), (5, "bob"))


def fstring_bad_spec(x):
    v = square(x)
    return f"{v:z}"


CASES.add(fstring_bad_spec, (2,))


def fstring_in_loop(xs):
    lines = []
    for i, x in enumerate(xs):
        lines.append(f"{i:02d}: {square(x):>5} {'even' if is_even(x) else 'odd'}")
    return "\n".join(lines)


CASES.add(fstring_in_loop, ([1, 2, 3],), ([],))


# ----------------------------------------------------------------- walrus

def walrus_if(xs):
    if (n := length(xs)) > 2:
        return n, "long"
    return n, "short"


CASES.add(walrus_if, ([1, 2, 3],), ([1],))


def walrus_while(limit):
    out = []
    i = 0
    while (v := square(i)) < limit:
        out.append(v)
        i += 1
    return out, v, i


CASES.add(walrus_while, (30,), (0,))


def walrus_comprehension_binds_outward(xs):
    ys = [y for x in xs if (y := square(x)) > 4]
    return ys, y


CASES.add(walrus_comprehension_binds_outward, ([1, 3, 2],), ([],))


def walrus_any(xs):
    if any((hit := square(x)) > 8 for x in xs):
        return "hit", hit
    return "none"


CASES.add(walrus_any, ([1, 2, 3, 4],), ([1],))


def walrus_in_call(x):
    r = add(a := square(x), b := inc(a))
    return r, a, b


CASES.add(walrus_in_call, (3,))


# ----------------------------------------------------------------- lambdas

def lambdas(xs):
    key = lambda v: -square(v)  # noqa: E731
    f = lambda a, b=2: add(a, b)  # noqa: E731
    return sorted(xs, key=key), f(1), f(1, b=5), list(map(lambda v: inc(v), xs))


CASES.add(lambdas, ([3, -1, 2],))


def lambda_late_binding(n):
    fs = [lambda x, i=i: x + i for i in range(n)]
    gs = [lambda x: x + i for i in range(n)]
    return [f(square(2)) for f in fs], [g(10) for g in gs]


CASES.add(lambda_late_binding, (3,), (0,))


def lambda_captures_local(x):
    k = square(x)
    f = lambda y: add(y, k)  # noqa: E731
    k = inc(k)
    return f(1)


CASES.add(lambda_captures_local, (2,))


# ----------------------------------------------------------------- conditional expressions, and/or

def cond_expr(x):
    return square(x) if is_even(x) else neg(x)


CASES.add(cond_expr, (2,), (3,))


def cond_side_not_taken(x):
    return show("then", square(x)) if x > 0 else show("else", fail_if(x, x))


CASES.add(cond_side_not_taken, (3,), (-2,))


def and_or_values(x, y):
    return (x and square(y)), (x or square(y)), (not x), (x and y or inc(y)), (x or [] or "z")


CASES.add(and_or_values, (0, 3), (2, 0), (1, 5))


def short_and(x):
    return is_even(x) and fail_if(x, x)


CASES.add(short_and, (3,), (4,))


def short_or(x):
    return is_even(x) or fail_if(x, x)


CASES.add(short_or, (4,), (3,))


def short_trace(x, y):
    return show("a", x) and show("b", square(y)) or show("c", inc(x))


CASES.add(short_trace, (0, 2), (1, 0), (1, 3))


def short_guarded_index(xs):
    if xs and square(xs[0]) > 3:
        return "big"
    return "small"


CASES.add(short_guarded_index, ([],), ([5],), ([1],))


def nested_conditional(x):
    return "neg" if x < 0 else "zero" if square(x) == 0 else ("even" if is_even(x) else "odd")


CASES.add(nested_conditional, (-1,), (0,), (4,), (7,))


# ----------------------------------------------------------------- del

def del_then_read(x):
    y = square(x)
    del y
    return y


CASES.add(del_then_read, (3,))


def del_conditional(x):
    y = inc(x)
    if is_even(x):
        del y
    return y


CASES.add(del_conditional, (3,), (4,))


def del_twice(x):
    y = square(x)
    del y
    del y


CASES.add(del_twice, (1,))


def del_items(xs, d):
    del xs[0]
    del d["a"]
    del xs[square(1):3]
    return xs, d, length(xs)


CASES.add(del_items, ([1, 2, 3, 4, 5], {"a": 1, "b": 2}), ([1], {"a": 1}))


def del_attribute(box):
    v = square(box.k)
    del box.k
    return v, hasattr(box, "k")


CASES.add(del_attribute, (Scaler(3),))


def del_then_rebind(x):
    y = square(x)
    del y
    y = inc(x)
    return y


CASES.add(del_then_rebind, (2,))


# ----------------------------------------------------------------- assert

def assert_with_message(x):
    assert square(x) >= 0
    assert is_even(x), f"odd: {x}"
    return x


CASES.add(assert_with_message, (2,), (3,))


def assert_no_message(x):
    assert inc(x) > 5
    return "ok"


CASES.add(assert_no_message, (9,), (1,))


def assert_message_lazy(x):
    assert x < 10, show("message", concat("too big ", square(x)))
    return x


CASES.add(assert_message_lazy, (3,), (12,))


# ----------------------------------------------------------------- imports in the body

def import_inside(x):
    import collections as co
    import math
    from functools import reduce
    from os import path as p
    c = co.Counter([is_even(v) for v in range(x)])
    return math.sqrt(square(x)), reduce(add, make_list(x), 0), sorted(c.items()), p.basename("/a/b")


CASES.add(import_inside, (4,), (0,))


def import_missing(x):
    y = square(x)
    import no_such_module_for_pydron_tests  # noqa: F401
    return y


CASES.add(import_missing, (2,))


def import_name_missing(x):
    from math import no_such_name  # noqa: F401
    return x


CASES.add(import_name_missing, (2,))


# ----------------------------------------------------------------- globals

SCALE = 3
COUNTER = 0
EVENTS = []


def read_global(x):
    return square(x) * SCALE + OFFSET_DEFINED_LATER


CASES.add(read_global, (2,))


def undefined_global(x):
    return square(x) + NO_SUCH_GLOBAL  # noqa: F821


CASES.add(undefined_global, (2,))


def bump_global(xs):
    global COUNTER
    for x in xs:
        COUNTER += square(x)
    EVENTS.append(COUNTER)
    return COUNTER


def make_bump_global(deco):
    global COUNTER
    COUNTER = 100
    EVENTS.clear()
    return deco(bump_global), lambda: (COUNTER, list(EVENTS))


def assign_new_global(x):
    global FRESH_GLOBAL
    FRESH_GLOBAL = square(x)
    return FRESH_GLOBAL + 1


def make_assign_new_global(deco):
    globals().pop("FRESH_GLOBAL", None)
    return deco(assign_new_global), lambda: globals().get("FRESH_GLOBAL")


def global_read_before_write(x):
    global COUNTER
    before = COUNTER
    COUNTER = inc(before) + square(x)
    return before, COUNTER


def make_global_read_before_write(deco):
    global COUNTER
    COUNTER = 7
    return deco(global_read_before_write), lambda: COUNTER


# ----------------------------------------------------------------- closures and nonlocal

def make_nonlocal_counter(deco):
    count = 0

    def f(xs):
        nonlocal count
        for x in xs:
            count += inc(x)
        return count

    return deco(f), lambda: count


def make_closure_reads_late_value(deco):
    k = 1

    def f(x):
        return add(square(x), k)

    k = 10
    return deco(f)


def make_closure_over_list(deco):
    seen = []

    def f(xs):
        for x in xs:
            seen.append(square(x))
        return len(seen)

    return deco(f), lambda: list(seen)


def make_closure_chain(deco):
    base = 5

    def outer():
        scale = 2

        def g(x):
            return add(mul(square(x), scale), base)

        return deco(g)

    return outer()


def inner_nonlocal(xs):
    acc = []
    n = 0

    def push(v):
        nonlocal n
        n += 1
        acc.append(v)

    for x in xs:
        push(square(x))
    return acc, n


CASES.add(inner_nonlocal, ([1, 2, 3],), ([],))


def inner_global_and_nonlocal(x):
    level = 0

    def deeper():
        nonlocal level
        level = square(x)

        def deepest():
            nonlocal level
            level += 1
            return level

        return deepest()

    r = deeper()
    return r, level


CASES.add(inner_global_and_nonlocal, (3,))


def free_variable_before_assignment(x):
    def read():
        return later

    try:
        read()
    except NameError as e:
        first = str(e)
    later = square(x)
    return first, read()


CASES.add(free_variable_before_assignment, (4,))


FACTORY_CASES = [
    (make_bump_global, A([1, 2, 3])),
    (make_bump_global, A([])),
    (make_assign_new_global, A(5)),
    (make_global_read_before_write, A(2)),
    (make_nonlocal_counter, A([1, 2, 3])),
    (make_nonlocal_counter, A([])),
    (make_closure_reads_late_value, A(3)),
    (make_closure_over_list, A([1, 2])),
    (make_closure_chain, A(3)),
]

OFFSET_DEFINED_LATER = 1000

# ----------------------------------------------------------------- a few on both pools

for _fn, _args in [(nested_calls, (3, 4)), (two_calls, (2, 3)), (star_targets, ([1, 2, 3],)),
                   (short_and, (3,)), (del_then_read, (3,)), (assert_with_message, (3,)),
                   (fstrings, (3, "ann")), (call_bad_kwarg, (2,))]:
    POOL_CASES.add(_fn, _args)


@pytest.mark.parametrize("fn,inst", CASES.params())
def test_basic(fn, inst):
    run_case(fn, inst)


@pytest.mark.parametrize("make,inst", [pytest.param(m, i, id=f"{m.__name__}({i!r})")
                                       for m, i in FACTORY_CASES])
def test_basic_factory(make, inst):
    assert_same_factory(make, *inst.args, **inst.kwargs)


@pytest.mark.parametrize("fn,inst", POOL_CASES.params())
def test_basic_pools(fn, inst, pool):
    run_case(fn, inst)
