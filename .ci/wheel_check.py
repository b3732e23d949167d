"""The installed wheel keeps the whole compiler: a check that `.ci/run` runs in a fresh
virtual environment, from a folder outside the checkout, with PydronWarning an error.

A wheel that lacks a subpackage still imports (`import pydron` works), but every
``@schedule`` then falls back to plain execution with one PydronWarning and ``explain``
crashes: only running a scheduled function in parallel shows that the install is whole.
So this script checks, and exits non-zero with the reason when one fails, that

* ``pydron`` is imported from the environment's site-packages, not from a checkout;
* the compiler's subpackages import (``pydron.runtime.scheduler``, ``pydron.dataflow.template``);
* ``pydron.explain`` reports the functional call of a loop below and that its iterations
  run concurrently;
* the scheduled loop gives the plain function's results and printed output (any
  PydronWarning is an error) and runs at least ``--min-speedup`` times faster on the
  default pool (one worker process per core), timed after a first call has started the
  workers and translated the function.

It prints the same comparison lines as the examples ("results identical: yes" ...).

``--run-example SCRIPT ARGS...`` instead runs an example script (as ``__main__``) under
the same checks of where pydron comes from and of warnings. This stands in for
``python -W error::pydron.PydronWarning SCRIPT``: Python reads ``-W`` (and
``PYTHONWARNINGS``) before site-packages is on ``sys.path``, so in a virtual environment
it cannot import ``pydron`` to resolve the category and ignores the option (it only says
"Invalid -W option ignored").
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import os
import runpy
import sys
import time
import warnings

import pydron


@pydron.functional
def longest_chain(start: int, count: int) -> tuple[int, int]:
    """The longest Collatz chain of the ``count`` numbers from ``start``: pure Python CPU
    work (no numpy, no GIL release), so only worker processes can run it in parallel."""
    best = 0
    for n in range(start, start + count):
        steps = 0
        while n != 1:
            n = n // 2 if n % 2 == 0 else 3 * n + 1
            steps += 1
        if steps > best:
            best = steps
    return start, best


@pydron.schedule
def chains(starts: list[int], count: int) -> list[tuple[int, int]]:
    results = []
    for i, start in enumerate(starts):
        print(f"block {i}: numbers from {start}")  # a sync point: printed in order
        results.append(longest_chain(start, count))
    return results


def fail(message: str) -> None:
    print(f"FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def timed(func, *args) -> tuple[object, str, float]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        t0 = time.perf_counter()
        result = func(*args)
        elapsed = time.perf_counter() - t0
    return result, out.getvalue(), elapsed


def installed_here(checkout: str) -> None:
    """Fail unless pydron comes from this environment and we run outside ``checkout``;
    make every PydronWarning (a fallback to plain execution) an error."""
    warnings.simplefilter("error", pydron.PydronWarning)
    here = os.path.realpath(pydron.__file__)
    root = os.path.realpath(checkout) + os.sep
    print(f"pydron {pydron.__version__} from {here}")
    if here.startswith(root) or not here.startswith(os.path.realpath(sys.prefix) + os.sep):
        fail(f"pydron was imported from {here}, not from this environment ({sys.prefix})")
    if os.path.realpath(os.getcwd()).startswith(root):
        fail(f"run from {os.getcwd()}, inside the checkout")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkout", required=True,
                        help="the repository root: pydron must not be imported from there")
    parser.add_argument("--run-example", nargs=argparse.REMAINDER, metavar="SCRIPT ARGS",
                        help="run this script as __main__ with these arguments instead")
    parser.add_argument("--blocks", type=int, default=12, help="functional calls (12)")
    parser.add_argument("--count", type=int, default=40_000,
                        help="numbers per call (40000: about 0.2 s of CPU each)")
    parser.add_argument("--min-speedup", type=float, default=1.25,
                        help="the least plain/scheduled time ratio that passes (1.25)")
    args = parser.parse_args(argv)
    installed_here(args.checkout)
    if args.run_example:
        script, *rest = args.run_example
        sys.argv = [script, *rest]
        sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
        runpy.run_path(script, run_name="__main__")  # its sys.exit() is our exit
        return 0

    for name in ("pydron.runtime.scheduler", "pydron.dataflow.template"):
        try:
            importlib.import_module(name)  # the packages a wheel once lacked
        except ImportError as exc:
            fail(f"cannot import {name} from the installed pydron: {exc}")

    report = str(pydron.explain(chains))
    print(report)
    for claim in ("functional call longest_chain()", "iterations run concurrently"):
        if claim not in report:
            fail(f"pydron.explain(chains) does not say {claim!r}")

    starts = [1_000_000 + i * args.count for i in range(args.blocks)]
    timed(chains, starts[:2], 10)  # translate, and start the workers, before timing
    plain, plain_out, t_plain = timed(chains.__wrapped__, starts, args.count)
    sched, sched_out, t_sched = timed(chains, starts, args.count)
    workers = pydron.backend.get_pool().parallelism
    speedup = t_plain / t_sched
    if speedup < args.min_speedup:
        # One more pair of runs before failing: a shared CI machine has moments when
        # another process takes a core; a real loss of parallelism shows in both pairs.
        print(f"speed-up {speedup:.2f}x on the first pair of runs; measuring once more")
        _, _, t_plain = timed(chains.__wrapped__, starts, args.count)
        _, _, t_sched = timed(chains, starts, args.count)
        speedup = max(speedup, t_plain / t_sched)
    print("--- comparison ---")
    print(f"plain:      {t_plain:7.2f} s")
    print(f"scheduled:  {t_sched:7.2f} s  ({workers} workers of the default pool)")
    print(f"speed-up:   {speedup:7.2f}x")
    print(f"results identical: {'yes' if plain == sched else 'NO'}")
    print(f"printed output identical: {'yes' if plain_out == sched_out else 'NO'}")
    if plain != sched or plain_out != sched_out:
        fail("the scheduled run differs from the plain run")
    if workers < 2:
        fail(f"the default pool has {workers} worker(s): no parallelism to measure")
    if speedup < args.min_speedup:
        fail(f"speed-up {speedup:.2f}x is below {args.min_speedup:g}x on {workers} workers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
