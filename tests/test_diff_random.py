"""Differential tests on random small programs.

Hypothesis draws a small function: assignments, if/else, bounded for/while loops with
break/continue, calls to a few functional helpers and to ``print``, integer arithmetic with
divisions (most guarded, some not, so some programs raise ZeroDivisionError) and calls that
fail for one argument value. The source is written to a temporary module file (so
``inspect.getsource`` works), imported, and checked with ``assert_same``.

PYTEST_DONT_REWRITE
"""
import atexit
import importlib.util
import itertools
import os
import shutil
import sys
import tempfile

import pytest

from conftest_hosts import require_module

hypothesis = require_module("hypothesis")
from hypothesis import HealthCheck, given, note, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from diffcheck import assert_same  # noqa: E402

pytestmark = pytest.mark.usefixtures("threads_pool")

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])

VARS = ["v0", "v1", "v2", "v3"]
HEADER = "from funcs import add, fail_if, inc, is_even, neg, slow_square, square\n\n\n"
_TMPDIR = tempfile.mkdtemp(prefix="pydron_diff_random_")
# The generated modules (hundreds a run) are needed only while their test runs (for
# inspect.getsource); the folder goes when the test process ends, whatever ran.
atexit.register(shutil.rmtree, _TMPDIR, ignore_errors=True)
_COUNTER = itertools.count()


class Builder:
    """Writes one random function, drawing every choice from hypothesis."""

    def __init__(self, draw, *, branches, loops, failures, max_stmts=6):
        self.draw = draw
        self.branches = branches
        self.loops = loops
        self.failures = failures
        self.max_stmts = max_stmts
        self.loop_vars = []        # loop variables in scope
        self.n_loops = 0
        self.n_prints = 0

    def pick(self, options):
        return self.draw(st.sampled_from(options))

    def small(self, lo, hi):
        return self.draw(st.integers(lo, hi))

    # expressions -------------------------------------------------------------
    def atom(self):
        kind = self.small(0, 2)
        if kind == 0:
            return str(self.small(-3, 9))
        return self.pick(VARS + self.loop_vars)

    def expr(self, depth=2):
        if depth == 0:
            return self.atom()
        kind = self.small(0, 11 if self.failures else 8)
        if kind <= 2:
            return self.atom()
        if kind <= 4:
            op = self.pick(["+", "-", "*"])
            return f"({self.expr(depth - 1)} {op} {self.expr(depth - 1)})"
        if kind == 5:
            return f"{self.pick(['square', 'inc', 'neg'])}({self.expr(depth - 1)})"
        if kind == 6:
            return f"add({self.expr(depth - 1)}, {self.expr(depth - 1)})"
        if kind == 7:
            # guarded division: never raises
            d = self.expr(depth - 1)
            return f"({self.expr(depth - 1)} // {d} if {d} else 0)"
        if kind == 8:
            return f"({self.expr(depth - 1)} if {self.cond(depth - 1)} else {self.expr(depth - 1)})"
        if kind == 9:
            # unguarded division: ZeroDivisionError when the divisor is 0 (mod 3)
            return f"({self.expr(depth - 1)} // ({self.expr(depth - 1)} % 3))"
        if kind == 10:
            return f"({self.expr(depth - 1)} % {self.atom()})"
        return f"fail_if({self.expr(depth - 1)}, {self.small(-2, 12)})"

    def cond(self, depth=1):
        kind = self.small(0, 4)
        if kind <= 1:
            op = self.pick(["<", "<=", "==", "!=", ">", ">="])
            return f"{self.expr(depth)} {op} {self.expr(depth)}"
        if kind == 2:
            return f"is_even({self.expr(depth)})"
        if kind == 3 and depth > 0:
            return f"({self.cond(depth - 1)} {self.pick(['and', 'or'])} {self.cond(depth - 1)})"
        return f"not {self.cond(0)}"

    # statements --------------------------------------------------------------
    def block(self, indent, depth, in_loop):
        n = self.small(1, max(1, self.max_stmts - 2 * depth))
        lines = []
        for _ in range(n):
            lines.extend(self.stmt(indent, depth, in_loop))
        return lines

    def stmt(self, indent, depth, in_loop):
        pad = "    " * indent
        choices = ["assign", "assign", "aug", "print", "append"]
        if self.branches and depth < 2:
            choices += ["if", "if"]
        if self.loops and depth < 2 and self.n_loops < 3:
            choices += ["for", "while"]
        if in_loop:
            choices += ["break", "continue"]
        if self.failures:
            choices += ["call"]
        kind = self.pick(choices)
        if kind == "assign":
            return [f"{pad}{self.pick(VARS)} = ({self.expr()}) % 1009"]
        if kind == "aug":
            v = self.pick(VARS)
            op = self.pick(["+=", "-=", "*="])
            return [f"{pad}{v} {op} {self.expr(1)}", f"{pad}{v} %= 1009"]
        if kind == "print":
            self.n_prints += 1
            return [f"{pad}print('p{self.n_prints}', {self.expr(1)}, {self.pick(VARS)})"]
        if kind == "append":
            return [f"{pad}out.append({self.expr()})"]
        if kind == "call":
            return [f"{pad}{self.pick(VARS)} = fail_if(slow_square({self.atom()}, 0.001) % 1009, "
                    f"{self.small(0, 30)})"]
        if kind == "if":
            lines = [f"{pad}if {self.cond()}:"] + self.block(indent + 1, depth + 1, in_loop)
            if self.draw(st.booleans()):
                lines += [f"{pad}else:"] + self.block(indent + 1, depth + 1, in_loop)
            return lines
        if kind in ("break", "continue"):
            return [f"{pad}if {self.cond(0)}:", f"{pad}    {kind}"]
        self.n_loops += 1
        var = f"i{self.n_loops}"
        if kind == "for":
            src = self.pick([f"range({self.small(0, 4)})", f"range({self.pick(VARS)} % 4)",
                             "list(out[-3:])", f"[{self.atom()}, {self.atom()}]"])
            self.loop_vars.append(var)
            body = self.block(indent + 1, depth + 1, True)
            self.loop_vars.pop()
            lines = [f"{pad}for {var} in {src}:"] + body
            if self.draw(st.booleans()):
                # After zero iterations the loop variable is unbound: reading it raises.
                shown = self.pick(VARS + [var]) if self.failures else self.pick(VARS)
                lines += [f"{pad}else:", f"{pad}    print('else', {shown})"]
            return lines
        # a while loop bounded by a counter
        limit = self.small(0, 4)
        lines = [f"{pad}{var} = 0", f"{pad}while {var} < {limit}:", f"{pad}    {var} += 1"]
        self.loop_vars.append(var)
        lines += self.block(indent + 1, depth + 1, True)
        self.loop_vars.pop()
        return lines

    def program(self, name):
        body = ["    v0 = a", "    v1 = b", "    v2 = inc(a)", "    v3 = 0", "    out = []"]
        body += self.block(1, 0, False)
        if self.draw(st.booleans()):
            body += [f"    if {self.cond()}:", f"        return {self.expr()}"]
        body += ["    return v0, v1, v2, v3, out"]
        return f"def {name}(a, b):\n" + "\n".join(body) + "\n"


def load_function(source, name):
    """Write ``source`` to a fresh module file, import it and return ``name`` from it."""
    modname = f"pydron_random_prog_{os.getpid()}_{next(_COUNTER)}"
    path = os.path.join(_TMPDIR, modname + ".py")
    with open(path, "w") as fh:
        fh.write(HEADER + source)
    spec = importlib.util.spec_from_file_location(modname, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[modname] = module
    spec.loader.exec_module(module)
    return getattr(module, name), modname


@st.composite
def programs(draw, **features):
    source = Builder(draw, **features).program("prog")
    a = draw(st.integers(-5, 9))
    b = draw(st.integers(-5, 9))
    return source, a, b


def check(source, a, b):
    note(source)
    note(f"args: a={a}, b={b}")
    fn, modname = load_function(source, "prog")
    try:
        assert_same(fn, a, b)
    finally:
        sys.modules.pop(modname, None)


@SETTINGS
@given(programs(branches=False, loops=False, failures=False))
def test_random_straight_line(case):
    check(*case)


@SETTINGS
@given(programs(branches=True, loops=False, failures=False))
def test_random_branches(case):
    check(*case)


@SETTINGS
@given(programs(branches=True, loops=True, failures=False))
def test_random_loops(case):
    check(*case)


@SETTINGS
@given(programs(branches=True, loops=True, failures=True))
def test_random_with_failures(case):
    check(*case)


def test_generator_produces_both_outcomes():
    """The failing family really contains programs that raise and programs that return,
    and the loop family really contains loops with break/continue (so the random tests are
    not vacuous)."""
    seen = {"raise": 0, "return": 0, "break": 0, "continue": 0, "print": 0}

    @settings(max_examples=80, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(programs(branches=True, loops=True, failures=True))
    def sample(case):
        source, a, b = case
        for word in ("break", "continue", "print"):
            seen[word] += word in source
        fn, modname = load_function(source, "prog")
        try:
            import contextlib
            import io
            with contextlib.redirect_stdout(io.StringIO()):
                fn(a, b)
            seen["return"] += 1
        except Exception:
            seen["raise"] += 1
        finally:
            sys.modules.pop(modname, None)

    sample()
    assert all(v > 0 for v in seen.values()), seen
