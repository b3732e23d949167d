"""A seeded random-program generator for the differential tests: ``seed -> source text``.

Every program is a whole module: functional helpers (some of which raise, with explicit,
implicit and suppressed chaining, notes, attributes and custom exception classes), plain
effectful helpers, globals, recursive scheduled functions, and one function ``main(xs, d,
n)`` built from *snippets*, each a shape that has broken the compiler before (see issue 7):

=================  ====================================================================
``while_test``      a ``while`` whose test calls a method or a functional function, over
                    a body with or without functional calls
``while_return``    ``return`` inside a ``while`` whose test calls something
``recursion``       module-level recursion and self-reference of scheduled functions; a
                    method calling a module-level function of the same name
``mutate_for``      a container (list, nested rows, dict, set; argument, local or global)
                    mutated by a sync point right before a loop over it with a functional
                    call in flight
``dict_arg_store``  item stores into the dict passed as an argument
``del_name``        ``del x`` (also conditional) of a name bound in the same run
``except_as``       ``except E as x:`` in the same straight-line run as other bindings
``loop_sync_read``  reads of globals and mutable objects right after a ``while`` loop or a
                    ``for`` loop longer than the window whose body holds sync points
``mix``             long runs mixing calls, chained comparisons, f-string format specs that
                    call functions, walrus and comprehensions
``exc_caught``      exceptions from functional calls caught and inspected
``exc_uncaught``    exceptions from functional calls (or raised directly) that escape
``effect_builtin``  effectful callables given to ``sorted``/``min``/``max``/``map``/``filter``
``iter_loop``       loops over generators, iterators, ``enumerate``/``zip``, file objects
``control``         if/for/while/break/continue/else with calls and prints
``closure``         closures, ``nonlocal`` counters, lambdas, late binding
``alias_escape``    aliases of arguments and locals; local lists handed to other code
``loop_after``      loop variables and carried names after loops (break, else, long loops
                    that fail part-way)
``aug_sub``         augmented stores into items and attributes; calls in slices
``global_rebind``   globals (a callee among them) rebound by sync points, then used; a
                    callee taken from a dict or a cell; a method replaced on its class
``short_circuit``   ``and``/``or``/conditional expressions/chained comparisons around
                    effectful calls
``misc_expr``       assert, star-args, unpacking, ``%``/``format``, walrus in a ``while``
                    test, a local import, shadowed builtins (``abs``, ``sorted``)
``nested_loops``    nested loops with break/continue; nested comprehensions
``consumer``        generator expressions given to consumers that stop early or fail
``try_with``        calls in try/except/else/finally and ``with`` (printing context
                    managers that may swallow), break/continue through ``finally``
``speculation``     a sync point that raises or returns before calls on constants that
                    would fail
``try_flight``      several functional calls in flight in a ``try`` body (straight-line, in
                    a loop in the try, a try in a loop, nested, in a handler), none, one or
                    several failing; handlers that match or not (tuples, base classes),
                    inspect ``e`` (args, chain, notes, frames, the printed traceback) or
                    raise anew (bare, ``from e``, ``from None``); ``else`` on the body's
                    results; ``finally`` that prints, returns, breaks or continues; return
                    from the body; prints between the calls; names left unbound read after
``with_flight``     loops of calls that may fail inside ``with``: managers that print and
                    record what ``__exit__`` got and swallow or not (classes, generator
                    ones, ``contextlib.suppress``, ``nullcontext``), several items, nested
                    withs, a tuple ``as`` target, an ``__enter__`` that raises, a with per
                    iteration
``while_flight``    ``while`` loops with calls: counted (append, then ``i += 1``), breaking
                    on a call's result, ``while``/``else``, ``while True``, tests that read
                    a call's result, a list popped until empty
``search_flight``   ``for`` loops that ``break`` or ``return`` on a call's result at the
                    first, a middle or the last item or never (``else``, a name left
                    unbound, nested loops), with calls that would fail in the iterations
                    after the exit and prints after the call
=================  ====================================================================

The last four (issue 13: try/with/while and loops that leave early, run in parallel) come
from a stream of their own, ``{seed}:flight``, appended after the others like the extra
shapes; they bring helpers of their own (``Rec``, ``gen_cm``, ``BadEnter``, ``Pair``,
``fail_sub``, ``fail_odd``, ``seen``, ``tb_pic``, ``tb_text``), written into a program only
when it has one of them, so a program without one is the same text as before they existed.

Snippets may be nested in plain statements (``if``, ``for``, ``while``, ``try``, ``with``).
Programs are deterministic and terminate by construction: loops are bounded by counters or
by finite containers; there is no randomness, no sleeping, no ``id()``/``hash()`` in the
output and no set of strings (whose order would differ between worker processes). Each
snippet draws from its own ``random.Random(f"{seed}:{index}")`` (a string seed is hashed
with SHA-512, not with the per-process ``hash``), so a program can be rebuilt with some
snippets left out (``--reduce``) and the others stay exactly as they were.

Command line (from the repository root)::

    python tests/progen.py --seed 17                      # print program 17
    python tests/progen.py --count 500 --pool threads     # run 500 programs, list failures
    python tests/progen.py --count 200 --start 1000 --pool multicore --classify
    python tests/progen.py --seed 17 --run --pool inline  # run one, show the difference
    python tests/progen.py --seed 17 --reduce --pool threads   # drop snippets while it fails

PYTEST_DONT_REWRITE
"""
from __future__ import annotations

import argparse
import atexit
import copy
import importlib.util
import itertools
import linecache
import os
import random
import re
import shutil
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import diffcheck  # noqa: E402

# --------------------------------------------------------------------------- module text

PRELUDE = '''\
"""Generated by tests/progen.py --seed @SEED@@VARIANT@."""
import builtins
import contextlib
import io
import queue
import sys
import tempfile

from diffcheck import functional

# schedule() in the checked run; the identity in the plain run and on worker processes.
_pd_deco = globals().get("_pd_deco", lambda f: f)

ARGS = @ARGS@

COUNTER = 0
TOTAL = 0
LOG = []
TABLE = {"a": 1, "b": 2, "c": 3}
ROWS = [[1, 2], [3, 4], [5, 6]]
SEEN = {1, 2, 3}


class AppError(Exception):
    """A custom exception with the ordinary signature."""


class CodeError(ValueError):
    """A custom exception with its own __init__ signature (pickle cannot rebuild it)."""

    def __init__(self, code, text):
        super().__init__(f"{text} [{code}]")
        self.code = code
        self.text = text


class Box:
    def __init__(self, v):
        self.v = v

    def __repr__(self):
        return f"Box({self.v!r})"

    def __eq__(self, other):
        return isinstance(other, Box) and other.v == self.v

    @functional
    def get(self):
        return self.v

    @functional
    def scaled(self, k):
        return self.v * k


BOX = Box(0)
GLOBALS = ("COUNTER", "TOTAL", "LOG", "TABLE", "ROWS", "SEEN", "BOX", "FN", "OPS", "NEWG")


# ---- functional helpers (fast; some raise for some inputs)

@functional
def ident(x):
    return x


@functional
def inc(x):
    return x + 1


@functional
def add(a, b):
    return a + b


@functional
def tup(*args):
    return args


@functional
def other(x):
    return "other"


@functional
def width(x):
    return len(str(x)) + @W@


@functional
def total(xs):
    return sum(xs)


@functional
def is_odd(x):
    return x % 2 == 1


@functional
def below(x, lim):
    return x < lim


@functional
def fail_plain(x):
    if x % @M1@ == @R1@:
        raise AppError("plain", x)
    return x + 1


@functional
def fail_from(x):
    if x % @M2@ == @R2@:
        raise ValueError(f"from {x}") from KeyError(x)
    return x * 2


@functional
def fail_implicit(x):
    if x % @M3@ == @R3@:
        try:
            {}[x]
        except KeyError:
            raise AppError("implicit", x)
    return x - 1


@functional
def fail_none(x):
    if x % @M4@ == @R4@:
        try:
            [][x]
        except IndexError:
            raise LookupError(f"none {x}") from None
    return -x


@functional
def fail_noted(x):
    if x % @M5@ == @R5@:
        err = AppError("noted", x)
        err.add_note(f"note for {x}")
        err.detail = {"x": x, "tags": ["d"]}
        raise err
    return x + 10


@functional
def fail_code(x):
    if x % @M6@ == @R6@:
        raise CodeError(x, "code failure")
    return x * 3


@functional
def fail_deep(x):
    if x % @M7@ == @R7@:
        try:
            fail_from(@R2@)
        except ValueError as inner:
            raise CodeError(x, "deep") from inner
    return x + 100


@functional
def fail_if_eq(x, bad):
    if x == bad:
        raise AppError("at", x)
    return x % 7


@functional
def fail_zero(x):
    return 12 // (x % 3)


# ---- plain helpers with effects (calls to them are sync points)

def note(x):
    LOG.append(x if isinstance(x, int) else len(x))
    return x


def shout(x):
    print("shout", x)
    return -x


def bump(x):
    global COUNTER
    COUNTER += 1
    return (x * 7) % 5


def keep_odd(x):
    print("keep?", x)
    return x % 2 == 1


def mutate(xs):
    xs.append(len(xs))
    xs[0] = -xs[0]
    return len(xs)


def mutate_d(d):
    d["by_helper"] = len(d)
    return len(d)


def gen_count(k):
    for i in range(k):
        yield i * 2


def gen_noisy(xs):
    for x in xs:
        print("yield", x)
        yield x


def describe(e):
    return (type(e).__name__, e.args, str(e), type(e.__cause__).__name__,
            type(e.__context__).__name__, e.__suppress_context__,
            getattr(e, "__notes__", None), getattr(e, "code", None))


def step(x):
    return x * 2 + 1


def pwidth(x):
    return 3 + len(str(x)) % 3


def gen_fail(xs, bad):
    for x in xs:
        if x == bad:
            raise AppError("generator", x)
        yield x


class Ticker:
    """An iterator whose every step prints."""

    def __init__(self, k):
        self.k = k

    def __iter__(self):
        return self

    def __next__(self):
        if self.k <= 0:
            raise StopIteration
        self.k -= 1
        print("tick", self.k)
        return self.k


def setbox(box, v):
    box.v = v
    return v


def retarget():
    global FN
    FN = shout
    return FN


FN = inc
OPS = {"f": inc, "g": ident}


def plain_get(self):
    print("plain get", self.v)
    return -self.v


def boom(x, limit):
    """A plain helper that raises for some inputs."""
    print("boom?", x)
    if x > limit:
        raise AppError("boom", x)
    return x


class Loud:
    """A context manager that prints, and swallows AppError when asked to."""

    def __init__(self, tag, swallow=False):
        self.tag = tag
        self.swallow = swallow

    def __enter__(self):
        print("enter", self.tag)
        return self

    def __exit__(self, kind, value, tb):
        print("exit", self.tag, None if kind is None else kind.__name__)
        return self.swallow and kind is AppError


def warn_me(x):
    import warnings
    warnings.warn(f"careful with {x}", UserWarning)
    return x
@SHADOW@@FLIGHT@

# ---- scheduled functions besides main (recursion, self-reference)

class Walker:
    def __init__(self, k):
        self.k = k

    @_pd_deco
    def step(self, x):
        y = ident(x)
        return step(y) + self.k


@_pd_deco
def fact(n):
    ident(n)
    return 1 if n <= 1 else n * fact(n - 1)


@_pd_deco
def walk(xs, acc):
    if not xs:
        return acc
    return walk(xs[1:], add(acc, xs[0]))


@_pd_deco
def inner(k):
    out = []
    for i in range(k):
        out.append(inc(i))
        if i == 2:
            raise KeyError(i)
    return out


def read_newg():
    return NEWG * 2


@_pd_deco
def countdown(n):
    out = [ident(n)]
    if n > 0:
        out.extend(countdown(n - 1))
    return out


# ---- the checked function

'''

SHADOW = '''

def abs(x):
    """Shadows the builtin: not pure any more."""
    LOG.append(x)
    return x if x >= 0 else -x


def sorted(xs, key=None, reverse=False):
    """Shadows the builtin: prints."""
    xs = list(xs)
    print("my sorted", len(xs))
    return builtins.sorted(xs, key=key, reverse=reverse)
'''

FLIGHT = '''


# ---- helpers of the in-flight shapes (issue 13); only in programs that have one

import traceback


class SubError(AppError):
    """A subclass: ``except AppError`` catches it; ``except SubError`` lets AppError by."""


class OddError(Exception):
    """Caught only by its own name or ``Exception``: outside CATCH_ALL."""


@functional
def fail_sub(x, bad):
    if x == bad:
        raise SubError("sub", x)
    return x * 2 + 1


@functional
def fail_odd(x, bad):
    if x == bad:
        raise OddError(f"odd {x}")
    return x - 3


def tb_pic(e):
    """Where ``e`` went, as a plain run records it: (function, line) of every frame."""
    return [(f.name, f.lineno) for f in traceback.extract_tb(e.__traceback__)]


def tb_text(e):
    """The traceback as the user reads it (chain, source lines, carets), the module's path
    (a temporary file's) written as <gen>."""
    return "".join(traceback.format_exception(e)).replace(__file__, "<gen>")


def seen(e):
    """What a handler can read of ``e``: type, args, chain, notes and frames."""
    return (type(e).__name__, e.args, repr(e.__cause__), repr(e.__context__),
            e.__suppress_context__, getattr(e, "__notes__", None), tb_pic(e))


class Rec:
    """A context manager that prints and keeps what its __exit__ got (type, text, whether
    a traceback came, its frames); swallows when ``swallow`` says so (True, False or an
    exception class)."""

    def __init__(self, tag, swallow=False):
        self.tag = tag
        self.swallow = swallow
        self.got = []

    def __enter__(self):
        print("rec enter", self.tag)
        return self

    def __exit__(self, kind, value, tb):
        name = None if kind is None else kind.__name__
        frames = [] if tb is None else [(f.name, f.lineno) for f in traceback.extract_tb(tb)]
        self.got.append((name, None if value is None else str(value), tb is None, frames))
        print("rec exit", self.tag, name)
        if isinstance(self.swallow, type):
            return kind is not None and issubclass(kind, self.swallow)
        return bool(self.swallow) and kind is not None


class BadEnter:
    """A context manager whose __enter__ raises: its body never runs, its __exit__ is not
    called."""

    def __init__(self, tag):
        self.tag = tag

    def __enter__(self):
        print("bad enter", self.tag)
        raise AppError("enter", self.tag)

    def __exit__(self, kind, value, tb):
        print("never", self.tag)
        return False


class Pair:
    """``with Pair(v) as (a, b):``: __enter__ returns a tuple."""

    def __init__(self, v):
        self.v = v

    def __enter__(self):
        print("pair enter", self.v)
        return self.v, -self.v

    def __exit__(self, kind, value, tb):
        print("pair exit", self.v, None if kind is None else kind.__name__)
        return False


@contextlib.contextmanager
def gen_cm(tag, swallow=False):
    """A generator context manager: meets the body's AppError at its yield."""
    print("gen enter", tag)
    try:
        yield tag * 2
    except AppError as e:
        print("gen caught", type(e).__name__, e.args)
        if not swallow:
            raise
    finally:
        print("gen exit", tag)'''

#: Shapes of issue 13: several functional calls in flight inside try/with/while and loops
#: that leave early. Drawn from a stream of their own (``{seed}:flight``) and appended like
#: EXTRA_SHAPES; a program that draws none is the same text as before they existed.
FLIGHT_SHAPES = ["try_flight", "with_flight", "while_flight", "search_flight"]
#: How many in-flight snippets a program gets (one of these, evenly).
FLIGHT_COUNTS = [0, 0, 1, 1, 2]
#: What the in-flight shapes' outer handler catches: every failing helper's exception.
FLIGHT_ALL = "(AppError, ValueError, LookupError, ArithmeticError, OddError)"
#: Handlers of the in-flight shapes: matching some failures, missing others.
FLIGHT_HANDLERS = ["AppError", "SubError", "ValueError", "(AppError, ValueError)",
                   "(CodeError, KeyError)", "LookupError", "ArithmeticError", "Exception",
                   "(SubError, ZeroDivisionError)", "OddError", "(OddError, AppError)"]

FAILERS = ["fail_plain", "fail_from", "fail_implicit", "fail_none", "fail_noted",
           "fail_code", "fail_deep", "fail_zero"]
CATCH_ALL = "(AppError, ValueError, LookupError, ArithmeticError)"

#: Shapes added after the seeds in tests/test_generated_regressions.py were recorded: drawn
#: from a stream of their own and appended, so every earlier program keeps its snippets.
EXTRA_SHAPES = ["scoping", "targets", "nested_scope", "globals_life", "nested_sched",
                "with_return"]

SHAPES = ["while_test", "while_return", "recursion", "mutate_for", "dict_arg_store",
          "del_name", "except_as", "loop_sync_read", "mix", "exc_caught", "exc_uncaught",
          "effect_builtin", "iter_loop", "control", "closure", "alias_escape", "loop_after",
          "aug_sub", "global_rebind", "short_circuit", "misc_expr", "nested_loops", "consumer",
          "try_with", "speculation"] + EXTRA_SHAPES + FLIGHT_SHAPES

# How often each shape is drawn (while_return is only ever the last snippet).
WEIGHTS = {"while_test": 10, "recursion": 5, "mutate_for": 14, "dict_arg_store": 4,
           "del_name": 5, "except_as": 5, "loop_sync_read": 8, "mix": 10, "exc_caught": 7,
           "exc_uncaught": 8, "effect_builtin": 7, "iter_loop": 8, "control": 6,
           "closure": 6, "alias_escape": 8, "loop_after": 8, "aug_sub": 6, "global_rebind": 5,
           "short_circuit": 5, "misc_expr": 7, "nested_loops": 5, "consumer": 6, "try_with": 6,
           "speculation": 3}


def indent(lines, n=1):
    pad = "    " * n
    return [pad + ln if ln else ln for ln in lines]


class Snippet:
    """Writes one snippet from its own random stream; names carry the suffix ``_k``."""

    def __init__(self, rng, k):
        self.r = rng
        self.k = k

    # small pieces -------------------------------------------------------------------------
    def pick(self, xs):
        return self.r.choice(xs)

    def lit(self, lo=-2, hi=9):
        return str(self.r.randint(lo, hi))

    def chance(self, p):
        return self.r.random() < p

    def iexpr(self):
        """An int-valued expression over the arguments, with or without a call."""
        return self.pick([self.lit(), "n", "len(xs)", "len(d)", f"ident({self.lit()})",
                          "inc(n)", f"add(n, {self.lit()})", "(xs[0] if xs else 0)",
                          "total(xs)"])

    def v(self, name):
        return f"{name}_{self.k}"

    def fcall(self, arg):
        """A functional call on an int that never raises."""
        return self.pick([f"ident({arg})", f"inc({arg})", f"add({arg}, {self.lit()})",
                          f"BOX.scaled({arg})", f"Box({arg}).get()"])

    # shapes -------------------------------------------------------------------------------
    def while_test(self):
        nv, acc = self.v("n"), self.v("acc")
        lim = self.r.randint(0, 5)
        start = self.pick([f"{nv} = ident(0)", f"{nv} = 0", f"{nv} = inc(-1)",
                           f"{nv} = add(0, 0)"])
        kind = self.r.randint(0, 7)
        pre = [start]
        if kind == 0:
            test = f"xs.__len__() > {nv}"
        elif kind == 1:
            test = f"len(ident(xs)) > {nv}"
        elif kind == 2:
            test = f"ident({nv}) < {lim}"
        elif kind == 3:
            test = f"below({nv}, {lim})"
        elif kind == 4:
            test = f"not {self.v('q')}.empty()"
            pre = [f"{self.v('q')} = queue.Queue()", f"for {self.v('x')} in xs:",
                   f"    {self.v('q')}.put({self.v('x')})", start]
        elif kind == 5:
            test = f"{nv} < inc({lim}) and d.__len__() >= 0"
        elif kind == 6:
            test = f"{nv} + xs.count(0) < {lim}"
        else:
            test = f"{self.v('st')} and ident({self.v('st')}[-1]) > -100"
            pre = [f"{self.v('st')} = list(xs)", start]
        body_kind = self.r.randint(0, 3)
        if kind == 4:
            advance = [f"{self.v('item')} = {self.v('q')}.get()", f"{nv} += 1"]
            got = self.v("item")
        elif kind == 7:
            advance = [f"{self.v('item')} = {self.v('st')}.pop()", f"{nv} += 1"]
            got = self.v("item")
        else:
            advance = [f"{nv} += 1"]
            got = nv
        body = list(advance)
        if body_kind == 1:
            body.append(f"{acc}.append({self.fcall(got)})")
        elif body_kind == 2:
            body.append(f"print('while {self.k}', {got})")
        elif body_kind == 3:
            body.append(f"{acc}.append({got})")
            if self.chance(0.5):
                body += [f"if {got} == {self.lit(0, 4)}:", "    continue",
                         f"{acc}.append(-1)"]
            if self.chance(0.4):
                body += [f"if {nv} > {self.lit(1, 6)}:", "    break"]
        lines = [f"{acc} = []"] + pre + [f"while {test}:"] + indent(body)
        if self.chance(0.2):
            lines += ["else:", f"    {acc}.append('else')"]
        lines.append(f"out.append(({nv}, {acc}))")
        return lines

    def while_return(self):
        iv = self.v("i")
        lim = self.r.randint(1, 6)
        test = self.pick([f"ident({iv}) < {lim}", f"below({iv}, {lim})",
                          f"{iv} < len(xs) + {lim}", f"xs.__len__() + {lim} > {iv}"])
        cond = self.pick([f"{iv} == {self.lit(1, 4)}", f"{iv} >= n", f"is_odd({iv})",
                          f"{iv} > len(xs)"])
        ret = self.pick([f"return ('early', {iv}, out)", f"return ident({iv})",
                         f"return out + [inc({iv})]"])
        body = [f"{iv} += 1", f"if {cond}:", f"    {ret}", f"out.append({self.fcall(iv)})"]
        if self.chance(0.5):        # decide before the increment
            body = [f"if {cond}:", f"    {ret}", f"out.append({self.fcall(iv)})", f"{iv} += 1"]
        if self.chance(0.3):
            body.insert(0, f"print('at', {iv})")
        return [f"{iv} = {self.pick(['0', 'ident(0)'])}", f"while {test}:"] + indent(body) + \
            [f"out.append(('after', {iv}))"]

    def recursion(self):
        kind = self.r.randint(0, 5)
        if kind == 0:
            return ["out.append(fact(ident(n % 5 + 1)))"]
        if kind == 1:
            return [f"{self.v('f')} = fact(n % 4)", f"out.append(({self.v('f')}, "
                    f"{self.fcall(self.v('f'))}))"]
        if kind == 2:
            return [f"out.append(walk(xs[:4], {self.iexpr()}))"]
        if kind == 3:
            return [f"{self.v('w')} = Walker(ident({self.lit()}))",
                    f"out.append({self.v('w')}.step(n))"]
        if kind == 4:
            return ["out.append(countdown(n % 4))"]
        return [f"out.append((main.__name__, {self.fcall('n')}))"]

    def _container(self):
        """(setup lines, container expression, kind)."""
        kind = self.pick(["list", "list", "rows", "dict", "dict", "set"])
        where = self.pick(["arg", "local", "global"])
        c = self.v("c")
        if kind == "list":
            if where == "arg":
                return [], "xs", kind
            if where == "global":
                return ["LOG.extend([7, 8])"], "LOG", kind
            return [f"{c} = [{self.lit()}, {self.lit()}, {self.lit()}]"], c, kind
        if kind == "rows":
            if where == "global":
                return [], "ROWS", kind
            return [f"{c} = [[{self.lit()}, {self.lit()}], [{self.lit()}, {self.lit()}], "
                    f"[{self.lit()}, {self.lit()}]]"], c, kind
        if kind == "dict":
            if where == "arg":
                return [], "d", kind
            if where == "global":
                return [], "TABLE", kind
            return [f"{c} = {{'p': {self.lit()}, 'q': {self.lit()}, 'r': {self.lit()}}}"], c, kind
        if where == "global":
            return [], "SEEN", kind
        return [f"{c} = {{{self.lit(0, 5)}, {self.lit(6, 9)}, 11}}"], c, kind

    def mutate_for(self):
        setup, c, kind = self._container()
        a, acc, x = self.v("a"), self.v("acc"), self.v("x")
        lines = list(setup)
        callee = self.pick(['ident', 'inc', 'fail_plain' if self.chance(0.1) else 'ident'])
        lines.append(f"{a} = {callee}({self.iexpr()})")
        if kind == "list":
            muts = [f"{c}[0] = {a}", f"{c}[1:3] = [{a}, {a} + 1]", f"{c}[:] = {c}[::-1]",
                    f"{c}.append({a})", f"{c}.insert(0, {a})", f"{c}.pop()", f"{c}.sort()",
                    f"{c}.reverse()", f"{c}.extend([{a}, 9])", f"{c}.remove({c}[0])",
                    f"mutate({c})", f"{c} += [{a}]", f"del {c}[0]", f"{c}[-1] = {a} * 2",
                    f"{c}[0], {c}[-1] = {c}[-1], {c}[0]"]
            if c == "LOG":      # an augmented assignment would make LOG a local name
                muts = [m for m in muts if "+=" not in m]
            # every mutation above needs a nonempty list: make sure there is one
            lines.append(f"{c}.append({self.lit()})")
            loops = [[f"for {x} in {c}:", f"    {acc}.append({self.fcall(x)})"],
                     [f"{acc} = [{self.fcall(x)} for {x} in {c}]"],
                     [f"for {x} in {c}:", f"    {acc}.append(ident({x}))",
                      f"    print('item', {x})"],
                     [f"{acc}.append(total({c}))", f"for {x} in {c}[:2]:",
                      f"    {acc}.append(inc({x}))"]]
        elif kind == "rows":
            muts = [f"{c}[0], {c}[1] = {c}[1], {c}[0]", f"{c}[0][1] = {a}",
                    f"{c}[1][0], {c}[0][0] = {c}[0][0], {c}[1][0]", f"{c}.append([{a}, {a}])",
                    f"{c}[0].append({a})", f"{c}[2] = [{a}, 0]",
                    f"{c}[0][:] = [v * 2 for v in {c}[0]]", f"mutate({c}[1])"]
            loops = [[f"for {x} in {c}:", f"    {acc}.append(total({x}))"],
                     [f"{acc} = [[ident(v) for v in {x}] for {x} in {c}]"],
                     [f"{acc} = [total({x}) for {x} in {c}]"],
                     [f"for {x} in {c}:", f"    {acc}.append(ident({x}[0]))"]]
        elif kind == "dict":
            muts = [f"{c}['new_{self.k}'] = {a}", f"del {c}[next(iter({c}))]",
                    f"{c}.setdefault('s_{self.k}', {a})", f"{c}.pop(next(iter({c})), None)",
                    f"{c}.update({{'u': {a}}})", f"mutate_d({c})",
                    f"{c}[next(iter({c}))] = {a}", f"{c}.popitem()"]
            lines.append(f"{c}.setdefault('z', 0)")
            loops = [[f"for {x} in {c}:", f"    {acc}.append(({x}, ident({c}[{x}])))"],
                     [f"for {x}, v_{self.k} in {c}.items():",
                      f"    {acc}.append(add(v_{self.k}, len({x})))"],
                     [f"{acc} = [ident(v) for v in {c}.values()]"],
                     [f"{acc} = {{{x}: inc(v) for {x}, v in {c}.items()}}"]]
        else:
            muts = [f"{c}.add({a})", f"{c}.discard(1)", f"{c} |= {{{a}, 7}}",
                    f"{c}.remove(next(iter({c})))", f"{c}.update([{a} + 20])",
                    f"{c}.pop()"]
            if c == "SEEN":
                muts = [m for m in muts if "|=" not in m]
            lines.append(f"{c}.add(30)")
            loops = [[f"for {x} in {c}:", f"    {acc}.append(ident({x}))"],
                     [f"{acc} = [inc({x}) for {x} in {c}]"],
                     [f"{acc} = sorted(ident({x}) for {x} in {c})"]]
        n_mut = self.r.randint(1, 2)
        for _ in range(n_mut):
            m = self.pick(muts)
            if self.chance(0.2):
                lines.append(f"print('mutating', {a})")
            lines.append(m)
        loop = self.pick(loops)
        if not loop[0].startswith(f"{acc} ="):
            lines.append(f"{acc} = []")
        lines += loop
        lines.append(f"out.append({acc})")
        if self.chance(0.3):
            lines.append(f"out.append(len({c}))")
        return lines

    def dict_arg_store(self):
        lines = []
        for i in range(self.r.randint(1, 3)):
            lines.append(self.pick([
                f"d['k{self.k}_{i}'] = {self.fcall('n')}",
                f"d[str(ident({self.lit()}))] = {self.lit()}",
                f"d.setdefault('z{self.k}', inc(n))",
                f"d['k{self.k}_{i}'] = d.get('k{self.k}_{i}', 0) + ident(1)",
                f"d['k{self.k}_{i}'] = len(xs)",
                f"d.update({{'u{self.k}': ident(n)}})",
            ]))
        if self.chance(0.5):
            lines.append("out.append(total(d.values()) if all(isinstance(v, int) "
                         "for v in d.values()) else len(d))")
        return lines

    def del_name(self):
        t, u, w = self.v("t"), self.v("u"), self.v("w")
        lines = [f"{t} = {self.fcall(self.iexpr())}", f"{u} = {t} + {self.lit()}"]
        kind = self.r.randint(0, 3)
        if kind == 0:
            lines += [f"del {u}", f"out.append({t})"]
        elif kind == 1:
            lines += [f"if n % 2 == {self.lit(0, 1)}:", f"    del {u}",
                      "try:", f"    out.append({u})", "except NameError as e:",
                      "    out.append(type(e).__name__)"]
        elif kind == 2:
            lines += [f"del {u}", f"{u} = inc({t})", f"out.append({u})"]
        else:
            lines += [f"{w} = [{t}, {u}]", f"del {w}[0]", f"del {t}", f"out.append(({u}, {w}))"]
        if self.chance(0.5):
            lines.append(f"print('del', {self.fcall('n')})")
        return lines

    def except_as(self):
        x, v, e = self.v("x"), self.v("v"), self.v("e")
        lines = [f"{v} = {self.fcall('n')}"]
        if self.chance(0.5):
            lines.append(f"{e} = ident({self.lit()})")     # bound before, unbound by except
        exc = self.pick([(f"{{}}[{v}]", "KeyError"), (f"[][{v}]", "IndexError"),
                         (f"raise AppError({v})", "AppError"),
                         (f"1 // ({v} * 0)", "ZeroDivisionError"),
                         (f"int('x{v}')", "ValueError")])
        body = exc[0]
        lines += ["try:", f"    {body}", f"except {exc[1]} as {e}:",
                  f"    out.append(repr({e}))"]
        if self.chance(0.3):
            lines.append(f"    out.append(repr({e}.__context__))")
        lines.append(f"{x} = {self.fcall(v)}")
        after = self.r.randint(0, 2)
        if after == 0:
            lines += [f"{e} = {v}", f"out.append({e})"]
        elif after == 1:
            lines += ["try:", f"    out.append({e})", "except NameError:",
                      "    out.append('unbound')"]
        lines.append(f"out.append({x})")
        return lines

    def loop_sync_read(self):
        kind = self.pick(["while", "for_long", "for_long", "for_short"])
        iv = self.v("i")
        sync = self.pick(["COUNTER += ident(1)", f"TOTAL += inc({iv})",
                          f"LOG.append(ident({iv}))", "BOX.v += ident(1)",
                          f"xs.append(ident({iv}))", f"TABLE['t' + str({iv})] = ident({iv})",
                          "COUNTER += 1", f"SEEN.add(ident({iv}))"])
        read = self.pick(["out.append(COUNTER)", "out.append(TOTAL)", "out.append(len(LOG))",
                          "out.append(BOX.v)", "out.append(sum(xs))", "out.append(len(TABLE))",
                          "out.append(total(LOG[-3:]) if all(isinstance(v, int) for v in "
                          "LOG[-3:]) else len(LOG))",
                          "out.append(BOX.get())", "out.append(len(SEEN))",
                          "print('read', COUNTER, TOTAL, BOX.v, len(LOG))",
                          "return (out, COUNTER, TOTAL, BOX.v, len(LOG), len(xs))"])
        extra = []
        if self.chance(0.3):
            extra = [f"out.append({self.fcall(iv)})" if kind != "for_long" else
                     f"print('tick', {iv}) if {iv} % 50 == 0 else None"]
        if kind == "while":
            limit = self.r.randint(1, 20)
            lines = [f"{iv} = 0", f"while {iv} < {limit}:", f"    {iv} += 1",
                     f"    {sync}"] + indent(extra)
        else:
            count = self.r.randint(100, 300) if kind == "for_long" else self.r.randint(1, 20)
            lines = [f"for {iv} in range({count}):", f"    {sync}"] + indent(extra)
        return lines + [read]

    def _mix_stmt(self, i):
        s = f"{self.v('m')}{i}"
        a = self.iexpr()
        kind = self.r.randint(0, 11)
        if kind == 0:
            return [f"{s} = (other({a}), (0 < {self.lit()} < ident({self.iexpr()})))",
                    f"out.append({s})"]
        if kind == 1:
            return [f"{s} = len(ident({self.pick(['xs', 'list(d)', '[n, n]'])}))",
                    f"print({s})"]
        if kind == 2:
            return [f"{s} = {self.lit()} < ident({a}) <= {self.iexpr()} != inc(n)",
                    f"out.append({s})"]
        if kind == 3:
            w = self.pick(["width", "pwidth"])
            return [f"{s} = f\"{{{a}:{{{w}({a})}}}}|{{n!r:>{{inc(3)}}}}\"", f"out.append({s})"]
        if kind == 4:
            w = self.pick(["width", "pwidth"])
            return [f"{s} = f\"{{ident(n):0{{{w}(n)}}d}} {{len(xs):{{{self.lit(1, 5)}}}}}\"",
                    f"print({s})"]
        if kind == 5:
            z = self.v("z")
            return [f"{z} = {self.lit()}",
                    f"{s} = tup([ident(v) for v in xs], {z}, ({z} := {self.lit()}))",
                    f"out.append(({s}, {z}))"]
        if kind == 6:
            y = self.v("y")
            return [f"{s} = [{y} for v in xs if ({y} := inc(v)) > {self.lit()}]",
                    f"out.append({s})"]
        if kind == 7:
            return [f"if ({s} := ident({a})) > {self.lit()}:", f"    out.append({s})",
                    "else:", f"    out.append(-{s})"]
        if kind == 8:
            return [f"{s} = {self.pick(['sum', 'sorted', 'list', 'max', 'min'])}("
                    f"inc(v) for v in xs + [{self.lit()}])", f"out.append({s})"]
        if kind == 9:
            return [f"{s} = {{k: ident(v) for k, v in d.items() if isinstance(v, int)}}",
                    f"out.append({s})"]
        if kind == 10:
            return [f"{s} = add(inc({a}), ident({self.iexpr()})) if is_odd({a}) "
                    f"else (ident(n) and inc({self.lit()}))", f"out.append({s})"]
        return [f"print('mix', {self.fcall(a)}, {self.pick(['n', 'len(xs)', repr('s')])})"]

    def mix(self):
        lines = []
        n_stmts = self.r.randint(3, 8)
        repeat = self.chance(0.4)
        block = []
        for i in range(n_stmts):
            block += self._mix_stmt(i)
        lines += block
        if repeat:
            # issue 7 needed the same layout a few times over
            for rep in range(self.r.randint(1, 3)):
                lines += [ln.replace(f"{self.v('m')}", f"{self.v('m')}r{rep}_") for ln in block]
        return lines

    def _exc_call(self):
        f = self.pick(FAILERS)
        arg = self.pick(["n", "v", "len(xs)", self.lit(0, 9), "n + 1", "total(xs)"])
        return f, arg

    def exc_caught(self):
        kind = self.r.randint(0, 3)
        r = self.v("r")
        f, arg = self._exc_call()
        arg = arg.replace("v", "n") if arg == "v" else arg
        inspect_ = self.pick(["out.append(describe(e))",
                              "out.append((type(e).__name__, e.args, "
                              "type(e.__cause__).__name__, type(e.__context__).__name__, "
                              "e.__suppress_context__, getattr(e, '__notes__', None), "
                              "getattr(e, 'detail', None), getattr(e, 'code', None)))",
                              "out.append((repr(e), repr(e.__cause__), repr(e.__context__)))",
                              "print('caught', type(e).__name__, e)"])
        if kind == 0:
            body = [f"{r} = {f}({arg})", f"out.append({r})"]
        elif kind == 1:
            body = ["for v in xs:", f"    out.append({f}(v))"]
        elif kind == 2:
            body = [f"{r} = [{f}(v) for v in xs]", f"out.append({r})"]
        else:
            body = [f"{r} = add({f}({arg}), {self.pick(FAILERS)}(n + 2))", f"out.append({r})"]
        lines = ["try:"] + indent(body) + [f"except {CATCH_ALL} as e:"] + indent([inspect_])
        if self.chance(0.3):
            lines += ["else:", "    out.append('no error')"]
        if self.chance(0.3):
            lines += ["finally:", f"    print('finally {self.k}')"]
        return lines

    def exc_uncaught(self):
        kind = self.r.randint(0, 4)
        f, arg = self._exc_call()
        if kind == 0:
            return [f"out.append({f}({arg.replace('v', 'n') if arg == 'v' else arg}))"]
        if kind == 1:
            return ["for v in xs:", f"    out.append({f}(v))"]
        if kind == 2:
            return [f"out.append([{f}(v) for v in xs])"]
        if kind == 3:
            exc = self.pick(["AppError('direct', n) from KeyError(n)", "CodeError(n, 'direct')",
                             "ValueError(n) from None", "AppError('direct', len(xs))"])
            return [f"if n % {self.r.randint(2, 5)} == {self.lit(0, 1)}:", f"    raise {exc}"]
        return ["try:", "    {}[n]", "except KeyError:",
                f"    out.append({f}({self.pick(['n', 'len(xs)', 'n + 3'])}))"]

    def effect_builtin(self):
        a, s = self.v("a"), self.v("s")
        call = self.pick(["sorted(xs, key=note)", "list(map(print, xs))",
                          "min(xs, key=bump)", "max(xs, key=bump)",
                          "list(filter(keep_odd, xs))", "sorted(d, key=note)",
                          "list(map(shout, xs))", "sum(map(bump, xs))",
                          "sorted(xs, key=lambda v: (print('key', v), -v)[1])",
                          "list(map(inc, xs))", "any(map(keep_odd, xs))",
                          "max(xs, key=shout)", "list(filter(is_odd, xs))",
                          "sorted(xs, key=shout, reverse=True)"])
        lines = [f"{a} = {self.fcall(self.iexpr())}"]
        if self.chance(0.3):
            lines.append(f"print('before', {a})")
        lines += [f"{s} = {call}", f"print('{self.k}', {s}, {a})"]
        lines.append(self.pick([f"out.append(({s}, {self.fcall(a)}))", "out.append(len(LOG))",
                                "out.append(COUNTER)", f"out.append(inc({a}))",
                                "out.append(list(LOG))"]))
        return lines

    def iter_loop(self):
        x, acc, it = self.v("x"), self.v("acc"), self.v("it")
        kind = self.r.randint(0, 13)
        body_call = self.fcall(x)
        if kind == 0:
            head, pre = [f"for {x} in gen_count({self.r.randint(0, 5)}):"], []
        elif kind == 1:
            head, pre = [f"for {x} in gen_noisy(xs):"], []
        elif kind == 2:
            pre = [f"{it} = iter(xs)", f"{acc}.append(next({it}, None))"]
            head = [f"for {x} in {it}:"]
        elif kind == 3:
            head, pre = [f"for i_{self.k}, {x} in enumerate(xs):"], []
            body_call = f"add(i_{self.k}, {x})"
        elif kind == 4:
            other = self.pick(['xs[1:]', 'range(3)', 'd'])
            head, pre = [f"for {x}, y_{self.k} in zip(xs, {other}):"], []
            body_call = f"ident(({x}, y_{self.k}))"
        elif kind == 5:
            text = "\\n".join(self.lit(0, 99) for _ in range(self.r.randint(0, 4)))
            pre = [f"{it} = io.StringIO('{text}\\n')"]
            if self.chance(0.5):
                pre.append(f"{acc}.append({it}.readline())")
            head = [f"for {x} in {it}:"]
            body_call = f"ident({x}.strip())"
        elif kind == 6:
            text = "\\n".join(self.lit(0, 99) for _ in range(self.r.randint(1, 4)))
            pre = [f"{it} = tempfile.TemporaryFile('w+')", f"{it}.write('{text}\\n')",
                   f"{it}.seek(0)"]
            head = [f"for {x} in {it}:"]
            body_call = f"inc(int({x}))"
        elif kind == 7:
            pre = [f"{it} = ({x} * 2 for {x} in xs)"]
            head = [f"for {x} in {it}:"]
        elif kind == 8:
            pre = [f"def gen_{self.k}():", "    for v in xs:", f"        yield v + {self.lit()}"]
            head = [f"for {x} in gen_{self.k}():"]
        elif kind == 9:
            head, pre = [f"for {x} in reversed(xs):"], []
        elif kind == 10:
            head, pre = [f"for {x} in Ticker({self.r.randint(0, 4)}):"], []
        elif kind == 11:
            head, pre = [f"for {x} in gen_fail(xs, {self.lit(-1, 9)}):"], []
            body_call = self.pick([f"fail_plain({x})", f"ident({x})", f"fail_code({x})"])
        elif kind == 12:
            pre, head = [], []
            return [f"{acc} = [{self.fcall(x)} for {x} in gen_noisy(xs)]",
                    f"print('after', len({acc}))", f"out.append({acc})"]
        else:
            pre = [f"{it} = {self.pick(['d.keys()', 'd.values()', 'd.items()'])}",
                   f"d['view_{self.k}'] = {self.fcall('n')}"]
            head = [f"for {x} in {it}:"]
            body_call = f"ident({x})"
        body = [f"{acc}.append({body_call})"]
        if self.chance(0.3):
            body.append(f"print('got', {x})")
        if self.chance(0.2):
            body += [f"if {acc} and len({acc}) > {self.lit(1, 4)}:", "    break"]
        lines = [f"{acc} = []"] + pre + head + indent(body)
        if kind == 6:
            lines.append(f"{it}.close()")
        lines.append(f"out.append({acc})")
        return lines

    def control(self):
        x = self.v("x")
        lim = self.lit(0, 9)
        body = []
        if self.chance(0.5):
            body += [f"if is_odd({x}):", "    continue"]
        if self.chance(0.5):
            body += [f"if {x} > {lim}:", "    break"]
        body.append(self.pick([f"out.append({self.fcall(x)})", f"print('ctl', {self.fcall(x)})",
                               f"out.append({x} if {x} < 3 else inc({x}))"]))
        if self.chance(0.3):
            body += [f"if {x} == {self.lit(0, 5)}:", "    out.append('eq')",
                     "else:", f"    out.append(ident({x}) * 2)"]
        lines = [f"for {x} in {self.pick(['xs', 'range(n)', 'list(d.values())', 'xs[:3]'])}:"]
        lines += indent(body)
        if self.chance(0.4):
            lines += ["else:", f"    out.append('no break {self.k}')"]
        if self.chance(0.3):
            lines += [f"if len(out) > {self.lit(2, 9)}:", "    print('long', len(out))"]
        return lines

    def closure(self):
        kv, fv, cv = self.v("k"), self.v("f"), self.v("c")
        kind = self.r.randint(0, 5)
        if kind == 0:
            return [f"{kv} = {self.fcall(self.iexpr())}", f"def {fv}(y):", f"    return y + {kv}",
                    f"out.append(ident({fv}({self.lit()})))"]
        if kind == 1:
            return [f"{cv} = 0", f"def {fv}():", f"    nonlocal {cv}", f"    {cv} += 1",
                    f"    return {cv}", "for v in xs[:3]:",
                    f"    out.append(add({fv}(), ident(v)))", f"out.append({cv})"]
        if kind == 2:
            return [f"{fv} = lambda v: v * {self.lit()}",
                    f"out.append([inc({fv}(v)) for v in xs])", f"out.append(ident({fv}(n)))"]
        if kind == 3:        # late binding: the closure sees the later value
            return [f"{kv} = ident({self.lit()})", f"{fv} = lambda: {kv} * 2",
                    f"{kv} = inc({kv})", f"out.append(({fv}(), ident({fv}())))"]
        if kind == 4:        # a generator expression reads a name rebound before it runs
            return [f"{kv} = ident({self.lit()})", f"{fv} = (v + {kv} for v in xs)",
                    f"{kv} = add({kv}, 10)", f"out.append([ident(v) for v in {fv}])"]
        return [f"{fv} = [lambda i=i: add(i, {self.lit()}) for i in range(3)]",
                f"{cv} = [lambda: i for i in range(3)]",
                f"out.append(([g() for g in {fv}], [ident(g()) for g in {cv}]))"]

    def alias_escape(self):
        """Aliases of arguments and locals, and local lists that escape to other code."""
        a, acc, al, x = self.v("a"), self.v("acc"), self.v("al"), self.v("x")
        kind = self.r.randint(0, 6)
        if kind == 0:        # mutation through an alias, before the loop over the original
            lines = [f"{al} = xs", f"{a} = ident({self.lit()})",
                     self.pick([f"{al}.append({a})", f"{al}[0:1] = [{a}]", f"{al}.insert(0, {a})",
                                f"{al}.reverse()", f"mutate({al})"])]
            lines += [f"out.append([{self.fcall(x)} for {x} in xs])"]
        elif kind == 1:      # a local accumulator handed to a helper, then read
            lines = [f"{acc} = []", f"for {x} in xs:", f"    {acc}.append({self.fcall(x)})",
                     self.pick([f"mutate({acc})", f"note({acc})", f"LOG.append({acc})",
                                f"{acc}.append(len(LOG))"]),
                     self.pick([f"LOG[-1].append({self.lit()}) if LOG and isinstance(LOG[-1], "
                                f"list) else None", "pass"]),
                     f"out.append([ident({x}) for {x} in {acc}])"]
        elif kind == 2:      # a rebound argument: the caller's list is no longer touched
            lines = [f"{a} = ident({self.lit()})", "xs = list(xs)", f"xs.append({a})",
                     f"out.append([inc({x}) for {x} in xs])"]
        elif kind == 3:      # a local dict aliased into a global, then changed there
            lines = [f"{acc} = {{}}", f"{acc}['x'] = ident(n)", f"TABLE['alias_{self.k}'] = {acc}",
                     f"TABLE['alias_{self.k}']['y'] = inc(n)",
                     f"out.append(sorted(({x}, ident(v)) for {x}, v in {acc}.items()))"]
        elif kind == 4:      # two names for one row, one of them changed
            lines = [f"{al} = ROWS[0]", f"{a} = ident({self.lit()})", f"{al}.append({a})",
                     "out.append([total(r) for r in ROWS])"]
        elif kind == 5:      # the same list twice in the result
            lines = [f"{acc} = [ident(n)]", f"{al} = {acc}", f"{al}.append(inc(n))",
                     f"out.append(({acc}, {al}))"]
        else:                # argument returned and changed afterwards by a helper
            lines = [f"{acc} = [ident(v) for v in xs]", f"out.append({acc})",
                     f"mutate({acc})", f"out.append(len({acc}))"]
        return lines

    def loop_after(self):
        """Values of loop variables and carried names after loops (break, else, long)."""
        x, y, acc = self.v("x"), self.v("y"), self.v("acc")
        kind = self.r.randint(0, 4)
        if kind == 0:
            return [f"{y} = -1", f"for {x} in xs:", f"    {y} = {self.fcall(x)}",
                    f"    if {y} > {self.lit(0, 9)}:", "        break",
                    f"out.append(({x}, {y}))"]
        if kind == 1:
            cnt = self.pick([str(self.r.randint(0, 5)), str(self.r.randint(100, 200))])
            stop = self.r.randint(0, 220)
            return [f"{y} = 0", f"for {x} in range({cnt}):", f"    {y} = add({y}, {x})",
                    f"    if {x} == {stop}:", "        break", "else:",
                    f"    {y} = -{y}", "try:", f"    out.append(({x}, {y}))",
                    "except NameError:", f"    out.append(('unbound', {y}))"]
        if kind == 2:
            cnt = self.r.randint(100, 220)
            bad = self.r.randint(0, 700)
            return [f"{acc} = 0", f"for {x} in range({cnt}):",
                    f"    {acc} += fail_if_eq({x}, {bad})",
                    f"    if {x} % 40 == 0:", f"        print('at', {x}, {acc})",
                    f"out.append({acc})"]
        if kind == 3:
            return [f"{acc} = []", f"{y} = ident(0)", f"while {y} < {self.r.randint(0, 6)}:",
                    f"    {y} = inc({y})", f"    if {y} == {self.lit(1, 4)}:", "        break",
                    f"    {acc}.append({y})", "else:", f"    {acc}.append('done')",
                    f"out.append(({y}, {acc}))"]
        return [f"for {x} in xs:", f"    if ident({x}) > {self.lit(0, 9)}:",
                f"        {y} = {x}", "        break", "else:", f"    {y} = None",
                f"print('found', {y})", f"out.append({y})"]

    def aug_sub(self):
        """Augmented assignments on items and attributes with calls; calls in slices."""
        i = self.v("i")
        kind = self.r.randint(0, 4)
        if kind == 0:
            return [f"for {i} in range(len(xs)):", f"    xs[{i}] += ident({self.lit()})",
                    "out.append(list(xs))"]
        if kind == 1:
            return ["for k in list(d):", f"    d[k] = add(d[k], {self.lit()})",
                    "d[next(iter(d))] -= inc(0)", "out.append(dict(d))"]
        if kind == 2:
            return [f"BOX.v += ident({self.lit()})", "BOX.v *= inc(1)",
                    "out.append((BOX.v, BOX.get()))"]
        if kind == 3:
            return [f"out.append(xs[ident(0):inc({self.lit(0, 3)})])",
                    f"out.append(xs[::ident({self.pick(['1', '-1', '2'])})])"]
        return [f"{self.v('r')} = [[0] * 2 for _ in range(2)]",
                f"for {i} in range(2):", f"    {self.v('r')}[{i}][{i}] += ident({i} + 1)",
                f"    {self.v('r')}[{i}][1 - {i}] = inc({self.v('r')}[{i}][{i}])",
                f"out.append({self.v('r')})"]

    def global_rebind(self):
        """Globals rebound by sync points and read by later calls; a global callee rebound."""
        kind = self.r.randint(0, 8)
        if kind == 5:        # a callee taken from a dict that a sync point changes
            return ["out.append(OPS['f'](n))", "OPS['f'] = shout", "out.append(OPS['f'](n))"]
        if kind == 6:        # a local callee rebound by a closure (a cell variable)
            fv, sw = self.v("f"), self.v("sw")
            return [f"{fv} = inc", f"def {sw}():", f"    nonlocal {fv}", f"    {fv} = shout",
                    f"out.append({fv}(n))", f"{sw}()", f"out.append({fv}(n))"]
        if kind == 7:        # a functional method replaced on the class by a sync point
            return [f"{self.v('b')} = Box(ident({self.lit()}))",
                    f"out.append({self.v('b')}.get())", "Box.get = plain_get",
                    f"out.append({self.v('b')}.get())"]
        if kind == 8:        # a warning from a plain helper between calls
            return ["out.append(inc(warn_me(ident(n))))", "out.append(warn_me(inc(n)))"]
        if kind == 0:
            return ["COUNTER = ident(5)", "out.append(inc(COUNTER))"]
        if kind == 1:
            return [f"{self.v('a')} = ident(n)", f"bump({self.v('a')})",
                    "out.append((inc(COUNTER), COUNTER))"]
        if kind == 2:
            return ["out.append(FN(n))", "retarget()", "out.append(FN(n))"]
        if kind == 3:
            return [f"setbox(BOX, ident({self.lit()}))", "out.append((BOX.get(), BOX.scaled(2)))"]
        return [f"{self.v('m')} = BOX.scaled", f"BOX.v = ident({self.lit()})",
                f"out.append({self.v('m')}(3))"]

    def short_circuit(self):
        """and/or, conditional expressions and chained comparisons around effectful calls."""
        a = self.iexpr()
        return [self.pick([
            f"out.append(shout({a}) or note({self.lit()}))",
            f"out.append(keep_odd({a}) and inc(shout({self.lit()})))",
            f"out.append(ident({a}) if keep_odd({a}) else inc(shout({a})))",
            f"out.append(0 < shout({a}) < 5)",
            f"out.append(-10 < ident({a}) < shout({self.lit()}) < 10)",
            f"out.append(is_odd({a}) or keep_odd({self.lit()}) or shout(1))",
            "out.append([v for v in xs if keep_odd(v) and is_odd(inc(v))])",
        ]), "print('sc', len(out))"]

    def misc_expr(self):
        """assert, star-args, unpacking, % and .format, walrus in while, methods on results,
        a local import."""
        v = self.v("v")
        return [self.pick([
            f"assert ident({self.iexpr()}) > -1000, f'never {{inc(1)}}'",
            "out.append(tup(*xs, *[inc(v) for v in xs[:2]]))",
            "out.append(tup(*(ident(v) for v in xs)))",
            f"{v}, *rest_{self.k} = ident((n, 1, 2))\nout.append(({v}, rest_{self.k}))",
            f"{v}, w_{self.k} = inc(n), ident(len(xs))\n{v}, w_{self.k} = w_{self.k}, {v}\n"
            f"out.append(({v}, w_{self.k}))",
            "out.append('%d-%s' % (ident(n), inc(n)))",
            "out.append('{}:{:>4}'.format(ident(n), inc(len(xs))))",
            f"{v} = 0\nwhile ({v} := inc({v})) < {self.r.randint(0, 5)}:\n    out.append({v})",
            "out.append(str(ident(n)).zfill(inc(3)))",
            "out.append(tup(n, b=1) if False else add(a=ident(1), b=n))",
            "import math\nout.append(math.gcd(ident(12), inc(n)))",
            "out.append(abs(ident(-n)) + abs(n - 5))",
            "out.append(sorted([ident(v) for v in xs]))",
        ])]

    def nested_loops(self):
        x, y, acc = self.v("x"), self.v("y"), self.v("acc")
        lines = [f"{acc} = []", f"for {x} in xs[:4]:"]
        inner = [f"for {y} in range({x} % 4):"]
        jump = "    continue" if self.chance(0.5) else "    break"
        inner += indent([f"if is_odd({x} + {y}):", jump, f"{acc}.append(add({x}, {y}))"])
        if self.chance(0.4):
            inner += [f"if {x} > {self.lit(0, 9)}:", "    break"]
        else:
            inner += [f"print('row', {x})"]
        lines += indent(inner)
        lines += [f"out.append({acc})",
                  f"out.append([add({x}, {y}) for {x} in xs[:3] for {y} in range({x} % 3) "
                  f"if is_odd({x} + {y})])"]
        return lines

    def consumer(self):
        """Generator expressions with calls given to consumers that stop early or fail."""
        src = self.pick(["gen_noisy(xs)", "xs", "gen_noisy(xs + [n])", "Ticker(4)"])
        f = self.pick(["is_odd(v)", "inc(v)", f"fail_if_eq(v, {self.lit(0, 9)})",
                       f"{self.pick(FAILERS)}(v)"])
        cons = self.pick(["any", "all", "sum", "min", "max", "sorted", "list", "tuple", "set",
                          "next", "'-'.join", "in", "unpack", "zip"])
        g = f"({f} for v in {src})"
        if cons == "next":
            line = f"out.append(next({g}, None))"
        elif cons == "'-'.join":
            line = f"out.append('-'.join(str({f}) for v in {src}))"
        elif cons == "in":
            line = f"out.append({self.lit(0, 5)} in {g})"
        elif cons == "unpack":
            line = f"out.append([*{g}])"
        elif cons == "zip":
            line = f"out.append(list(zip(range({self.r.randint(0, 3)}), {g})))"
        elif cons == "set":
            line = f"out.append(sorted(set({g}), key=repr))"
        elif cons in ("min", "max"):
            line = f"out.append({cons}({g}, default=None))"
        else:
            line = f"out.append({cons}({g}))"
        lines = [line, "print('consumed', len(out))"]
        if "fail" in f:
            lines = ["try:"] + indent(lines) + [f"except {CATCH_ALL} as e:",
                                                "    out.append(describe(e))"]
        return lines

    def try_with(self):
        """Calls inside try/except/else/finally and inside with blocks (which run as one
        step), with break/continue/return crossing them."""
        x, y = self.v("x"), self.v("y")
        kind = self.r.randint(0, 4)
        if kind == 0:
            return [f"with Loud('{self.k}', swallow={self.pick(['True', 'False'])}):",
                    f"    out.append({self.fcall('n')})",
                    f"    out.append(fail_plain({self.pick(['n', 'len(xs)', self.lit()])}))",
                    "    print('inside')"]
        if kind == 1:
            return [f"for {x} in xs:", f"    {y} = {self.fcall(x)}", "    try:",
                    f"        if {y} > {self.lit(0, 9)}:", "            break",
                    f"        if is_odd({y}):", "            continue",
                    f"        out.append({y})", "    finally:", f"        print('fin', {x})"]
        if kind == 2:
            return ["try:", f"    {y} = fail_from({self.pick(['n', 'len(xs)'])})",
                    "except ValueError as e:", "    out.append(describe(e))",
                    f"    {y} = inc(-1)", "else:", f"    {y} = ident({y})", "finally:",
                    "    print('finally')", f"out.append({y})"]
        if kind == 3:
            return ["try:", f"    for {x} in xs:", f"        out.append(fail_plain({x}))",
                    "except AppError as e:", "    out.append(('stopped', e.args))",
                    "    try:", "        {}[e.args[1]]", "    except KeyError as e2:",
                    "        out.append(describe(e2))"]
        return [f"{x} = {y} = ident(n)", f"xs[0:0] = [{y}] if False else []",
                f"{self.v('z')} = [{x}] * 2", f"{self.v('z')}[0] = {y} = inc({x})",
                f"out.append(({x}, {y}, {self.v('z')}))"]

    def speculation(self):
        """A sync point that raises or returns, then calls on constants that would fail: they
        may start early, but only the plain run's outcome may show."""
        f = self.pick(FAILERS)
        bad = self.pick([f"{f}({self.lit(0, 9)})", "fail_zero(3)", "fail_zero(4)",
                         f"fail_if_eq({self.lit(0, 3)}, {self.lit(0, 3)})", "inc(1)"])
        first = self.pick([f"boom(n, {self.lit(0, 7)})", f"boom(len(xs), {self.lit(0, 5)})",
                           f"print('before', {self.fcall('n')})",
                           "if keep_odd(n):\n    return ('returned', out)",
                           f"if shout(n) < {self.lit(-5, 0)}:\n    return out + [1]",
                           f"note({self.fcall('n')})"])
        return [first, f"out.append({bad})", f"out.append({self.fcall(self.lit())})"]

    def scoping(self):
        """Comprehension variables shadowing locals, walrus in comprehensions, the first
        iterable of a generator expression bound at creation."""
        x, g = self.v("x"), self.v("g")
        kind = self.r.randint(0, 2)
        if kind == 0:
            return [f"{x} = ident({self.lit()})", f"ys_{self.k} = [inc({x}) for {x} in xs]",
                    f"zs_{self.k} = [[ident({x}) for {x} in range({x} % 3)] for {x} in xs]",
                    f"out.append(({x}, ys_{self.k}, zs_{self.k}))"]
        if kind == 1:
            return [f"{x} = {self.lit()}", f"y_{self.k} = -1",
                    f"a_{self.k} = [y_{self.k} := inc({x}) for {x} in xs]",
                    f"b_{self.k} = [ident({x}) for {x} in xs if (y_{self.k} := {x}) > "
                    f"{self.lit()}]", f"out.append(({x}, y_{self.k}, a_{self.k}, b_{self.k}))"]
        return [f"{g} = (inc(v) for v in xs)", "xs = [100] + xs",
                f"out.append((list({g}), len(xs), ident(1)))"]

    def targets(self):
        """Loop and assignment targets that are items and attributes."""
        kind = self.r.randint(0, 2)
        if kind == 0:
            return [f"for d['t{self.k}'] in range({self.r.randint(0, 3)}):",
                    f"    out.append(ident(d['t{self.k}']))",
                    "for BOX.v in xs[:2]:", "    out.append(BOX.get())"]
        if kind == 1:
            return ["xs[ident(0)] += inc(1)", "d[next(iter(d))] += inc(2)",
                    "out.append((list(xs), dict(d)))"]
        return [f"xs[0], *rest_{self.k} = ident((1, 2, 3))",
                f"d['sa{self.k}'], d['sb{self.k}'] = inc(1), ident(2)",
                f"out.append((list(xs), rest_{self.k}))"]

    def nested_scope(self):
        """A class body, a match with guards, lambda defaults in a loop."""
        kind = self.r.randint(0, 2)
        if kind == 0:
            return [f"class K_{self.k}:", "    v = ident(len(xs))",
                    "    w = [inc(q) for q in xs]",
                    f"out.append((K_{self.k}.v, K_{self.k}.w, ident(K_{self.k}.v)))"]
        if kind == 1:
            return [f"for x_{self.k} in xs:", f"    match x_{self.k}:",
                    f"        case {self.lit(0, 9)} if ident(x_{self.k}) > {self.lit(0, 5)}:",
                    f"            out.append(inc(x_{self.k}))",
                    "        case [*_]:", "            out.append('list')",
                    "        case _:", f"            out.append(ident(-x_{self.k}))"]
        return [f"fs_{self.k} = []", f"for x_{self.k} in xs:",
                f"    y_{self.k} = ident(x_{self.k})",
                f"    fs_{self.k}.append(lambda y=y_{self.k}: y * 2)",
                f"out.append(([f() for f in fs_{self.k}], [inc(f()) for f in fs_{self.k}]))"]

    def globals_life(self):
        """A global created by the function and read by a helper; a global deleted."""
        if self.chance(0.5):
            return ["global NEWG", f"NEWG = ident({self.lit()})",
                    "out.append((read_newg(), inc(NEWG)))"]
        return ["global NEWG", "NEWG = ident(1)", "del NEWG", "try:",
                "    out.append(read_newg())", "except NameError as e:",
                "    out.append(str(e))", "out.append(inc(1))"]

    def nested_sched(self):
        """A scheduled function, called in a loop, that raises part-way."""
        return [f"for k_{self.k} in [1, 3, {self.r.randint(0, 5)}]:", "    try:",
                f"        out.append(inner(ident(k_{self.k})))", "    except KeyError as e:",
                "        out.append(('caught', repr(e), repr(e.__context__)))"]

    def with_return(self):
        """``return`` inside a ``with`` inside a loop with calls."""
        x, y = self.v("x"), self.v("y")
        return [f"for {x} in xs:", f"    {y} = ident({x})",
                f"    with Loud('{self.k}'):", f"        if {y} > {self.lit(3, 9)}:",
                f"            print('ret', {y})", f"            return inc({y})",
                f"    print('no', {y})"]

    # in-flight shapes (issue 13) --------------------------------------------------------
    def _seq(self, lo=3, hi=7):
        """A sequence to loop over and its values when the text fixes them (else None)."""
        kind = self.r.randint(0, 3)
        if kind == 0:
            size = self.r.randint(lo, hi)
            return f"range({size})", list(range(size))
        if kind == 1:
            vals = self.r.sample(range(-2, 12), self.r.randint(lo, hi))
            return repr(vals), vals
        if kind == 2:
            return "xs", None
        return "xs + [n, 7]", None

    def _bad(self, vals):
        """The value a ``fail_if_eq``-like call fails on: one of ``vals`` or none of them."""
        if vals:
            return str(self.pick(vals + [-99]))
        return self.lit(-1, 9)

    def _risky(self, arg, vals=None):
        """A functional call on ``arg`` that raises for some values, or none."""
        kind = self.r.randint(0, 6)
        if kind <= 1:
            return f"fail_if_eq({arg}, {self._bad(vals)})"
        if kind == 2:
            return f"fail_sub({arg}, {self._bad(vals)})"
        if kind == 3:
            return f"fail_odd({arg}, {self._bad(vals)})"
        if kind == 4:
            return f"{self.pick(FAILERS)}({arg})"
        return self.fcall(arg)

    def _on_error(self, e):
        """The body of a handler: inspect the exception, or raise anew (bare, from, in
        the handler's context, from None)."""
        k = self.k
        kind = self.r.randint(0, 9)
        if kind <= 1:
            return [f"out.append(seen({e}))"]
        if kind == 2:
            return [f"out.append(describe({e}))"]
        if kind == 3:
            return [f"print('caught {k}', type({e}).__name__, {e}.args, "
                    f"{e}.__traceback__.tb_lineno)"]
        if kind == 4:
            return [f"out.append(tb_text({e}))"]
        if kind == 5:
            return [f"out.append(type({e}).__name__)", "raise"]
        if kind == 6:
            return [f"raise AppError('handler', {k}) from {e}"]
        if kind == 7:
            return [f"raise CodeError({k}, 'handler')"]
        if kind == 8:
            return [f"out.append({e}.args)", f"raise SubError('replaced', {k}) from None"]
        return [f"out.append(('exc_info', sys.exc_info()[1] is {e}, tb_pic({e})))"]

    def _excepts(self, e, extra=()):
        """One or two ``except`` clauses, each matching some failures and not others."""
        lines = []
        for _ in range(self.pick([1, 1, 2])):
            lines += [f"except {self.pick(FLIGHT_HANDLERS)} as {e}:"]
            lines += indent(self._on_error(e) + list(extra))
        return lines

    def _probe(self, names):
        """Read names a failure may have left unbound (UnboundLocalError, with its text)."""
        u = self.v("u")
        return ["try:", f"    out.append(({', '.join(names)},))",
                f"except UnboundLocalError as {u}:", f"    out.append(('unbound', str({u})))"]

    def _guard(self, lines):
        """Mostly an outer handler that shows what escaped (chain, frames or the printed
        traceback); sometimes the exception leaves main."""
        if self.chance(0.2):
            return lines
        show = self.pick(["seen(e)", "describe(e)", "tb_text(e)", "seen(e)"])
        return ["try:"] + indent(lines) + [f"except {FLIGHT_ALL} as e:",
                                           f"    out.append(('escaped', {show}))"]

    def try_flight(self):
        """Several functional calls in flight in a try body (straight-line, in a loop in
        the try, a try in a loop, nested, returning), zero, one or several of them failing,
        handlers that match or not; prints between the calls; names read afterwards."""
        kind = self.r.randint(0, 6)
        k, e, e2 = self.k, self.v("e"), self.v("e2")
        a, b, c, dd = self.v("a"), self.v("b"), self.v("c"), self.v("dd")
        x, r, acc = self.v("x"), self.v("r"), self.v("acc")
        tail = []
        if self.chance(0.4):     # an else that uses what the body computed
            used = {0: b, 1: r, 3: dd, 4: a, 6: a}.get(kind, "1")
            tail += ["else:", f"    out.append(('else {k}', {self.fcall(used)}))"]
        if self.chance(0.5):
            tail += ["finally:", f"    print('finally {k}')"]
        if kind == 0:        # straight-line calls, prints between them
            body = [f"{a} = {self._risky(self.lit(0, 9))}"]
            if self.chance(0.5):
                body.append(f"print('t{k}', {a})")
            body.append(f"{b} = {self._risky(self.lit(0, 9))}")
            if self.chance(0.4):
                body.append(self._risky(self.lit(0, 9)))
            body.append(f"{c} = add({a}, {self._risky(b)})")
            if self.chance(0.5):
                body.append(f"print('t{k} c', {c})")
            lines = ["try:"] + indent(body) + self._excepts(e) + tail
            return self._guard(lines + self._probe([a, b, c]))
        if kind == 1:        # a loop of calls inside the try
            seq, vals = self._seq()
            body = [f"for {x} in {seq}:", f"    {acc}.append({self._risky(x, vals)})"]
            if self.chance(0.4):
                body.append(f"    print('at', {x})")
            if self.chance(0.3):
                body.append(f"    {acc}.append({self._risky(x, vals)})")
            body.append(f"{r} = total({acc})")
            lines = [f"{acc} = []", "try:"] + indent(body) + self._excepts(e) + tail
            return self._guard(lines + [f"out.append({acc})"] + self._probe([x, r]))
        if kind == 2:        # a try in a loop; the handler continues or breaks
            seq, vals = self._seq()
            body = [f"{r} = {self._risky(x, vals)}"]
            if self.chance(0.4):
                body.append(f"print('got', {x}, {r})")
            if self.chance(0.4):
                body.append(f"{acc}.append({self._risky(r)})")
            jump = self.pick(["continue", "break", "pass"])
            handler = [f"except {self.pick(FLIGHT_HANDLERS)} as {e}:",
                       f"    {acc}.append(('h', {x}, type({e}).__name__, {e}.args))",
                       f"    {jump}"]
            els = ["else:", f"    {acc}.append(inc({r}))"] if self.chance(0.5) else []
            fin = []
            fk = self.r.randint(0, 3)
            if fk == 1:
                fin = ["finally:", f"    print('fin', {x})"]
            elif fk == 2:        # a finally that leaves the loop drops the exception
                fin = ["finally:", f"    if {x} == {self._bad(vals)}:", "        break"]
            elif fk == 3:
                fin = ["finally:", "    continue"]
            loop = ["try:"] + indent(body) + handler + els + fin + [f"{acc}.append(('after', {x}))"]
            lines = [f"{acc} = []", f"for {x} in {seq}:"] + indent(loop)
            return self._guard(lines + [f"out.append({acc})"])
        if kind == 3:        # nested tries: the inner handler misses, matches or raises
            inner = ["try:", f"    {b} = {self._risky(self.lit(0, 9))}",
                     f"    {c} = {self._risky(self.lit(0, 9))}"]
            inner += self._excepts(e2)
            if self.chance(0.6):
                inner += ["finally:", f"    print('inner finally {k}', {a})"]
            body = [f"{a} = {self._risky(self.lit(0, 9))}"] + inner + \
                [f"{dd} = {self._risky(self.lit(0, 9))}"]
            lines = ["try:"] + indent(body) + self._excepts(e) + tail
            return self._guard(lines + self._probe([a, b, c, dd]))
        if kind == 4:        # a try in a handler: the new failure's context
            lines = ["try:", f"    {a} = {self._risky(self.lit(0, 9))}",
                     f"    {b} = {self._risky(self.lit(0, 9))}",
                     f"except {self.pick(FLIGHT_HANDLERS)} as {e}:", "    try:",
                     f"        out.append([{self._risky(x)} for {x} in "
                     f"range({self.r.randint(1, 5)})])",
                     f"    except {self.pick(FLIGHT_HANDLERS)} as {e2}:",
                     f"        out.append(seen({e2}))", f"    out.append(seen({e}))"]
            return self._guard(lines + tail + self._probe([a, b]))
        if kind == 5:        # return from inside the try body (a loop's or straight-line)
            seq, vals = self._seq()
            lim = self.lit(0, 12)
            body = [f"for {x} in {seq}:", f"    {r} = {self._risky(x, vals)}",
                    f"    if {r} > {lim}:", f"        return ('returned {k}', {x}, {r}, out)",
                    f"    out.append({r})"]
            fin = ["finally:", f"    print('finally {k}', len(out))"]
            if self.chance(0.25):
                fin.append(f"    return ('finally returned {k}', out)")
            lines = ["try:"] + indent(body) + self._excepts(e) + fin
            return self._guard(lines)
        # the calls' order in the try against a later sync point: only the first failure
        return self._guard([
            f"{acc} = []", "try:",
            f"    {a}, {b} = {self._risky(self.lit(0, 9))}, {self._risky(self.lit(0, 9))}",
            f"    {acc}.append(shout({a}))",
            f"    {acc}.extend([{self._risky('v')} for v in xs])",
            f"    {acc}.append(note({b}))"] + self._excepts(e) + tail +
            [f"out.append(({acc}, len(LOG)))"])

    def _cm(self, tag):
        """(context manager expression, its ``as`` target or None, what to show after)."""
        kind = self.r.randint(0, 5)
        t = self.v(f"cm{tag}")
        if kind <= 1:
            swallow = self.pick(["True", "False", "AppError", "ValueError", "SubError"])
            return f"Rec('{self.k}{tag}', swallow={swallow})", t, f"{t}.got"
        if kind == 2:
            return f"gen_cm({self.lit(0, 9)}, swallow={self.pick(['True', 'False'])})", t, t
        if kind == 3:
            exc = self.pick(["AppError", "ZeroDivisionError", "(ValueError, LookupError)",
                             "SubError, OddError"])
            return f"contextlib.suppress({exc.strip('()')})", None, None
        if kind == 4:
            return f"contextlib.nullcontext(ident({self.lit()}))", t, t
        return f"Loud('{self.k}{tag}', swallow={self.pick(['True', 'False'])})", None, None

    def with_flight(self):
        """Calls in flight inside ``with`` blocks: context managers that print and record
        the exception they got, swallow it or not (classes, generator ones, suppress),
        several items, nested withs, tuple targets, an __enter__ that raises."""
        kind = self.r.randint(0, 6)
        k, x, acc, r = self.k, self.v("x"), self.v("acc"), self.v("r")
        seq, vals = self._seq()
        loop = [f"for {x} in {seq}:", f"    {acc}.append({self._risky(x, vals)})"]
        if self.chance(0.4):
            loop.append(f"    print('w{k}', {x})")
        if kind == 0:        # one manager around a loop of calls
            cm, t, show = self._cm("a")
            head = f"with {cm} as {t}:" if t else f"with {cm}:"
            lines = [f"{acc} = []", head] + indent(loop + [f"print('end of with {k}')"])
            lines += [f"out.append({acc})"] + ([f"out.append({show})"] if show else [])
        elif kind == 1:      # two items: exits in reverse order
            (cm1, t1, s1), (cm2, t2, s2) = self._cm("a"), self._cm("b")
            items = ", ".join(f"{cm} as {t}" if t else cm for cm, t in ((cm1, t1), (cm2, t2)))
            lines = [f"{acc} = []", f"with {items}:"] + indent(loop)
            lines += [f"out.append({acc})"] + [f"out.append({s})" for s in (s1, s2) if s]
        elif kind == 2:      # nested withs, calls before, in and after the inner one
            (cm1, t1, s1), (cm2, t2, s2) = self._cm("a"), self._cm("b")
            inner = [f"with {cm2} as {t2}:" if t2 else f"with {cm2}:"] + indent(loop)
            body = [f"{acc}.append({self._risky(self.lit(0, 9))})"] + inner + \
                [f"{acc}.append({self._risky(self.lit(0, 9))})"]
            lines = [f"{acc} = []", f"with {cm1} as {t1}:" if t1 else f"with {cm1}:"]
            lines += indent(body) + [f"out.append({acc})"]
            lines += [f"out.append({s})" for s in (s1, s2) if s]
        elif kind == 3:      # a tuple target used by the calls
            p, q = self.v("p"), self.v("q")
            lines = [f"{acc} = []", f"with Pair(ident({self.lit()})) as ({p}, {q}):",
                     f"    for {x} in {seq}:",
                     f"        {acc}.append(add({p}, {self._risky(x, vals)}))",
                     f"    {acc}.append(tup({p}, {q}))", f"out.append({acc})"]
        elif kind == 4:      # an __enter__ that raises, alone or after a manager that sees it
            first = self.pick(["", f"Rec('{k}', swallow={self.pick(['True', 'False'])}) as {r}, "])
            lines = [f"{acc} = []", f"{r} = None", f"with {first}BadEnter({k}):"] + \
                indent(loop) + [f"out.append(({acc}, getattr({r}, 'got', None)))"]
        elif kind == 5:      # a with per iteration, each swallowing or not
            body = [f"with Rec({x}, swallow={self.pick(['True', 'AppError', 'False'])}) as {r}:",
                    f"    {acc}.append({self._risky(x, vals)})"]
            if self.chance(0.5):
                body.append(f"    print('in', {x})")
            if self.chance(0.4):
                body += [f"    if {x} == {self._bad(vals)}:", "        break"]
            body.append(f"{acc}.append(({x}, {r}.got))")
            lines = [f"{acc} = []", f"for {x} in {seq}:"] + indent(body) + [f"out.append({acc})"]
        else:                # suppress around straight-line calls: names left unbound
            a, b = self.v("a"), self.v("b")
            exc = self.pick(["AppError", "AppError, ValueError", "Exception", "LookupError"])
            lines = [f"with contextlib.suppress({exc}):",
                     f"    {a} = {self._risky(self.lit(0, 9))}",
                     f"    print('between', {a})",
                     f"    {b} = {self._risky(self.lit(0, 9))}"] + self._probe([a, b])
        return self._guard(lines)

    def while_flight(self):
        """``while`` loops with calls in flight: counted, breaking on a call's result,
        with ``else``, ``while True``, tests that read a call's result, a list popped."""
        kind = self.r.randint(0, 5)
        i, acc, r = self.v("i"), self.v("acc"), self.v("r")
        lim = self.r.randint(0, 7)
        vals = list(range(lim + 1))
        if kind == 0:        # counted: the increment after the append
            body = [f"{acc}.append({self._risky(i, vals)})"]
            if self.chance(0.4):
                body.append(f"print('w', {i})")
            body.append(f"{i} += 1")
            lines = [f"{i} = 0", f"while {i} < {lim}:"] + indent(body)
        elif kind == 1:      # break on a call's result
            first = f"{r} = {self._risky(i, vals)}"
            stop = self.pick([f"{r} > {self.lit(0, 9)}", f"is_odd({r})",
                              f"{r} == {self.lit(0, 9)}"])
            body = [first, f"if {stop}:", "    break", f"{acc}.append({r})", f"{i} += 1"]
            lines = [f"{i} = 0", f"while {i} < {lim}:"] + indent(body)
        elif kind == 2:      # while/else, the break taken or not
            body = [f"{i} += 1", f"{r} = {self.fcall(i)}", f"if {i} == {self.lit(0, 9)}:",
                    "    break", f"{acc}.append({self._risky(r)})"]
            lines = [f"{i} = 0", f"while {i} < {lim}:"] + indent(body) + \
                ["else:", f"    {acc}.append(('else', {i}, {self.fcall(i)}))"]
        elif kind == 3:      # while True, left by a break on a counter
            body = [f"{i} += 1", f"if {i} > {lim}:", "    break",
                    f"{acc}.append({self._risky(i, vals)})"]
            if self.chance(0.4):
                body.insert(2, f"    print('leaving', {i})")
            lines = [f"{i} = 0", "while True:"] + indent(body)
        elif kind == 4:      # the test reads a call's result
            test = self.pick([f"{r} < {lim}", f"below({r}, {lim})", f"ident({r}) < {lim}"])
            body = [f"{acc}.append({self._risky(r, vals)})", f"{r} = inc({r})"]
            if self.chance(0.4):
                body.insert(1, f"print('r', {r})")
            lines = [f"{r} = ident(0)", f"{i} = 0", f"while {test}:"] + indent(body)
        else:                # a list popped until empty, continue on some items
            st = self.v("st")
            body = [f"{r} = {st}.pop()", f"{i} += 1", f"if is_odd({r}):", "    continue",
                    f"{acc}.append({self._risky(r)})"]
            lines = [f"{st} = list(xs)", f"{i} = 0", f"while {st}:"] + indent(body)
        return self._guard([f"{acc} = []"] + lines + [f"out.append(({acc}, {i}))"])

    def _valued(self, x):
        """A functional call on ``x`` that never raises, and what it returns (in Python)."""
        kind = self.r.randint(0, 3)
        c = self.r.randint(-2, 5)
        return [(f"ident({x})", lambda v: v), (f"inc({x})", lambda v: v + 1),
                (f"add({x}, {c})", lambda v: v + c), (f"Box({x}).scaled(2)", lambda v: 2 * v)][kind]

    def _hit(self, vals, fn):
        """Where the search hits (first, middle, last item or never) and the value there."""
        where = self.pick(["first", "middle", "last", "never"])
        if vals is None:
            return None, self.lit(0, 9)
        pos = {"first": 0, "middle": len(vals) // 2, "last": len(vals) - 1}.get(where)
        return pos, str(fn(vals[pos]) if pos is not None else -1000)

    def search_flight(self):
        """A ``for`` loop that leaves with ``break`` or ``return`` on a call's result, at
        the first, a middle or the last item or never; calls that would raise in the
        iterations after the exit (their exceptions must never show); prints after the
        call; accumulators; ``else``; nested loops."""
        kind = self.r.randint(0, 4)
        k, x, y, r, acc, hit = (self.k, self.v("x"), self.v("y"), self.v("r"), self.v("acc"),
                                self.v("hit"))
        seq, vals = self._seq()
        call, fn = self._valued(x)
        pos, target = self._hit(vals, fn)
        # fails on an item after the hit only, unless the draw says otherwise
        later = vals[pos + 1:] if vals and pos is not None else []
        bad = str(self.pick(later)) if later and self.chance(0.8) else self._bad(vals)
        leave = ("break" if kind in (0, 1, 3) else f"return ('found {k}', {x}, {acc}, out)")
        body = [f"{r} = {call}"]
        if self.chance(0.4):
            body.append(f"print('look', {x}, {r})")
        if self.chance(0.5):     # before the test: would raise in a later iteration
            body.append(f"{acc}.append(fail_if_eq({x}, {bad}))")
        test = self.pick([f"{r} == {target}", f"{r} == {target}", f"below({target}, {r} + 1) "
                          f"and {r} == {target}"])
        body += [f"if {test}:", f"    {hit} = {x}", f"    {leave}"]
        if self.chance(0.7):     # after the test: would raise in the hit's own iteration
            body.append(f"{acc}.append({self.pick(['fail_if_eq', 'fail_sub'])}({x}, {bad}))")
        if kind in (0, 2):
            lines = [f"{acc} = []", f"{hit} = None", f"for {x} in {seq}:"] + indent(body)
            if self.chance(0.5):
                lines += ["else:", f"    {acc}.append(('no hit', {self.fcall(x)}))"]
        elif kind == 1:          # no else, no default: the name may stay unbound
            lines = [f"{acc} = []", f"for {x} in {seq}:"] + indent(body)
            lines += self._probe([hit])
        else:                    # nested: the inner loop leaves, the outer goes on (or not)
            outer = [f"for {y} in range({self.r.randint(1, 3)}):"]
            inner = [f"for {x} in {seq}:"] + indent([ln.replace(f"{r} = {call}",
                                                                f"{r} = add({call}, {y})")
                                                     for ln in body])
            lines = [f"{acc} = []", f"{hit} = None"] + outer + indent(
                inner + [f"{acc}.append(('row', {y}, {hit}))"])
        lines.append(f"out.append({acc})" if kind == 1 else f"out.append(({acc}, {hit}))")
        return self._guard(lines)

    # wrappers -----------------------------------------------------------------------------
    def wrap(self, lines, shape):
        if shape != "while_return" and self.chance(0.12):
            # a step run inside one of the scheduler's except blocks would see its exception
            lines = lines + ["out.append(repr(sys.exc_info()[1]))"]
        if shape == "while_return" or not self.chance(0.35):
            return lines
        kind = self.r.randint(0, 4)
        k = self.k
        if kind == 0:
            return [self.pick(["if n >= -1000:", "if len(xs) >= 0:", "if not is_odd(2):"])] + \
                indent(lines)
        if kind == 1:
            return [f"for rep_{k} in range({self.r.randint(1, 2)}):"] + indent(lines)
        if kind == 2:
            return [f"wr_{k} = 0", f"while wr_{k} < {self.r.randint(1, 2)}:",
                    f"    wr_{k} += 1"] + indent(lines)
        if kind == 3:
            return ["try:"] + indent(lines) + [
                f"except {CATCH_ALL} as e:", "    out.append(('wrapped', type(e).__name__))"]
        return ["with contextlib.nullcontext():"] + indent(lines)


def generate(seed, keep=None):
    """The program for ``seed``: ``(source, args, shapes)``. ``keep`` (a set of snippet
    indices) leaves the other snippets out; the kept ones are unchanged."""
    r = random.Random(f"{seed}:plan")
    n_snips = r.randint(3, 7)
    names = sorted(WEIGHTS)
    weights = [WEIGHTS[s] for s in names]
    plan = r.choices(names, weights, k=n_snips)
    if r.random() < 0.25:
        plan.append("while_return")
    plan = list(enumerate(plan))
    er = random.Random(f"{seed}:extra")
    if er.random() < 0.5:       # the next index, placed before a final while_return
        plan.insert(len(plan) - (plan[-1][1] == "while_return"),
                    (len(plan), er.choice(EXTRA_SHAPES)))
    fr = random.Random(f"{seed}:flight")
    for _ in range(fr.choice(FLIGHT_COUNTS)):       # the same way, after the extra one
        plan.insert(len(plan) - (plan[-1][1] == "while_return"),
                    (len(plan), fr.choice(FLIGHT_SHAPES)))
    flight = any(shape in FLIGHT_SHAPES for _, shape in plan)
    ar = random.Random(f"{seed}:args")
    xs = [ar.randint(-3, 9) for _ in range(ar.randint(1, 6))]
    d = {key: ar.randint(-2, 9) for key in ["a", "b", "c", "e"][:ar.randint(1, 4)]}
    n = ar.randint(0, 7)
    args = (xs, d, n)
    hr = random.Random(f"{seed}:helpers")
    shadow = hr.random() < 0.15
    subs = {"@SEED@": str(seed), "@ARGS@": repr(args), "@W@": str(hr.randint(0, 3)),
            "@SHADOW@": SHADOW if shadow else "", "@FLIGHT@": FLIGHT if flight else "",
            "@VARIANT@": "" if keep is None else f" (snippets {sorted(keep)})"}
    for i in range(1, 8):
        m = hr.randint(3, 7)
        subs[f"@M{i}@"] = str(m)
        subs[f"@R{i}@"] = str(hr.randint(0, m - 1))
    text = PRELUDE
    for key in sorted(subs, key=len, reverse=True):
        text = text.replace(key, subs[key])
    body = ["global COUNTER, TOTAL", "out = []"]
    shapes = []
    for i, shape in plan:
        if keep is not None and i not in keep:
            continue
        sn = Snippet(random.Random(f"{seed}:{i}"), i)
        raw = [part for line in getattr(sn, shape)() for part in line.split("\n")]
        lines = sn.wrap(raw, shape)
        body += [f"# snippet {i}: {shape}"] + lines
        shapes.append(shape)
    body.append(random.Random(f"{seed}:end").choice(
        ["return out", "return out, xs, d", "print('end', len(out))\nreturn out"]))
    body = "\n".join(body).split("\n")
    source = text + "@_pd_deco\ndef main(xs, d, n):\n" + "\n".join(indent(body)) + "\n"
    return source, args, shapes, len(plan)


# --------------------------------------------------------------------------- running

_TMPDIR = None
_COUNTER = itertools.count()


def _tmpdir():
    global _TMPDIR
    if _TMPDIR is None:
        _TMPDIR = tempfile.mkdtemp(prefix="pydron_progen_")
        atexit.register(shutil.rmtree, _TMPDIR, True)
    return _TMPDIR


def _load(path, modname, deco):
    spec = importlib.util.spec_from_file_location(modname, path)
    module = importlib.util.module_from_spec(spec)
    module._pd_deco = deco
    sys.modules[modname] = module
    spec.loader.exec_module(module)
    return module


def check_source(source, args, label="program"):
    """Run ``main`` of ``source`` plainly and scheduled (each in a freshly loaded module of
    the same name) and compare everything. Returns None, or the failure text."""
    modname = f"pydron_gen_{os.getpid()}_{next(_COUNTER)}"
    path = os.path.join(_tmpdir(), modname + ".py")
    with open(path, "w") as fh:
        fh.write(source)

    def make(deco):
        module = _load(path, modname, deco)
        return module.main, lambda: {g: getattr(module, g, "<unbound>")
                                     for g in getattr(module, "GLOBALS", ())}

    make.__qualname__ = label
    try:
        diffcheck.assert_same_factory(make, *copy.deepcopy(args))
        return None
    except AssertionError as e:
        return str(e)
    except diffcheck.DiffTimeout as e:
        return f"{label}: timeout: {e}"
    except Exception:           # noqa: BLE001 - a generator bug is a failure too
        return f"{label}: the harness failed:\n{traceback.format_exc()}"
    finally:
        sys.modules.pop(modname, None)
        linecache.cache.pop(path, None)
        try:
            os.remove(path)
        except OSError:
            pass


def check_seed(seed, keep=None):
    source, args, _, _ = generate(seed, keep)
    return check_source(source, args, f"generated program seed={seed}")


def failure_report(seed, text, source=None, pool="POOL"):
    """The message for one failing seed: how to reproduce, the difference, the source."""
    if source is None:
        source = generate(seed)[0]
    if len(text) > 6000:
        text = text[:6000] + "\n... (difference truncated)"
    return (f"=== seed {seed} failed on {pool} (reproduce: python tests/progen.py --seed "
            f"{seed} --run --pool {pool})\n{text}\n--- source of seed {seed}:\n{source}")


def signature(text):
    """A rough class label of a failure text, for triage (not for tests)."""
    if text is None:
        return None
    keys = re.findall(r"^  (\w+):\n", text, flags=re.M)
    sched = re.search(r"scheduled exception \(with its chain\):\n\s+(\S+?):", text)
    plain = re.search(r"plain exception \(with its chain\):\n\s+(\S+?):", text)
    bits = ["+".join(keys) or "?"]
    if plain:
        bits.append("plain=" + plain.group(1).rsplit(".", 1)[-1])
    if sched:
        msg = re.search(r"scheduled exception \(with its chain\):\n\s+\S+: str='(.{0,40})",
                        text)
        bits.append("sched=" + sched.group(1).rsplit(".", 1)[-1]
                    + (f"({re.sub(r'[0-9]+', 'N', msg.group(1))})" if msg else ""))
    if "outer state differs" in text:
        bits.append("globals")
    if "PydronWarning" in text:
        bits.append("fallback-warning")
    if "timeout" in text:
        bits.append("timeout")
    return " ".join(bits)


def reduce_seed(seed, still_fails=None):
    """Drop snippets one at a time while the program keeps failing (with the same
    signature, unless ``still_fails`` says otherwise). Returns the kept snippet indices."""
    first = check_seed(seed)
    if first is None:
        return None
    sig = signature(first)
    if still_fails is None:
        def still_fails(text):
            return text is not None and signature(text) == sig
    n = generate(seed)[3]
    keep = set(range(n))
    changed = True
    while changed:
        changed = False
        for i in sorted(keep):
            trial = keep - {i}
            if still_fails(check_seed(seed, trial)):
                keep = trial
                changed = True
    return keep


def _blocks(lines):
    """Index ranges of main's statements: a line and the lines indented under it."""
    out = []
    for i, line in enumerate(lines):
        depth = len(line) - len(line.lstrip())
        j = i + 1
        while j < len(lines) and (len(lines[j]) - len(lines[j].lstrip()) > depth
                                  or not lines[j].strip()):
            j += 1
        out.append((i, j))
    return out


def reduce_lines(source, args, still_fails):
    """Drop statements of ``main`` (a line with its nested block; the smallest first, over
    and over) while the program compiles and ``still_fails(failure_text)``; returns the
    smaller source. For hand reduction of a failing seed below the snippet level."""
    head, sep, body = source.partition("def main(xs, d, n):\n")
    lines = body.rstrip("\n").split("\n")
    changed = True
    while changed:
        changed = False
        for i, j in sorted(_blocks(lines), key=lambda r: r[1] - r[0]):
            if lines[i].strip().startswith(("global ", "out = []")) or i >= len(lines):
                continue
            trial = lines[:i] + lines[j:]
            if not any(t.strip() and not t.strip().startswith("#") for t in trial):
                continue
            text = head + sep + "\n".join(trial) + "\n"
            try:
                compile(text, "<reduce>", "exec")
            except SyntaxError:
                continue
            if still_fails(check_source(text, args, "reduced")):
                lines = trial
                changed = True
                break
    return head + sep + "\n".join(lines) + "\n"


def configure(pool):
    diffcheck.configure_pool(pool)


def run_many(seeds, pool, *, verbose=False, out=sys.stdout):
    configure(pool)
    failures = []
    t0 = time.perf_counter()
    for seed in seeds:
        text = check_seed(seed)
        if text is not None:
            failures.append((seed, text))
            if verbose:
                print(failure_report(seed, text, pool=pool), file=out)
    elapsed = time.perf_counter() - t0
    return failures, elapsed


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, help="print (or --run / --reduce) this program")
    ap.add_argument("--count", type=int, help="run this many programs")
    ap.add_argument("--start", type=int, default=0, help="first seed of --count (default 0)")
    ap.add_argument("--pool", default="threads", choices=sorted(diffcheck.POOLS))
    ap.add_argument("--run", action="store_true", help="with --seed: run it, show the result")
    ap.add_argument("--reduce", action="store_true", help="with --seed: drop snippets")
    ap.add_argument("--classify", action="store_true", help="group failures by signature")
    ap.add_argument("-v", "--verbose", action="store_true", help="print each failure in full")
    ap.add_argument("--save", metavar="DIR", help="write each failure report to DIR/SEED.txt")
    opts = ap.parse_args(argv)
    if opts.seed is not None and not (opts.run or opts.reduce):
        print(generate(opts.seed)[0], end="")
        return 0
    if opts.seed is not None:
        configure(opts.pool)
        if opts.reduce:
            keep = reduce_seed(opts.seed)
            if keep is None:
                print(f"seed {opts.seed} passes on {opts.pool}")
                return 0
            source, args, _, _ = generate(opts.seed, keep)
            sig = signature(check_seed(opts.seed, keep))
            source = reduce_lines(source, args,
                                  lambda t: t is not None and signature(t) == sig)
            print(source.split("# ---- the checked function")[-1].lstrip(), end="")
            print(f"# kept snippets {sorted(keep)}, then statements; args {args!r}")
            print(check_source(source, args, f"seed {opts.seed} reduced"))
            return 1
        text = check_seed(opts.seed)
        print(f"seed {opts.seed} on {opts.pool}: {'passes' if text is None else 'FAILS'}")
        if text is not None:
            print(failure_report(opts.seed, text, pool=opts.pool))
        return 0 if text is None else 1
    if opts.count is None:
        ap.error("give --seed or --count")
    seeds = range(opts.start, opts.start + opts.count)
    failures, elapsed = run_many(seeds, opts.pool, verbose=opts.verbose)
    if opts.save:
        os.makedirs(opts.save, exist_ok=True)
        for seed, text in failures:
            with open(os.path.join(opts.save, f"{seed}.txt"), "w") as fh:
                fh.write(f"signature: {signature(text)}\n"
                         + failure_report(seed, text, pool=opts.pool))
    per = elapsed / max(1, opts.count) * 1000
    print(f"{opts.count} programs (seeds {opts.start}..{opts.start + opts.count - 1}) on "
          f"{opts.pool}: {len(failures)} failed, {elapsed:.1f} s, {per:.1f} ms per program")
    if opts.classify:
        groups = {}
        for seed, text in failures:
            groups.setdefault(signature(text), []).append(seed)
        for sig, ss in sorted(groups.items(), key=lambda kv: -len(kv[1])):
            print(f"{len(ss):5d}  {sig}\n       seeds: {ss[:30]}{' ...' if len(ss) > 30 else ''}")
    else:
        print("failing seeds:", [s for s, _ in failures])
    return 1 if failures else 0


if __name__ == "__main__":
    code = main()
    try:
        import pydron
        pydron.shutdown()
    except Exception:       # noqa: BLE001
        pass
    sys.exit(code)
