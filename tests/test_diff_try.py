"""try and with bodies run as graph (issue 13): the handlers see exactly what a plain run
shows them, with several calls in flight when one fails.

Each case runs plainly and scheduled (diffcheck: result, exception chain, output), and the
tracebacks are compared too: the frames of this file, with their lines, both of the
exception that escapes and of what a handler prints with ``traceback``.
"""
from __future__ import annotations

import contextlib
import traceback

import pytest

import pydron
from diffcheck import assert_same

# Every case on 4 worker threads and again on 2 worker processes (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("threads_pool")


class BadFrame(Exception):
    pass


class Other(Exception):
    pass


@pydron.functional
def work(x):
    if x in (3, 6):
        raise BadFrame(f"frame {x}")
    return x * 10


@pydron.functional
def other(x):
    if x == 5:
        raise Other(x)
    return x + 1


def here(exc):
    """The frames of this file in ``exc``'s traceback: (function, line offset in file)."""
    return [(f.name, f.lineno) for f in traceback.extract_tb(exc.__traceback__)
            if f.filename == __file__ and f.name not in ("outcome",)]


class Recorder:
    """A context manager that prints what ``__exit__`` gets and may swallow it."""

    def __init__(self, name, swallow=False):
        self.name = name
        self.swallow = swallow

    def __enter__(self):
        print("enter", self.name)
        return self.name.upper()

    def __exit__(self, typ, value, tb):
        print("exit", self.name, typ and typ.__name__, value, tb is None,
              tb is not None and here_tb(tb))
        return self.swallow


def here_tb(tb):
    return [(f.name, f.lineno) for f in traceback.extract_tb(tb) if f.filename == __file__]


def try_in_loop(xs):
    out, skipped = [], 0
    for x in xs:
        try:
            out.append(work(x))
        except BadFrame as e:
            skipped += 1
            print("skip", e, here(e))
    return out, skipped


def try_around_loop(xs):
    out = []
    try:
        for x in xs:
            out.append(work(x))
            print("got", x)
    except BadFrame as e:
        print("stopped", e, e.__context__, here(e))
        out.append(-1)
    else:
        out.append("else")
    finally:
        print("finally", len(out))
    return out


def unmatched(xs):
    out = []
    try:
        a = other(xs[0])
        b = work(xs[1])
        c = other(xs[2])
        out.append((a, b, c))
    except Other:
        print("other")
    finally:
        print("finally")
    return out


def bound_before(xs):
    a = b = None
    try:
        a = work(xs[0])
        b = work(xs[1])
        c = work(xs[2])
    except BadFrame as e:
        print("caught", e)
    print(a, b)
    return a, b, c


def reraise(xs, how):
    try:
        ys = []
        for x in xs:
            ys.append(work(x))
        return ys
    except BadFrame as e:
        print("handling", e)
        if how == "bare":
            raise
        if how == "from":
            raise Other("wrapped") from e
        if how == "new":
            raise Other("new")
        raise e


def nested(xs):
    out = []
    for x in xs:
        try:
            try:
                out.append(other(x))
                out.append(work(x))
            except BadFrame:
                out.append("inner")
                if x == 6:
                    raise Other("from inner")
        except Other as e:
            out.append(("outer", str(e)))
            continue
        finally:
            out.append("fin")
        if x == 7:
            break
    return out


def returns_in_try(xs):
    for x in xs:
        try:
            r = other(x)
            if r > 3:
                return r
        finally:
            print("finally", x)
    return None


def finally_overrides(xs):
    try:
        ys = []
        for x in xs:
            ys.append(work(x))
        return ys
    finally:
        return "finally wins"


def with_around(xs, swallow):
    out = []
    with Recorder("a", swallow) as name:
        for x in xs:
            out.append(work(x))
        out.append(name)
    print("after", out)
    return out


def with_two(xs):
    out = []
    with Recorder("a") as p, Recorder("b", True) as q:
        for x in xs:
            out.append(other(x))
    return out, p, q


def with_in_loop(xs):
    out = []
    for x in xs:
        with contextlib.suppress(BadFrame):
            out.append(work(x))
    return out


def not_a_manager(xs):
    out = []
    with 3:
        out.append(work(xs[0]))
    return out


class BadEnter:
    def __enter__(self):
        raise KeyError("enter")

    def __exit__(self, *a):
        print("never")


def bad_enter(xs):
    with BadEnter():
        return list(map(work, xs))


class BadExit:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        raise ValueError("exit failed")


def bad_exit(xs):
    with BadExit():
        ys = []
        for x in xs:
            ys.append(work(x))
        return ys


@contextlib.contextmanager
def section(name):
    print("start", name)
    try:
        yield name
    except BadFrame as e:
        print("section caught", e)
    finally:
        print("end", name)


def generator_manager(xs):
    out = []
    with section("s") as s:
        for x in xs:
            out.append(work(x))
    out.append(s)
    return out


CASES = [
    (try_in_loop, (list(range(8)),)),
    (try_around_loop, (list(range(8)),)),
    (try_around_loop, ([0, 1, 2],)),
    (unmatched, ([0, 3, 5],)),
    (unmatched, ([5, 3, 0],)),
    (unmatched, ([0, 1, 2],)),
    (bound_before, ([0, 3, 1],)),
    (bound_before, ([0, 1, 3],)),
    (bound_before, ([3, 0, 1],)),
    (reraise, ([0, 1, 3, 6], "bare")),
    (reraise, ([0, 1, 3, 6], "from")),
    (reraise, ([0, 1, 3, 6], "new")),
    (reraise, ([0, 1, 3, 6], "named")),
    (reraise, ([0, 1, 2], "bare")),
    (nested, (list(range(9)),)),
    (returns_in_try, (list(range(8)),)),
    (returns_in_try, ([0, 1, 5, 9],)),
    (finally_overrides, ([0, 3],)),
    (with_around, (list(range(8)), False)),
    (with_around, (list(range(8)), True)),
    (with_around, ([0, 1, 2], False)),
    (with_two, (list(range(8)),)),
    (with_in_loop, (list(range(8)),)),
    (not_a_manager, ([1],)),
    (bad_enter, ([1, 2],)),
    (bad_exit, ([1, 2],)),
    (bad_exit, ([1, 3],)),
    (generator_manager, (list(range(8)),)),
    (generator_manager, ([0, 1],)),
]


def outcome(fn, args):
    try:
        return "ok", fn(*args)
    except Exception as e:
        return "raised", here(e)


@pytest.mark.parametrize("fn,args", CASES,
                         ids=[f"{c[0].__name__}-{i}" for i, c in enumerate(CASES)])
def test_same_as_plain(fn, args, capsys):
    assert_same(fn, *args)
    capsys.readouterr()
    plain = outcome(fn, args)
    plain_out = capsys.readouterr().out
    scheduled = outcome(pydron.schedule(fn), args)
    scheduled_out = capsys.readouterr().out
    assert scheduled == plain
    assert scheduled_out == plain_out


def test_the_body_is_opened_up():
    """explain() says the body runs as graph, and the calls inside are dispatch sites."""
    text = pydron.explain(pydron.schedule(try_around_loop))
    assert "try: the body runs as graph" in text
    text = pydron.explain(pydron.schedule(with_around))
    assert "with: the body runs as graph" in text
