"""Differential test harness: run a function plainly and under ``pydron.schedule``.

Both runs must agree on everything an observer can see:

* the outcome: the returned value, or the raised exception, compared exactly and in both
  directions: its type, ``args``, ``str``, attributes (``__dict__``, by snapshot),
  ``__notes__``, ``__suppress_context__`` and, recursively, its ``__cause__`` and
  ``__context__`` (the whole chain). No cause is excused as "transport": a scheduled run
  must raise exactly what the plain run raised, on every pool. Exceptions met as values (a
  caught exception stored in a list, say) are pictured the same way;
* the text printed to stdout, and the warnings issued (deprecation noise aside);
* the state of the (deep-copied) arguments after the call, so mutations of a list passed
  in are compared too, including aliasing between arguments and the returned value.

``assert_same(plain, *args, **kwargs)`` is the entry point. ``plain`` may be a module-level
function, a closure, or a bound method (``obj.method``: the instance is deep-copied with the
arguments and the method's function is scheduled). ``assert_same_factory(make, ...)`` builds
the function twice, ``make(identity)`` and ``make(schedule)``, for cases where the decorator
must sit in the code itself (recursion through the scheduled name, ``@staticmethod`` above
``@schedule``) or where outer state (nonlocal cells, globals) must be compared afterwards.

Self-test mode: with ``PYDRON_DIFF_SELFTEST=1`` in the environment, ``schedule`` is the
identity, so the suite checks that the cases themselves are deterministic; ``functional`` is
the identity too when ``pydron.functional`` does not exist yet.
"""
import contextlib
import copy
import io
import os
import signal
import threading
import types
import warnings
from dataclasses import dataclass, field

import pydron

SELFTEST = os.environ.get("PYDRON_DIFF_SELFTEST", "") == "1"

#: Seconds one scheduled call may take before the harness gives up on it (a hang is a failure).
CALL_TIMEOUT = float(os.environ.get("PYDRON_DIFF_TIMEOUT", "30"))


def identity(f):
    """The do-nothing decorator: what ``schedule`` is in self-test mode."""
    return f


#: True when pydron has no ``functional`` yet: the helpers in funcs.py are then plain
#: functions. Outside self-test mode every case fails on it (collection still works, so
#: other test modules in the same run are not interrupted).
FUNCTIONAL_MISSING = not hasattr(pydron, "functional")
functional = identity if FUNCTIONAL_MISSING else pydron.functional

if SELFTEST:
    schedule = identity
else:
    def schedule(f):
        """``pydron.schedule``; a missing one fails the case, not the collection."""
        if FUNCTIONAL_MISSING:
            raise AssertionError("pydron.functional does not exist: the functional helpers "
                                 "of tests/funcs.py could not be marked")
        return pydron.schedule(f)


# --------------------------------------------------------------------------- pools

THREADS = {"workers": [{"type": "threads", "count": 4}]}
INLINE = {"workers": [{"type": "inline"}]}
MULTICORE = {"workers": [{"type": "multicore", "cores": 2}]}
# Every result of a scheduled call stays on its worker (keep_min 1 byte): what plain code
# reads is fetched, what calls read goes worker to worker (data locality, all paths).
KEPT = {"workers": [{"type": "multicore", "cores": 2}], "keep_min": 1}
POOLS = {"threads": THREADS, "inline": INLINE, "multicore": MULTICORE, "kept": KEPT}
# PYDRON_TEST_POOL=multicore runs the cases written for the threads pool on another pool.
_OVERRIDE = os.environ.get("PYDRON_TEST_POOL")


def configure_pool(name):
    """Select a pool by name ("threads" or "inline"); a no-op in self-test mode or while
    pydron has no ``configure``. Returns True when pydron was configured."""
    if SELFTEST or not hasattr(pydron, "configure"):
        return False
    if name == "threads" and _OVERRIDE:
        name = _OVERRIDE
    pydron.configure(copy.deepcopy(POOLS[name]))
    return True


# --------------------------------------------------------------------------- snapshots

_ATOMS = (int, float, complex, str, bytes, bool, type(None), type(Ellipsis), type(NotImplemented))


def _qualname(t):
    name = getattr(t, "__qualname__", getattr(t, "__name__", "?"))
    return f"{getattr(t, '__module__', '?')}.{name}"


def snapshot(obj, _memo=None):
    """A hashable, comparable picture of ``obj``: types are kept exactly (``1`` differs
    from ``1.0`` and ``True``), dict order is kept, and a mutable object met a second time
    is written as a back-reference, so aliasing is part of the picture."""
    memo = {} if _memo is None else _memo
    t = type(obj)
    if t in _ATOMS:
        if t is float and obj != obj:
            return ("float", "nan")
        return (t.__name__, obj)
    if isinstance(obj, BaseException):
        return exception_picture(obj, memo)
    if isinstance(obj, type):
        return ("type", _qualname(obj))
    if t is tuple or t is frozenset:
        inner = tuple(snapshot(x, memo) for x in obj)
        return (t.__name__, frozenset(inner) if t is frozenset else inner)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):       # namedtuple
        return ("namedtuple", _qualname(t), tuple(snapshot(x, memo) for x in obj))
    if t is range or t is slice:
        return (t.__name__, repr(obj))
    if isinstance(obj, (types.FunctionType, types.BuiltinFunctionType, types.MethodType)):
        return ("callable", getattr(obj, "__qualname__", repr(t)))
    # Mutable containers and objects: identity matters.
    key = id(obj)
    if key in memo:
        return ("ref", memo[key][0])
    memo[key] = (len(memo), obj)        # keep obj alive so ids are not reused
    index = memo[key][0]
    if t is list or t is bytearray:
        return (t.__name__, index, tuple(snapshot(x, memo) for x in obj))
    if t is dict or isinstance(obj, dict):
        return ("dict", _qualname(t), index,
                tuple((snapshot(k, memo), snapshot(v, memo)) for k, v in obj.items()))
    if t is set:
        return ("set", index, frozenset(snapshot(x, memo) for x in obj))
    if isinstance(obj, list):
        return ("list-sub", _qualname(t), index, tuple(snapshot(x, memo) for x in obj))
    state = getattr(obj, "__dict__", None)
    if state is not None:
        return ("object", _qualname(t), index,
                tuple((k, snapshot(v, memo)) for k, v in state.items()))
    slots = [s for c in t.__mro__ for s in getattr(c, "__slots__", ())]
    if slots:
        return ("object", _qualname(t), index,
                tuple((s, snapshot(getattr(obj, s, "<unset>"), memo)) for s in slots))
    return ("opaque", _qualname(t), index)


def _safe_str(exc):
    try:
        return str(exc)
    except Exception as e:     # noqa: BLE001 - a broken __str__ is part of the picture
        return f"<str() raised {type(e).__name__}>"


def exception_picture(exc, memo=None):
    """The whole observable state of an exception: type, ``args``, ``str``, attributes
    (``__dict__`` by snapshot, ``__notes__`` apart), ``__suppress_context__`` and,
    recursively, ``__cause__`` and ``__context__``. An exception met a second time (in a
    chain that loops, or stored twice) is a back-reference, like any mutable object."""
    memo = {} if memo is None else memo
    key = id(exc)
    if key in memo:
        return ("ref", memo[key][0])
    memo[key] = (len(memo), exc)
    index = memo[key][0]
    state = dict(getattr(exc, "__dict__", None) or {})
    notes = state.pop("__notes__", None)
    return ("exception", _qualname(type(exc)), index,
            snapshot(exc.args, memo),
            _safe_str(exc),
            tuple((k, snapshot(v, memo)) for k, v in state.items()),
            None if notes is None else snapshot(notes, memo),
            bool(exc.__suppress_context__),
            None if exc.__cause__ is None else exception_picture(exc.__cause__, memo),
            None if exc.__context__ is None else exception_picture(exc.__context__, memo))


def describe_exception(exc, indent="    "):
    """Readable lines for an exception and its chain (for failure messages)."""
    lines = []
    seen = set()

    def walk(e, how, depth):
        pad = indent + "  " * depth
        if id(e) in seen:
            lines.append(f"{pad}{how}<the same {type(e).__name__} again>")
            return
        seen.add(id(e))
        state = dict(getattr(e, "__dict__", None) or {})
        notes = state.pop("__notes__", None)
        text = f"{pad}{how}{_qualname(type(e))}: str={_safe_str(e)!r} args={e.args!r}"
        if state:
            text += f" attrs={state!r}"
        if notes is not None:
            text += f" notes={notes!r}"
        if e.__suppress_context__:
            text += " suppress_context=True"
        lines.append(text)
        if e.__cause__ is not None:
            walk(e.__cause__, "__cause__: ", depth + 1)
        if e.__context__ is not None:
            walk(e.__context__, "__context__: ", depth + 1)

    walk(exc, "", 0)
    return "\n".join(lines)


# --------------------------------------------------------------------------- outcomes

@dataclass
class Outcome:
    """What one run of a case showed to the world."""
    kind: str                   # "return" or "raise"
    value: object = None        # the returned value itself (plain run: handy for asserts)
    exc: BaseException = None
    stdout: str = ""
    args_after: tuple = ()
    picture: dict = field(default_factory=dict)   # what is compared

    def __repr__(self):
        return f"Outcome({self.picture!r})"


#: Warnings the environment may emit at any time (a dependency imported lazily on the first
#: scheduled call, say); they say nothing about the function under test.
_NOISE_WARNINGS = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)


class DiffTimeout(BaseException):
    """The scheduled call did not finish within CALL_TIMEOUT seconds."""


@contextlib.contextmanager
def _deadline(seconds):
    usable = (seconds and hasattr(signal, "SIGALRM")
              and threading.current_thread() is threading.main_thread())
    if not usable:
        yield
        return

    def on_alarm(signum, frame):
        raise DiffTimeout(f"call did not finish within {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def run_once(fn, args, kwargs, leading=()):
    """Call ``fn(*leading, *args, **kwargs)`` with stdout captured. ``args``/``kwargs`` (and
    ``leading``) must already be private copies; they are pictured after the call."""
    buf = io.StringIO()
    value = exc = None
    kind = "return"
    with _deadline(CALL_TIMEOUT), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with contextlib.redirect_stdout(buf):
            try:
                value = fn(*leading, *args, **kwargs)
            except DiffTimeout:
                raise
            except Exception as e:     # noqa: BLE001 - every exception is an outcome
                kind, exc = "raise", e
    memo = {}
    picture = {"args": snapshot((leading, args, kwargs), memo)}
    if kind == "return":
        picture["outcome"] = ("return", snapshot(value, memo))
    else:
        picture["outcome"] = ("raise", exception_picture(exc, {}))
    picture["stdout"] = buf.getvalue()
    # Warnings reach the user's stderr: a scheduled run must not add any (pydron warns when
    # it gives up translating and runs the function plainly: that is a bug to report).
    picture["warnings"] = tuple((_qualname(w.category), str(w.message)) for w in caught
                                if not issubclass(w.category, _NOISE_WARNINGS))
    return Outcome(kind, value, exc, buf.getvalue(), (leading, args, kwargs), picture)


def compare_outcomes(plain, sched, label="case"):
    """Assert that two outcomes agree; the message shows every field that differs."""
    problems = []
    for key in ("outcome", "stdout", "args", "warnings"):
        if plain.picture.get(key) != sched.picture.get(key):
            problems.append(f"  {key}:\n    plain:     {plain.picture.get(key)!r}\n"
                            f"    scheduled: {sched.picture.get(key)!r}")
    if plain.picture.get("outcome") != sched.picture.get("outcome"):
        for name, out in (("plain", plain), ("scheduled", sched)):
            if out.kind == "raise":
                problems.append(f"  {name} exception (with its chain):\n"
                                + describe_exception(out.exc))
    if problems:
        extra = ""
        if sched.exc is not None and plain.picture["outcome"] != sched.picture["outcome"]:
            import traceback
            extra = "\n  scheduled traceback:\n" + "".join(
                traceback.format_exception(type(sched.exc), sched.exc, sched.exc.__traceback__))
        raise AssertionError(f"{label}: plain and scheduled runs differ\n"
                             + "\n".join(problems) + extra)


def _split_method(plain):
    """A bound method becomes (function, (instance,)); anything else (fn, ())."""
    self = getattr(plain, "__self__", None)
    func = getattr(plain, "__func__", None)
    if func is not None and self is not None:
        return func, (self,)
    return plain, ()


def assert_same(plain, *args, **kwargs):
    """Run ``plain`` and ``schedule(plain)`` on private deep copies of the arguments and
    assert identical outcomes, output and argument state. Returns the plain Outcome."""
    func, leading = _split_method(plain)
    sched = schedule(func)
    label = getattr(func, "__qualname__", repr(func))
    # One deepcopy per run keeps aliasing between arguments (and the instance) intact.
    p_leading, p_args, p_kwargs = copy.deepcopy((leading, args, kwargs))
    s_leading, s_args, s_kwargs = copy.deepcopy((leading, args, kwargs))
    plain_out = run_once(func, p_args, p_kwargs, p_leading)
    sched_out = run_once(sched, s_args, s_kwargs, s_leading)
    compare_outcomes(plain_out, sched_out, label)
    return plain_out


def assert_same_factory(make, *args, **kwargs):
    """``make(deco)`` returns ``fn`` or ``(fn, probe)``: the function with ``deco`` applied
    where the code under test wants ``@schedule``, and a no-argument ``probe`` that reports
    outer state (nonlocal cells, globals, class attributes) after the call. ``make`` is
    called once with ``identity`` right before the plain run and once with ``schedule``
    right before the scheduled run, so it may reset shared state."""
    outs = []
    for deco in (identity, schedule):
        built = make(deco)
        fn, probe = built if isinstance(built, tuple) else (built, None)
        a, k = copy.deepcopy((args, kwargs))
        out = run_once(fn, a, k)
        if probe is not None:
            out.picture["probe"] = snapshot(probe())
        outs.append(out)
    compare_outcomes(outs[0], outs[1], getattr(make, "__qualname__", repr(make)))
    if outs[0].picture.get("probe") != outs[1].picture.get("probe"):
        raise AssertionError(f"{make.__qualname__}: outer state differs\n"
                             f"    plain:     {outs[0].picture.get('probe')!r}\n"
                             f"    scheduled: {outs[1].picture.get('probe')!r}")
    return outs[0]


# --------------------------------------------------------------------------- case tables

class A:
    """Arguments of one case instance: ``A(1, 2, c=3)``."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def __repr__(self):
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        text = ",".join(parts)
        return text if len(text) <= 40 else text[:37] + "..."


class Cases:
    """A table of (function, arguments) instances for one parametrized test.

    ``cases.add(fn, A(1), A(2, k=3), (4, 5))`` registers two or more instances; a bare
    tuple is positional arguments. ``cases.params()`` feeds ``pytest.mark.parametrize``.
    """

    def __init__(self):
        self.items = []

    def add(self, fn, *instances):
        if not instances:
            instances = (A(),)
        for inst in instances:
            if not isinstance(inst, A):
                inst = A(*inst)
            self.items.append((fn, inst))
        return fn

    def params(self):
        import pytest
        seen = {}
        out = []
        for fn, inst in self.items:
            base = f"{getattr(fn, '__qualname__', fn)}({inst!r})".replace("<locals>.", "")
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.append(pytest.param(fn, inst, id=base if n == 0 else f"{base}#{n}"))
        return out

    def __len__(self):
        return len(self.items)


def run_case(fn, inst):
    """Body of a table-driven test: assert_same on one instance."""
    return assert_same(fn, *inst.args, **inst.kwargs)
