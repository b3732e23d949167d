"""A SCOOP-style script on Pydron: map, map in completion order, map-reduce, a shared constant.

A SCOOP program imports ``futures`` and ``shared`` from scoop, publishes read-only data once
with ``shared.setConst(name=value)`` (each task reads it back with ``shared.getConst``), and
calls ``futures.map`` (results in input order), ``futures.map_as_completed`` (results as
they finish) and ``futures.mapReduce`` (map, then fold the results with an operator); it is
started with ``python -m scoop -n 4 script.py``. The same program on Pydron, as written
below, is started with plain ``python``:

=================================================  ============================================
SCOOP                                              Pydron
=================================================  ============================================
``shared.setConst(weights=w)``                     ``weights = pydron.shared(w)``
``shared.getConst("weights")`` inside the task     the task takes ``weights`` as an argument
``futures.map(score, seeds)``                      ``pydron.map(score, seeds, repeat(weights))``
``futures.map_as_completed(fn, items)``            ``pydron.map(fn, items, ordered=False)``
``futures.mapReduce(fn, operator.add, items)``     ``pydron.map_reduce(fn, operator.add, items)``
=================================================  ============================================

The work is made up (scores of seeded random feature vectors against a shared weight
vector, Collatz chain lengths), small and deterministic, so every answer can be checked
against a plain sequential run; the last line says whether they agree, and the exit status
is 0 when they do.

Usage (from the repository root):

    python examples/scoop_map.py                 # the pool of pydron.conf (all local cores)
    python examples/scoop_map.py --workers 2     # an executor of 2 local worker processes
    python examples/scoop_map.py --items 2000
"""
from __future__ import annotations

import argparse
import itertools
import operator
import os
import random
import sys
import time

import pydron

FEATURES = 400


def score(seed: int, weights: list[float]) -> float:
    """The weighted sum of a random feature vector drawn from ``seed``."""
    rng = random.Random(seed)
    return round(sum(w * rng.random() for w in weights), 6)


def collatz(n: int) -> tuple[int, int]:
    """``(n, steps)``: how many Collatz steps take ``n`` to 1."""
    steps, m = 0, n
    while m != 1:
        m = m // 2 if m % 2 == 0 else 3 * m + 1
        steps += 1
    return n, steps


def slow_collatz(n: int, delay: float) -> tuple[int, int]:
    """:func:`collatz` after a pause (the one slow task of the completion-order map)."""
    time.sleep(delay)
    return collatz(n)


def square_steps(n: int) -> int:
    return collatz(n)[1] ** 2


def pid_after(delay: float) -> int:
    time.sleep(delay)
    return os.getpid()


def wait_for_workers(executor: pydron.Executor | None, count: int, limit: float) -> int:
    """Run short calls until ``count`` worker processes have answered (or ``limit``
    seconds have passed): completion order can only show once two workers run."""
    seen: set[int] = set()
    deadline = time.monotonic() + limit
    while len(seen) < count and time.monotonic() < deadline:
        seen.update(pydron.map(pid_after, [0.02] * 4 * count, chunksize=1, executor=executor))
    return len(seen)


def holder(_: int, weights: list[float]) -> tuple[int, int]:
    """Which process ran this task, and which copy of the shared weights it was given."""
    return os.getpid(), id(weights)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=400, help="tasks per map (default 400)")
    parser.add_argument("--workers", type=int, default=None,
                        help="local worker processes (default: the pool of pydron.conf)")
    args = parser.parse_args(argv)
    executor = pydron.Executor(max_workers=args.workers) if args.workers else None
    n = args.items

    # shared.setConst(weights=...): sent to each worker once, however many tasks use it.
    weights_list = [random.Random(7).uniform(-1, 1) for _ in range(FEATURES)]
    weights = pydron.shared(weights_list)

    # futures.map(score, seeds): a lazy generator, results in input order.
    scores = list(pydron.map(score, range(n), itertools.repeat(weights), executor=executor))
    print(f"futures.map        -> pydron.map:                  {n} scores, first "
          f"{scores[:3]}")

    # Like getConst, every task of a worker gets the same object: one copy per worker.
    copies = set(pydron.map(holder, range(100), itertools.repeat(weights), executor=executor))
    workers = len({pid for pid, _ in copies})
    print(f"shared.setConst    -> pydron.shared:               {len(copies)} copies of the "
          f"weights for 100 tasks on {workers} worker(s)")

    # futures.map_as_completed: results as they finish. Item 0 is slow on purpose.
    wait_for_workers(executor, min(2, args.workers or 2), 5.0)
    delays = [1.0] + [0.0] * 15
    arrived = list(pydron.map(slow_collatz, range(1, 17), delays, ordered=False,
                              executor=executor))
    slow_last = [k for k, _ in arrived].index(1) > 0
    print(f"map_as_completed   -> pydron.map(ordered=False):   arrival order "
          f"{[k for k, _ in arrived]}")
    print(f"  the slow first item arrived after others: {'yes' if slow_last else 'no'}")
    steps = dict(arrived)

    # futures.mapReduce(square_steps, operator.add, items): reduced on the workers.
    total = pydron.map_reduce(square_steps, operator.add, range(1, n + 1), executor=executor)
    print(f"mapReduce          -> pydron.map_reduce:           sum of squared chain "
          f"lengths {total}")

    if executor is not None:
        executor.shutdown()

    want_scores = [score(i, weights_list) for i in range(n)]
    want_steps = dict(collatz(k) for k in range(1, 17))
    want_total = sum(collatz(k)[1] ** 2 for k in range(1, n + 1))
    same = scores == want_scores and steps == want_steps and total == want_total
    print(f"results identical: {'yes' if same else 'no'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
