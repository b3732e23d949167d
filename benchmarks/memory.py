"""Peak memory of the multicore pool for large values (issue 8, point 2).

Two cases, each measured in a fresh Python process (peak resident memory, ``VmHWM``, only
ever grows, so cases must not share one):

  argument -- one array of SIZE bytes passed to 8 fast calls on 2 workers. Reported: the
              largest peak of a worker over its resident memory before the calls, and the
              caller's peak over its memory before the array existed (the array itself is
              one copy). Aim: at most one extra copy per worker (ratio <= ~1).
  result   -- one call returns a fresh array of SIZE bytes. Reported: the caller's peak
              over its memory before the call. Aim: at most one copy (ratio <= ~1).

Each case runs with the default settings and with variants: ``prefetch_bytes`` unbounded
(the behaviour before the byte bound: calls queued by count only) for the argument, and a
small ``max_frame`` (64 MiB, so the array travels split into parts, as one of over 1 GiB
does by default) for the result.

Usage (from the repository root): python benchmarks/memory.py [--size MB]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MB = 1 << 20


def _status(field: str) -> int:
    """A size field of /proc/self/status (VmRSS, VmHWM), in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def worker_memory(array=None):
    """Run in a worker: (resident now, peak so far). Touches nothing of ``array``."""
    return _status("VmRSS"), _status("VmHWM")


def make_array(nbytes):
    import numpy as np
    array = np.empty(nbytes, dtype=np.uint8)
    array.fill(1)  # touch every page: resident
    return array


class _Waiter:
    def __init__(self) -> None:
        self.results: dict[object, tuple[bool, object]] = {}
        self.cond = threading.Condition()

    def callback(self, tag):
        def on_done(ok, value):
            with self.cond:
                self.results[tag] = (ok, value)
                self.cond.notify_all()
        return on_done

    def get(self, tag, timeout: float = 120.0):
        with self.cond:
            if not self.cond.wait_for(lambda: tag in self.results, timeout):
                raise TimeoutError(f"no result for {tag!r}")
            ok, value = self.results.pop(tag)
        if not ok:
            raise value  # type: ignore[misc]
        return value


def _run_case(case: str, size: int, options: dict) -> dict:
    """One case, in this process; its figures as a dict."""
    sys.path.insert(0, ROOT)
    from pydron.backend.multicore import MulticorePool

    pool = MulticorePool(2, **options)
    pool.start()
    out = _Waiter()
    try:
        for i in range(300):  # tiny calls: the pool learns that calls are fast, prefetches
            pool.submit(worker_memory, (), {}, out.callback(("warm", i)))
        base_workers = [out.get(("warm", i))[0] for i in range(300)]
        time.sleep(0.2)
        caller_before = _status("VmRSS")
        if case == "argument":
            array = make_array(size)
            for i in range(8):
                pool.submit(worker_memory, (array,), {}, out.callback(i))
            peaks = [out.get(i)[1] for i in range(8)]
            worker_extra = max(peaks) - min(base_workers)
            del array
            figures = {"worker_peak_over_base": worker_extra}
        else:
            pool.submit(make_array, (size,), {}, out.callback("r"))
            value = out.get("r")
            assert value.nbytes == size
            del value
            figures = {}
        figures["caller_peak_over_base"] = _status("VmHWM") - caller_before
        return figures
    finally:
        pool.shutdown(wait=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=300, help="value size in MB")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--options", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = args.size * MB
    if args.case:  # a child: one case
        print(json.dumps(_run_case(args.case, size, json.loads(args.options))))
        return
    runs = [
        ("argument", "defaults", {}),
        ("argument", "prefetch_bytes unbounded", {"prefetch_bytes": 1 << 50}),
        ("result", "defaults", {}),
        ("result", "max_frame 64 MiB (split)", {"max_frame": 64 * MB}),
    ]
    print(f"value: {args.size} MB; 2 workers; ratios are in copies of the value\n")
    print("| case | settings | worker peak over base | caller peak over base |")
    print("|---|---|---|---|")
    for case, label, options in runs:
        child = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--size", str(args.size),
             "--case", case, "--options", json.dumps(options)],
            capture_output=True, text=True, check=True, timeout=300)
        figures = json.loads(child.stdout.strip().splitlines()[-1])
        cells = []
        for key in ("worker_peak_over_base", "caller_peak_over_base"):
            if key in figures:
                cells.append(f"{figures[key] / MB:,.0f} MB ({figures[key] / size:.2f}x)")
            else:
                cells.append("-")
        print(f"| {case}, 8 calls | {label} | {cells[0]} | {cells[1]} |"
              if case == "argument" else f"| {case} | {label} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
