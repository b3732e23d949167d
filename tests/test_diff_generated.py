"""Differential tests on programs from the seeded generator in tests/progen.py.

Each program is a whole module (functional helpers that raise in every chaining style,
effectful plain helpers, globals, recursive scheduled functions and a ``main`` built from
the shapes of issue 7); it is run plainly and under ``@schedule`` and everything is
compared: result or exception (with its whole chain), stdout, warnings, the arguments and
the module's globals afterwards.

How many: ``--gen-count N`` (or ``$PYDRON_GEN_COUNT``; default 3000) programs, two thirds
on 4 worker threads, one sixth on 2 worker processes and one sixth on 2 worker processes
that keep every result on the workers (``kept``: what plain code reads is fetched, what
calls read moves worker to worker), plus N/10 more on the inline pool; seeds from
``--gen-seed S`` (or ``$PYDRON_GEN_SEED``; default 0) on, each pool with its own seeds.
They run in batches of :data:`BATCH` per test item; a failing item lists every failing
seed with the difference and the program's full source. Reproduce one with
``python tests/progen.py --seed S --run --pool POOL``; run many with
``python tests/progen.py --count N --pool POOL --classify``.

PYTEST_DONT_REWRITE
"""
import copy
import hashlib
import os
import subprocess
import sys

import pytest

import diffcheck
import progen
from diffcheck import compare_outcomes, run_once

DEFAULT_COUNT = 3000
#: Share of ``--gen-count`` per pool; inline runs ``INLINE_SHARE * count`` on top.
SPLIT = (("threads", 4), ("multicore", 1), ("kept", 1))
"""``kept``: worker processes keeping every result (keep_min 1 byte, see diffcheck)."""
INLINE_SHARE = 0.1
BATCH = 100


def _option(config, name, env, default):
    value = config.getoption(name, default=None)
    if value is None:
        value = os.environ.get(env)
    return default if value in (None, "") else int(value)


def batches(config):
    count = _option(config, "--gen-count", "PYDRON_GEN_COUNT", DEFAULT_COUNT)
    seed = _option(config, "--gen-seed", "PYDRON_GEN_SEED", 0)
    total_share = sum(share for _, share in SPLIT)
    plan = [(pool, count * share // total_share) for pool, share in SPLIT]
    plan[0] = (plan[0][0], count - sum(n for _, n in plan[1:]))
    plan.append(("inline", int(count * INLINE_SHARE)))
    out = []
    for pool, n in plan:
        for first in range(seed, seed + n, BATCH):
            size = min(BATCH, seed + n - first)
            out.append(pytest.param(pool, first, size, id=f"{pool}-{first}-{first + size - 1}"))
        seed += n
    return out


def pytest_generate_tests(metafunc):
    if "gen_batch" in metafunc.fixturenames:
        metafunc.parametrize("gen_batch", [p.values for p in batches(metafunc.config)],
                             ids=[p.id for p in batches(metafunc.config)])


def test_generated_programs(gen_batch):
    pool, first, size = gen_batch
    diffcheck.configure_pool(pool)
    failures = []
    try:
        for seed in range(first, first + size):
            text = progen.check_seed(seed)
            if text is not None:
                failures.append((seed, text))
    finally:
        diffcheck.configure_pool("threads")
    if failures:
        seeds = [s for s, _ in failures]
        reports = "\n\n".join(progen.failure_report(s, t, pool=pool) for s, t in failures)
        pytest.fail(f"{len(failures)} of {size} generated programs differ on {pool}: seeds "
                    f"{seeds}\n\n{reports}", pytrace=False)


# --------------------------------------------------------------------------- the generator

def test_generator_is_a_function_of_the_seed():
    """The same seed gives the same text, in this process and in another one whose string
    hashing differs (a set of strings iterated while generating would show here)."""
    here = hashlib.sha256("".join(progen.generate(s)[0] for s in range(60)).encode())
    code = ("import hashlib, sys; sys.path.insert(0, %r); import progen; "
            "print(hashlib.sha256(''.join(progen.generate(s)[0] for s in range(60))"
            ".encode()).hexdigest())" % progen.HERE)
    for hashseed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hashseed, PYDRON_DIFF_SELFTEST="1")
        other = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                               text=True, timeout=120, check=True).stdout.strip()
        assert other == here.hexdigest()
    assert progen.generate(5)[0] != progen.generate(6)[0]


def test_reduced_programs_keep_their_other_snippets():
    source, _, shapes, n = progen.generate(11)
    keep = set(range(n)) - {1}
    reduced, _, rshapes, _ = progen.generate(11, keep)
    assert len(rshapes) == len(shapes) - 1
    for i in sorted(keep):
        block = source.split(f"# snippet {i}: ")[1].split("# snippet")[0].split("    return")[0]
        assert block in reduced


def test_programs_are_deterministic(monkeypatch):
    """Plain against plain, each in a fresh module: any difference is the program's, not the
    compiler's (what PYDRON_DIFF_SELFTEST=1 checks for the whole suite)."""
    monkeypatch.setattr(diffcheck, "schedule", diffcheck.identity)
    bad = [(s, t) for s in range(300) if (t := progen.check_seed(s)) is not None]
    assert not bad, "\n\n".join(progen.failure_report(s, t) for s, t in bad[:3])


def _plain_outcome(seed):
    """(source, shapes, Outcome of the plain run) of one program."""
    source, args, shapes, _ = progen.generate(seed)
    name = f"pydron_gen_stat_{os.getpid()}_{seed}"
    path = os.path.join(progen._tmpdir(), name + ".py")
    with open(path, "w") as fh:
        fh.write(source)
    try:
        module = progen._load(path, name, diffcheck.identity)
        return source, shapes, run_once(module.main, *copy.deepcopy((args, {})))
    finally:
        sys.modules.pop(name, None)
        os.remove(path)


def test_generator_covers_every_shape_and_both_outcomes():
    """Over the first 1,000 seeds: every shape of issue 7 appears many times, the particular
    constructs each known class needed appear, programs return and raise (in each chaining
    style), and print."""
    shape_count = dict.fromkeys(progen.SHAPES, 0)
    raised = {}
    returned = printed = 0
    texts = []
    for seed in range(1000):
        source, shapes, out = _plain_outcome(seed)
        texts.append(source.split("def main(")[1])
        for s in shapes:
            shape_count[s] += 1
        if out.kind == "raise":
            e = out.exc
            style = ("cause" if e.__cause__ is not None else
                     "from None" if e.__suppress_context__ else
                     "context" if e.__context__ is not None else "plain")
            raised.setdefault(type(e).__name__, set()).add(style)
        else:
            returned += 1
        printed += bool(out.stdout)
    assert all(n >= 40 for n in shape_count.values()), shape_count
    assert 750 <= returned <= 950, (returned, raised)
    assert printed >= 600
    kinds = {"AppError", "CodeError", "ValueError", "LookupError", "ZeroDivisionError"}
    assert kinds <= set(raised), raised
    assert {"cause", "from None", "context", "plain"} <= set().union(*raised.values()), raised
    body = "\n".join(texts)
    for construct in ["xs.__len__() >", "len(ident(xs)) >", "below(", ".empty()", "fact(",
                      "Walker(", "countdown(", "main.__name__", "] = ", "[1:3] = ", ".insert(0,",
                      ".pop()", ".sort()", "mutate(", "], c_", "del d[", ".setdefault(",
                      "SEEN", "del t_", "except KeyError as e_", "COUNTER += ident(1)",
                      "range(2", "0 < ", ":{width(", ":= ", "tup([ident(v) for v in xs]",
                      "sorted(xs, key=note)", "list(map(print, xs))", "min(xs, key=bump)",
                      "filter(keep_odd", "gen_noisy(xs)", "iter(xs)", "enumerate(xs)",
                      "zip(xs,", "io.StringIO(", "tempfile.TemporaryFile(", "nonlocal",
                      "continue", "break", "return ('early'", "describe(e)",
                      "raise CodeError(n, 'direct')", "d['k", "retarget()", "OPS['f'] = shout",
                      "Box.get = plain_get", "with Loud(", "gen_fail(xs", "Ticker(",
                      "for d['t", "case ", "class K_", "global NEWG", "inner(ident(",
                      "xs = [100] + xs", "boom(", "warn_me(",
                      # the in-flight shapes of issue 13
                      "with Rec(", "gen_cm(", "BadEnter(", "contextlib.suppress(", "as (p_",
                      "while True:", "tb_text(", "tb_pic(", "raise AppError('handler'",
                      "raise SubError('replaced'", "        raise\n", "'no hit'",
                      "return ('found", "return ('finally returned", "'unbound'"]:
        assert construct in body, construct
    long_loops = [int(x) for x in __import__("re").findall(r"in range\((\d+)\):", body)]
    assert max(long_loops) >= 250 and sum(n > 100 for n in long_loops) >= 30


# --------------------------------------------------------------------------- the harness

def _outcomes(plain, other):
    return run_once(plain, (), {}), run_once(other, (), {})


def _differs(plain, other):
    p, o = _outcomes(plain, other)
    with pytest.raises(AssertionError):
        compare_outcomes(p, o)


def _agrees(plain, other):
    p, o = _outcomes(plain, other)
    compare_outcomes(p, o)


def _raiser(*, note=None, attr=None, cause=None, context=None, suppress=False, args=("x",)):
    def f():
        err = ValueError(*args)
        if note is not None:
            err.add_note(note)
        if attr is not None:
            err.code = attr
        if context is not None:
            err.__context__ = context()
        if cause is not None:
            err.__cause__ = cause()
        if suppress:
            err.__suppress_context__ = True
        raise err
    return f


def test_harness_compares_exceptions_exactly():
    """What the generated programs rely on: every part of an exception is compared, in both
    directions, through the whole chain; no cause is excused as transport."""
    from concurrent.futures.process import _RemoteTraceback
    _agrees(_raiser(), _raiser())
    _differs(_raiser(args=("x",)), _raiser(args=("x", 1)))
    _differs(_raiser(), _raiser(note="n"))
    _differs(_raiser(note="n"), _raiser())
    _differs(_raiser(note="n"), _raiser(note="m"))
    _agrees(_raiser(note="n", attr=[1]), _raiser(note="n", attr=[1]))
    _differs(_raiser(attr=[1]), _raiser(attr=[2]))
    _differs(_raiser(attr=1), _raiser())
    _differs(_raiser(), _raiser(cause=lambda: _RemoteTraceback("tb")))
    _differs(_raiser(cause=lambda: KeyError("k")), _raiser())
    _differs(_raiser(cause=lambda: KeyError("k")), _raiser(cause=lambda: KeyError("j")))
    _differs(_raiser(context=lambda: KeyError("k")), _raiser())
    _differs(_raiser(), _raiser(context=lambda: KeyError("k")))
    _differs(_raiser(suppress=True), _raiser())
    _differs(_raiser(context=lambda: KeyError("k"), suppress=True),
             _raiser(context=lambda: KeyError("k")))

    def deep(leaf):
        def cause():
            inner = KeyError("inner")
            inner.__cause__ = leaf()
            return inner
        return _raiser(cause=cause)

    _agrees(deep(lambda: IndexError(1)), deep(lambda: IndexError(1)))
    _differs(deep(lambda: IndexError(1)), deep(lambda: IndexError(2)))
    _differs(deep(lambda: IndexError(1)), deep(lambda: OSError(1)))


def test_harness_compares_exceptions_met_as_values():
    def caught(note):
        def f():
            try:
                _raiser(note=note, cause=lambda: KeyError("k"))()
            except ValueError as e:
                return [e]
        return f

    _agrees(caught("a"), caught("a"))
    _differs(caught("a"), caught("b"))

    class Odd(Exception):
        def __str__(self):
            raise RuntimeError("no str")

    def odd():
        raise Odd(1)

    _agrees(odd, odd)
