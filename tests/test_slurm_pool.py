"""The SLURM pool against a real single-node SLURM (munged, slurmctld, slurmd; see
slurmhost.py): functional calls run inside SLURM jobs, jobs come only while work is
queued and go when it is done, lost jobs are replaced and their calls run again, and
every API (``@schedule``, ``Executor``, ``map``, ``Pool``) runs on it."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from waiting import wait_for as wait_until

import pydron
from pydron.backend.slurmpool import SlurmPool
from pydron.errors import WorkerLostError

REPO = Path(__file__).resolve().parent.parent




def entry(tmp_path: Path, **keys: object) -> dict[str, object]:
    """A slurm entry for the test cluster: quick polling, work_dir under tmp_path."""
    base: dict[str, object] = {"jobs": 2, "cores": 1, "poll_interval": 0.2,
                               "idle_timeout": 30, "work_dir": str(tmp_path / "slurm")}
    base.update(keys)
    return base


def run_jobs(slurm, name_prefix: str = "pydron-") -> list[str]:
    """The job ids (one per array task) in the queue whose name starts with pydron-."""
    out = slurm.run(["squeue", "-h", "-r", "-o", "%i %j %T"]).stdout
    return [line.split()[0] for line in out.splitlines()
            if line.split()[1].startswith(name_prefix)]


@pydron.functional
def job_of(x: int) -> tuple[int, str]:
    return x * x, os.environ.get("SLURM_JOB_ID", "")


@pydron.functional
def slow_square(x: int, seconds: float) -> int:
    time.sleep(seconds)
    return x * x


def test_calls_run_inside_slurm_jobs_and_the_answer_is_exact(slurm, tmp_path):
    pool = SlurmPool(entry(tmp_path))
    try:
        futures = []
        done = {}
        for x in range(20):
            futures.append(pool.submit(job_of, (x,), {},
                                       lambda ok, value, x=x: done.setdefault(x, (ok, value))))
        wait_until(lambda: len(done) == 20, timeout=60, what="20 results")
        assert all(ok for ok, _ in done.values()), done
        assert [done[x][1][0] for x in range(20)] == [x * x for x in range(20)]
        jobs = {value[1] for _, value in done.values()}
        assert jobs and all(j.isdigit() for j in jobs), jobs  # each ran in a SLURM job
        assert len(pool.jobs()) <= 2
    finally:
        pool.shutdown()
    wait_until(lambda: not run_jobs(slurm), timeout=20, what="the run's jobs to leave")
    assert not (tmp_path / "slurm").exists() or not any((tmp_path / "slurm").iterdir())


def collect(pool: SlurmPool, fn, arguments) -> dict[int, tuple[bool, object]]:
    """Submit ``fn(*arguments[i])`` for each i; a dict that fills with (ok, value)."""
    done: dict[int, tuple[bool, object]] = {}
    for i, args in enumerate(arguments):
        pool.submit(fn, tuple(args), {}, lambda ok, value, i=i: done.setdefault(i, (ok, value)))
    return done


@pydron.functional
def marked(path: str, x: int, seconds: float) -> int:
    """Records each run (so a test sees a rerun) and sleeps."""
    with open(path, "a") as f:
        f.write(f"{x} {os.environ.get('SLURM_JOB_ID')} {os.environ.get('SLURM_ARRAY_TASK_ID')}\n")
    time.sleep(seconds)
    return x * x


def test_a_job_cancelled_mid_call_is_replaced_and_the_call_runs_again(slurm, tmp_path):
    runs = tmp_path / "runs"
    pool = SlurmPool(entry(tmp_path, jobs=1))
    try:
        done = collect(pool, marked, [(str(runs), 7, 4.0)])
        first = wait_until(lambda: runs.exists() and runs.read_text().split(), timeout=30,
                           what="the call to start in a job")
        slurm.run(["scancel", f"{first[1]}"])  # the job, not by the run itself
        wait_until(lambda: done, timeout=60, what="the call's result")
        assert done[0] == (True, 49)
        lines = runs.read_text().splitlines()
        assert len(lines) == 2 and lines[0].split()[1] != lines[1].split()[1], lines
        states = {j["id"]: j["state"] for j in pool.jobs()}
        assert "CANCELLED" in states.values() and len(states) == 2, states
    finally:
        pool.shutdown()


def test_no_job_is_left_while_idle_past_idle_timeout_nor_after_the_run(slurm, tmp_path):
    pool = SlurmPool(entry(tmp_path, jobs=2, idle_timeout=1))
    try:
        done = collect(pool, slow_square, [(x, 0.5) for x in range(4)])
        wait_until(lambda: len(done) == 4, timeout=60, what="4 results")
        assert sorted(v for _, v in done.values()) == [0, 1, 4, 9]
        wait_until(lambda: not run_jobs(slurm), timeout=20,
                   what="idle jobs to end while the pool lives")
        time.sleep(1.0)
        assert not run_jobs(slurm), "a job came back with no work queued"
        done = collect(pool, slow_square, [(5, 0.1)])  # work returns: so does a job
        wait_until(lambda: done, timeout=60, what="a result after the idle end")
        assert done[0] == (True, 25)
    finally:
        pool.shutdown()
    wait_until(lambda: not run_jobs(slurm), timeout=20, what="no job after the run")


def test_a_bad_partition_is_named_with_sbatchs_message(slurm, tmp_path):
    pool = SlurmPool(entry(tmp_path, partition="nosuchpartition"))
    try:
        done = collect(pool, slow_square, [(2, 0.0)])
        wait_until(lambda: done, timeout=30, what="the call to fail")
        ok, error = done[0]
        assert not ok and isinstance(error, WorkerLostError), error
        assert "`partition` = 'nosuchpartition'" in str(error)
        assert "invalid partition" in str(error).lower(), error
    finally:
        pool.shutdown()


def test_a_job_that_keeps_failing_is_replaced_then_named_with_its_log(slurm, tmp_path):
    pool = SlurmPool(entry(tmp_path, jobs=1, max_resubmissions=1,
                           setup=["echo setting up; exit 3"]))
    try:
        done = collect(pool, slow_square, [(2, 0.0)])
        wait_until(lambda: done, timeout=60, what="the call to fail")
        ok, error = done[0]
        assert not ok and isinstance(error, WorkerLostError), error
        message = str(error)
        assert "FAILED" in message and "max_resubmissions=1" in message, message
        log = message.split("its log is ")[1].split(";")[0].split(" ")[0]
        assert Path(log).exists() and "setting up" in Path(log).read_text()
        assert "setting up" in message  # the log's last lines are quoted
        assert len(pool.jobs()) == 2  # the first, and the one that replaced it
    finally:
        pool.shutdown()
    assert Path(log).exists()  # a failed job's log stays for a person to read


def test_a_pending_job_is_reported_with_the_schedulers_reason(slurm, tmp_path, caplog):
    pool = SlurmPool(entry(tmp_path, jobs=1, sbatch_options=["--begin=now+1hour"]))
    try:
        with caplog.at_level("WARNING", logger="pydron.backend"):
            collect(pool, slow_square, [(2, 0.0)])
            wait_until(lambda: "is pending (reason: BeginTime)" in caplog.text, timeout=30,
                       what="the pending reason in the log")
        assert [j["reason"] for j in pool.jobs()] == ["BeginTime"]
    finally:
        pool.shutdown(wait=False)
    wait_until(lambda: not run_jobs(slurm), timeout=20, what="the pending job cancelled")


def test_max_array_size_of_the_cluster_is_honoured(slurm_small_array, tmp_path):
    pool = SlurmPool(entry(tmp_path, jobs=3), environ=slurm_small_array.env())
    try:
        done = collect(pool, slow_square, [(x, 2.0) for x in range(3)])
        wait_until(lambda: len(done) == 3, timeout=60, what="3 results")
        assert sorted(v for _, v in done.values()) == [0, 1, 4]
        jobs = pool.jobs()
        arrays = {j["id"].split("_")[0] for j in jobs}
        tasks = {j["id"].split("_")[1] for j in jobs}
        assert len(jobs) == 3 and len(arrays) == 2 and tasks <= {"0", "1"}, jobs
    finally:
        pool.shutdown()


_CALLER = """
import os, sys, time
import pydron
from pydron.backend.slurmpool import SlurmPool

def nap(seconds):
    time.sleep(seconds)
    return os.environ.get("SLURM_JOB_ID")

pool = SlurmPool({{"jobs": 2, "cores": 1, "poll_interval": 0.2, "work_dir": {work_dir!r}}})
started = []
for _ in range(2):
    pool.submit(nap, (120,), {{}}, lambda ok, value: None)
while len([j for j in pool.jobs() if j["state"] == "RUNNING"]) < 2:
    time.sleep(0.1)
print("running", flush=True)
{ending}
"""


def _start_caller(tmp_path: Path, ending: str) -> subprocess.Popen:
    script = tmp_path / "caller.py"
    script.write_text(_CALLER.format(work_dir=str(tmp_path / "slurm"), ending=ending))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                            cwd=tmp_path)
    line = proc.stdout.readline()  # type: ignore[union-attr]
    assert line.strip() == "running", f"the caller said {line!r} (exit {proc.poll()})"
    return proc


def test_caller_killed_with_sigkill_leaves_no_job_within_30_s(slurm, tmp_path):
    proc = _start_caller(tmp_path, "time.sleep(600)")
    assert len(run_jobs(slurm)) == 2
    proc.kill()
    proc.wait()
    began = time.monotonic()
    wait_until(lambda: not run_jobs(slurm), timeout=30, what="the orphaned jobs to end")
    print(f"jobs gone {time.monotonic() - began:.1f} s after the SIGKILL")


def test_sigterm_cancels_every_job(slurm, tmp_path):
    proc = _start_caller(tmp_path, "time.sleep(600)")
    proc.send_signal(signal.SIGTERM)
    try:
        assert proc.wait(30) == 128 + signal.SIGTERM
        # scancel'd at once: well before the workers would notice a dead caller.
        wait_until(lambda: not run_jobs(slurm), timeout=10, what="the jobs cancelled")
    finally:
        proc.kill()
        proc.wait()


_SHUTDOWN = """
import os, time
import pydron

def job(x):
    return x, os.environ.get("SLURM_JOB_ID")

pydron.configure({{"workers": [{{"type": "slurm", "jobs": 2, "poll_interval": 0.2,
                                 "idle_timeout": 600, "work_dir": {work_dir!r}}}]}})
print(len(list(pydron.map(job, range(40)))), flush=True)
pydron.shutdown()
print("shut down", flush=True)
time.sleep(600)
"""


def test_pydron_shutdown_cancels_every_job(slurm, tmp_path):
    script = tmp_path / "shutdown.py"
    script.write_text(_SHUTDOWN.format(work_dir=str(tmp_path / "slurm")))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "40"  # type: ignore[union-attr]
        assert run_jobs(slurm)  # idle_timeout is long: the jobs are still there
        assert proc.stdout.readline().strip() == "shut down"  # type: ignore[union-attr]
        wait_until(lambda: not run_jobs(slurm), timeout=10, what="the jobs gone")
    finally:
        proc.kill()
        proc.wait()


@pydron.schedule
def scheduled_sum(n: int) -> tuple[int, set[str]]:
    values = []
    for x in range(n):
        values.append(job_of(x))
    total = 0
    jobs = set()
    for square, job in values:
        total += square
        jobs.add(job)
    return total, jobs


def square_in_job(x: int) -> tuple[int, str]:
    return x * x, os.environ.get("SLURM_JOB_ID", "")


def test_every_api_runs_on_the_slurm_pool(slurm, tmp_path):
    pydron.configure({"workers": [{"type": "slurm", **entry(tmp_path, jobs=2)}]})
    try:
        total, jobs = scheduled_sum(12)
        assert total == sum(x * x for x in range(12))
        assert jobs and all(j.isdigit() for j in jobs), jobs
        with pydron.Executor() as executor:
            results = list(executor.map(square_in_job, range(10)))
        assert [r[0] for r in results] == [x * x for x in range(10)]
        assert all(r[1].isdigit() for r in results)
        results = list(pydron.map(square_in_job, range(30)))
        assert [r[0] for r in results] == [x * x for x in range(30)]
        assert all(r[1].isdigit() for r in results)
        with pydron.Pool() as pool:
            results = pool.map(square_in_job, range(10))
            assert [r[0] for r in results] == [x * x for x in range(10)]
            assert all(r[1].isdigit() for r in results)
        assert run_jobs(slurm)  # the process-wide pool keeps its jobs between calls
    finally:
        pydron.shutdown()
        pydron.configure(None)
    wait_until(lambda: not run_jobs(slurm), timeout=20, what="no job after shutdown()")


_IN_ALLOCATION = """
import os
import pydron

def where(x):
    return x * x, os.environ.get("SLURM_JOB_ID"), os.environ.get("SLURM_STEP_ID")

pydron.configure({{"workers": [{{"type": "slurm", "poll_interval": 0.2,
                                "work_dir": {work_dir!r}}}]}})
results = list(pydron.map(where, range(8)))
assert [r[0] for r in results] == [x * x for x in range(8)], results
print("allocation", os.environ["SLURM_JOB_ID"], "parallelism",
      pydron.backend.get_pool().parallelism)
print("workers", sorted({{(r[1], r[2]) for r in results}}))
"""


def test_inside_salloc_workers_start_with_srun(slurm, tmp_path):
    script = tmp_path / "in_allocation.py"
    script.write_text(_IN_ALLOCATION.format(work_dir=str(tmp_path / "slurm")))
    result = slurm.run(["salloc", "-n", "2", sys.executable, str(script)], timeout=120)
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines() if " " in line)
    allocation, _, parallelism = lines["allocation"].split()
    assert parallelism == "2"  # the allocation's tasks
    workers = eval(lines["workers"])  # noqa: S307 - our own script's output
    assert workers and all(job == allocation and step is not None and step.isdigit()
                           for job, step in workers), (workers, result.stderr)
