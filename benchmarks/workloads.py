"""The functions every system in benchmarks/peers.py runs (importable by all workers)."""
import functools
import time

import pydron


@pydron.functional
def noop(x):
    return x


@pydron.functional
def inc(x):
    return x + 1


@pydron.functional
def spin(rounds):
    """A fixed amount of pure-Python CPU work (not a wall-clock wait: with threads, a wait
    for a deadline would finish on time however little CPU each thread got)."""
    total = 0
    for i in range(rounds):
        total += i * i % 7
    return total


def rounds_for(seconds):
    """How many spin() rounds take about ``seconds`` on this machine, run alone."""
    n = 100_000
    while True:
        t = time.perf_counter()
        spin(n)
        elapsed = time.perf_counter() - t
        if elapsed > 0.2:
            return max(1, int(n * seconds / elapsed))
        n *= 2


@pydron.functional
def checksum(array):
    return float(array[::4096].sum())


@pydron.schedule
def many_noops(n):
    out = []
    for i in range(n):
        out.append(noop(i))
    return out


@pydron.schedule
def chain(n):
    x = 0
    for _ in range(n):
        x = inc(x)
    return x


@pydron.schedule
def spins(n, rounds):
    return [spin(rounds) for _ in range(n)]


@pydron.schedule
def checksums(arrays):
    return [checksum(a) for a in arrays]


# --------------------------------------------------------------------------- explicit API (F-I)

@pydron.functional
def busy(x, rounds):
    """spin(rounds), then ``x``: a per-item function of fixed CPU cost (workload F)."""
    total = 0
    for i in range(rounds):
        total += i * i % 7
    return x


def busy_rounds_for(seconds, calls=20_000):
    """How many busy() rounds make one call take about ``seconds`` (call overhead
    included), measured over ``calls`` calls in a loop."""
    rounds = 50
    for _ in range(4):
        fn = functools.partial(busy, rounds=rounds)    # as workload F calls it
        t = time.perf_counter()
        for i in range(calls):
            fn(i)
        per_call = (time.perf_counter() - t) / calls
        rounds = max(1, round(rounds * seconds / per_call))
    return rounds


@pydron.functional
def part(array, i, parts=64):
    """A cheap reduction of the i-th of ``parts`` slices of a large 1-D array (H)."""
    step = len(array) // parts
    return float(array[i * step:(i + 1) * step:4096].sum())


@pydron.functional
def noop_functional(x):
    """A no-op functional call, for @schedule benchmarks."""
    return x
