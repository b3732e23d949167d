"""Functional helpers for the differential tests.

They live at module level so they pickle by reference. Each is deterministic and free of
side effects (the sleeping ones only take time), as ``@functional`` promises.
"""
import math
import operator
import time

from diffcheck import functional


@functional
def square(x):
    return x * x


@functional
def add(a, b):
    return a + b


@functional
def inc(x):
    return x + 1


@functional
def neg(x):
    return -x


@functional
def is_even(x):
    return x % 2 == 0


@functional
def is_positive(x):
    return x > 0


@functional
def slow_square(x, delay=0.01):
    time.sleep(delay)
    return x * x


@functional
def slow_ident(x, delay=0.01):
    time.sleep(delay)
    return x


@functional
def fail_if(x, bad):
    if x == bad:
        raise ValueError(f"bad value {x}")
    return x


@functional
def slow_fail(x, delay):
    """Sleeps, then fails: used to make a later call fail first in wall-clock time."""
    time.sleep(delay)
    raise ValueError(f"slow fail {x} after {delay}")


@functional
def fail_key(d, k):
    return d[k]


@functional
def first_item(xs):
    return next(iter(xs))


@functional
def multi_arg_error(a, b):
    raise ValueError(a, b)


@functional
def divide(a, b):
    return a / b


@functional
def floordiv(a, b):
    return a // b


@functional
def pair(a, b):
    return (a, b)


@functional
def concat(*parts):
    return "".join(str(p) for p in parts)


@functional
def kw(a, b=2, *, c=3):
    return (a, b, c)


@functional
def ident(x):
    return x


@functional
def make_list(n):
    return list(range(n))


@functional
def total(xs):
    return sum(xs)


@functional
def upper(s):
    return s.upper()


@functional
def length(xs):
    return len(xs)


@functional
def describe(x, **options):
    return (x, tuple(sorted(options.items())))


@functional
def mul3(a, b, c):
    return a * b * c


@functional
def as_set(xs):
    return frozenset(xs)


@functional
def split_words(s):
    return s.split()


class NotFound(Exception):
    """An exception defined by the user's project, raised from a functional call."""


@functional
def lookup(table, key):
    if key not in table:
        raise NotFound(f"no entry {key!r}")
    return table[key]


class Scaler:
    """A class with a functional method (self is read, never written)."""

    def __init__(self, k):
        self.k = k

    @functional
    def apply(self, x):
        return self.k * x

    @functional
    def combine(self, x, y=0):
        return self.k * x + y

    def __eq__(self, other):
        return isinstance(other, Scaler) and other.k == self.k

    def __repr__(self):
        return f"Scaler({self.k})"


# Existing callables whitelisted as functional (pydron.functional(obj) returns obj).
functional(math.gcd)
functional(operator.mul)
gcd = math.gcd
mul = operator.mul


# Plain (non-functional) helpers: calls to them are sync points with visible effects.

def show(tag, value):
    """Prints, then returns value: makes evaluation order visible."""
    print(tag, value)
    return value


def log_append(log, value):
    """Mutates a list it is given: a sync point between functional calls."""
    log.append(value)
    return len(log)
