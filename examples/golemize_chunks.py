"""A golemize-style chunked map on Pydron: one big common data object, a lazy ordered result
generator, and one task that fails.

A golemize program builds a Golemizer from its cluster settings (``taskSize``: how many
items go into one cluster task), then hands it a sequence of items, one common data object
and a function ``fn(item, common)``. The call returns a generator over the results in
input order that reads them one by one and keeps none of them; when it reaches an item
whose call raised, it raises that exception there, after every earlier result. The same
program on Pydron:

=================================================  ============================================
golemize                                           Pydron
=================================================  ============================================
``taskSize`` = 16 (items per cluster task)         ``chunksize=16``
common data, pickled once for the whole batch      ``catalogue = pydron.shared(array)``
``goDoIt(queries, catalogue, nearest)``            ``pydron.map(nearest, queries,``
                                                   ``repeat(catalogue), chunksize=16)``
the generator raises at the failed item            the default, ``errors="raise"``
a salvage that yields exceptions in place          ``errors="return"``
=================================================  ============================================

The work: a catalogue of reference vectors (a numpy array, a few MB: the common data) and
a stream of query vectors; each task finds a query's nearest catalogue entry. Query 13 is
broken (all NaN), so its task raises ValueError. The map runs twice: with
``errors="return"`` the exception is printed at its position and the map goes on; with
``errors="raise"`` the generator yields the 13 results before it and then raises. Both are
compared with a plain loop; the last line says whether all agree (exit status 0).

Usage (from the repository root):

    python examples/golemize_chunks.py                 # the pool of pydron.conf
    python examples/golemize_chunks.py --workers 2     # 2 local worker processes
    python examples/golemize_chunks.py --queries 1000 --rows 20000
"""
from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Iterator

import numpy as np

import pydron

DIMENSIONS = 32
BROKEN = 13           # the query whose task fails
TASK_SIZE = 16        # golemize's taskSize: items per call on a worker


def make_catalogue(rows: int) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((rows, DIMENSIONS))


def make_query(i: int) -> np.ndarray:
    """The i-th query vector (made on demand: the input is a lazy stream)."""
    if i == BROKEN:
        return np.full(DIMENSIONS, np.nan)
    return np.random.default_rng(1000 + i).standard_normal(DIMENSIONS)


def nearest(query: np.ndarray, catalogue: np.ndarray) -> tuple[int, float]:
    """``(row, distance)`` of the catalogue entry closest to ``query``."""
    if not np.isfinite(query).any():
        raise ValueError("query has no finite component")
    distances = np.sqrt(((catalogue - query) ** 2).sum(axis=1))
    row = int(distances.argmin())
    return row, round(float(distances[row]), 9)


def plain(queries: int, catalogue: np.ndarray) -> list[object]:
    """The sequential answer: each result, or the exception in its place."""
    out: list[object] = []
    for i in range(queries):
        try:
            out.append(nearest(make_query(i), catalogue))
        except ValueError as exc:
            out.append(exc)
    return out


def same(a: object, b: object) -> bool:
    if isinstance(a, BaseException) or isinstance(b, BaseException):
        return type(a) is type(b) and str(a) == str(b)
    return a == b


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=200, help="items (default 200)")
    parser.add_argument("--rows", type=int, default=20000,
                        help="catalogue rows (default 20000: 5 MB of common data)")
    parser.add_argument("--workers", type=int, default=None,
                        help="local worker processes (default: the pool of pydron.conf)")
    args = parser.parse_args(argv)
    executor = pydron.Executor(max_workers=args.workers) if args.workers else None
    array = make_catalogue(args.rows)
    catalogue = pydron.shared(array)       # pickled once, now; sent to each worker once
    print(f"common data: {array.shape[0]} x {array.shape[1]} catalogue, "
          f"{array.nbytes / 2**20:.1f} MiB, shared once; taskSize -> chunksize={TASK_SIZE}")

    def stream() -> Iterator[np.ndarray]:   # queries are made as the map reads them
        return (make_query(i) for i in range(args.queries))

    # errors="return": a failed task's exception is yielded at its position.
    got: list[object] = []
    for i, outcome in enumerate(pydron.map(nearest, stream(), itertools.repeat(catalogue),
                                           chunksize=TASK_SIZE, errors="return",
                                           executor=executor)):
        if isinstance(outcome, BaseException):
            print(f"item {i:3d}: {type(outcome).__name__}: {outcome}")
        elif i < 3 or i in (BROKEN - 1, BROKEN + 1):
            print(f"item {i:3d}: nearest row {outcome[0]}, distance {outcome[1]:.4f}")
        got.append(outcome)

    # errors="raise" (golemize's own behaviour): the results before the failed item, then
    # its exception, raised at its position.
    before: list[object] = []
    raised: BaseException | None = None
    try:
        for outcome in pydron.map(nearest, stream(), itertools.repeat(catalogue),
                                  chunksize=TASK_SIZE, executor=executor):
            before.append(outcome)
    except ValueError as exc:
        raised = exc
    print(f'errors="raise": {len(before)} results, then '
          f"{type(raised).__name__ if raised else 'nothing'} raised at item {len(before)}")

    if executor is not None:
        executor.shutdown()

    want = plain(args.queries, array)
    identical = (len(got) == len(want) and all(same(a, b) for a, b in zip(got, want))
                 and before == want[:BROKEN] and raised is not None
                 and same(raised, want[BROKEN]))
    print(f"results identical: {'yes' if identical else 'no'}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
