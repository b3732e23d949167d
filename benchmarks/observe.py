"""What seeing a run costs: 100,000 no-op calls with tracing off and on, in one run.

    python benchmarks/observe.py            # 100,000 calls, 3 rounds each way
    python benchmarks/observe.py --quick    # 20,000 calls, 2 rounds

Rows (the multicore pool, ``--workers`` processes, started once and warmed up):
  submit   each call through ``Executor.submit`` (a future per call), as_completed
  map      the same calls through ``pydron.map`` (chunked: a chunk is one event)
  schedule a ``@schedule`` loop making the calls

For each: the best of the rounds with nothing recording, with the progress counts only
(what the progress line reads), and with the trace kept (one event per call); as wall
time, and as the caller's CPU time per call (``time.process_time``: this machine is a
shared VM whose wall times move by tens of percent between rounds, while the work tracing
adds is the caller's); writing the trace file at the end is timed on its own. The aim:
tracing costs at most 2% of the wall time.
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


def timed(run, executor, n: int, mode: str, folder: str) -> tuple[float, float, float]:
    """(wall seconds, caller CPU seconds, seconds to write the trace file)."""
    wall, cpu = time.perf_counter(), time.process_time()
    if mode == "off":
        run(executor, n)
        return time.perf_counter() - wall, time.process_time() - cpu, 0.0
    with recording(keep_events=(mode == "trace")) as rec:
        run(executor, n)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    began = time.perf_counter()
    if mode == "trace":
        write_trace(rec, os.path.join(folder, "trace.json"))
    return wall, cpu, time.perf_counter() - began


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
    print(f"{'row':9} {'off s':>7} {'counts s':>9} {'trace s':>8} {'counts':>8} {'trace':>8} "
          f"{'CPU µs/call: off':>17} {'counts':>7} {'trace':>7} {'write s':>8}")
    with tempfile.TemporaryDirectory() as folder, pydron.Executor() as executor:
        by_submit(executor, 2000)  # workers up, functions known
        for name, run in (("submit", by_submit), ("map", by_map), ("schedule", by_schedule)):
            rounds: dict[str, list[tuple[float, float, float]]] = {}
            for _ in range(options.rounds):  # the modes take turns: drift hits each alike
                for mode in ("off", "counts", "trace"):
                    rounds.setdefault(mode, []).append(
                        timed(run, executor, options.calls, mode, folder))
            wall = {m: min(r[0] for r in v) for m, v in rounds.items()}
            cpu = {m: min(r[1] for r in v) / options.calls * 1e6 for m, v in rounds.items()}
            write = min(r[2] for r in rounds["trace"])
            print(f"{name:9} {wall['off']:7.3f} {wall['counts']:9.3f} {wall['trace']:8.3f} "
                  f"{(wall['counts'] / wall['off'] - 1) * 100:+7.1f}% "
                  f"{(wall['trace'] / wall['off'] - 1) * 100:+7.1f}% "
                  f"{cpu['off']:17.1f} {cpu['counts']:7.1f} {cpu['trace']:7.1f} {write:8.3f}")
    pydron.shutdown()


if __name__ == "__main__":
    main()
