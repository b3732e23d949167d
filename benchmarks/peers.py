"""Pydron's process pool side by side with the standard peers, in one run.

    python benchmarks/peers.py                  # everything, 2 workers each (a few minutes)
    python benchmarks/peers.py --quick          # fewer repetitions
    python benchmarks/peers.py --pydron-pool threads   # compare another Pydron pool
    python benchmarks/peers.py --only F,G       # some workloads alone

Workloads (the worker-process issue's):
  A  5,000 no-op calls                        -> calls per second (higher is better)
  B  a chain of 200 calls, each on the last   -> microseconds per link (lower is better)
  C  32 CPU-bound calls of about 50 ms        -> speed-up over running them serially
  D  20 calls each taking a 10 MB numpy array -> MB per second shipped (higher is better)
  E  a fresh process, from start to the first result -> seconds (lower is better)

Workloads of the explicit API (pydron.map, pydron.Executor, pydron.shared; the Pydron side
always runs on the multicore pool):
  F  100,000 no-op items through map           -> items per second (higher is better);
     and a 10 us-per-item function, pydron.map against a plain loop
  G  10,000 submit + as_completed of a no-op   -> calls per second (higher is better)
  H  one large numpy array (1 GB; 256 MB with --quick) used by 64 calls -> seconds
  I  sum(map(f, a generator of 10,000,000 items)) -> the caller's peak RSS in MB

Data locality (benchmarks/pipeline_peers.py):
  J  a four-step numpy pipeline over 32 frames of 4 MB, a float per frame back -> seconds;
     @schedule on the sequential loop against plain Python, pydron.Executor, Dask
     (futures between tasks), Ray (ObjectRefs between tasks) and ProcessPoolExecutor

Peers: multiprocessing.Pool (apply_async), concurrent.futures.ProcessPoolExecutor and, if
installed (``pip install -e '.[bench]'``: Dask distributed on a LocalCluster, loky,
joblib), the others; a peer that is not installed is skipped with a note.
Each row ends with Pydron's figure as a ratio to each peer's (>1 means Pydron is better).
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures
import functools
import gc
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

def pydron_figures(conf, args, arrays, serial_c, sections):
    pydron.configure(conf)
    w.chain(2)                                   # start the workers
    w.many_noops(50)
    r = {}
    if "A" in sections:
        r["A"] = args.calls / best(lambda: w.many_noops(args.calls), args.repeat)
    if "B" in sections:
        r["B"] = best(lambda: w.chain(args.links), args.repeat) / args.links * 1e6
    if "C" in sections:
        r["C"] = serial_c / best(lambda: w.spins(args.cpu_calls, args.rounds), args.repeat)
    if "D" in sections:
        size = sum(a.nbytes for a in arrays) / 1e6
        r["D"] = size / best(lambda: w.checksums(arrays), args.repeat)
    pydron.shutdown()
    if "E" in sections:
        r["E"] = e_fresh("Pydron", conf, args.repeat)
    return r


# --------------------------------------------------------------------------- explicit API

def _have(module, what):
    """Whether ``module`` imports; a printed note when not (the row is skipped)."""
    try:
        __import__(module)
        return True
    except ImportError:
        print(f"({what} is not installed, skipped: pip install -e '.[bench]')", flush=True)
        return False


def drain(iterable):
    """Consume ``iterable`` without keeping its items (as a loop over results would)."""
    collections.deque(iterable, maxlen=0)


def _ask(label, value, target, met):
    print(f"target {label}: {value} (target: {target}) -> {'met' if met else 'NOT met'}",
          flush=True)


def _rate_table(unit, rows, mine):
    """rows: (system, how, count, seconds); ``mine``: Pydron's rate, for the ratio."""
    print(f"\n| system | how | {unit} | seconds | {unit}/s | Pydron's ratio |")
    print("|---|---|---|---|---|---|")
    for system, how, count, seconds in rows:
        rate = count / seconds
        print(f"| {system} | {how} | {count:,} | {seconds:.3f} | {rate:,.0f} | "
              f"{mine / rate:.2f}x |")
    print(flush=True)


F_CHUNKS = (100, 1000, 10_000)   # the tuned chunksize: the best of these


def _tuned(run, repeat):
    """(chunksize, seconds): the best of F_CHUNKS for ``run(chunksize)``."""
    times = {c: best(lambda: run(c), repeat) for c in F_CHUNKS}
    chunk = min(times, key=times.get)
    return chunk, times[chunk]


def section_f(conf, args):
    n = 100_000
    fast = 3 if args.quick else 5                 # repetitions of the sub-second rows
    slow = 1                                      # rows of chunksize 1 (seconds each)
    n_dask = 2_000 if args.quick else 10_000      # Dask: 1-3 ms per task
    n_busy = 20_000 if args.quick else 100_000
    rows = []
    rounds = w.busy_rounds_for(10e-6)             # first, while no pool runs
    fn = functools.partial(w.busy, rounds=rounds)

    pydron.configure(conf)
    drain(pydron.map(w.noop, range(100)))        # start the workers
    mine = best(lambda: drain(pydron.map(w.noop, range(n))), fast)
    rows.append(("Pydron", 'pydron.map, chunksize "auto"', n, mine))
    mine_rate = n / mine
    print("measured Pydron", flush=True)

    default_chunk, extra = divmod(n, WORKERS * 4)
    default_chunk += bool(extra)
    with multiprocessing.Pool(WORKERS) as pool:
        pool.map(w.noop, range(100))
        mp_default = best(lambda: pool.map(w.noop, range(n)), fast)
        rows.append(("multiprocessing.Pool", f"map, default chunksize ({default_chunk:,})",
                     n, mp_default))
        c, t = _tuned(lambda c: pool.map(w.noop, range(n), chunksize=c), fast)
        rows.append(("multiprocessing.Pool", f"map, chunksize {c:,}", n, t))
        t = best(lambda: drain(pool.imap(w.noop, range(n))), slow)
        rows.append(("multiprocessing.Pool", "imap, default chunksize (1)", n, t))
        c, t = _tuned(lambda c: drain(pool.imap(w.noop, range(n), chunksize=c)), fast)
        rows.append(("multiprocessing.Pool", f"imap, chunksize {c:,}", n, t))
    print("measured multiprocessing.Pool", flush=True)

    with concurrent.futures.ProcessPoolExecutor(WORKERS) as ex:
        drain(ex.map(w.noop, range(100)))
        t = best(lambda: drain(ex.map(w.noop, range(n))), slow)
        rows.append(("ProcessPoolExecutor", "map, chunksize 1 (default)", n, t))
        c, t = _tuned(lambda c: drain(ex.map(w.noop, range(n), chunksize=c)), fast)
        rows.append(("ProcessPoolExecutor", f"map, chunksize {c:,}", n, t))
    print("measured ProcessPoolExecutor", flush=True)

    if _have("loky", "loky"):
        import loky
        ex = loky.get_reusable_executor(max_workers=WORKERS)
        drain(ex.map(w.noop, range(100)))
        t = best(lambda: drain(ex.map(w.noop, range(n))), slow)
        rows.append(("loky", "get_reusable_executor(2).map, chunksize 1 (default)", n, t))
        c, t = _tuned(lambda c: drain(ex.map(w.noop, range(n), chunksize=c)), fast)
        rows.append(("loky", f"get_reusable_executor(2).map, chunksize {c:,}", n, t))
        ex.shutdown(wait=True)
        print("measured loky", flush=True)

    if _have("dask.distributed", "Dask distributed"):
        peer = DaskPeer()
        try:
            client = peer.client
            client.gather(client.map(w.noop, range(100), pure=False))
            t = best(lambda: client.gather(client.map(w.noop, range(n_dask), pure=False)),
                     2)
            rows.append(("Dask distributed", f"client.map + gather ({n_dask:,} items, "
                         "not 100,000: milliseconds each)", n_dask, t))
        finally:
            peer.close()
        print("measured Dask distributed", flush=True)

    print(f"\nF: {n:,} no-op items, {WORKERS} workers each; best of {fast} "
          f"(of {slow} for chunksize 1 rows); tuned chunksize: the best of "
          f"{', '.join(f'{c:,}' for c in F_CHUNKS)}; {_machine()}")
    _rate_table("items", rows, mine_rate)
    _ask("F (pydron.map >= multiprocessing.Pool.map, default chunksize)",
         f"{mine_rate:,.0f} vs {n / mp_default:,.0f} items/s, "
         f"{mp_default / mine:.2f}x", "1.00x or more", mine <= mp_default)

    # A 10 us function: pydron.map against a plain loop (and Pool.map, for reference).
    def loop():
        for x in range(n_busy):
            fn(x)

    plain = best(loop, 3)
    pydron.configure(conf)
    drain(pydron.map(fn, range(100)))
    mine10 = best(lambda: drain(pydron.map(fn, range(n_busy))), 3)
    pydron.shutdown()
    with multiprocessing.Pool(WORKERS) as pool:
        pool.map(fn, range(100))
        mp10 = best(lambda: pool.map(fn, range(n_busy)), 3)
    print(f"F, 10 us: {n_busy:,} calls of busy(x, rounds={rounds}), "
          f"{plain / n_busy * 1e6:.1f} us each in the loop; best of 3")
    rows = [("plain loop", "for x in items: f(x)", n_busy, plain),
            ("Pydron", 'pydron.map, chunksize "auto"', n_busy, mine10),
            ("multiprocessing.Pool", "map, default chunksize", n_busy, mp10)]
    _rate_table("items", rows, n_busy / mine10)
    _ask("F, 10 us (pydron.map not slower than a plain loop)",
         f"{mine10:.3f} s vs {plain:.3f} s, {plain / mine10:.2f}x",
         "1.00x or more", mine10 <= plain)


def _submit_all(ex, n, as_completed=concurrent.futures.as_completed):
    futures = [ex.submit(w.noop, i) for i in range(n)]
    for f in as_completed(futures):
        f.result()


def section_g(conf, args):
    n = 10_000
    n_dask = 1_000 if args.quick else 2_000
    rows = []
    pydron.configure(conf)
    ex = pydron.Executor()                         # the process-wide pool
    _submit_all(ex, 100)
    mine = best(lambda: _submit_all(ex, n), args.repeat)
    rows.append(("Pydron", "pydron.Executor() (process-wide pool)", n, mine))
    ex.shutdown()
    pydron.shutdown()
    with concurrent.futures.ProcessPoolExecutor(WORKERS) as ex:
        _submit_all(ex, 100)
        ppe = best(lambda: _submit_all(ex, n), args.repeat)
        rows.append(("ProcessPoolExecutor", f"ProcessPoolExecutor({WORKERS})", n, ppe))
    if _have("loky", "loky"):
        import loky
        ex = loky.get_reusable_executor(max_workers=WORKERS)
        _submit_all(ex, 100)
        t = best(lambda: _submit_all(ex, n), args.repeat)
        rows.append(("loky", f"get_reusable_executor({WORKERS})", n, t))
        ex.shutdown(wait=True)
    if _have("dask.distributed", "Dask distributed"):
        from dask.distributed import as_completed
        peer = DaskPeer()
        try:
            def run(k):
                futures = [peer.client.submit(w.noop, i, pure=False) for i in range(k)]
                for f in as_completed(futures):
                    f.result()
            run(100)
            t = best(lambda: run(n_dask), 2)
            rows.append(("Dask distributed", f"client.submit + as_completed ({n_dask:,} "
                         f"calls, not {n:,}: milliseconds each)", n_dask, t))
        finally:
            peer.close()
    print(f"G: {n:,} submit + as_completed of a no-op, {WORKERS} workers each; "
          f"best of {args.repeat}; {_machine()}")
    _rate_table("calls", rows, n / mine)
    _ask("G (pydron.Executor >= 2x ProcessPoolExecutor)",
         f"{n / mine:,.0f} vs {n / ppe:,.0f} calls/s, {ppe / mine:.2f}x",
         "2.00x or more", ppe / mine >= 2)


def _shared_function():
    share = getattr(pydron, "shared", None)
    if share is None:
        try:
            from pydron.backend.sharing import shared as share
        except ImportError:
            return None
    return share


def section_h(conf, args):
    mib = 256 if args.quick else 1024
    calls = 64
    ppe_calls = 8 if args.quick else calls
    repeat = 2
    arr = np.arange(mib * (1 << 20) // 8, dtype=np.float64)
    expected = [w.part(arr, i) for i in range(calls)]
    rows = []

    def check(values):
        if list(values) != expected:
            raise RuntimeError("H: wrong results")

    def timed(label, how, setup, body, teardown, repeat=repeat, count=calls):
        """The best of ``repeat`` runs of ``body(state)``, each on fresh workers."""
        times = []
        for _ in range(repeat):
            state = setup()
            try:
                t = time.perf_counter()
                body(state)
                times.append(time.perf_counter() - t)
            finally:
                teardown(state)
                gc.collect()
        seconds = min(times) * calls / count
        rows.append((label, how, seconds, count))
        print(f"measured {label}: {how}", flush=True)
        return seconds

    def pydron_up():
        pydron.shutdown()
        pydron.configure(conf)
        ex = pydron.Executor()
        ex.submit(w.noop, 0).result()              # the workers are up
        return ex

    def pydron_down(ex):
        ex.shutdown()
        pydron.shutdown()

    share = _shared_function()
    mine = None
    if share is None:
        print("(pydron.shared does not exist in this tree: its rows are left out)")
    else:
        def by_submit(ex):
            handle = share(arr)
            check([f.result() for f in [ex.submit(w.part, handle, i) for i in range(calls)]])

        def by_map(ex):
            handle = share(arr)
            check(pydron.map(functools.partial(w.part, handle), range(calls), executor=ex))

        mine = timed("Pydron", "pydron.shared(arr) to 64 Executor.submit", pydron_up,
                     by_submit, pydron_down)
        mine_map = timed("Pydron", "pydron.shared(arr) to pydron.map (64 items)", pydron_up,
                         by_map, pydron_down)
        mine = min(mine, mine_map)

    def by_argument(ex):
        check([f.result() for f in [ex.submit(w.part, arr, i) for i in range(calls)]])

    argument = timed("Pydron", "arr itself as the argument of 64 Executor.submit",
                     pydron_up, by_argument, pydron_down)
    if mine is None:
        mine = argument

    joblib_time = None
    if _have("joblib", "joblib"):
        import joblib
        from joblib.externals.loky import get_reusable_executor

        def joblib_up():
            joblib.Parallel(n_jobs=WORKERS, backend="loky")(
                joblib.delayed(w.noop)(i) for i in range(4))

        def joblib_body(_):
            check(joblib.Parallel(n_jobs=WORKERS, backend="loky", max_nbytes="1M")(
                joblib.delayed(w.part)(arr, i) for i in range(calls)))

        joblib_time = timed("joblib", 'Parallel(n_jobs=2, backend="loky", max_nbytes="1M"),'
                            " memmapped", joblib_up, joblib_body,
                            lambda _: get_reusable_executor().shutdown(wait=True))

    def ppe_up():
        ex = concurrent.futures.ProcessPoolExecutor(WORKERS)
        ex.submit(w.noop, 0).result()
        return ex

    def ppe_body(ex):
        values = [f.result() for f in [ex.submit(w.part, arr, i) for i in range(ppe_calls)]]
        if values != expected[:ppe_calls]:
            raise RuntimeError("H: wrong results")

    how = "arr as the argument of each submit"
    if ppe_calls < calls:
        how += f" ({ppe_calls} calls timed, x{calls // ppe_calls}: --quick)"
    timed("ProcessPoolExecutor", how, ppe_up, ppe_body, lambda ex: ex.shutdown(),
          repeat=1, count=ppe_calls)
    arr = expected = None          # free the array before the next section
    gc.collect()

    print(f"\nH: one numpy array of {mib:,} MiB ({mib * (1 << 20) / 1e9:.2f} GB, float64) "
          f"used by {calls} calls (each sums every 4096th element of its 1/64 slice); "
          f"{WORKERS} workers each, started before the clock; the time includes sharing "
          f"or dumping the array; best of {repeat} (of 1 for ProcessPoolExecutor); "
          f"{_machine()}")
    print("\n| system | how | seconds for 64 calls | Pydron's ratio |")
    print("|---|---|---|---|")
    for label, how, seconds, _ in rows:
        print(f"| {label} | {how} | {seconds:.2f} | {seconds / mine:.2f}x |")
    print(flush=True)
    if joblib_time is not None:
        _ask("H (Pydron's time <= joblib's)", f"{mine:.2f} s vs {joblib_time:.2f} s, "
             f"{joblib_time / mine:.2f}x", "1.00x or more", mine <= joblib_time)


_MEMORY = {
    "pydron.map": """
        import resource, pydron, workloads
        if __name__ == "__main__":
            pydron.configure({conf!r})
            base = hwm()
            total = sum(pydron.map(workloads.noop, (i for i in range({n}))))
    """,
    "multiprocessing.Pool.imap": """
        import multiprocessing, resource, workloads
        if __name__ == "__main__":
            base = hwm()
            with multiprocessing.Pool({workers}) as pool:
                total = sum(pool.imap(workloads.noop, (i for i in range({n})), chunksize=1000))
    """,
    "ProcessPoolExecutor.map": """
        import concurrent.futures, resource, workloads
        if __name__ == "__main__":
            base = hwm()
            with concurrent.futures.ProcessPoolExecutor({workers}) as ex:
                total = sum(ex.map(workloads.noop, (i for i in range({n})), chunksize=1000))
    """,
}
_MEMORY_START = """
        def hwm():
            # The peak RSS of this process's own memory, in kB. getrusage's ru_maxrss
            # would do on a process of its own, but Linux carries the high-water mark
            # across exec: a subprocess of a large benchmark process starts with its
            # parent's peak. Both are printed; VmHWM is the figure.
            with open("/proc/self/status") as f:
                return int(next(x for x in f if x.startswith("VmHWM:")).split()[1])
"""
_MEMORY_END = """
            assert total == {n} * ({n} - 1) // 2, total
            print(base, hwm(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def section_i(conf, args):
    n = 10_000_000
    rows = []
    for name, count, how in (
            ("pydron.map", n, 'chunksize "auto"'),
            ("multiprocessing.Pool.imap", n, "chunksize=1000"),
            ("ProcessPoolExecutor.map", 1_000_000,
             "chunksize=1000; 1,000,000 items, not 10,000,000: it submits every chunk "
             "before the first result")):
        code = (textwrap.dedent(_MEMORY_START) + textwrap.dedent(_MEMORY[name])
                + textwrap.dedent(_MEMORY_END)[1:])
        code = code.format(conf=conf, n=count, workers=WORKERS)
        path = os.path.join(HERE, "_memory_peers.py")
        with open(path, "w") as fh:
            fh.write(textwrap.dedent(code))
        try:
            t = time.perf_counter()
            out = subprocess.run([sys.executable, path], capture_output=True, text=True,
                                 cwd=HERE, timeout=900)
            seconds = time.perf_counter() - t
        finally:
            os.unlink(path)
        try:
            base, peak, rusage = (int(x) / 1024 for x in out.stdout.split())
        except ValueError:
            raise RuntimeError(f"I, {name}: {out.stdout} {out.stderr}") from None
        rows.append((name, how, count, base, peak, rusage, seconds))
        print(f"measured {name}", flush=True)
    print(f"\nI: sum(map(noop, (i for i in range(N)))) in a fresh process, {WORKERS} workers; "
          f"the caller's peak RSS (VmHWM; getrusage's ru_maxrss also shown: on Linux it "
          f"includes the high-water mark of the process that started it, this script), "
          f"and its peak before the map (after the imports); {_machine()}")
    print("\n| system | how | N | MB before the map | peak MB | ru_maxrss MB | seconds |")
    print("|---|---|---|---|---|---|---|")
    for name, how, count, base, peak, rusage, seconds in rows:
        print(f"| {name} | {how} | {count:,} | {base:.0f} | {peak:.0f} | {rusage:.0f} | "
              f"{seconds:.1f} |")
    print(flush=True)
    _ask("I (pydron.map's caller peak under 200 MB)", f"{rows[0][4]:.0f} MB",
         "under 200 MB", rows[0][4] < 200)


# --------------------------------------------------------------------------- J: locality

def _pool_counters():
    """The byte and object counters the process-wide pool keeps, if any (statistics
    attributes of the engine: ``shared_bytes_sent`` and the like)."""
    from pydron.backend import get_pool
    pool = get_pool()
    out = {}
    for name in dir(pool):
        if name.startswith("_"):
            continue
        wanted = ("bytes" in name and any(x in name for x in ("sent", "recv", "received"))) \
            or name in ("shared_sent", "shared_mapped")
        value = getattr(pool, name, None) if wanted else None
        if isinstance(value, int) and not isinstance(value, bool):
            out[name] = value
    kept = getattr(pool, "kept_values", None)   # values moved worker to worker, fetched
    if kept is not None:
        out.update({f"kept {k}": v for k, v in kept().items()
                    if k in ("relayed_bytes", "direct_bytes", "fetched_bytes")})
    return out


def _futures_note(ex, frame, expected):
    """None if ``ex.submit`` takes another call's future as an argument and gets the right
    answer for one frame; else the note to print in the row (the API may not do it yet)."""
    import pipeline_peers as pp
    try:
        value = pp.futures_chain(ex.submit, [frame])[0].result(timeout=120)
    except Exception as e:                            # noqa: BLE001 - any failure is a "no"
        msg = f"{type(e).__name__}: {str(e).splitlines()[0]}"
        return f"not supported yet ({msg if len(msg) < 150 else msg[:147] + '...'})"
    if value != expected:
        return f"not supported yet (wrong answer: {value!r}, expected {expected!r})"
    return None


def section_j(conf, args):
    import pipeline_peers as pp
    frames = pp.make_frames()
    warm = frames[:2 * WORKERS]                 # every worker imports numpy, builds its
    repeat = args.repeat                        # dark and flat frames, before the clock
    rows = []                                   # (system, how, seconds or a note)
    expected = pp.plain(frames)

    def check(label, values, want):
        if len(values) != len(want) or not np.array_equal(np.asarray(values, float),
                                                          np.asarray(want, float)):
            raise RuntimeError(f"J, {label}: the summaries differ from the plain run's: "
                               f"{list(values)[:4]}... against {want[:4]}...")

    def measure(system, how, run, counters=None):
        """Warm ``run`` up once on a few frames, then the best of ``repeat`` runs over all
        frames, each checked against the plain run; and the pool's own counters per run,
        when ``counters`` reads them. (The caller's rchar/wchar of /proc/self/io would not
        do for bytes moved: socket send/recv, what Twisted, Dask and Ray use, does not
        count there, only pipes and files.)"""
        check(f"{system}, {how} (warm-up)", run(warm), expected[:len(warm)])
        outputs = []
        before = counters() if counters else None
        seconds = best(lambda: outputs.append(run(frames)), repeat)
        if counters:
            after = counters()
            before = {k: (after[k] - before.get(k, 0)) / repeat for k in after}
        for out in outputs:
            check(f"{system}, {how}", out, expected)
        rows.append((system, how, seconds))
        print(f"measured {system}: {how}", flush=True)
        return before

    measure("plain Python", "the sequential loop", pp.plain)

    pydron.configure(conf)
    counted = measure("Pydron", "@schedule on the sequential loop", pp.scheduled,
                      counters=_pool_counters)
    ex = pydron.Executor()                         # the process-wide pool
    how = "Executor.submit, each step given the last step's future"
    note = _futures_note(ex, frames[0], expected[0])
    if note is None:
        measure("Pydron", how, lambda fr: [f.result() for f in pp.futures_chain(ex.submit,
                                                                                 fr)])
    else:
        rows.append(("Pydron", how, note))
        print(f"Pydron: {how}: {note}", flush=True)
    measure("Pydron", "Executor.submit, each step's result back through the caller",
            lambda fr: pp.through_caller(ex, fr))
    ex.shutdown()
    pydron.shutdown()

    if _have("dask.distributed", "Dask distributed"):
        peer = DaskPeer()
        try:
            client = peer.client

            def submit(fn, x):
                return client.submit(fn, x, pure=False)

            measure("Dask distributed", "client.submit, futures passed between tasks",
                    lambda fr: client.gather(pp.futures_chain(submit, fr)))
        finally:
            peer.close()

    if _have("ray", "Ray"):
        import ray
        ray.init(num_cpus=WORKERS, include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR")
        try:
            remote = {step: ray.remote(step) for step in pp.STEPS}
            measure("Ray", f"ray.init(num_cpus={WORKERS}), ObjectRefs passed between tasks",
                    lambda fr: ray.get(pp.futures_chain(lambda fn, x: remote[fn].remote(x),
                                                        fr)))
        finally:
            ray.shutdown()

    with concurrent.futures.ProcessPoolExecutor(WORKERS) as pool:
        measure("ProcessPoolExecutor", "a task per step, each result back through the "
                "caller", lambda fr: pp.through_caller(pool, fr))
        measure("ProcessPoolExecutor", "REWRITE of the program: the 4-step chain of a "
                "frame as one task", lambda fr: pp.chain_per_frame(pool, fr))
    frames = None
    gc.collect()

    mine = rows[1][2]
    print(f"\nJ: {len(expected)} frames of {pp.SHAPE[0]}x{pp.SHAPE[1]} float64 "
          f"({np.prod(pp.SHAPE) * 8 / 1e6:.1f} MB), 4 steps of numpy each (dark + Fourier "
          f"background, flat + 3x3 median, 6 x 3x3 box, 7x7 local threshold) and a float "
          f"sum back; {WORKERS} workers each, started and warmed up before the clock; best "
          f"of {repeat}; every system's sums equal the plain run's; {_machine()}")
    print("\n| system | how | seconds | time / Pydron's |")
    print("|---|---|---|---|")
    for system, how, seconds in rows:
        if isinstance(seconds, str):
            print(f"| {system} | {how} | {seconds} | - |")
        else:
            print(f"| {system} | {how} | {seconds:.2f} | {seconds / mine:.2f}x |")
    print(flush=True)
    print("Pydron's pool, per @schedule run: " + (", ".join(
        f"{k} {v / 1e6:,.1f} MB" if "bytes" in k else f"{k} {v:,.0f}"
        for k, v in sorted(counted.items())) or "no counters"))
    same = {s: t for s, h, t in rows if not isinstance(t, str) and "REWRITE" not in h
            and s in ("Dask distributed", "Ray", "ProcessPoolExecutor")}
    print("aim: Pydron faster than Dask, Ray and ProcessPoolExecutor")
    _ask("J (Pydron's @schedule time below each peer's, same program)",
         ", ".join(f"{s} {t / mine:.2f}x" for s, t in same.items()), "above 1.00x each",
         bool(same) and all(t > mine for t in same.values()))


def abcde(conf, args, sections):
    """Workloads A-E: every peer, then Pydron; one table of the selected rows."""
    arrays = [np.full(10 * 1024 * 1024 // 8, float(i)) for i in range(20)] \
        if "D" in sections else []
    serial_c = 0.0
    if "C" in sections:
        args.rounds = w.rounds_for(args.cpu_seconds)
        serial_c = best(lambda: [w.spin(args.rounds) for _ in range(args.cpu_calls)],
                        args.repeat)

    results: dict[str, dict[str, float]] = {}
    for cls in _peers():
        peer = cls()
        r = results[cls.name] = {}
        try:
            peer.gather([peer.submit(w.inc, i) for i in range(10)])      # warm up
            if "A" in sections:
                r["A"] = a_peer(peer, args.calls, args.repeat)
            if "B" in sections:
                r["B"] = b_peer(peer, args.links, args.repeat)
            if "C" in sections:
                r["C"] = serial_c / c_peer(peer, args.cpu_calls, args.rounds, args.repeat)
            if "D" in sections:
                r["D"] = d_peer(peer, arrays, args.repeat)
        finally:
            peer.close()
        if "E" in sections:
            r["E"] = e_fresh(cls.name, conf, args.repeat)
        print(f"measured {cls.name}", flush=True)
    results["Pydron"] = pydron_figures(conf, args, arrays, serial_c, sections)
    del arrays

    rows = [("A", "no-op calls/s", True), ("B", "us per chained call", False),
            ("C", "speed-up, 32 x 50 ms CPU", True), ("D", "MB/s, 10 MB arrays", True),
            ("E", "s, fresh process to first result", False)]
    peers = [n for n in results if n != "Pydron"]
    header = ["workload", "Pydron"] + peers + [f"vs {p.split()[0]}" for p in peers]
    print()
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for key, label, higher in rows:
        if key not in sections:
            continue
        mine = results["Pydron"][key]
        cells = [f"{key}: {label}", _fmt(mine)] + [_fmt(results[p][key]) for p in peers]
        for p in peers:
            theirs = results[p][key]
            ratio = mine / theirs if higher else theirs / mine
            cells.append(f"{ratio:.2f}x")
        print("| " + " | ".join(cells) + " |")
    print(f"\n{WORKERS} workers each; Pydron pool: {args.pydron_pool}; best of {args.repeat}; "
          f"{_machine()}. Ratios: >1 means Pydron is better.", flush=True)


SECTIONS = "ABCDEFGHIJ"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--pydron-pool", default="multicore",
                        help="Pydron worker type to measure in A-E (default: multicore)")
    parser.add_argument("--only", default=SECTIONS,
                        help="the workloads to run, e.g. F,G (default: all, A-J)")
    args = parser.parse_args()
    sections = {x.strip().upper() for x in args.only.split(",") if x.strip()}
    if len(sections) == 1 and len(next(iter(sections))) > 1:     # --only FGHI
        sections = set(next(iter(sections)))
    unknown = sections - set(SECTIONS)
    if unknown:
        parser.error(f"--only: unknown workloads {','.join(sorted(unknown))} "
                     f"(choose from {','.join(SECTIONS)})")
    args.repeat = 2 if args.quick else 3
    args.calls, args.links = 5000, 200
    args.cpu_calls, args.cpu_seconds = 32, 0.05
    conf = {"workers": [{"type": args.pydron_pool,
                         ("cores" if args.pydron_pool == "multicore" else "count"): WORKERS}]}
    multicore = {"workers": [{"type": "multicore", "cores": WORKERS}]}
    print(f"workloads {','.join(sorted(sections))}; {_machine()}", flush=True)
    if sections & set("ABCDE"):
        abcde(conf, args, sections)
    for key, run in (("F", section_f), ("G", section_g), ("H", section_h),
                     ("I", section_i), ("J", section_j)):
        if key in sections:
            print(f"\n## {key}", flush=True)
            run(multicore, args)


def _machine() -> str:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"python {sys.version.split()[0]}, {os.cpu_count()} cores, load average {load}, "
            f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC")


def _fmt(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.2f}"


if __name__ == "__main__":
    main()
