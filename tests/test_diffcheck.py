"""Tests of the differential harness itself: every kind of difference must be caught.

These run the same in self-test mode and against the compiler; they never call pydron.
"""
import time
from concurrent.futures.process import _RemoteTraceback

import pytest

import diffcheck
from diffcheck import A, Cases, compare_outcomes, run_once, snapshot


def outcomes(plain, other, *args):
    import copy
    return (run_once(plain, *copy.deepcopy((args, {}))),
            run_once(other, *copy.deepcopy((args, {}))))


def differs(plain, other, *args):
    p, o = outcomes(plain, other, *args)
    with pytest.raises(AssertionError):
        compare_outcomes(p, o)


def agrees(plain, other, *args):
    p, o = outcomes(plain, other, *args)
    compare_outcomes(p, o)


def test_return_values_compared_with_types():
    differs(lambda: 1, lambda: 2)
    differs(lambda: 1, lambda: 1.0)
    differs(lambda: 1, lambda: True)
    differs(lambda: [1], lambda: (1,))
    differs(lambda: {"a": 1, "b": 2}, lambda: {"b": 2, "a": 1})   # dict order is visible
    agrees(lambda: {1, 2}, lambda: {2, 1})
    agrees(lambda: float("nan"), lambda: float("nan"))


def test_exceptions_compared():
    def raise_value(msg):
        def f():
            raise ValueError(msg)
        return f

    differs(raise_value("a"), raise_value("b"))
    differs(raise_value("a"), lambda: 1)

    def raise_key():
        raise KeyError("a")

    differs(raise_value("a"), raise_key)
    agrees(raise_value("a"), raise_value("a"))


def test_exception_cause_compared_when_plain_has_one():
    def chained(cause_msg):
        def f():
            try:
                raise KeyError(cause_msg)
            except KeyError as e:
                raise ValueError("top") from e
        return f

    def unchained():
        raise ValueError("top")

    differs(chained("x"), chained("y"))
    differs(chained("x"), unchained)

    def remote():
        err = ValueError("top")
        err.__cause__ = _RemoteTraceback("remote traceback text")
        raise err

    differs(unchained, remote)         # no cause the plain run lacks, transport or not

    def from_none():
        try:
            raise KeyError("x")
        except KeyError:
            raise ValueError("top") from None

    def implicit_context():
        try:
            raise KeyError("x")
        except KeyError:
            raise ValueError("top")

    differs(from_none, implicit_context)
    agrees(from_none, from_none)
    differs(unchained, chained("x"))   # a user cause where there was none is not


def test_stdout_compared():
    differs(lambda: print("a"), lambda: print("b"))
    differs(lambda: print("a", "b"), lambda: (print("b"), print("a")) and None)
    agrees(lambda: print("a"), lambda: print("a"))


def test_warnings_compared():
    import warnings

    def warn():
        warnings.warn("fell back", UserWarning)
        return 1

    differs(lambda: 1, warn)
    agrees(warn, warn)

    def deprecated():
        warnings.warn("old", DeprecationWarning)
        return 1

    agrees(lambda: 1, deprecated)     # environment noise is not compared


def test_argument_mutation_compared():
    def append(xs):
        xs.append(1)

    def nothing(xs):
        pass

    differs(append, nothing, [])
    agrees(append, append, [])


def test_aliasing_compared():
    def same(xs):
        return xs

    def copied(xs):
        return list(xs)

    differs(same, copied, [1, 2])

    def pair_alias():
        a = []
        return a, a

    def pair_distinct():
        return [], []

    differs(pair_alias, pair_distinct)


def test_objects_compared_by_state():
    class Box:
        def __init__(self, v):
            self.v = v

    differs(lambda: Box(1), lambda: Box(2))
    agrees(lambda: Box(1), lambda: Box(1))


def test_assert_same_copies_arguments_and_instance(monkeypatch):
    monkeypatch.setattr(diffcheck, "schedule", diffcheck.identity)

    class Counter:
        def __init__(self):
            self.n = 0

        def bump(self, xs):
            self.n += 1
            xs.append(self.n)
            return self.n

    c = Counter()
    xs = []
    out = diffcheck.assert_same(c.bump, xs)
    assert out.value == 1 and out.args_after[0][0].n == 1
    assert c.n == 0 and xs == []


def test_timeout(monkeypatch):
    monkeypatch.setattr(diffcheck, "CALL_TIMEOUT", 0.2)
    with pytest.raises(diffcheck.DiffTimeout):
        run_once(time.sleep, (2,), {})


def test_case_ids_unique():
    cases = Cases()

    def f(x):
        return x

    cases.add(f, (1,), (1,), A(x=2))
    ids = [p.id for p in cases.params()]
    assert len(set(ids)) == 3


def test_snapshot_hashable_and_exact():
    s = snapshot({"a": [1, {2}], "b": (1.0, None)})
    hash(s)
    assert snapshot([1]) != snapshot([True])


def _case_tables():
    import importlib
    import pathlib
    for path in sorted(pathlib.Path(__file__).parent.glob("test_diff_*.py")):
        module = importlib.import_module(path.stem)
        for value in vars(module).values():
            if isinstance(value, Cases):
                yield path.stem, value


def test_every_case_has_readable_source():
    """The compiler reads each function with inspect.getsource: make sure every case
    function's source can be read and parses to a def of that name."""
    import ast
    import inspect
    import textwrap

    count = 0
    for _, table in _case_tables():
        for fn, _ in table.items:
            func = getattr(fn, "__func__", fn)
            tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
            assert isinstance(tree.body[0], ast.FunctionDef), func
            assert tree.body[0].name == func.__name__
            count += 1
    assert count >= 300
