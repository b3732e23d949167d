"""Loops that may break or return start later iterations' functional calls before the
earlier ones have decided (issue 13): what lies past the exit must leave no trace.

Each case runs plainly and scheduled (diffcheck: result, exception chain, output, argument
state) on threads and on worker processes, with exits at the first, a middle and the last
item and never, calls after the exit that would raise, prints and accumulators around the
exit, nested loops, while loops, ``else`` clauses, and try bodies around and inside.
"""
from __future__ import annotations

import pytest

import pydron
from diffcheck import assert_same

# Every case on 4 worker threads and again on 2 worker processes (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("threads_pool")


class Found(Exception):
    pass


@pydron.functional
def score(x):
    if x < 0:
        raise ValueError(f"negative {x}")
    return x * 3 % 11


@pydron.functional
def boom_after(x, limit):
    if x > limit:
        raise Found(f"past {limit}: {x}")
    return x + 100


def first_hit(xs, target):
    for x in xs:
        r = score(x)
        if r == target:
            return x
    return None


def break_and_else(xs, target):
    out = []
    for i, x in enumerate(xs):
        r = score(x)
        out.append(r)
        print("seen", i, r)
        if r == target:
            print("hit", x)
            break
    else:
        print("no hit")
        out.append("else")
    return out, x


def failing_after_exit(xs, limit):
    total = 0
    for x in xs:
        v = boom_after(x, limit)
        total += v
        if x == limit:
            break
    return total


def failing_before_exit(xs, limit, stop):
    got = []
    for x in xs:
        got.append(boom_after(x, limit))
        if x == stop:
            break
    return got


def counted_while_break(n, target):
    i = 0
    out = []
    while i < n:
        r = score(i)
        if r == target:
            break
        out.append(r)
        i += 1
    else:
        out.append("ran out")
    return i, out


def while_true(n):
    i = 0
    seen = []
    while True:
        r = score(i)
        seen.append(r)
        i += 1
        if i >= n or r == 0:
            break
    return seen


def nested_return(rows, target):
    for r, row in enumerate(rows):
        for c, x in enumerate(row):
            if score(x) == target:
                return r, c
        print("row", r, "done")
    return None


def inner_break(rows, target):
    found = []
    for row in rows:
        for x in row:
            s = score(x)
            if s == target:
                found.append(x)
                break
        else:
            found.append(None)
    return found


def try_inside(xs, target):
    skipped = 0
    for x in xs:
        try:
            r = score(x)
        except ValueError as e:
            skipped += 1
            print("skip", e)
            continue
        if r == target:
            return x, skipped
    return None, skipped


def try_around(xs, target):
    try:
        for x in xs:
            if score(x) == target:
                return x
    except ValueError as e:
        print("caught", e)
        return "caught"
    return None


def over_generator(xs, target):
    gen = (x for x in xs)
    for x in gen:
        if score(x) == target:
            break
    return x, list(gen)


def over_dict(d, target):
    for k, v in d.items():
        if score(v) == target:
            return k
    return None


def long_loop(n, stop):
    acc = []
    for i in range(n):
        r = score(i)
        acc.append(r)
        if i == stop:
            break
    return len(acc), sum(acc)


XS = [1, 2, 3, 4, 5, 6, 7, 8]
CASES = [
    (first_hit, (XS, 3)), (first_hit, (XS, 6)), (first_hit, (XS, 2)), (first_hit, (XS, 99)),
    (first_hit, ([1, 2, -1, 5], 6)), (first_hit, ([1, 5, -1], 4)), (first_hit, ([], 1)),
    (break_and_else, (XS, 6)), (break_and_else, (XS, 99)), (break_and_else, ([1, -2, 3], 99)),
    (failing_after_exit, (XS, 3)), (failing_after_exit, (XS, 8)),
    (failing_before_exit, (XS, 3, 6)), (failing_before_exit, (XS, 5, 2)),
    (counted_while_break, (12, 4)), (counted_while_break, (12, 99)),
    (while_true, (9,)), (while_true, (3,)),
    (nested_return, ([[1, 2], [3, 4], [5, 6]], 4)), (nested_return, ([[1, 2], [3, -4]], 99)),
    (inner_break, ([[1, 2, 3], [4, 5, 6], [7, 8]], 4)),
    (try_inside, ([1, -1, 2, -3, 5, 6], 4)), (try_inside, ([-1, -2], 4)),
    (try_around, ([1, 2, -1, 5], 6)), (try_around, ([1, 5, -1], 4)),
    (over_generator, (XS, 6)),
    (over_dict, ({"a": 1, "b": 2, "c": 5}, 4)),
    (long_loop, (3000, 2500)), (long_loop, (300, 10 ** 6)),
]


@pytest.mark.parametrize("fn,args", CASES,
                         ids=[f"{c[0].__name__}-{i}" for i, c in enumerate(CASES)])
def test_same_as_plain(fn, args):
    assert_same(fn, *args)


def test_the_loops_speculate():
    """The template marks these loops speculative; a loop without a call does not."""
    from pydron.translation import translate

    def plain_break(xs):
        for x in xs:
            if x > 2:
                break
        return x

    assert translate(first_hit).block.steps[0].speculate
    assert translate(counted_while_break).block.steps[-2].speculate
    assert not getattr(translate(plain_break).block.steps[0], "speculate", False)
