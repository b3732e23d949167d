"""pydron.backend.launchers.sge_jobs against a real single-host Grid Engine (tests/sgehost.py).

The worker command in these tests is a small shell or Python program, not the real worker
(that needs the engine's launcher): what is tested is what Grid Engine makes of the jobs --
arrays and their 1-based task ids, limits, states (pending, running, the error state),
cancellation, accounting, the secret's path to the workers and ``setup`` lines. Jobs start
about a second after submission here, so every wait below polls with a deadline.
"""
from __future__ import annotations

import hashlib
import os
import re
import socket
import stat
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from waiting import wait_for as wait_until

from pydron.backend.launchers import sge_jobs
from pydron.backend.launchers.sge_jobs import (
    INDEX, ClusterLimits, JobId, JobState, SgeError, SgeJobs, SgeSettings,
)
from pydron.errors import ConfigError
from sgehost import PE




def states(jobs: SgeJobs) -> dict[JobId, JobState]:
    return {job: status.state for job, status in jobs.poll(force=True).items()}


def all_in(jobs: SgeJobs, *wanted: JobState) -> bool:
    found = states(jobs)
    return bool(found) and all(state in wanted for state in found.values())


@pytest.fixture
def controllers(tmp_path):
    """Make SgeJobs for a test (work_dir under tmp_path); each is closed afterwards."""
    made: list[SgeJobs] = []

    def make(command, secret: bytes = b"\x01" * 16, environ=None, **settings) -> SgeJobs:
        settings.setdefault("work_dir", str(tmp_path / "work"))
        settings.setdefault("poll_interval", 0.2)
        jobs = SgeJobs(SgeSettings(**settings), command, secret, environ=environ)
        made.append(jobs)
        return jobs

    yield make
    for jobs in made:
        jobs.close()


@pytest.fixture
def calls(monkeypatch) -> Counter:
    """Counts the Grid Engine commands run (by program name) through sge_jobs._run."""
    counter: Counter = Counter()
    real_run = sge_jobs._run

    def counting_run(argv, *args, **kwargs):
        counter[os.path.basename(str(argv[0]))] += 1
        return real_run(argv, *args, **kwargs)

    monkeypatch.setattr(sge_jobs, "_run", counting_run)
    return counter


# --------------------------------------------------------------------------- settings


def test_settings_defaults_and_errors_name_the_key():
    settings = SgeSettings.from_entry({"type": "sge", "jobs": 4, "cores": 8, "queue": "all.q",
                                       "parallel_environment": "smp", "time": "1:00:00",
                                       "memory": "4G", "qsub_options": ["-l gpu=1"],
                                       "setup": "module load python\nsource venv/bin/activate"})
    assert (settings.jobs, settings.cores, settings.queue) == (4, 8, "all.q")
    assert (settings.time, settings.memory, settings.qsub_options) == ("1:00:00", "4G",
                                                                       ("-l gpu=1",))
    assert settings.setup == ("module load python", "source venv/bin/activate")
    default = SgeSettings.from_entry({"type": "sge"})
    assert default.python == sys.executable and default.queue is None
    assert (default.jobs, default.cores, default.poll_interval) == (1, 1, 5.0)
    assert (default.idle_timeout, default.max_resubmissions) == (60.0, 3)
    assert not default.in_allocation({"JOB_ID": "7", "PE_HOSTFILE": "/x"})
    bad = {"cores": 0, "jobs": True, "queue": "a b", "parallel_environment": "'smp'",
           "time": "soon", "memory": "lots", "qsub_options": ["x"], "idle_timeout": -1,
           "poll_interval": 0.01, "max_resubmissions": -1, "setup": 3, "queu": "x"}
    for key, value in bad.items():
        with pytest.raises(ConfigError, match=f"sge entry: .*`{key}`"):
            SgeSettings.from_entry({key: value})


def test_address_may_name_an_interface_and_defaults_to_the_host_name():
    assert SgeSettings(address="lo").resolve_address() == "127.0.0.1"
    assert SgeSettings().resolve_address() == socket.gethostbyname(socket.gethostname())
    argv = sge_jobs.worker_argv(SgeSettings(address="lo", python="/opt/py"), 4711)
    assert argv == ["/opt/py", "-m", "pydron.backend.worker", "--host", "127.0.0.1",
                    "--port", "4711", "--index", INDEX]


def test_script_directives_and_index_formula(tmp_path):
    settings = SgeSettings(cores=2, queue="short.q", parallel_environment="smp", time="0:10:00",
                           memory="2G", qsub_options=("-l gpu=1",))
    script = sge_jobs.render_job_script(settings, ["sh", "-c", 'echo "worker $0"', INDEX],
                                        tmp_path / "secret", "pydron-x")
    lines = script.splitlines()
    for directive in ("-N pydron-x", "-S /bin/bash", "-j y", "-q short.q", "-pe smp 2",
                      "-l h_rt=0:10:00", "-l h_vmem=2G", "-l gpu=1"):
        assert f"#$ {directive}" in lines, directive
    assert f" < {tmp_path}/secret\n" in script
    one_core = sge_jobs.render_job_script(SgeSettings(parallel_environment="smp"), ["true"],
                                          tmp_path / "secret", "pydron-x")
    assert "-pe" not in one_core  # one worker: one slot, no PE
    (tmp_path / "secret").write_text("00\n")
    path = tmp_path / "job.sh"
    path.write_text(script)
    # Task 2 (1-based) of an array based at job number 3 is job number 4: workers 8 and 9.
    out = subprocess.run(["bash", str(path), "3"], capture_output=True, text=True,
                         env=dict(os.environ, SGE_TASK_ID="2", JOB_ID="77"))
    assert sorted(line for line in out.stdout.splitlines() if line.startswith("worker")) \
        == ["worker 8", "worker 9"], out.stdout + out.stderr
    assert out.stdout.splitlines()[-1] == f"{sge_jobs.EXIT_MARKER} 0"


def test_output_parsers():
    assert sge_jobs.task_ids("3-5:1") == [3, 4, 5]
    assert sge_jobs.task_ids("1,2") == [1, 2] and sge_jobs.task_ids("1-7:3,9") == [1, 4, 7, 9]
    assert sge_jobs.task_ids(None) == [1] and sge_jobs.task_ids("4") == [4]
    expected = {"qw": JobState.PENDING, "hqw": JobState.PENDING, "r": JobState.RUNNING,
                "t": JobState.RUNNING, "Rr": JobState.RUNNING, "Rt": JobState.RUNNING,
                "Eqw": JobState.FAILED, "dr": JobState.RUNNING, "d": JobState.RUNNING,
                "s": JobState.PENDING, "S": JobState.PENDING, "T": JobState.PENDING}
    assert {k: sge_jobs.job_state(k) for k in expected} == expected
    config = sge_jobs.parse_config("max_aj_tasks  12\nreporting_params accounting=false \\\n"
                                   "                 reporting=false\nmax_u_jobs 3\n")
    assert config == {"max_aj_tasks": "12", "max_u_jobs": "3",
                      "reporting_params": "accounting=false reporting=false"}


def test_room_respects_max_u_jobs_where_an_array_is_one_job(tmp_path):
    jobs = SgeJobs(SgeSettings(jobs=10, work_dir=str(tmp_path)), ["true"], b"\x00" * 16)
    try:
        jobs._limits = ClusterLimits(max_aj_tasks=3, max_u_jobs=2, max_jobs=0)
        assert jobs.room() == 6  # two arrays of three tasks
        jobs._limits = ClusterLimits(max_aj_tasks=0, max_u_jobs=0, max_jobs=1)
        assert jobs.room() == 10  # one array, no task limit
    finally:
        jobs.close()


# --------------------------------------------------------------------------- jobs


def test_array_tasks_run_workers_with_their_index_and_secret(sge, controllers, tmp_path):
    seen = tmp_path / "seen"
    seen.mkdir()
    secret = os.urandom(16)
    record = ("import os, sys; s = sys.stdin.readline().strip(); "
              "open(os.path.join(sys.argv[2], 'worker-' + sys.argv[1]), 'w').write("
              f"' '.join([os.environ['JOB_ID'], os.environ['SGE_TASK_ID'], "
              f"os.environ.get('PYDRON_TEST_SETUP', '-'), str(s == {secret.hex()!r})]))")
    jobs = controllers([sys.executable, "-c", record, INDEX, str(seen)], secret=secret,
                       jobs=2, cores=2, parallel_environment=PE,
                       setup=("export PYDRON_TEST_SETUP=ready",))
    ids = jobs.submit(2)
    assert [i.task for i in ids] == [1, 2] and len({i.job for i in ids}) == 1
    assert [str(i) for i in ids] == [f"{ids[0].job}.1", f"{ids[0].job}.2"]
    assert stat.S_IMODE(jobs.secret_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(jobs.work_dir.stat().st_mode) == 0o700
    shown = sge.run(["qstat", "-j", str(ids[0].job)]).stdout
    assert jobs.job_name in shown and secret.hex() not in shown
    assert re.search(rf"parallel environment:\s+{PE} range:\s+2", shown), shown  # 2 slots
    wait_until(lambda: all_in(jobs, JobState.COMPLETED), what="both jobs COMPLETED")
    files = {p.name: p.read_text().split() for p in seen.iterdir()}
    assert sorted(files) == [f"worker-{i}" for i in range(4)]  # 2 jobs x 2 cores
    for job in ids:
        for index in jobs.workers_of(job):
            assert files[f"worker-{index}"] == [str(job.job), str(job.task), "ready", "True"]
        assert f"{sge_jobs.EXIT_MARKER} 0" in jobs.log_path(job).read_text()
    assert list(jobs.workers_of(ids[1])) == [2, 3]


def test_poll_asks_qstat_once_per_interval_and_some_jobs_wait(sge, controllers, calls):
    jobs = controllers(["sleep", "60"], jobs=sge.slots + 2)
    jobs.poll_interval = 0.5
    ids = jobs.submit(sge.slots + 2)  # more jobs than slots: two must wait
    calls.clear()
    began = time.monotonic()
    polls = 0
    while time.monotonic() - began < 2.4:
        result = jobs.poll()
        polls += 1
        assert set(result) == set(ids)
        time.sleep(0.01)
    elapsed = time.monotonic() - began
    assert set(calls) == {"qstat"}, calls  # no qacct, no qconf, nothing per job
    assert 2 <= calls["qstat"] <= elapsed / jobs.poll_interval + 1, (calls, elapsed)
    assert polls > 10 * calls["qstat"]

    def split() -> Counter:
        found = Counter(states(jobs).values())
        return found if found == {JobState.RUNNING: sge.slots, JobState.PENDING: 2} else None
    wait_until(split, what=f"{sge.slots} RUNNING and 2 PENDING jobs")
    pending = [s for s in jobs.jobs().values() if s.state is JobState.PENDING]
    assert all(s.raw == "qw" and "queued" in s.reason for s in pending), pending


def test_cancel_ends_running_jobs(sge, controllers):
    token = f"pydron-sge-cancel-{os.getpid()}"
    jobs = controllers(["sh", "-c", "sleep 300; :", token], jobs=2)  # `; :`: sh stays
    ids = jobs.submit(2)
    wait_until(lambda: all_in(jobs, JobState.RUNNING), what="both jobs RUNNING")
    wait_until(lambda: len(_processes_with(token)) == 2, what="both workers running")
    jobs.cancel()
    sge.wait_empty(timeout=30)
    assert all(s is JobState.CANCELLED for s in states(jobs).values()), states(jobs)
    assert all(jobs.cancelled_here(job) for job in ids)
    wait_until(lambda: not _processes_with(token), timeout=15, what="the workers to exit")


def test_cancel_one_and_close_cancels_the_rest(sge, controllers, calls):
    jobs = controllers(["sleep", "300"], jobs=sge.slots + 1)
    first, *rest = jobs.submit(sge.slots + 1)  # the last one pending
    # (A job deleted while it is being sent to its host takes ~10 s to go: wait until
    # it runs.)
    wait_until(lambda: states(jobs)[first] is JobState.RUNNING and "r" in
               jobs.jobs()[first].raw, what="the first job running")
    calls.clear()
    jobs.cancel([first])
    assert calls["qdel"] == 1
    wait_until(lambda: states(jobs)[first] is JobState.CANCELLED, what="the first cancelled")
    assert str(first) not in sge.queue()
    assert all(not states(jobs)[job].ended for job in rest)
    assert all(str(job) in sge.queue() for job in rest)
    secret = jobs.secret_file
    calls.clear()
    jobs.close()
    assert calls["qdel"] == 1  # one call for the rest, pending tasks included
    sge.wait_empty(timeout=30)
    assert not secret.exists()
    assert all(s is JobState.CANCELLED for s in states(jobs).values())
    jobs.close()  # twice is harmless


def test_max_aj_tasks_splits_the_submission(sge_small_array, controllers, calls):
    cluster = sge_small_array  # max_aj_tasks 2
    refused = cluster.run(["qsub", "-t", "1-3", "-b", "y", "true"], check=False)
    assert "more than 2 tasks" in refused.stderr  # the limit is real
    jobs = controllers(["true"], environ=cluster.env(), jobs=5)
    calls.clear()
    ids = jobs.submit(5)
    assert dict(calls) == {"qsub": 3, "qconf": 1}, calls  # limits read once
    assert jobs.limits().max_aj_tasks == 2
    assert sorted(Counter(i.job for i in ids).values()) == [1, 2, 2]
    assert all(i.task in (1, 2) for i in ids)
    workers = [w for i in ids for w in jobs.workers_of(i)]
    assert sorted(workers) == [0, 1, 2, 3, 4]
    wait_until(lambda: all_in(jobs, JobState.COMPLETED), what="all five COMPLETED")


def test_jobs_bounds_how_many_are_submitted(sge, controllers, calls):
    jobs = controllers(["sleep", "300"], jobs=2)
    assert len(jobs.submit(5)) == 2
    assert jobs.submit(1) == [] and calls["qsub"] == 1


def test_bad_queue_names_the_key_and_quotes_qsub(sge, controllers):
    jobs = controllers(["true"], queue="no-such.q")
    with pytest.raises(SgeError) as caught:
        jobs.submit(1)
    message = str(caught.value)
    assert "`queue`" in message and "no-such.q" in message
    assert 'unknown queue "no-such.q"' in message  # qsub's own words
    assert jobs.jobs() == {}


def test_failing_jobs_end_failed_by_accounting_and_by_log(sge, controllers):
    jobs = controllers(["sh", "-c", 'exit "$0"', INDEX], jobs=2)
    ok, bad = jobs.submit(2)  # worker 0 exits 0, worker 1 exits 1
    assert jobs.limits().accounting
    wait_until(lambda: all_in(jobs, JobState.COMPLETED, JobState.FAILED), what="both ended")
    found = jobs.jobs()
    assert found[ok].state is JobState.COMPLETED and found[bad].state is JobState.FAILED
    assert found[bad].state.lost and not found[ok].state.lost
    assert f"{sge_jobs.EXIT_MARKER} 1" in jobs.log_path(bad).read_text()
    # The accounting record says so too (it is written within flush_time, 1 s here).
    accounted = wait_until(lambda: (lambda found: found if len(found) == 2 else None)(
        sge_jobs.parse_qacct(sge.run(["qacct", "-j", jobs.job_name], check=False).stdout)),
        what="both jobs in qacct")
    assert accounted[ok].state is JobState.COMPLETED and accounted[bad].state is JobState.FAILED
    assert "exit_status 1" in accounted[bad].raw
    # Without accounting, the log's exit line tells.
    jobs = controllers(["sh", "-c", 'exit "$0"', INDEX], jobs=2)
    jobs._limits = ClusterLimits(accounting=False)
    ok, bad = jobs.submit(2)
    wait_until(lambda: all_in(jobs, JobState.COMPLETED, JobState.FAILED), what="both ended")
    found = jobs.jobs()
    assert found[ok].state is JobState.COMPLETED and found[bad].state is JobState.FAILED
    assert found[bad].raw == "exit 1 (log)"


def test_a_job_past_its_time_limit_is_failed_by_accounting(sge, controllers):
    """Killed at h_rt: no exit line in the log, so the poll waits for qacct's record (which
    says why) rather than deciding from the log at once."""
    jobs = controllers(["sleep", "300"], time="1")
    [job] = jobs.submit(1)
    status = wait_until(lambda: (lambda s: s if s.state.ended else None)(
        jobs.poll(force=True)[job]), what="the job to be killed")
    assert status.state is JobState.FAILED and "(qacct)" in status.raw, status
    assert "h_rt" in status.raw and "exit_status 137" in status.raw
    assert sge_jobs.EXIT_MARKER not in jobs.log_path(job).read_text()


def test_failing_setup_fails_the_job_and_starts_no_worker(sge, controllers):
    jobs = controllers(["echo", "worker-started"], setup=("echo before", "false"))
    [job] = jobs.submit(1)
    wait_until(lambda: all_in(jobs, JobState.FAILED), what="the job FAILED")
    text = jobs.log_path(job).read_text()
    assert "before" in text and "worker-started" not in text


def test_a_job_in_the_error_state_is_failed_and_deleted(sge, controllers, calls):
    jobs = controllers(["true"], qsub_options=("-wd /nonexistent/pydron-sge",))
    [job] = jobs.submit(1)
    status = wait_until(lambda: (lambda s: s if s.state.ended else None)(
        jobs.poll(force=True)[job]), what="the job to end")
    assert status.state is JobState.FAILED and "E" in status.raw, status
    assert "error state" in status.reason and not jobs.cancelled_here(job)
    assert calls["qdel"] == 1  # it would wait in the queue for ever
    sge.wait_empty(timeout=15)


def test_missing_commands_raise_sge_error(tmp_path):
    jobs = SgeJobs(SgeSettings(work_dir=str(tmp_path)), ["true"], b"\x00" * 16,
                   environ={"PATH": str(tmp_path)})
    try:
        with pytest.raises(SgeError, match="`qconf` is not installed"):
            jobs.submit(1)
    finally:
        jobs.close()  # no jobs: no qdel


def test_secret_is_on_no_command_line(sge, controllers):
    secret = os.urandom(16)
    digest = hashlib.sha256(secret.hex().encode()).hexdigest()
    check = ("import hashlib, sys, time; s = sys.stdin.readline().strip(); "
             f"print('secret ok', hashlib.sha256(s.encode()).hexdigest() == {digest!r}, "
             "flush=True); time.sleep(60)")
    jobs = controllers([sys.executable, "-c", check], secret=secret)
    [job] = jobs.submit(1)
    wait_until(lambda: "secret ok" in _read(jobs.log_path(job)), what="the worker's secret")
    assert "secret ok True" in _read(jobs.log_path(job))
    assert secret.hex() not in jobs.script.read_text()
    assert secret.hex() not in subprocess.run(["ps", "-eo", "args"], capture_output=True,
                                              text=True).stdout
    jobs.close()
    assert not jobs.secret_file.exists()


# --------------------------------------------------------------------------- helpers


def _processes_with(token: str) -> list[int]:
    """PIDs of processes whose command line contains ``token``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if token.encode() in f.read():
                        found.append(int(entry))
            except OSError:
                pass
    return found


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


