"""Differential cases: printed output, its order relative to functional calls, generators
and helpers, with print's own keyword arguments.

PYTEST_DONT_REWRITE: the case functions use ``assert`` and must keep Python's own messages.
"""
import sys

import pytest

from diffcheck import Cases, run_case
from funcs import (add, concat, inc, is_even, log_append, neg, pair, show, slow_ident,
                   slow_square, square, upper)

pytestmark = pytest.mark.usefixtures("threads_pool")

CASES = Cases()
POOL_CASES = Cases()


def print_each_result(xs):
    for x in xs:
        print(square(x))


CASES.add(print_each_result, ([1, 2, 3],), ([],))


def print_before_and_after_call(xs):
    for x in xs:
        print("start", x)
        r = slow_square(x, 0.01)
        print("end", x, r)


CASES.add(print_before_and_after_call, ([3, 1, 2],))


def print_reverse_delays(xs):
    n = len(xs)
    results = []
    for i, x in enumerate(xs):
        results.append(slow_ident(x, 0.01 * (n - i)))
        print("queued", x)
    for r in results:
        print("result", r)


CASES.add(print_reverse_delays, ([1, 2, 3, 4],))


def print_kwargs(xs):
    for x in xs:
        print(x, square(x), sep=":", end=";")
    print()
    print(*[inc(x) for x in xs], sep="-")
    print("no newline", end="")
    print(" then more", flush=True)


CASES.add(print_kwargs, ([1, 2, 3],))


def print_to_explicit_stdout(xs):
    for x in xs:
        print(square(x), file=sys.stdout)
        sys.stdout.write(f"w{neg(x)}\n")


CASES.add(print_to_explicit_stdout, ([1, 2],))


def print_nested_loops(n):
    for i in range(n):
        print("row", i, end=": ")
        for j in range(n):
            print(add(i, square(j)), end=" ")
        print()


CASES.add(print_nested_loops, (3,))


def print_in_branches(xs):
    for x in xs:
        r = square(x)
        if is_even(r):
            print("even", r)
        elif r > 10:
            print("big odd", r)
        else:
            print("small odd", r)


CASES.add(print_in_branches, ([1, 2, 3, 4, 5],))


def print_from_helper_between_calls(xs):
    log = []
    for x in xs:
        a = square(x)
        n = log_append(log, a)
        print("logged", n, a)
        b = inc(a)
        print("next", b)
    return log


CASES.add(print_from_helper_between_calls, ([1, 2, 3],))


def print_generator_interleaving(n):
    def produce():
        for i in range(n):
            print("produce", i)
            yield slow_ident(i, 0.005)

    for v in produce():
        print("consume", square(v))


CASES.add(print_generator_interleaving, (4,))


def print_show_evaluation_order(a, b):
    return show("sum", add(show("left", square(a)), show("right", square(b))))


CASES.add(print_show_evaluation_order, (2, 3))


def print_argument_evaluation_order(x):
    return pair(show("first", inc(x)), show("second", neg(x))), concat(show("a", 1), show("b", 2))


CASES.add(print_argument_evaluation_order, (5,))


def print_in_comprehension(xs):
    return [print("item", square(x)) for x in xs]


CASES.add(print_in_comprehension, ([1, 2],))


def print_formatted_table(rows):
    print(f"{'name':<6}|{'value':>6}")
    for name, v in rows:
        print(f"{upper(name):<6}|{square(v):>6}")


CASES.add(print_formatted_table, ([("a", 3), ("bb", 12)],))


def print_in_while_with_break(limit):
    i = 0
    while True:
        v = square(i)
        print("i", i, "v", v)
        if v > limit:
            print("break")
            break
        i += 1
    print("after", i)


CASES.add(print_in_while_with_break, (10,), (0,))


def print_many_lines(n):
    for i in range(n):
        print(i, slow_square(i, 0.001))


CASES.add(print_many_lines, (40,))


def print_with_return_in_loop(xs):
    for x in xs:
        r = square(x)
        print("check", r)
        if r > 5:
            print("returning")
            return r
        print("continue")
    print("none")


CASES.add(print_with_return_in_loop, ([1, 2, 3, 4],), ([1],))


def print_objects_repr(x):
    print([square(x)], {"k": inc(x)}, (neg(x),), {square(x)}, None, 1.5, "s", b"b")


CASES.add(print_objects_repr, (3,))


for _fn, _args in [(print_before_and_after_call, ([3, 1, 2],)),
                   (print_reverse_delays, ([1, 2, 3, 4],)),
                   (print_generator_interleaving, (4,))]:
    POOL_CASES.add(_fn, _args)


@pytest.mark.parametrize("fn,inst", CASES.params())
def test_output(fn, inst):
    run_case(fn, inst)


@pytest.mark.parametrize("fn,inst", POOL_CASES.params())
def test_output_pools(fn, inst, pool):
    run_case(fn, inst)
