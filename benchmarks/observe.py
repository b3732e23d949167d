"""What seeing a run costs: 100,000 no-op calls with tracing off and on, in one run.

    python benchmarks/observe.py            # 100,000 calls, 3 rounds each way
    python benchmarks/observe.py --quick    # 20,000 calls, 2 rounds

Rows (the multicore pool, ``--workers`` processes, started once and warmed up):
  submit   each call through ``Executor.submit`` (a future per call), as_completed
  map      the same calls through ``pydron.map`` (chunked: a chunk is one event)
  schedule a ``@schedule`` loop making the calls

For each: the best wall time of the rounds with nothing recording, with the progress
counts only (what the progress line reads), and with the trace kept (one event per call,
written to a file at the end, which is timed too), and the cost as a percentage of the
time with nothing recording. The aim: tracing costs at most 2% of the wall time.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, HERE]
os.environ["PYTHONPATH"] = os.pathsep.join([ROOT, HERE])

import pydron  # noqa: E402
import workloads as w  # noqa: E402
from pydron.observe import recording  # noqa: E402
from pydron.observe.trace import write_trace  # noqa: E402


@pydron.schedule
def scheduled(n):
    out = []
    for i in range(n):
        out.append(w.noop_functional(i))
    return len(out)


def by_submit(executor, n):
    futures = [executor.submit(w.noop, i) for i in range(n)]
    for future in concurrent.futures.as_completed(futures):
        future.result()


def by_map(executor, n):
    for _ in pydron.map(w.noop, range(n)):
        pass


def by_schedule(executor, n):
    assert scheduled(n) == n


def timed(run, executor, n: int, mode: str, folder: str) -> float:
    began = time.perf_counter()
    if mode == "off":
        run(executor, n)
    else:
        with recording(keep_events=(mode == "trace")) as rec:
            run(executor, n)
        if mode == "trace":
            write_trace(rec, os.path.join(folder, "trace.json"))
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    options = parser.parse_args()
    if options.quick:
        options.calls, options.rounds = 20_000, 2
    pydron.configure({"workers": [{"type": "multicore", "cores": options.workers}]})
    print(f"{options.calls} no-op calls, {options.workers} worker processes, best of "
          f"{options.rounds} rounds each")
    print(f"{'row':10} {'off (s)':>9} {'counts (s)':>11} {'trace (s)':>10} "
          f"{'counts cost':>12} {'trace cost':>11}")
    with tempfile.TemporaryDirectory() as folder, pydron.Executor() as executor:
        by_submit(executor, 2000)  # workers up, functions known
        for name, run in (("submit", by_submit), ("map", by_map), ("schedule", by_schedule)):
            best = {}
            for mode in ("off", "counts", "trace"):
                best[mode] = min(timed(run, executor, options.calls, mode, folder)
                                 for _ in range(options.rounds))
            off = best["off"]
            print(f"{name:10} {off:9.3f} {best['counts']:11.3f} {best['trace']:10.3f} "
                  f"{(best['counts'] / off - 1) * 100:+11.1f}% "
                  f"{(best['trace'] / off - 1) * 100:+10.1f}%")
    pydron.shutdown()


if __name__ == "__main__":
    main()
