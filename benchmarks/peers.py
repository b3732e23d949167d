"""Pydron's process pool side by side with the standard peers, in one run.

    python benchmarks/peers.py                  # everything, 2 workers each (a few minutes)
    python benchmarks/peers.py --quick          # fewer repetitions
    python benchmarks/peers.py --pydron-pool threads   # compare another Pydron pool

Workloads (the worker-process issue's):
  A  5,000 no-op calls                        -> calls per second (higher is better)
  B  a chain of 200 calls, each on the last   -> microseconds per link (lower is better)
  C  32 CPU-bound calls of about 50 ms        -> speed-up over running them serially
  D  20 calls each taking a 10 MB numpy array -> MB per second shipped (higher is better)
  E  a fresh process, from start to the first result -> seconds (lower is better)

Peers: multiprocessing.Pool (apply_async), concurrent.futures.ProcessPoolExecutor and, if
installed (``pip install 'dask[distributed]'``), Dask distributed on a LocalCluster.
Each row ends with Pydron's figure as a ratio to each peer's (>1 means Pydron is better).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import subprocess
import sys
import textwrap
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, HERE]
os.environ["PYTHONPATH"] = os.pathsep.join(
    [ROOT, HERE] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])

import numpy as np  # noqa: E402

import pydron  # noqa: E402
import workloads as w  # noqa: E402

WORKERS = 2


# --------------------------------------------------------------------------- the systems

class Peer:
    """A pool of WORKERS processes with submit/result, for the generic workload drivers."""

    name = "?"

    def submit(self, fn, *args):
        raise NotImplementedError

    def result(self, handle):
        raise NotImplementedError

    def gather(self, handles):
        return [self.result(h) for h in handles]

    def close(self):
        pass


class MultiprocessingPool(Peer):
    name = "multiprocessing.Pool"

    def __init__(self):
        self.pool = multiprocessing.Pool(WORKERS)

    def submit(self, fn, *args):
        return self.pool.apply_async(fn, args)

    def result(self, handle):
        return handle.get()

    def close(self):
        self.pool.terminate()
        self.pool.join()


class ProcessPool(Peer):
    name = "ProcessPoolExecutor"

    def __init__(self):
        self.pool = concurrent.futures.ProcessPoolExecutor(WORKERS)

    def submit(self, fn, *args):
        return self.pool.submit(fn, *args)

    def result(self, handle):
        return handle.result()

    def close(self):
        self.pool.shutdown()


class DaskPeer(Peer):
    name = "Dask distributed"

    def __init__(self):
        import tempfile
        from dask.distributed import Client, LocalCluster
        self.tmp = tempfile.mkdtemp(prefix="pydron-bench-dask-")
        self.cluster = LocalCluster(n_workers=WORKERS, threads_per_worker=1, processes=True,
                                    dashboard_address=None, local_directory=self.tmp,
                                    silence_logs=50)
        self.client = Client(self.cluster)

    def submit(self, fn, *args):
        return self.client.submit(fn, *args, pure=False)

    def result(self, handle):
        return handle.result()

    def gather(self, handles):
        return self.client.gather(handles)

    def close(self):
        self.client.close()
        self.cluster.close()


def _peers():
    peers = [MultiprocessingPool, ProcessPool]
    try:
        import dask.distributed  # noqa: F401
        peers.append(DaskPeer)
    except ImportError:
        print("(Dask distributed is not installed: pip install 'dask[distributed]')")
    return peers


# --------------------------------------------------------------------------- workloads

def best(fn, repeat):
    """The best of ``repeat`` timings of ``fn()`` (seconds): noise only ever adds time."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def a_peer(peer, n, repeat):
    return n / best(lambda: peer.gather([peer.submit(w.noop, i) for i in range(n)]), repeat)


def b_peer(peer, n, repeat):
    def run():
        x = 0
        for _ in range(n):
            x = peer.result(peer.submit(w.inc, x))
    return best(run, repeat) / n * 1e6


def c_peer(peer, n, rounds, repeat):
    return best(lambda: peer.gather([peer.submit(w.spin, rounds) for _ in range(n)]), repeat)


def d_peer(peer, arrays, repeat):
    size = sum(a.nbytes for a in arrays) / 1e6
    return size / best(lambda: peer.gather([peer.submit(w.checksum, a) for a in arrays]),
                       repeat)


_FRESH = {
    "multiprocessing.Pool": """
        import multiprocessing, workloads
        if __name__ == "__main__":
            with multiprocessing.Pool({n}) as p:
                print(p.apply_async(workloads.inc, (1,)).get())
    """,
    "ProcessPoolExecutor": """
        import concurrent.futures, workloads
        if __name__ == "__main__":
            with concurrent.futures.ProcessPoolExecutor({n}) as p:
                print(p.submit(workloads.inc, 1).result())
    """,
    "Dask distributed": """
        import tempfile, workloads
        from dask.distributed import Client, LocalCluster
        if __name__ == "__main__":
            with LocalCluster(n_workers={n}, threads_per_worker=1, dashboard_address=None,
                              local_directory=tempfile.mkdtemp(), silence_logs=50) as c:
                with Client(c) as client:
                    print(client.submit(workloads.inc, 1).result())
    """,
    "Pydron": """
        import pydron, workloads
        if __name__ == "__main__":
            pydron.configure({conf!r})
            print(workloads.chain(1))
    """,
}


def e_fresh(name, conf, repeat):
    code = textwrap.dedent(_FRESH[name]).format(n=WORKERS, conf=conf)
    path = os.path.join(HERE, f"_fresh_{name.split()[0].split('.')[0].lower()}.py")
    with open(path, "w") as fh:
        fh.write(code)
    try:
        def run():
            out = subprocess.run([sys.executable, path], capture_output=True, text=True,
                                 cwd=HERE, timeout=120)
            if out.stdout.strip() not in ("1", "2"):
                raise RuntimeError(f"{name}: {out.stdout} {out.stderr}")
        return best(run, repeat)
    finally:
        os.unlink(path)


# --------------------------------------------------------------------------- Pydron

def pydron_figures(conf, args, arrays, serial_c):
    pydron.configure(conf)
    w.chain(2)                                   # start the workers
    w.many_noops(50)
    r = {}
    r["A"] = args.calls / best(lambda: w.many_noops(args.calls), args.repeat)
    r["B"] = best(lambda: w.chain(args.links), args.repeat) / args.links * 1e6
    r["C"] = serial_c / best(lambda: w.spins(args.cpu_calls, args.rounds), args.repeat)
    size = sum(a.nbytes for a in arrays) / 1e6
    r["D"] = size / best(lambda: w.checksums(arrays), args.repeat)
    pydron.shutdown()
    r["E"] = e_fresh("Pydron", conf, args.repeat)
    return r


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--pydron-pool", default="multicore",
                        help="Pydron worker type to measure (default: multicore)")
    args = parser.parse_args()
    args.repeat = 2 if args.quick else 3
    args.calls, args.links = 5000, 200
    args.cpu_calls, args.cpu_seconds = 32, 0.05
    conf = {"workers": [{"type": args.pydron_pool,
                         ("cores" if args.pydron_pool == "multicore" else "count"): WORKERS}]}
    arrays = [np.full(10 * 1024 * 1024 // 8, float(i)) for i in range(20)]
    args.rounds = w.rounds_for(args.cpu_seconds)
    serial_c = best(lambda: [w.spin(args.rounds) for _ in range(args.cpu_calls)], args.repeat)

    results: dict[str, dict[str, float]] = {}
    for cls in _peers():
        peer = cls()
        try:
            peer.gather([peer.submit(w.inc, i) for i in range(10)])      # warm up
            results[cls.name] = {
                "A": a_peer(peer, args.calls, args.repeat),
                "B": b_peer(peer, args.links, args.repeat),
                "C": serial_c / c_peer(peer, args.cpu_calls, args.rounds, args.repeat),
                "D": d_peer(peer, arrays, args.repeat),
            }
        finally:
            peer.close()
        results[cls.name]["E"] = e_fresh(cls.name, conf, args.repeat)
        print(f"measured {cls.name}", flush=True)
    results["Pydron"] = pydron_figures(conf, args, arrays, serial_c)

    rows = [("A", "no-op calls/s", True), ("B", "us per chained call", False),
            ("C", "speed-up, 32 x 50 ms CPU", True), ("D", "MB/s, 10 MB arrays", True),
            ("E", "s, fresh process to first result", False)]
    peers = [n for n in results if n != "Pydron"]
    header = ["workload", "Pydron"] + peers + [f"vs {p.split()[0]}" for p in peers]
    print()
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for key, label, higher in rows:
        mine = results["Pydron"][key]
        cells = [f"{key}: {label}", _fmt(mine)] + [_fmt(results[p][key]) for p in peers]
        for p in peers:
            theirs = results[p][key]
            ratio = mine / theirs if higher else theirs / mine
            cells.append(f"{ratio:.2f}x")
        print("| " + " | ".join(cells) + " |")
    print(f"\n{WORKERS} workers each; Pydron pool: {args.pydron_pool}; best of {args.repeat}; "
          f"python {sys.version.split()[0]}, {os.cpu_count()} cores, "
          f"{time.strftime('%Y-%m-%d')}. Ratios: >1 means Pydron is better.")


def _fmt(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.2f}"


if __name__ == "__main__":
    main()
