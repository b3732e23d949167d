"""The Grid Engine pool against a real single-host Grid Engine (sge_qmaster and
sge_execd in a private cell; see sgehost.py): the same batch launcher as SLURM's, over
``qsub -t``, ``qstat`` and ``qdel``. Calls run inside Grid Engine jobs with an exact
answer, a job deleted mid-call is replaced and its call runs again, idle jobs end, a
bad queue is named, and the APIs run on it."""
from __future__ import annotations

import os
from pathlib import Path

import pydron
from pydron.backend.sgepool import SgePool
from pydron.errors import WorkerLostError
from test_slurm_pool import collect, marked, slow_square, square_in_job, wait_until


def entry(tmp_path: Path, **keys: object) -> dict[str, object]:
    base: dict[str, object] = {"jobs": 2, "cores": 1, "poll_interval": 0.2,
                               "idle_timeout": 30, "work_dir": str(tmp_path / "sge")}
    base.update(keys)
    return base


def job_id(x: int) -> tuple[int, str, str]:
    return x * x, os.environ.get("JOB_ID", ""), os.environ.get("SGE_TASK_ID", "")


def test_calls_run_inside_grid_engine_jobs_and_the_answer_is_exact(sge, tmp_path):
    pool = SgePool(entry(tmp_path))
    try:
        done = collect(pool, job_id, [(x,) for x in range(16)])
        wait_until(lambda: len(done) == 16, timeout=90, what="16 results")
        assert all(ok for ok, _ in done.values()), done
        assert [done[x][1][0] for x in range(16)] == [x * x for x in range(16)]
        assert all(v[1].isdigit() and v[2].isdigit() for _, v in done.values())
    finally:
        pool.shutdown()
    wait_until(lambda: not sge.queue(), timeout=30, what="the run's jobs to leave")
    assert not any((tmp_path / "sge").iterdir())  # nothing lost: the run's folder is gone


def test_a_job_deleted_mid_call_is_replaced_and_the_call_runs_again(sge, tmp_path):
    runs = tmp_path / "runs"
    pool = SgePool(entry(tmp_path, jobs=1))
    try:
        done = collect(pool, marked, [(str(runs), 6, 4.0)])
        wait_until(lambda: runs.exists() and runs.read_text().strip(), timeout=60,
                   what="the call to start in a job")
        # The call can start before the launcher's next qstat has seen its job run.
        running = wait_until(lambda: [j["id"] for j in pool.jobs() if j["state"] == "RUNNING"],
                             timeout=30, what="the job seen RUNNING")
        assert len(running) == 1
        sge.run(["qdel", running[0]])  # by someone else, not the run
        wait_until(lambda: done, timeout=90, what="the call's result")
        assert done[0] == (True, 36)
        assert len(runs.read_text().splitlines()) == 2
        states = [j["state"] for j in pool.jobs()]
        assert len(states) == 2 and states[0] in ("CANCELLED", "FAILED"), pool.jobs()
    finally:
        pool.shutdown()


def test_idle_jobs_end_and_none_is_left_after_the_run(sge, tmp_path):
    pool = SgePool(entry(tmp_path, idle_timeout=1))
    try:
        done = collect(pool, slow_square, [(x, 0.3) for x in range(4)])
        wait_until(lambda: len(done) == 4, timeout=90, what="4 results")
        wait_until(lambda: not sge.queue(), timeout=30, what="idle jobs to end")
        done = collect(pool, slow_square, [(3, 0.0)])
        wait_until(lambda: done, timeout=90, what="a result after the idle end")
        assert done[0] == (True, 9)
    finally:
        pool.shutdown()
    wait_until(lambda: not sge.queue(), timeout=30, what="no job after the run")


def test_a_bad_queue_is_named_with_qsubs_message(sge, tmp_path):
    pool = SgePool(entry(tmp_path, queue="nosuch.q"))
    try:
        done = collect(pool, slow_square, [(2, 0.0)])
        wait_until(lambda: done, timeout=30, what="the call to fail")
        ok, error = done[0]
        assert not ok and isinstance(error, WorkerLostError), error
        assert "`queue` = 'nosuch.q'" in str(error) and "qsub" in str(error)
    finally:
        pool.shutdown()


def test_the_apis_run_on_the_grid_engine_pool(sge, tmp_path):
    from test_slurm_pool import scheduled_sum
    pydron.configure({"workers": [{"type": "sge", **entry(tmp_path)}]})
    try:
        total, jobs = scheduled_sum(6)
        assert total == sum(x * x for x in range(6))
        assert [r[0] for r in pydron.map(square_in_job, range(20))] == \
            [x * x for x in range(20)]
        with pydron.Executor() as executor:
            assert executor.submit(job_id, 5).result(timeout=90)[0] == 25
        with pydron.Pool() as pool:
            assert [r[0] for r in pool.map(job_id, range(5))] == [x * x for x in range(5)]
    finally:
        pydron.shutdown()
        pydron.configure(None)
    wait_until(lambda: not sge.queue(), timeout=30, what="no job after shutdown()")
