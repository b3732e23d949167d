"""Exceptions raised in @functional calls reach the caller exactly as a plain call raises
them, on every pool: real worker processes (``multicore``), threads and inline.

"Exactly" is what ``except`` code and a traceback can observe: type, ``args``, message,
attributes, ``__notes__``, ``__cause__``, ``__context__``, ``__suppress_context__`` through
the whole chain, and the frames of the functional as real traceback entries (file, line,
name, source line and columns) right after the user's own call line. Each case compares
the scheduled run with the plain run of the same function; the pictures of the two
exceptions come from ``diffcheck.exception_picture``.
"""
from __future__ import annotations

import builtins
import os
import pickle
import sys
import textwrap
import threading
import traceback
import types

import pytest

import pydron
import pydron.backend as backend
from pydron import functional, schedule
from pydron.backend.protocol import shipping
from pydron.backend.multicore import MulticorePool
from pydron.errors import RemoteError, SerializationError

from diffcheck import describe_exception, exception_picture
from test_multicore import Outcomes, run_script

POOLS = {
    "inline": {"type": "inline"},
    "threads": {"type": "threads", "count": 2},
    "multicore": {"type": "multicore", "cores": 2},
}
HERE = os.path.abspath(__file__)
ExceptionGroup = getattr(builtins, "ExceptionGroup", None)  # Python 3.11+
needs_groups = pytest.mark.skipif(ExceptionGroup is None, reason="Python 3.11+")
PACKAGE = os.path.dirname(os.path.abspath(pydron.__file__)) + os.sep


@pytest.fixture(scope="module", params=list(POOLS))
def pool(request):
    """Each test runs on each kind of pool; the previous configuration comes back."""
    previous = backend._config
    backend.configure({"workers": [dict(POOLS[request.param])]})
    yield request.param
    backend.configure(previous)


@pytest.fixture(scope="module")
def multicore():
    """Real worker processes only: for what only a process boundary can lose."""
    previous = backend._config
    backend.configure({"workers": [dict(POOLS["multicore"])]})
    yield backend.get_pool()
    backend.configure(previous)


# --------------------------------------------------------------------------- exceptions


class Pair(Exception):
    """An ``__init__`` whose parameters are not its args: pickle cannot rebuild it."""

    def __init__(self, a, b):
        super().__init__(f"{a}-{b}")
        self.a = a


class Wrapped(Exception):
    """Takes one argument but changes it: pickle would rebuild it with other args."""

    def __init__(self, x):
        super().__init__(f"wrapped {x}")


# --------------------------------------------------------------------------- functionals
# Module-level: they travel to the workers by reference (this module is importable there).


@functional
def ident(x):
    return x


@functional
def explicit(x):
    raise ValueError(f"x{x}") from KeyError("k")


@functional
def implicit(x):
    try:
        {}[f"missing {x}"]
    except KeyError:
        raise ValueError(f"while handling {x}")


@functional
def from_none(x):
    try:
        {}[x]
    except KeyError:
        raise ValueError(f"plain {x}") from None


@functional
def noted(x):
    error = ValueError(f"with notes {x}")
    for note in ("first note", f"second note {x}"):
        if hasattr(error, "add_note"):  # Python 3.11+
            error.add_note(note)
        else:
            error.__notes__ = getattr(error, "__notes__", []) + [note]
    error.code = x
    error.detail = {"x": [x, x]}
    raise error


@functional
def custom_init(x):
    try:
        raise Wrapped(x)
    except Wrapped as inner:
        raise Pair(x, x + 1) from inner


@functional
def deep(x):
    def level_two(y):
        return level_three(y) + 1

    def level_three(y):
        return {"a": 1}["b"] + y

    return level_two(x) * 2


@functional
def os_error(x):
    open(f"/nonexistent/pydron/{x}")


@functional
def attribute_error(x):
    return x.no_such_attribute


@functional
def group(x):
    raise ExceptionGroup(f"group {x}", [ValueError(x), Pair(x, 2)])


@functional
def unpicklable_arg(x):
    raise ValueError(threading.Lock(), x)


@functional
def keyboard_interrupt(x):
    raise KeyboardInterrupt(f"stop {x}")


@functional
def system_exit(x):
    sys.exit(x)


@functional
def worker_only_class(a, b):
    """Raises an exception whose class exists in the worker's process only: a module made
    on the fly there, so pickle finds it on the worker and nowhere else."""
    name = "pydron_test_worker_only"
    module = sys.modules.get(name)
    if module is None:
        module = types.ModuleType(name)
        exec("class Odd(Exception):\n"
             "    def __init__(self, a, b):\n"
             "        super().__init__(f'{a}-{b}')\n", module.__dict__)
        sys.modules[name] = module
    raise module.Odd(a, b)


@functional
def huge_message(n):
    raise ValueError("x" * n)


KEPT: list[BaseException] = []


@functional
def keeps_its_exception(x):
    error = ValueError(x)
    KEPT.append(error)
    raise error


# --------------------------------------------------------------------------- scheduled


def calls(fn):
    """A scheduled function that calls the functional ``fn`` after another call (so that
    the failing call is dispatched, not run inline as the only one), and its plain twin."""
    def body(x):
        y = ident(x)
        return fn(y)

    return schedule(body), body


def both(fn, x, handling=None):
    """The exceptions of the plain and of the scheduled call ``fn(x)``, raised while
    ``handling`` is being handled when it is given."""
    scheduled, plain = calls(fn)
    return _raised(plain, x, handling), _raised(scheduled, x, handling)


def _raised(fn, x, handling):
    try:
        if handling is None:
            fn(x)
        else:
            try:
                raise handling
            except type(handling):
                fn(x)
    except BaseException as exc:  # noqa: B902 -- KeyboardInterrupt included
        return exc
    raise AssertionError(f"{fn.__name__}({x!r}) did not raise")


def assert_same(plain, sched):
    assert exception_picture(sched) == exception_picture(plain), (
        "plain:\n" + describe_exception(plain) + "\nscheduled:\n" + describe_exception(sched))


def frames(exc):
    """``(file, line, name, source, columns)`` of each entry of ``exc``'s traceback."""
    summary = traceback.extract_tb(exc.__traceback__)
    return [(f.filename, f.lineno, f.name, f.line, (f.colno, f.end_colno)) for f in summary]


def from_body(rows):
    """The rows from the first frame of the scheduled function's own body on."""
    start = next(i for i, row in enumerate(rows) if row[2] == "body")
    return rows[start:]


# --------------------------------------------------------------------------- the chain


@pytest.mark.parametrize("fn", [explicit, implicit, from_none, noted, custom_init, deep,
                                os_error, attribute_error,
                                pytest.param(group, marks=needs_groups)],
                         ids=lambda fn: fn.__name__)
def test_the_exception_and_its_chain_arrive_as_raised(pool, fn):
    plain, sched = both(fn, 3)
    assert_same(plain, sched)


def test_explicit_chaining_keeps_the_cause_and_no_transport_cause(pool):
    _, exc = both(explicit, 1)
    assert type(exc) is ValueError and exc.args == ("x1",)
    assert type(exc.__cause__) is KeyError and exc.__cause__.args == ("k",)
    assert exc.__suppress_context__ and exc.__context__ is None


def test_implicit_chaining_keeps_the_context_with_its_own_frames(pool):
    _, exc = both(implicit, 2)
    assert exc.__cause__ is None and not exc.__suppress_context__
    context = exc.__context__
    assert type(context) is KeyError and context.args == ("missing 2",)
    rows = frames(context)
    assert rows[-1][:4] == (HERE, implicit.__code__.co_firstlineno + 3, "implicit",
                            '{}[f"missing {x}"]')


def test_from_none_keeps_the_context_it_hides(pool):
    _, exc = both(from_none, 5)
    assert exc.__cause__ is None and exc.__suppress_context__
    assert type(exc.__context__) is KeyError and exc.__context__.args == (5,)
    assert "During handling" not in "".join(traceback.format_exception(exc))


def test_notes_and_attributes(pool):
    _, exc = both(noted, 4)
    assert exc.__notes__ == ["first note", "second note 4"]
    assert exc.code == 4 and exc.detail == {"x": [4, 4]}


def test_custom_init_classes_arrive_as_themselves_with_their_args(pool):
    """Rebuilt from args and ``__dict__``, not by calling ``__init__`` again: ``Pair``
    cannot take its one arg, and ``Wrapped`` would wrap its message twice."""
    _, exc = both(custom_init, 1)
    assert type(exc) is Pair and exc.args == ("1-2",) and exc.a == 1
    assert type(exc.__cause__) is Wrapped and exc.__cause__.args == ("wrapped 1",)
    assert exc.__context__ is exc.__cause__


def test_slots_outside_dict_travel_too(pool):
    _, exc = both(os_error, "f")
    assert type(exc) is FileNotFoundError and exc.errno == 2
    assert exc.filename == "/nonexistent/pydron/f" and exc.strerror
    _, exc = both(attribute_error, 5)
    assert exc.name == "no_such_attribute" and exc.obj == 5


@needs_groups
def test_a_group_keeps_its_members(pool):
    _, exc = both(group, 7)
    assert type(exc) is ExceptionGroup and exc.message == "group 7"
    assert [type(e) for e in exc.exceptions] == [ValueError, Pair]
    assert exc.exceptions[1].args == ("7-2",)


def test_raised_while_the_caller_handles_another_exception(pool):
    """A plain call inside an ``except`` block gives the exceptions raised in it the one
    being handled as context; a worker handles nothing, and raising the exception again
    in the caller must not replace the context it already has."""
    for fn in (explicit, implicit, from_none, custom_init):
        plain, sched = both(fn, 2, handling=LookupError("outer"))
        assert_same(plain, sched)
    _, exc = both(implicit, 2, handling=LookupError("outer"))
    assert type(exc.__context__) is KeyError
    assert type(exc.__context__.__context__) is LookupError


@schedule
def catches(x):
    a = ident(x)
    try:
        explicit(a)
    except ValueError as e:
        return (type(e.__cause__), e.__cause__.args, e.__context__, e.__suppress_context__)
    return None


def test_caught_and_inspected_in_the_scheduled_function(pool):
    assert catches(3) == (KeyError, ("k",), None, True)


def test_threads_and_inline_pass_the_exception_object_itself(pool):
    if pool == "multicore":
        pytest.skip("a process boundary copies the exception")
    KEPT.clear()
    _, exc = both(keeps_its_exception, "same")
    assert KEPT[-1] is exc


# --------------------------------------------------------------------------- tracebacks


def test_the_traceback_shows_the_call_line_then_the_functionals_frames(pool):
    """From the scheduled function's frame on, the same files, lines, names and source
    lines as the plain run, and the same columns in the functional's frames."""
    plain, sched = both(deep, 1)
    want, got = from_body(frames(plain)), from_body(frames(sched))
    assert [row[:4] for row in got] == [row[:4] for row in want]
    assert [row[4] for row in got[1:]] == [row[4] for row in want[1:]]
    assert [row[2] for row in got] == ["body", "deep", "level_two", "level_three"]
    text = "".join(traceback.format_exception(sched))
    assert 'return {"a": 1}["b"] + y' in text and "~~~~~~~~^^^^^" in text


def test_no_pool_or_scheduler_frames_reach_the_user(pool):
    """Between the test's own call and the scheduled function's frame only the
    ``@schedule`` wrapper's few frames remain; none of the pool's, and none after."""
    _, sched = both(deep, 1)
    rows = frames(sched)
    start = next(i for i, row in enumerate(rows) if row[2] == "body")
    inside = [row[0] for row in rows[:start] if row[0].startswith(PACKAGE)]
    assert len(inside) <= 3, rows
    assert not any(f.startswith(PACKAGE + "backend") for f in inside), rows
    assert not any(row[0].startswith(PACKAGE) for row in rows[start:]), rows


@schedule
def sends_a_lock(x):
    y = ident(x)
    z = ident(threading.Lock())
    return y, z


def test_serialization_error_sits_at_the_users_call_line(multicore):
    with pytest.raises(SerializationError) as info:
        sends_a_lock(1)
    rows = frames(info.value)
    assert rows[-1][:4] == (HERE, sends_a_lock.__wrapped__.__code__.co_firstlineno + 3,
                            "sends_a_lock", "z = ident(threading.Lock())")
    assert len([row for row in rows if row[0].startswith(PACKAGE)]) <= 3, rows


def test_a_closure_sent_by_value_keeps_its_file_and_lines(multicore):
    import cloudpickle
    base = 10

    @functional
    def closure(x):
        return {}[x + base]

    def body(x):
        y = ident(x)
        return closure(y)

    plain, sched = _raised(body, 1, None), _raised(schedule(body), 1, None)
    assert_same(plain, sched)
    rows = from_body(frames(sched))
    assert [row[:4] for row in rows] == [row[:4] for row in from_body(frames(plain))]
    assert rows[-1][:4] == (HERE, closure.__code__.co_firstlineno + 2, "closure",
                            "return {}[x + base]")
    # It travels by value, and its code keeps its file name: cloudpickle 3.1 writes
    # "<dynamic-code>" for every code object, which pydron puts right on loading.
    digest, blob = shipping.FunctionShipper().prepare(closure)
    assert b"cloudpickle" in blob, cloudpickle.__version__
    loaded = pickle.loads(blob)
    assert loaded.__code__.co_filename == HERE and loaded is not closure


def test_code_sent_by_value_keeps_file_names_of_nested_code():
    def outer(x):
        def inner(y):
            return [z for z in range(y)]
        return inner

    blob = shipping.cloud_dumps(outer)
    loaded = pickle.loads(blob)
    codes = [loaded.__code__]
    while codes:
        code = codes.pop()
        assert code.co_filename == HERE, code
        codes += [c for c in code.co_consts if isinstance(c, types.CodeType)]


# --------------------------------------------------------------------------- process only


def test_a_class_the_caller_lacks_arrives_as_remote_error(multicore):
    def body(x):
        y = ident(x)
        return worker_only_class(y, 2)

    exc = _raised(schedule(body), 1, None)
    assert type(exc) is RemoteError and isinstance(exc, pydron.PydronError)
    assert exc.type_name == "pydron_test_worker_only.Odd" and exc.message == "1-2"
    assert str(exc).startswith("pydron_test_worker_only.Odd: 1-2")
    assert "worker_only_class" in exc.remote_traceback
    assert "raise module.Odd(a, b)" in exc.remote_traceback
    rows = frames(exc)
    assert rows[-1][:4] == (HERE, worker_only_class.__code__.co_firstlineno + 12,
                            "worker_only_class", "raise module.Odd(a, b)")


def test_an_unpicklable_argument_of_an_exception_becomes_remote_error(multicore):
    def body(x):
        y = ident(x)
        return unpicklable_arg(y)

    exc = _raised(schedule(body), 1, None)
    assert type(exc) is RemoteError and exc.type_name == "ValueError"
    assert "cannot be pickled" in str(exc) and "_thread.lock" in str(exc)


@pytest.mark.parametrize("fn,kind,attr", [(keyboard_interrupt, KeyboardInterrupt, "args"),
                                          (system_exit, SystemExit, "code")])
def test_base_exceptions_arrive_and_the_workers_go_on(multicore, fn, kind, attr):
    """KeyboardInterrupt and SystemExit raised by the user's code are its outcome: they
    reach the caller as raised, and the worker that ran it keeps serving."""
    multicore.start()
    pids = multicore.worker_pids()
    plain, sched = both(fn, 3)
    assert type(sched) is kind and getattr(sched, attr) == getattr(plain, attr)
    assert_same(plain, sched)
    seen = Outcomes()
    for i in range(4):
        multicore.submit(ident, (i,), {}, seen.callback(i))
    assert sorted(value for _, ok, value in seen.wait(4) if ok) == [0, 1, 2, 3]
    assert multicore.worker_pids() == pids


def test_an_exception_larger_than_a_frame_arrives_as_remote_error():
    """A report that cannot fit the frame limit must not cost the connection (and with
    it the worker, and the call's retries): it is cut down to a RemoteError."""
    pool = MulticorePool(1, max_frame=1 << 16)
    try:
        seen = Outcomes()
        pool.submit(huge_message, (1 << 20,), {}, seen.callback("huge"))
        ok, err = seen.one("huge")
        assert not ok and type(err) is RemoteError and err.type_name == "ValueError"
        pids = pool.worker_pids()
        pool.submit(huge_message, (10,), {}, seen.callback("small"))
        ok, err = seen.one("small")
        assert not ok and type(err) is ValueError and err.args == ("x" * 10,)
        assert pool.worker_pids() == pids
    finally:
        pool.shutdown(wait=True)


def test_a_main_script_sees_its_own_frames_and_classes(tmp_path):
    """Functions and exception classes of ``__main__`` travel by value; the traceback
    shows the script's own file and source lines, and ``except`` finds its own class."""
    result = run_script(tmp_path, """
        import traceback
        import pydron

        class MainError(Exception):
            def __init__(self, a, b):
                super().__init__(f"{a}+{b}")

        @pydron.functional
        def fails(x):
            raise MainError(x, 1) from KeyError(x)

        @pydron.functional
        def ident(x):
            return x

        @pydron.schedule
        def run(x):
            y = ident(x)
            return fails(y)

        pydron.configure({"workers": [{"type": "multicore", "cores": 1}]})
        try:
            run(5)
        except MainError as e:
            print("caught", e.args, type(e.__cause__).__name__, e.__cause__.args)
            traceback.print_exception(e)
        pydron.shutdown()
        """)
    assert result.returncode == 0, result.stderr
    assert "caught ('5+1',) KeyError (5,)" in result.stdout
    script = str(tmp_path / "script.py")
    assert f'File "{script}", line 11, in fails' in result.stderr
    assert "raise MainError(x, 1) from KeyError(x)" in result.stderr
    assert f'File "{script}", line 20, in run' in result.stderr
    assert "<dynamic-code>" not in result.stderr and "RemoteTraceback" not in result.stderr


def test_records_survive_what_cannot_be_rebuilt():
    """Unit level: a record that cannot be loaded in the caller spoils only itself; the
    rest of the chain arrives, and the report never raises on the worker."""
    try:
        try:
            raise KeyError("inner")
        except KeyError:
            raise ValueError(threading.Lock())
    except ValueError as exc:
        packed = shipping.dumps_exception(exc, exc.__traceback__)
    exc = shipping.loads_exception(*packed)
    assert type(exc) is RemoteError and exc.type_name == "ValueError"
    assert type(exc.__context__) is KeyError and exc.__context__.args == ("inner",)

    class Broken(Exception):
        def __str__(self):
            raise RuntimeError("no str")

    blob, name, message, text = shipping.dumps_exception(Broken(), None)
    assert name.endswith("Broken") and message.startswith("<unprintable")


def test_the_remote_error_text_is_a_traceback():
    exc = shipping.loads_exception(None, "m.E", "boom", textwrap.dedent("""\
        Traceback (most recent call last):
          File "x.py", line 1, in f
        m.E: boom
        """))
    assert exc.remote_traceback.startswith("Traceback") and exc.reason
    assert pydron.RemoteError is RemoteError and "RemoteError" in pydron.__all__
    assert pickle.loads(pickle.dumps(exc)).args == exc.args
