"""Pydron on a Dask cluster next to Dask's own client, on the same local cluster.

The cluster: ``dask scheduler`` and two ``dask worker`` processes with one thread each, on
127.0.0.1, started here and stopped at the end. Two workloads:

  no-op calls  -- N calls that return at once: calls per second (submit to last result);
  50 ms calls  -- 40 calls that sleep 50 ms: speed-up over running them one after another.

Dask's own: ``client.submit`` per call then ``client.gather``, and ``client.map`` then
``gather``. Pydron's: the dask pool's ``submit`` (what ``@schedule`` and the explicit API
use), ``pydron.Executor.submit`` (standard futures), ``@schedule`` over a loop, and
``pydron.map`` one item per call (``chunksize=1``) and auto-chunked. Ratios are Pydron's
rate over Dask's ``client.submit`` and over ``client.map``; the runners take turns,
round by round, and each keeps its best round.

Usage (from the repository root): python -m benchmarks.dask_pool [--calls N] [--repeat R]
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pydron
from pydron.backend.daskpool import DaskPool

ROOT = Path(__file__).resolve().parent.parent
SLEEP = 0.05
SLOW_CALLS = 40


@pydron.functional
def noop(x: int) -> int:
    return x


@pydron.functional
def nap(x: int) -> int:
    time.sleep(SLEEP)
    return x


@pydron.schedule
def scheduled(fn, n: int) -> list:
    out = []
    for i in range(n):
        out.append(fn(i))
    return out


def start_cluster(root: Path) -> tuple[str, list[subprocess.Popen]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    env = dict(os.environ,
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    dask = str(Path(sys.executable).parent / "dask")
    commands = [[dask, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                 "--no-dashboard"]]
    commands += [[dask, "worker", address, "--host", "127.0.0.1", "--nthreads", "1",
                  "--no-dashboard", "--local-directory", str(root / name)]
                 for name in ("w1", "w2")]
    procs = [subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                              cwd=root, start_new_session=True) for c in commands]
    return address, procs


def stop_cluster(procs: list[subprocess.Popen]) -> None:
    for proc in reversed(procs):
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for proc in procs:
        proc.wait(timeout=30)


def pool_run(pool: DaskPool, fn, n: int) -> None:
    left = [n]
    lock = threading.Lock()
    done = threading.Event()

    def on_done(ok: bool, value: object) -> None:
        assert ok, value
        with lock:
            left[0] -= 1
            if not left[0]:
                done.set()

    for i in range(n):
        pool.submit(fn, (i,), {}, on_done)
    done.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    options = parser.parse_args()
    n, repeat = options.calls, options.repeat
    from distributed import Client
    with tempfile.TemporaryDirectory() as tmp:
        address, procs = start_cluster(Path(tmp))
        try:
            client = Client(address, timeout=60, set_as_default=False)
            client.wait_for_workers(2, timeout=120)
            rows = measure(client, address, n, repeat)
            client.close()
        finally:
            stop_cluster(procs)
    print(f"\nLocal Dask cluster: scheduler + 2 workers x 1 thread, {os.cpu_count()} cores; "
          f"best of {repeat}")
    print(f"{'workload':<14} {'runner':<34} {'result':>16} {'vs Dask submit':>15} "
          f"{'vs Dask map':>12}")
    for workload, runner, value, unit, ratio, ratio_map in rows:
        print(f"{workload:<14} {runner:<34} {value:>10.2f} {unit:<5} {ratio:>14.2f}x "
              f"{ratio_map:>11.2f}x")


def measure(client, address: str, n: int, repeat: int) -> list[tuple]:
    def dask_submit(fn, count):
        futures = [client.submit(fn, i, pure=False) for i in range(count)]
        assert client.gather(futures) == list(range(count))

    def dask_map(fn, count):
        futures = client.map(fn, range(count), pure=False)
        assert client.gather(futures) == list(range(count))

    dask_submit(noop, 50)  # warm: functions imported on the workers
    pydron.configure({"workers": [{"type": "dask", "address": address}]})
    pool = DaskPool(address)
    executor = pydron.Executor()
    try:
        pool_run(pool, noop, 50)

        def executor_run(fn, count):
            futures = [executor.submit(fn, i) for i in range(count)]
            assert [f.result() for f in futures] == list(range(count))

        runners = [
            ("Dask client.submit + gather", lambda fn, c: dask_submit(fn, c)),
            ("Dask client.map + gather", lambda fn, c: dask_map(fn, c)),
            ("Pydron dask pool submit", lambda fn, c: pool_run(pool, fn, c)),
            ("Pydron Executor.submit", executor_run),
            ("Pydron @schedule loop", lambda fn, c: scheduled(fn, c)),
            ("Pydron pydron.map chunksize=1",
             lambda fn, c: list(pydron.map(fn, range(c), chunksize=1))),
            ("Pydron pydron.map auto chunks", lambda fn, c: list(pydron.map(fn, range(c)))),
        ]
        rows = []
        for workload, fn, count, value_of, unit in [
                ("no-op calls", noop, n, lambda t: n / t, "/s"),
                (f"{SLOW_CALLS} x 50 ms", nap, SLOW_CALLS,
                 lambda t: SLOW_CALLS * SLEEP / t, "x")]:
            # Round-robin over the runners, best of each: the machine's load drifts, and
            # it must not favour whichever runner happened to go first.
            times = {name: float("inf") for name, _ in runners}
            for _ in range(repeat):
                for name, run in runners:
                    t0 = time.perf_counter()
                    run(fn, count)
                    times[name] = min(times[name], time.perf_counter() - t0)
            submit, mapped = (value_of(times[name]) for name, _ in runners[:2])
            for name, _ in runners:
                value = value_of(times[name])
                rows.append((workload, name, value, unit, value / submit, value / mapped))
    finally:
        executor.shutdown()
        pool.shutdown()
        pydron.shutdown()
        pydron.configure(None)
    return rows


if __name__ == "__main__":
    main()
