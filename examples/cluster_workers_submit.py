"""A Cluster-Workers-style client on Pydron: submit(func, arg) with a completion callback, on
a long-lived pool of workers.

A Cluster-Workers program talks to a master process and its workers, started beforehand
and left running between client programs. The client starts a client thread with a
completion callback, calls ``submit(func, arg)`` for each job (getting a job id back), and
waits; the callback is called with the job id and the job's return value as each job
finishes, and a job that raised makes the wait raise its remote traceback. On Pydron the
client is a ``pydron.Executor``: its pool starts with the first call and lives until the
executor is shut down (or, for ``pydron.Executor()``, for the life of the process):

=================================================  ============================================
Cluster-Workers                                    Pydron
=================================================  ============================================
master and workers started by hand (or SLURM)      ``ex = pydron.Executor()`` (pydron.conf)
``client = ClientThread(on_done); start()``        ``future.add_done_callback(on_done)``
``job = client.submit(func, arg)``                 ``future = ex.submit(func, arg)``
``on_done(job, result)``                           ``on_done(future)``: ``future.result()``
``client.wait()``                                  ``pydron.wait(futures)`` or ``as_completed``
a remote traceback, raised by ``wait()``           the job's own exception, from ``result()``
=================================================  ============================================

The jobs square numbers the slow way (a made-up workload: a sum over ``n`` terms, and
20 ms of waiting). Two rounds are submitted to the same executor of ``--workers`` local
processes (2 by default): the second round runs on the worker processes the first round
started, none new. One job of the second round raises on purpose; its exception is that
job's outcome and the other jobs complete. The answers are compared with a plain loop; the
last line says whether they agree (exit status 0).

Usage (from the repository root):

    python examples/cluster_workers_submit.py               # 2 local worker processes
    python examples/cluster_workers_submit.py --workers 4 --jobs 40
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import sys
import threading
import time

import pydron

FAILING = 13        # the job that raises (odd: round 2)


def work(n: int) -> tuple[int, int]:
    """``(pid, n * n)``, computed as a sum of the first n odd numbers (and a short wait)."""
    time.sleep(0.02)
    if n == FAILING:
        raise ArithmeticError(f"job {n}: unlucky number")
    return os.getpid(), sum(2 * k + 1 for k in range(n))


def expected(n: int) -> int:
    return n * n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20, help="jobs per round (default 20)")
    parser.add_argument("--workers", type=int, default=2,
                        help="local worker processes (default 2)")
    args = parser.parse_args(argv)

    results: dict[int, int] = {}
    errors: dict[int, BaseException] = {}
    pids: dict[int, set[int]] = {1: set(), 2: set()}
    lock = threading.Lock()
    ex = pydron.Executor(max_workers=args.workers)   # the long-lived pool of this client

    def submit(round_: int, n: int) -> cf.Future:
        future = ex.submit(work, n)

        def on_done(done: cf.Future) -> None:     # called as the job finishes
            exc = done.exception()
            with lock:
                if exc is not None:
                    errors[n] = exc
                else:
                    pid, value = done.result()
                    results[n] = value
                    pids[round_].add(pid)
        future.add_done_callback(on_done)
        return future

    evens, odds = range(0, 2 * args.jobs, 2), range(1, 2 * args.jobs, 2)
    round1 = [submit(1, n) for n in evens]
    done, _ = pydron.wait(round1)                # client.wait()
    print(f"round 1: {len(done)} jobs done, "
          f"{sum(f.exception() is None for f in done)} succeeded")

    round2 = {submit(2, n): n for n in odds}
    completed = 0
    for future in pydron.as_completed(round2):
        completed += 1
        exc = future.exception()
        if exc is not None:
            print(f"round 2: job {round2[future]} raised {type(exc).__name__}: {exc}")
    print(f"round 2: {completed} jobs completed through as_completed")
    ex.shutdown()                                # every job done, the workers stopped
    workers = pids[1] | pids[2]
    reused = len(workers) <= args.workers
    print(f"round 2 started no new worker process ({len(workers)} for both rounds): "
          f"{'yes' if reused else 'no'}")
    print(f"callbacks received: {len(results) + len(errors)} of {2 * args.jobs}")

    want = {n: expected(n) for n in range(2 * args.jobs) if n != FAILING}
    same = (results == want and list(errors) == [FAILING]
            and isinstance(errors[FAILING], ArithmeticError))
    print(f"results identical: {'yes' if same else 'no'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
