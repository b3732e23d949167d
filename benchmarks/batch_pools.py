"""The SLURM pool against the multicore pool and against one SLURM job per call, in one run.

    python benchmarks/batch_pools.py            # starts a single-node SLURM (needs root)
    python benchmarks/batch_pools.py --calls 2000 --job-calls 5
    SLURM_CONF=/etc/slurm/slurm.conf python benchmarks/batch_pools.py --existing

Without ``--existing`` it starts the tests' single-node cluster (tests/slurmhost.py:
munged, slurmctld and slurmd on this machine, installing slurm-wlm and munge with apt if
they are missing); with it, the cluster ``SLURM_CONF`` names (or the default one).

Rows (each pool has ``--workers`` workers: SLURM as that many one-core jobs):
  1  first call to first result       -> seconds (lower is better): a fresh pool, so it
     includes sbatch, the scheduler starting the job and the worker connecting back
  2  --calls no-op calls (submit each, as futures) -> calls per second (higher is better)
  3  the same calls, as one job per call (``sbatch --wrap``, the model of tools that
     submit a job per task), measured on --job-calls of them -> calls per second

The ratios say how the SLURM pool compares: with the multicore pool (the same engine: the
aim is within 20% on row 2) and with a job per call.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, HERE, os.path.join(ROOT, "tests")]

import pydron  # noqa: E402
import workloads as w  # noqa: E402


def first_result(conf: dict) -> float:
    """Seconds from the first submit of a fresh pool to its first result."""
    with pydron.Executor(conf=conf) as executor:
        began = time.perf_counter()
        executor.submit(w.noop, 1).result()
        return time.perf_counter() - began


def throughput(conf: dict, calls: int) -> float:
    """No-op calls per second through submit, on a pool whose workers are connected."""
    with pydron.Executor(conf=conf) as executor:
        list(executor.map(w.noop, range(200)))  # workers up, functions known
        began = time.perf_counter()
        futures = [executor.submit(w.noop, i) for i in range(calls)]
        for future in concurrent.futures.as_completed(futures):
            future.result()
        return calls / (time.perf_counter() - began)


def job_per_call(calls: int, workers: int, env: dict[str, str]) -> float:
    """Calls per second when each call is its own SLURM job (``sbatch --wrap``), at most
    ``workers`` running at once as the cluster allows: submit all, wait for the queue to
    empty."""
    with tempfile.TemporaryDirectory(prefix="pydron-bench-") as folder:
        command = f"{sys.executable} -c 'import workloads; workloads.noop(1)'"
        began = time.perf_counter()
        ids = []
        for _ in range(calls):
            out = subprocess.run(["sbatch", "--parsable", "--job-name=pydron-bench-jpc",
                                  "--cpus-per-task=1", f"--output={folder}/%j.log",
                                  f"--chdir={HERE}", f"--wrap={command}"],
                                 env=env, capture_output=True, text=True, check=True)
            ids.append(out.stdout.strip().split(";")[0])
        while True:
            out = subprocess.run(["squeue", "-h", "-j", ",".join(ids), "-o", "%i"], env=env,
                                 capture_output=True, text=True)
            if not out.stdout.strip():
                break
            time.sleep(0.05)
        return calls / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--job-calls", type=int, default=10)
    parser.add_argument("--existing", action="store_true",
                        help="use the cluster SLURM_CONF names instead of starting one")
    options = parser.parse_args()
    cluster = None
    if not options.existing:
        from slurmhost import SlurmCluster
        cluster = SlurmCluster().start()
        os.environ["SLURM_CONF"] = str(cluster.conf)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, HERE]))
    os.environ["PYTHONPATH"] = env["PYTHONPATH"]
    try:
        work = tempfile.mkdtemp(prefix="pydron-bench-slurm-")
        slurm = {"workers": [{"type": "slurm", "jobs": options.workers, "cores": 1,
                              "poll_interval": 0.2, "work_dir": work}]}
        local = {"workers": [{"type": "multicore", "cores": options.workers}]}
        rows = []
        s, m = first_result(slurm), first_result(local)
        rows.append(("first call to first result (s)", s, m, None, m / s))
        s, m = throughput(slurm, options.calls), throughput(local, options.calls)
        j = job_per_call(options.job_calls, options.workers, env)
        rows.append((f"{options.calls} no-op calls (calls/s)", s, m, j, s / m))
        where = "the tests' single-node cluster" if cluster else \
            os.environ.get("SLURM_CONF", "the default cluster")
        print(f"{options.workers} workers; SLURM: {where}")
        print(f"{'row':38} {'slurm':>10} {'multicore':>10} {'job/call':>10} "
              f"{'slurm/multicore':>16} {'slurm/job-per-call':>19}")
        for name, s, m, j, ratio in rows:
            jtext = f"{j:10.2f}" if j is not None else f"{'-':>10}"
            vs_job = f"{s / j:19.0f}x" if j else f"{'-':>19}"
            print(f"{name:38} {s:10.2f} {m:10.2f} {jtext} {ratio:15.2f}x {vs_job}")
        print("(ratios: >1 means the SLURM pool is better)")
    finally:
        if cluster is not None:
            cluster.stop()


if __name__ == "__main__":
    main()
