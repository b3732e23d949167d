"""Every claim ``pydron.explain`` makes about a loop is held against a measured run.

For each function the report's note on its loop says either that iterations run
concurrently (over containers, files and read-only generators; a loop that may break
speculates; try and with bodies run as graph) or that they start one after another (an
iterator with side effects is read as a sync point; a loop that may break over a
generator handed in). Each function then runs 8 calls of 0.2 s on 8 threads: overlapping runs take
about 0.2 s, one-at-a-time runs about 1.6 s. The bounds are generous (shared machines).
"""
import io
import time

import pytest

import pydron

DELAY = 0.2
N = 8


@pydron.functional
def nap(x):
    time.sleep(DELAY)
    return x


def over_list(xs):
    out = []
    for x in xs:
        out.append(nap(x))
    return out


def over_pure_generator(n):
    out = []
    for x in (v + 1 for v in range(n)):
        out.append(nap(x))
    return out


def _numbers(n):
    for i in range(n):
        yield i * 2


def over_pure_generator_function(n):
    return [nap(x) for x in _numbers(n)]


def over_file(text):
    out = []
    for line in io.StringIO(text):
        out.append(nap(line))
    return out


def over_map_of_functional(xs):
    return list(map(nap, xs))


def _noisy(n):
    for i in range(n):
        print("item", i)
        yield i


def over_effectful_generator(n):
    out = []
    for x in _noisy(n):
        out.append(nap(x))
    return out


def with_break(xs):
    out = []
    for x in xs:
        r = nap(x)
        if r < 0:
            break
        out.append(r)
    return out


def with_break_over_a_generator(n):
    items = (v + 1 for v in range(n))     # a name: the loop does not own the generator
    out = []
    for x in items:
        r = nap(x)
        if r < 0:
            break
        out.append(r)
    return out, list(items)


def try_in_loop(xs):
    out, skipped = [], 0
    for x in xs:
        try:
            out.append(nap(x))
        except ValueError:
            skipped += 1
    return out, skipped


def with_around_loop(xs):
    out = []
    with io.StringIO() as log:
        for x in xs:
            out.append(nap(x))
        log.write("done")
    return out


def counted_while(n):
    out, i = [], 0
    while i < n:
        out.append(nap(i))
        i += 1
    return out


CONCURRENT, SEQUENTIAL = "concurrent", "sequential"

CASES = [
    (over_list, (list(range(N)),), CONCURRENT, "iterations run concurrently"),
    (over_pure_generator, (N,), CONCURRENT, "a generator that only reads"),
    (over_pure_generator_function, (N,), CONCURRENT, "a generator that only reads"),
    (over_file, ("x\n" * N,), CONCURRENT, "a file"),
    (over_map_of_functional, (list(range(N)),), CONCURRENT, "functional call nap()"),
    (over_effectful_generator, (N,), SEQUENTIAL, "each item is fetched as a sync point"),
    (with_break, (list(range(N)),), CONCURRENT, "later iterations' calls start before"),
    (with_break_over_a_generator, (N,), SEQUENTIAL, "a generator handed in"),
    (try_in_loop, (list(range(N)),), CONCURRENT, "try: the body runs as graph"),
    (with_around_loop, (list(range(N)),), CONCURRENT, "with: the body runs as graph"),
    (counted_while, (N,), CONCURRENT, "while loop: each iteration starts once"),
]


@pytest.fixture(scope="module", autouse=True)
def eight_threads():
    pydron.configure({"workers": [{"type": "threads", "count": N}]})
    yield
    pydron.configure({"workers": [{"type": "threads", "count": 4}]})


@pytest.mark.parametrize("fn, args, claim, phrase", CASES,
                         ids=[c[0].__name__ for c in CASES])
def test_explain_claim_holds_in_a_measured_run(fn, args, claim, phrase, capsys):
    report = pydron.explain(fn)
    assert phrase in report, report
    scheduled = pydron.schedule(fn)
    scheduled(*args)                       # translation and warm-up outside the timing
    start = time.perf_counter()
    result = scheduled(*args)
    elapsed = time.perf_counter() - start
    capsys.readouterr()
    assert result == fn(*args)
    sequential = N * DELAY
    if claim == CONCURRENT:
        assert elapsed < sequential / 2, f"{fn.__name__}: {elapsed:.2f}s, report says:\n{report}"
    else:
        assert elapsed > sequential * 0.8, f"{fn.__name__}: {elapsed:.2f}s, report says:\n{report}"
