"""pydron.backend.launchers.slurm_jobs against a real single-node SLURM (tests/slurmhost.py).

The worker command in these tests is a small shell or Python program, not the real worker
(that needs the engine's launcher): what is tested is what SLURM makes of the jobs --
arrays and their task ids, limits, states, cancellation, the secret's path to the
workers, ``setup`` lines and ``srun`` inside an allocation. Jobs start 1-3 s after
submission here, so every wait below polls with a timeout.
"""
from __future__ import annotations

import hashlib
import os
import re
import socket
import stat
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest
from waiting import wait_for as wait_until

from pydron.backend.launchers import batch_jobs, slurm_jobs
from pydron.backend.launchers.slurm_jobs import (
    INDEX, ClusterLimits, JobId, JobState, SlurmError, SlurmJobs, SlurmSettings,
)
from pydron.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent




def states(jobs: SlurmJobs) -> dict[JobId, JobState]:
    return {job: status.state for job, status in jobs.poll(force=True).items()}


def all_in(jobs: SlurmJobs, *wanted: JobState) -> bool:
    found = states(jobs)
    return bool(found) and all(state in wanted for state in found.values())


@pytest.fixture
def controllers(tmp_path):
    """Make SlurmJobs for a test (work_dir under tmp_path); each is closed afterwards."""
    made: list[SlurmJobs] = []

    def make(command, secret: bytes = b"\x01" * 16, environ=None, **settings) -> SlurmJobs:
        settings.setdefault("work_dir", str(tmp_path / "work"))
        jobs = SlurmJobs(SlurmSettings(**settings), command, secret, poll_interval=0.2,
                         environ=environ)
        made.append(jobs)
        return jobs

    yield make
    for jobs in made:
        jobs.close()


@pytest.fixture
def calls(monkeypatch) -> Counter:
    """Counts the SLURM commands run (by program name) through subprocess.run."""
    counter: Counter = Counter()
    real_run = subprocess.run

    def counting_run(argv, *args, **kwargs):
        counter[os.path.basename(str(argv[0]))] += 1
        return real_run(argv, *args, **kwargs)

    monkeypatch.setattr(subprocess, "run", counting_run)
    return counter


# --------------------------------------------------------------------------- settings


def test_settings_defaults_and_errors_name_the_key():
    settings = SlurmSettings.from_entry({"type": "slurm", "jobs": 4, "cores": 8,
                                         "time": "1:00:00", "memory": "4G",
                                         "setup": "module load python\nsource venv/bin/activate"})
    assert (settings.jobs, settings.cores) == (4, 8)
    assert (settings.time, settings.memory) == ("1:00:00", "4G")
    assert settings.setup == ("module load python", "source venv/bin/activate")
    assert settings.python == sys.executable and settings.partition is None
    bad = {"cores": 0, "jobs": True, "partition": "a b", "time": "soon", "memory": "lots",
           "sbatch_options": ["x"], "idle_timeout": -1, "allocation": "yes", "partitoin": "x"}
    for key, value in bad.items():
        with pytest.raises(ConfigError, match=f"`{key}`"):
            SlurmSettings.from_entry({key: value})


def test_address_may_name_an_interface_and_defaults_to_the_host_name():
    assert SlurmSettings(address="lo").resolve_address() == "127.0.0.1"
    assert SlurmSettings(address="10.1.2.3").resolve_address() == "10.1.2.3"
    assert SlurmSettings().resolve_address() == socket.gethostbyname(socket.gethostname())
    argv = slurm_jobs.worker_argv(SlurmSettings(address="lo", python="/opt/py"), 4711)
    assert argv == ["/opt/py", "-m", "pydron.backend.worker", "--host", "127.0.0.1",
                    "--port", "4711", "--index", INDEX]


def test_script_quotes_the_command_and_fills_in_the_index(tmp_path):
    settings = SlurmSettings(cores=3, partition="short", memory="2G",
                             sbatch_options=("--gres=gpu:1",))
    script = slurm_jobs.render_job_script(settings, ["echo", "a b", f"--index={INDEX}", "$HOME"],
                                          tmp_path / "secret", "pydron-x")
    assert "#SBATCH --partition=short" in script and "#SBATCH --mem=2G" in script
    assert "#SBATCH --gres=gpu:1" in script and "#SBATCH --cpus-per-task=3" in script
    assert f" < {tmp_path}/secret\n" in script and " pydron_worker &\n" in script
    command = batch_jobs.shell_command(  # each word reaches the program as written
        [sys.executable, "-c", "import sys; print(sys.argv[1:])", "a b", f"--index={INDEX}",
         "$HOME", INDEX, "it's"])
    out = subprocess.run(["bash", "-c", f"PYDRON_INDEX=7; {command}"], capture_output=True,
                         text=True).stdout
    assert out.strip() == str(["a b", "--index=7", "$HOME", "7", "it's"])
    out = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True)
    assert out.returncode == 0, out.stderr


# --------------------------------------------------------------------------- jobs


def test_array_tasks_see_their_job_and_task_ids(slurm, controllers, tmp_path):
    seen = tmp_path / "seen"
    seen.mkdir()
    record = 'echo "$SLURM_JOB_ID $SLURM_ARRAY_JOB_ID $SLURM_ARRAY_TASK_ID" > "$1/worker-$0"'
    jobs = controllers(["sh", "-c", record, INDEX, str(seen)], jobs=2, cores=2)
    ids = jobs.submit(2)
    assert [i.task for i in ids] == [0, 1] and len({i.job for i in ids}) == 1
    wait_until(lambda: all_in(jobs, JobState.COMPLETED), what="both jobs COMPLETED")
    files = {p.name: p.read_text().split() for p in seen.iterdir()}
    assert sorted(files) == [f"worker-{i}" for i in range(4)]  # 2 jobs x 2 cores
    for index in range(4):
        job_id, array_id, task = files[f"worker-{index}"]
        assert array_id == str(ids[0].job) and task == str(index // 2)
        assert job_id.isdigit()
    assert list(jobs.workers_of(ids[1])) == [2, 3]
    assert f"{slurm_jobs.EXIT_MARKER} 0" in jobs.log_path(ids[1]).read_text()


def test_poll_asks_squeue_once_per_interval_for_all_jobs(slurm, controllers, calls):
    jobs = controllers(["sleep", "60"], jobs=4)
    jobs.poll_interval = 0.5
    ids = jobs.submit(4)  # 2 CPUs: two run, two wait for resources
    calls.clear()
    began = time.monotonic()
    polls = 0
    while time.monotonic() - began < 2.4:
        result = jobs.poll()
        polls += 1
        assert set(result) == set(ids)
        time.sleep(0.01)
    elapsed = time.monotonic() - began
    assert set(calls) == {"squeue"}, calls  # no sacct, no scontrol per job
    # At most one per started interval, however many jobs and calls (a slow machine may
    # fit fewer intervals in, never more).
    assert 2 <= calls["squeue"] <= elapsed / jobs.poll_interval + 1, (calls, elapsed)
    assert polls > 10 * calls["squeue"]
    found = wait_until(lambda: (lambda s: s if JobState.RUNNING in {v.state for v in s.values()}
                                and JobState.PENDING in {v.state for v in s.values()}
                                else None)(jobs.poll(force=True)),
                       what="two RUNNING and two PENDING jobs")
    pending = [s for s in found.values() if s.state is JobState.PENDING]
    assert pending and all(s.reason for s in pending)  # "Resources" or "Priority"


def test_cancel_ends_running_jobs(slurm, controllers):
    token = f"pydron-cancel-{os.getpid()}"
    jobs = controllers(["sh", "-c", "sleep 300; :", token], jobs=2)  # `; :`: sh stays
    ids = jobs.submit(2)
    wait_until(lambda: all_in(jobs, JobState.RUNNING), what="both jobs RUNNING")
    wait_until(lambda: len(_processes_with(token)) == 2, what="both workers running")
    began = time.monotonic()
    jobs.cancel()
    slurm.wait_empty(timeout=30)
    assert time.monotonic() - began < 30
    assert all(s is JobState.CANCELLED for s in states(jobs).values()), states(jobs)
    wait_until(lambda: not _processes_with(token), timeout=15, what="the workers to exit")
    assert set(jobs.jobs()) == set(ids)


def test_cancel_some_and_close_cancels_the_rest(slurm, controllers):
    jobs = controllers(["sleep", "300"], jobs=3)
    first, *rest = jobs.submit(3)
    jobs.cancel([first])
    wait_until(lambda: states(jobs)[first] is JobState.CANCELLED, what="the first cancelled")
    assert all(not states(jobs)[job].ended for job in rest)
    secret = jobs.secret_file
    jobs.close()
    slurm.wait_empty(timeout=30)
    assert not secret.exists()
    jobs.close()  # twice is harmless


def test_max_array_size_splits_the_submission(slurm_small_array, controllers, calls):
    cluster = slurm_small_array  # MaxArraySize=2: task ids 0 and 1 only
    refused = cluster.run(["sbatch", "--array=0-4", "--wrap", "true"], check=False)
    assert "Invalid job array specification" in refused.stderr  # the limit is real
    jobs = controllers(["true"], environ=cluster.env(), jobs=5)
    calls.clear()
    ids = jobs.submit(5)
    assert dict(calls) == {"sbatch": 3, "scontrol": 1}, calls  # limits read once
    assert jobs.limits().max_array_size == 2
    assert sorted(Counter(i.job for i in ids).values()) == [1, 2, 2]
    assert all(i.task < 2 for i in ids)
    workers = [w for i in ids for w in jobs.workers_of(i)]
    assert sorted(workers) == [0, 1, 2, 3, 4]
    wait_until(lambda: all_in(jobs, JobState.COMPLETED), what="all five COMPLETED")


def test_jobs_bounds_how_many_are_submitted(slurm, controllers, calls):
    jobs = controllers(["sleep", "300"], jobs=2)
    assert len(jobs.submit(5)) == 2
    assert jobs.submit(1) == [] and calls["sbatch"] == 1


def test_max_job_count_and_max_submit_jobs_bound_how_many_are_submitted(
        slurm, controllers, calls, tmp_path):
    """The cluster's MaxJobCount and the user's MaxSubmitJobs cap the jobs as ``jobs``
    does, over real sbatch. They are set in the controller's limits: this cluster's
    MaxJobCount is SLURM's default and it has no accounting, so sacctmgr (where
    MaxSubmitJobs comes from) has nothing to say."""
    jobs = controllers(["sleep", "300"], jobs=10)
    jobs._limits = ClusterLimits(max_array_size=1001, max_job_count=2, accounting=False)
    assert jobs.room() == 2
    ids = jobs.submit(5)
    assert len(ids) == 2 and calls["sbatch"] == 1
    assert len(states(jobs)) == 2  # what SLURM holds of this run
    assert jobs.room() == 0 and jobs.submit(1) == [] and calls["sbatch"] == 1
    jobs.cancel([ids[0]])  # one job fewer in the queue: room for one more
    wait_until(lambda: states(jobs)[ids[0]] is JobState.CANCELLED, what="the job cancelled")
    assert jobs.room() == 1 and len(jobs.submit(5)) == 1
    jobs.close()

    limited = controllers(["sleep", "300"], jobs=10, work_dir=str(tmp_path / "work2"))
    limited._limits = ClusterLimits(max_array_size=1001, max_job_count=10000,
                                    accounting=False, max_submit_jobs=3)
    assert len(limited.submit(5)) == 3
    assert limited.room() == 0 and limited.submit(1) == []
    assert len(states(limited)) == 3


def test_bad_partition_names_the_key_and_quotes_sbatch(slurm, controllers):
    jobs = controllers(["true"], partition="no-such-partition")
    with pytest.raises(SlurmError) as caught:
        jobs.submit(1)
    message = str(caught.value)
    assert "`partition`" in message and "no-such-partition" in message
    assert "Invalid partition name specified" in message  # sbatch's own words
    assert jobs.jobs() == {}


def test_secret_is_private_and_on_no_command_line(slurm, controllers, tmp_path):
    secret = os.urandom(16)
    digest = hashlib.sha256(secret.hex().encode()).hexdigest()
    check = ("import hashlib, sys, time; s = sys.stdin.readline().strip(); "
             f"print('secret ok', hashlib.sha256(s.encode()).hexdigest() == {digest!r}, "
             "flush=True); time.sleep(120)")
    jobs = controllers([sys.executable, "-c", check], secret=secret, jobs=2)
    ids = jobs.submit(2)
    assert stat.S_IMODE(jobs.secret_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(jobs.work_dir.stat().st_mode) == 0o700
    for job in ids:
        wait_until(lambda job=job: "secret ok" in _read(jobs.log_path(job)),
                   what=f"job {job}'s worker to read its secret")
        assert "secret ok True" in _read(jobs.log_path(job))
    text = secret.hex()
    for job in ids:
        shown = slurm.run(["scontrol", "show", "job", "-d", str(job)]).stdout
        script = slurm.run(["scontrol", "write", "batch_script", str(job), "-"]).stdout
        assert str(jobs.secret_file) in script and text not in shown + script
    assert text not in subprocess.run(["ps", "-eo", "args"], capture_output=True,
                                      text=True).stdout
    assert all(text not in env for env in _environments())
    jobs.close()
    assert not jobs.secret_file.exists()


def test_setup_lines_run_before_the_workers(slurm, controllers):
    secret = b"\x02" * 16
    check = ("import os, sys; print('worker', os.environ.get('PYDRON_TEST_SETUP'), "
             f"sys.stdin.read().strip() == {secret.hex()!r})")
    jobs = controllers([sys.executable, "-c", check], secret=secret, cores=2,
                       setup=("echo setup-start", "export PYDRON_TEST_SETUP=ready"))
    [job] = jobs.submit(1)
    wait_until(lambda: all_in(jobs, JobState.COMPLETED), what="the job COMPLETED")
    lines = jobs.log_path(job).read_text().splitlines()
    assert lines.count("worker ready True") == 2, lines
    assert lines.index("setup-start") < lines.index("worker ready True")


def test_failing_setup_fails_the_job_and_starts_no_worker(slurm, controllers):
    jobs = controllers(["echo", "worker-started"], setup=("echo before", "false"))
    [job] = jobs.submit(1)
    wait_until(lambda: all_in(jobs, JobState.FAILED), what="the job FAILED")
    assert "worker-started" not in jobs.log_path(job).read_text()


def test_jobs_gone_from_the_queue_end_as_their_logs_say(slurm, controllers):
    """No accounting here (no sacct): once squeue forgets a job (MinJobAge), its log's exit
    line tells whether it failed."""
    jobs = controllers(["sh", "-c", 'exit "$0"', INDEX], jobs=2)
    ok, bad = jobs.submit(2)  # worker 0 exits 0, worker 1 exits 1
    assert not jobs.limits().accounting
    wait_until(lambda: f"{slurm_jobs.EXIT_MARKER} 1" in _read(jobs.log_path(bad)),
               what="the failing job's exit line")
    wait_until(lambda: not slurm.run(["squeue", "-h", "--states=all", "--name",
                                      jobs.job_name]).stdout.strip(),
               timeout=40, what="squeue to forget the jobs")
    found = jobs.poll(force=True)
    assert found[ok].state is JobState.COMPLETED and found[bad].state is JobState.FAILED
    assert "(log)" in found[bad].raw
    assert found[bad].state.lost and not found[ok].state.lost


def test_inside_an_allocation_workers_start_with_srun(slurm, tmp_path):
    seen = tmp_path / "seen"
    seen.mkdir()
    program = tmp_path / "in_allocation.py"
    token = f"pydron-step-{os.getpid()}"
    program.write_text(textwrap.dedent(f"""
        import os, subprocess, sys, time
        from pydron.backend.launchers.slurm_jobs import INDEX, JobState, SlurmJobs, SlurmSettings
        programs = []
        real_run = subprocess.run
        def run(argv, *a, **k):
            programs.append(argv[0])
            return real_run(argv, *a, **k)
        subprocess.run = run
        record = 'echo "$SLURM_JOB_ID $SLURM_STEP_ID $SLURM_PROCID" > "$1/worker-$0"'
        def cmdline(pid):
            try:
                with open(f"/proc/{{pid}}/cmdline", "rb") as f:
                    return f.read()
            except OSError:
                return b""
        def running():
            return sum({token!r}.encode() in cmdline(p) for p in os.listdir("/proc")
                       if p.isdigit())
        jobs = SlurmJobs(SlurmSettings(jobs=2, work_dir={str(tmp_path / "work")!r}),
                         ["sh", "-c", record, INDEX, {str(seen)!r}], b"\\x03" * 16,
                         poll_interval=0)
        assert jobs.in_allocation
        [step] = jobs.submit(2)
        deadline = time.monotonic() + 30
        while not jobs.poll()[step].state.ended and time.monotonic() < deadline:
            time.sleep(0.1)
        print("state", jobs.poll()[step].state.name, "allocation", step.job,
              "programs", ",".join(programs))
        jobs.close()
        # A running step: the `jobs` bound holds, and cancel() ends its tasks.
        sleeper = SlurmJobs(SlurmSettings(jobs=1, work_dir={str(tmp_path / "work")!r}),
                            ["sh", "-c", "sleep 300; :", {token!r}], b"\x03" * 16,
                            poll_interval=0)
        [step] = sleeper.submit(1)
        assert sleeper.submit(1) == [], "over the jobs bound"
        deadline = time.monotonic() + 20
        while not running() and time.monotonic() < deadline:
            time.sleep(0.1)
        print("sleeping", running())
        sleeper.close()
        print("after close", sleeper.poll()[step].state.name, running())
    """))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run(["salloc", "-N1", "-n2", sys.executable, str(program)],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    match = re.search(r"state (\w+) allocation (\d+) programs (\S*)", result.stdout)
    assert match, result.stdout + result.stderr
    state, allocation, programs = match.groups()
    assert state == "COMPLETED" and "sbatch" not in programs.split(",")
    files = {p.name: p.read_text().split() for p in seen.iterdir()}
    assert sorted(files) == ["worker-0", "worker-1"]
    assert {tuple(v[:1]) for v in files.values()} == {(allocation,)}  # the allocation's job
    assert sorted(v[2] for v in files.values()) == ["0", "1"]  # srun task ids
    assert "sleeping 1" in result.stdout, result.stdout + result.stderr
    assert "after close CANCELLED 0" in result.stdout, result.stdout + result.stderr


# --------------------------------------------------------------------------- helpers


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


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


def _environments() -> list[str]:
    """Every process's environment we can read (the secret must be in none)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    found.append(f.read().decode(errors="replace"))
            except OSError:
                pass
    return found
