"""Regressions found by the program generator (tests/progen.py), each reduced by hand from
the failing seeds to a few lines, one test per class of failure.

Each case is a whole little module, as the generated programs are (module-level globals,
recursion through the module's own names, exception classes): it is written to a file,
loaded once plainly and once with ``main`` under ``@schedule``, and compared by
``progen.check_source`` / ``diffcheck.assert_same_factory`` (result or exception with its
whole chain, stdout, warnings, arguments afterwards, and the globals named in ``GLOBALS``).
Every case runs on the inline, threads and worker-process pools.

The docstring of each test names the generator's shape, the seeds that found it (and on
which code: "original" is the compiler before the issue-7 fixes, commit 155063a) and the
command that shows one of them.

PYTEST_DONT_REWRITE
"""
import textwrap

import pytest

import diffcheck
import progen

HEADER = '''\
import io
import sys

from diffcheck import functional

# schedule() in the checked run; the identity in the plain run and on worker processes.
_pd_deco = globals().get("_pd_deco", lambda f: f)
GLOBALS = ()


@functional
def ident(x):
    return x


@functional
def inc(x):
    return x + 1


@functional
def tup(*args):
    return args


def shout(x):
    print("shout", x)
    return -x

'''


@pytest.fixture(params=["inline", "threads", "multicore"])
def any_pool(request):
    diffcheck.configure_pool(request.param)
    yield request.param
    diffcheck.configure_pool("threads")


def check(body, *args):
    source = HEADER + textwrap.dedent(body)
    text = progen.check_source(source, args, "regression")
    assert text is None, f"{text}\n--- source:\n{source}"


# --------------------------------------------------------------------------- found on today's code

def test_global_callee_rebound_by_a_sync_point(any_pool):
    """A module-level callee rebound during the run (by a helper, or by ``global FN; FN =
    ...`` in the function itself) is still called as the old value: the new, plain
    function's output and result are lost. Shape ``global_rebind``; seeds 15, 42, 52, 160,
    162, 193, 263, 385 ... (33 of 1,500 on threads at commit 712129b). ``python
    tests/progen.py --seed 15 --run --pool threads``."""
    check('''
        FN = inc
        GLOBALS = ("FN",)


        def retarget():
            global FN
            FN = shout


        @_pd_deco
        def main(n):
            a = FN(n)
            retarget()
            return a, FN(n)
        ''', 3)


def test_global_callee_rebound_in_the_function_itself(any_pool):
    """The same class, the store in the scheduled function's own code."""
    check('''
        FN = inc
        GLOBALS = ("FN",)


        @_pd_deco
        def main(n):
            global FN
            FN = shout
            return FN(n)
        ''', 3)
