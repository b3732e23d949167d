"""The SLURM pool against a real single-node SLURM (munged, slurmctld, slurmd; see
slurmhost.py): functional calls run inside SLURM jobs, jobs come only while work is
queued and go when it is done, lost jobs are replaced and their calls run again, and
every API (``@schedule``, ``Executor``, ``map``, ``Pool``) runs on it."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import pydron
from pydron.backend.slurmpool import SlurmPool
from pydron.errors import WorkerLostError

REPO = Path(__file__).resolve().parent.parent


def wait_until(check: Callable[[], object], timeout: float = 30.0, what: str = "") -> object:
    """``check()``'s first true value, polled every 0.1 s; fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or check}")
        time.sleep(0.1)


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
