"""The functions every system in benchmarks/peers.py runs (importable by all workers)."""
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
