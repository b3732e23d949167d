"""A multiprocessing.Pool program on Pydron: only the line that makes the pool changes.

pypoolparty offers a ``Pool()`` whose ``map(func, tasks)`` is meant as a drop-in for
``multiprocessing.Pool().map`` while running each chunk of tasks as a batch job (SLURM or
Grid Engine); a task that raises has its message written to its job's error file and
``None`` in its place in the result list. ``pydron.Pool`` is the same kind of drop-in,
running on the pools of ``pydron.conf`` (local cores, SSH hosts, cloud instances):

=================================================  ============================================
multiprocessing / pypoolparty                      Pydron
=================================================  ============================================
``multiprocessing.Pool(4)``                        ``pydron.Pool(4)``
``pypoolparty.slurm.Pool()``                       ``pydron.Pool()`` (the pools of pydron.conf)
``pool.map(fn, tasks)``                            ``pool.map(fn, tasks)``
``pool.imap_unordered(fn, tasks)``                 ``pool.imap_unordered(fn, tasks)``
``pool.apply_async(fn, args, callback=...)``       ``pool.apply_async(fn, args, callback=...)``
a failed task's message in its error file          ``error_callback=`` (or ``pydron.map(...,``
                                                   ``errors="return")``)
=================================================  ============================================

``run(pool)`` below is written for ``multiprocessing.Pool`` and runs unchanged on either
(``--pool multiprocessing`` runs it on the standard library's pool). One of its
``apply_async`` tasks fails on purpose; its exception is recorded for that task, as
pypoolparty records one per task, and the other tasks go on. The answers are compared with
a plain sequential run; the last line says whether they agree (exit status 0).

Usage (from the repository root):

    python examples/poolparty_pool.py                  # pydron.Pool(): the pools of pydron.conf
    python examples/poolparty_pool.py --processes 2    # pydron.Pool(2): 2 local processes
    python examples/poolparty_pool.py --pool multiprocessing
"""
from __future__ import annotations

import argparse
import multiprocessing
import random
import sys
import threading
from typing import Any

import pydron

FAILING = 7          # the apply_async task that raises


def shower_energy(seed: int) -> float:
    """A made-up air-shower simulation: the energy deposited by 2,000 random particles."""
    rng = random.Random(seed)
    return round(sum(rng.expovariate(1.0) for _ in range(2000)), 6)


def hits(pixel: int) -> tuple[int, int]:
    """``(pixel, photons)``: photons counted in one detector pixel."""
    rng = random.Random(pixel * 7919)
    return pixel, sum(1 for _ in range(3000) if rng.random() < 0.01)


def fit(task: int) -> tuple[int, float]:
    """``(task, slope)`` of a least-squares line through noisy points; task FAILING fails."""
    if task == FAILING:
        raise ValueError(f"task {task}: fit did not converge")
    rng = random.Random(task)
    xs = [float(x) for x in range(200)]
    ys = [2.0 * x + rng.gauss(0.0, 1.0) for x in xs]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return task, round(slope, 9)


def run(pool: Any, tasks: int) -> dict[str, Any]:
    """The program as written for multiprocessing.Pool."""
    energies = pool.map(shower_energy, range(tasks))
    pixels = sorted(pool.imap_unordered(hits, range(tasks)))
    fits: list[tuple[int, float]] = []
    failed: list[BaseException] = []
    lock = threading.Lock()

    def record_fit(value: tuple[int, float]) -> None:
        with lock:
            fits.append(value)

    def record_error(exc: BaseException) -> None:
        with lock:
            failed.append(exc)

    pending = [pool.apply_async(fit, (t,), callback=record_fit, error_callback=record_error)
               for t in range(12)]
    for result in pending:
        result.wait()
    ok = [r.successful() for r in pending]
    pool.close()
    pool.join()
    return {"energies": energies, "pixels": pixels, "fits": sorted(fits),
            "failed": [f"{type(e).__name__}: {e}" for e in failed], "successful": ok}


def plain(tasks: int) -> dict[str, Any]:
    fits, failed = [], []
    for t in range(12):
        try:
            fits.append(fit(t))
        except ValueError as exc:
            failed.append(f"{type(exc).__name__}: {exc}")
    return {"energies": [shower_energy(s) for s in range(tasks)],
            "pixels": sorted(hits(p) for p in range(tasks)), "fits": fits, "failed": failed,
            "successful": [t != FAILING for t in range(12)]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=64, help="tasks per map (default 64)")
    parser.add_argument("--processes", type=int, default=None,
                        help="worker processes (default: pydron.conf, or os.cpu_count())")
    parser.add_argument("--pool", choices=("pydron", "multiprocessing"), default="pydron")
    args = parser.parse_args(argv)

    if args.pool == "pydron":
        pool = pydron.Pool(args.processes)             # the one line that changes
    else:
        pool = multiprocessing.Pool(args.processes)
    with pool:
        got = run(pool, args.tasks)

    print(f"pool: {type(pool).__module__}.{type(pool).__name__}")
    print(f"map:            {len(got['energies'])} shower energies, first "
          f"{got['energies'][:2]}")
    print(f"imap_unordered: {sum(n for _, n in got['pixels'])} photons in "
          f"{len(got['pixels'])} pixels")
    print(f"apply_async:    {len(got['fits'])} fits through callback, "
          f"{len(got['failed'])} recorded by error_callback")
    for message in got["failed"]:
        print(f"  task {FAILING} recorded: {message}")
    same = got == plain(args.tasks)
    print(f"results identical: {'yes' if same else 'no'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
