"""The result cache (pydron.result_cache) next to joblib.Memory on the same work.

Figures, each the best of several rounds (the machine may be shared):

  hit       -- µs per cache hit with small arguments, end to end: for pydron a
               ``CachingPool(InlinePool(), ResultCache(dir))`` submit answered from the
               cache (key, store read, unpickle, callback); for joblib a call of a
               ``Memory(dir).cache`` function already computed. Aim: under 100 µs.
  key       -- µs to compute the key alone (pydron ``call_key``; joblib has no separate
               step, so its column repeats nothing and shows "-").
  store     -- µs per miss with small arguments: the call plus storing its result.
  hash      -- GB/s hashing one float64 array of SIZE (1 GB; 256 MB with --quick):
               ``pydron.result_cache.args_digest`` against ``joblib.hash``. Aim: above 1 GB/s.

Ratios are joblib / pydron for times and pydron / joblib for speeds: above 1 means
pydron is better.

Usage (from the repository root): python benchmarks/cache.py [--quick]
"""
from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import tempfile
import time
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from pydron.backend import InlinePool  # noqa: E402
from pydron.result_cache import CachingPool, ResultCache, args_digest, call_key  # noqa: E402
from pydron.result_cache.keys import hasher  # noqa: E402


def work(a, b, label="x"):
    """A small function with small arguments: what the hit cost is about."""
    return {"sum": a + b, "label": label}


def best_per_call(run, calls: int, rounds: int = 5) -> float:
    """Best over ``rounds`` of the mean seconds per call of ``run(calls)``."""
    best = float("inf")
    for _ in range(rounds):
        gc.collect()
        start = time.perf_counter()
        run(calls)
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def pydron_figures(root: str, calls: int) -> dict[str, float]:
    cache = ResultCache(os.path.join(root, "pydron"))
    pool = CachingPool(InlinePool(), cache)
    sink = []

    def on_done(ok, value):
        sink.append(value)

    counter = iter(range(10 ** 9))

    def misses(n: int) -> None:
        for _ in range(n):
            pool.submit(work, (next(counter), 2), {}, on_done)

    def hits(n: int) -> None:
        for i in range(n):
            pool.submit(work, (i % 100, 2), {}, on_done)

    def keys(n: int) -> None:
        for i in range(n):
            call_key(work, (i % 100, 2), {})

    store = best_per_call(misses, calls // 5, rounds=3)
    for i in range(100):
        pool.submit(work, (i, 2), {}, on_done)
    hit = best_per_call(hits, calls)
    key = best_per_call(keys, calls)
    assert pool.hits >= calls
    cache.close()
    return {"hit": hit, "key": key, "store": store}


def joblib_figures(root: str, calls: int) -> dict[str, float]:
    import joblib
    memory = joblib.Memory(os.path.join(root, "joblib"), verbose=0)
    cached = memory.cache(work)
    counter = iter(range(10 ** 9))

    def misses(n: int) -> None:
        for _ in range(n):
            cached(next(counter), 2)

    def hits(n: int) -> None:
        for i in range(n):
            cached(i % 100, 2)

    store = best_per_call(misses, max(calls // 20, 10), rounds=3)
    for i in range(100):
        cached(i, 2)
    hit = best_per_call(hits, max(calls // 5, 10))
    return {"hit": hit, "store": store}


def hash_speeds(size: int) -> dict[str, float]:
    import joblib
    array = np.random.default_rng(0).random(size // 8)
    out = {}
    for name, fn in (("pydron", lambda: args_digest((array,), {})),
                     ("joblib", lambda: joblib.hash(array))):
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - start)
        out[name] = array.nbytes / best / 1e9
    h = hasher()
    start = time.perf_counter()
    h.update(memoryview(array).cast("B"))
    out["raw"] = array.nbytes / (time.perf_counter() - start) / 1e9
    out["hasher"] = type(h).__module__ + "." + type(h).__name__
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="256 MB array, fewer calls")
    parser.add_argument("--calls", type=int, default=None, help="hits per round")
    options = parser.parse_args()
    calls = options.calls or (2000 if options.quick else 10000)
    size = (256 if options.quick else 1024) << 20
    warnings.simplefilter("ignore")
    root = tempfile.mkdtemp(prefix="pydron-cache-bench-")
    try:
        ours = pydron_figures(root, calls)
        theirs = joblib_figures(root, calls)
        speeds = hash_speeds(size)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    import diskcache
    import joblib
    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} cores; diskcache "
          f"{diskcache.__version__}, joblib {joblib.__version__}; hash {speeds['hasher']} "
          f"(raw {speeds['raw']:.1f} GB/s)")
    print()
    print("| figure | pydron.result_cache | joblib.Memory | ratio |")
    print("|---|---|---|---|")
    rows = [
        ("µs per hit, small arguments", ours["hit"] * 1e6, theirs["hit"] * 1e6, True),
        ("µs per miss (call + store), small arguments", ours["store"] * 1e6,
         theirs["store"] * 1e6, True),
        (f"GB/s hashing a {size >> 20} MiB float64 array", speeds["pydron"],
         speeds["joblib"], False),
    ]
    for name, mine, other, is_time in rows:
        ratio = other / mine if is_time else mine / other
        print(f"| {name} | {mine:,.1f} | {other:,.1f} | {ratio:.1f}x |")
    print(f"| µs per key alone (call_key) | {ours['key'] * 1e6:,.1f} | - | - |")


if __name__ == "__main__":
    main()
