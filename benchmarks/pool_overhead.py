"""Per-call overhead of the in-process pools, next to concurrent.futures.

Two numbers per pool:
  latency    -- submit() to on_done() for one no-op call on an idle pool (median, p90);
  throughput -- many no-op calls submitted back to back, wall time / calls.

Usage (from the repository root): python -m benchmarks.pool_overhead [--calls N] [--threads K]
"""
from __future__ import annotations

import argparse
import concurrent.futures
import statistics
import threading
import time

from pydron.backend import InlinePool, ThreadPool


def noop() -> None:
    return None


def latency(submit, n: int) -> list[float]:
    """Microseconds from submit to callback, one call at a time on an idle pool."""
    samples = []
    done = threading.Event()
    stamp = [0.0]

    def on_done(ok, value):
        stamp[0] = time.perf_counter()
        done.set()

    for _ in range(n):
        done.clear()
        t0 = time.perf_counter()
        submit(on_done)
        done.wait()
        samples.append((stamp[0] - t0) * 1e6)
        time.sleep(0.0002)  # let the worker go back to sleep: measure the idle case
    return samples


def throughput(submit, n: int) -> float:
    """Microseconds per call when n no-op calls are submitted back to back."""
    left = [n]
    lock = threading.Lock()
    done = threading.Event()

    def on_done(ok, value):
        with lock:
            left[0] -= 1
            if left[0] == 0:
                done.set()

    t0 = time.perf_counter()
    for _ in range(n):
        submit(on_done)
    done.wait()
    return (time.perf_counter() - t0) * 1e6 / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--threads", type=int, default=4)
    opts = parser.parse_args()

    pools = {}
    tp = ThreadPool(opts.threads)
    pools["pydron ThreadPool"] = lambda cb: tp.submit(noop, (), {}, cb)
    ip = InlinePool()
    pools["pydron InlinePool"] = lambda cb: ip.submit(noop, (), {}, cb)
    ex = concurrent.futures.ThreadPoolExecutor(opts.threads)

    def cf_submit(cb):
        ex.submit(noop).add_done_callback(lambda f: cb(True, f.result()))
    pools["concurrent.futures"] = cf_submit

    for name, submit in pools.items():
        submit(lambda ok, v: None)  # start the threads
        time.sleep(0.05)
        lat = sorted(latency(submit, min(opts.calls, 3000)))
        thr = throughput(submit, opts.calls)
        print(f"{name:20s} latency median {statistics.median(lat):6.1f} us, "
              f"p90 {lat[int(len(lat) * 0.9)]:6.1f} us; throughput {thr:5.2f} us/call")
    tp.shutdown()
    ex.shutdown()


if __name__ == "__main__":
    main()
