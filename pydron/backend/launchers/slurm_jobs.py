"""SLURM jobs for remote workers: settings, job scripts, submission, polling, cancellation.

A ``{"type": "slurm"}`` entry in ``pydron.conf`` runs workers as SLURM batch jobs (or,
inside an allocation, as ``srun`` steps). This module is the job controller a launcher
drives; it knows SLURM and nothing of the engine: no Twisted, no connections, no calls.
The launcher decides *when* to ask for workers and what a worker's command line is; this
module turns that into jobs and tells what became of them.

* :class:`SlurmSettings` -- the entry's keys, their defaults, and errors that name the key.
* :func:`render_job_script` -- a bash script that runs ``cores`` copies of the worker
  command, after the entry's ``setup`` lines. Each copy gets its worker index from the
  job's number (the ``base`` given to ``sbatch`` plus ``$SLURM_ARRAY_TASK_ID``). The
  pool's secret never appears on a command line, in the environment or in the script:
  it is a 0600 file in the 0700 ``work_dir``, passed to each worker on its stdin.
* :class:`SlurmJobs` -- ``submit(count)`` (one ``sbatch --array`` per chunk that fits the
  site's ``MaxArraySize``), ``poll()`` (one ``squeue`` call per interval for all the run's
  jobs, ``sacct`` only for jobs that left the queue and only where accounting exists),
  ``cancel()`` and ``close()``. Inside an allocation (``SLURM_JOB_ID`` set) ``submit``
  starts the workers with ``srun`` on the allocated nodes instead.

Every SLURM command goes through :func:`_run` (``subprocess.run``), so that a test can
count them. The module installs nothing global (no atexit hook, no signal handler): the
launcher calls :meth:`SlurmJobs.close` at exit and on SIGTERM.
"""
from __future__ import annotations

import logging
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from pydron.backend.launchers import batch_jobs as batch
from pydron.backend.launchers.batch_jobs import (
    EXIT_MARKER, INDEX, JobId, JobState, JobStatus, worker_loop,
)
from pydron.errors import PydronError

__all__ = [
    "SlurmError", "SlurmSettings", "JobState", "JobId", "JobStatus", "ClusterLimits",
    "SlurmJobs", "CHECKS", "allocation_workers", "render_job_script", "render_step_script",
    "worker_argv", "INDEX", "EXIT_MARKER",
]

log = logging.getLogger("pydron.backend")


_ENTRY = "slurm entry"
MAX_JOBS = 100_000
MAX_CORES = 1024


class SlurmError(PydronError):
    """SLURM refused or failed a request; the message names the entry's key at fault (if
    one is) and quotes the SLURM command's own message."""


# --------------------------------------------------------------------------- settings


_TIME = re.compile(r"(\d+-)?\d+(:\d+){0,2}|\d+-\d+|UNLIMITED|INFINITE", re.IGNORECASE)
_MEMORY = re.compile(r"\d+[KMGT]?", re.IGNORECASE)


MAX_MINUTES = 30 * 24 * 60
MAX_MEGABYTES = 1 << 40


def _time(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 < value <= MAX_MINUTES:
            raise ValueError(f"a time limit in minutes from 1 to {MAX_MINUTES} (30 days), "
                             'or "H:MM:SS" or "D-HH:MM:SS"')
        return str(value)  # minutes, as sbatch reads a bare number
    if not isinstance(value, str) or not _TIME.fullmatch(value):
        raise ValueError('a SLURM time limit: minutes, "H:MM:SS" or "D-HH:MM:SS"')
    return value


def _memory(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 < value <= MAX_MEGABYTES:
            raise ValueError(f"megabytes from 1 to {MAX_MEGABYTES}, or \"4G\", \"500M\"")
        return str(value)  # megabytes, as sbatch reads a bare number
    if not isinstance(value, str) or not _MEMORY.fullmatch(value):
        raise ValueError('memory per node as SLURM writes it: "4000", "4G", "500M"')
    return value


@dataclass(frozen=True)
class SlurmSettings:
    """The keys of a ``{"type": "slurm"}`` entry.

    ``jobs`` is the most jobs the run holds at once (the fair-share bound), ``cores`` the
    workers each job runs (and the CPUs it asks for). ``partition``, ``account``,
    ``qos``, ``time`` and ``memory`` become ``#SBATCH`` lines; ``sbatch_options`` adds
    any others. ``setup`` is shell code run in each job before the workers start (``module
    load``, ``source venv/bin/activate``); a failing line fails the job. ``python`` is the
    interpreter on the compute nodes, ``address`` what they reach the caller at (an
    address, a host name or a local interface's name). ``work_dir`` holds job scripts,
    logs and the secret; it must be on a file system the compute nodes share, hence its
    default under the home directory, not ``/tmp``. ``allocation``: start workers with
    ``srun`` in the current allocation (``null``, the default: when ``SLURM_JOB_ID`` is
    set and the entry gives no ``jobs``); there ``cores`` defaults to the allocation's
    tasks (or CPUs). ``idle_timeout`` (how long an idle worker is kept) and
    ``max_resubmissions`` (how many lost jobs are replaced in a run) are the batch
    launcher's; ``poll_interval`` is the seconds between two ``squeue`` calls.
    """

    jobs: int = 1
    cores: int = 1
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str | None = None
    memory: str | None = None
    sbatch_options: tuple[str, ...] = ()
    setup: tuple[str, ...] = ()
    python: str = field(default_factory=lambda: sys.executable)
    address: str | None = None
    idle_timeout: float = 60.0
    max_resubmissions: int = 3
    work_dir: str | None = None
    allocation: bool | None = None
    poll_interval: float = 5.0

    @classmethod
    def from_entry(cls, entry: Mapping[str, object]) -> "SlurmSettings":
        """The settings of an entry as written in pydron.conf (``type`` is ignored);
        :class:`ConfigError` names the first key that is unknown or invalid."""
        settings = batch.settings_from_entry(cls, entry, CHECKS, _ENTRY)
        if "allocation" not in entry and "jobs" in entry:
            # Jobs to submit were asked for: submit them, even from inside a job.
            settings = replace(settings, allocation=False)
        if "cores" not in entry and "jobs" not in entry and settings.in_allocation():
            settings = replace(settings, cores=allocation_workers(os.environ))
        return settings

    def in_allocation(self, environ: Mapping[str, str] = os.environ) -> bool:
        """Whether workers start with ``srun`` in an existing allocation."""
        if self.allocation is not None:
            return self.allocation
        return bool(environ.get("SLURM_JOB_ID"))

    def resolve_address(self) -> str:
        """The address compute nodes connect back to (see
        :func:`~pydron.backend.launchers.batch_jobs.resolve_address`)."""
        return batch.resolve_address(self.address, _ENTRY)


CHECKS: dict[str, batch.Check] = {  # pydron.config checks a file's slurm entries with these
    "jobs": batch.integer(1, MAX_JOBS),
    "cores": batch.integer(1, MAX_CORES),
    "partition": batch.word, "account": batch.word, "qos": batch.word,
    "time": _time, "memory": _memory,
    "sbatch_options": batch.options("sbatch", "--gres=gpu:1"),
    "setup": batch.lines,
    "python": batch.path,
    "address": batch.word,
    "idle_timeout": batch.seconds,
    "max_resubmissions": batch.integer(0, 1000),
    "work_dir": batch.path,
    "allocation": batch.optional_bool,
    "poll_interval": lambda v: batch.seconds(v, 0.05),
}


def allocation_workers(environ: Mapping[str, str]) -> int:
    """How many workers fit the current allocation: its tasks (``SLURM_NTASKS``, from
    ``salloc -n``), else its CPUs (``SLURM_JOB_CPUS_PER_NODE``, written ``"4(x2),2"``)."""
    tasks = environ.get("SLURM_NTASKS", "")
    if tasks.isdigit() and int(tasks) > 0:
        return min(int(tasks), MAX_CORES)
    total = 0
    for part in environ.get("SLURM_JOB_CPUS_PER_NODE", "").split(","):
        match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if match:
            total += int(match[1]) * int(match[2] or 1)
    return min(max(total, 1), MAX_CORES)


def worker_argv(settings: SlurmSettings, port: int, *extra: str) -> list[str]:
    """The worker command line a launcher would give :class:`SlurmJobs`: the worker program
    on the compute node, connecting back to ``address:port``, with the index placeholder."""
    return [settings.python, "-m", "pydron.backend.worker", "--host",
            settings.resolve_address(), "--port", str(port), "--index", INDEX, *extra]


# --------------------------------------------------------------------------- scripts


def _directives(settings: SlurmSettings, job_name: str) -> list[str]:
    """The ``#SBATCH`` lines: the entry's resources. (The log path goes on sbatch's
    command line instead: a directive cannot quote a path with spaces.)"""
    lines = [f"--job-name={job_name}", "--ntasks=1", f"--cpus-per-task={settings.cores}"]
    for key in ("partition", "account", "qos", "time"):
        value = getattr(settings, key)
        if value is not None:
            lines.append(f"--{key}={value}")
    if settings.memory is not None:
        lines.append(f"--mem={settings.memory}")
    lines.extend(settings.sbatch_options)
    return [f"#SBATCH {line}" for line in lines]


def render_job_script(settings: SlurmSettings, command: Sequence[str], secret_file: Path,
                      job_name: str) -> str:
    """The batch script of one array: ``sbatch --array=0-N script BASE``. Task ``t`` is the
    run's job number ``BASE + t`` and runs workers ``number * cores + i`` for ``i`` below
    ``cores``, each with the secret on stdin (and started again after the engine ended
    it: :func:`~pydron.backend.launchers.batch_jobs.worker_loop`). The job's exit status
    is the first failing worker's; its last log line is :data:`EXIT_MARKER` with that status."""
    cores = settings.cores
    return "\n".join([
        "#!/bin/bash",
        *_directives(settings, job_name),
        "# Pydron workers: written by pydron.backend.launchers.slurm_jobs for one run.",
        f"trap 'echo \"{EXIT_MARKER} $?\"' EXIT",
        'PYDRON_JOB_NUMBER=$(( ${1:?job number base} + ${SLURM_ARRAY_TASK_ID:-0} ))',
        "export PYDRON_JOB_NUMBER",
        'echo "pydron-job: number $PYDRON_JOB_NUMBER, SLURM job ${SLURM_JOB_ID:-?} '
        'on $(hostname)"',
        *batch.setup_block(settings.setup),
        *worker_loop(command, secret_file),
        "pydron_pids=()",
        f"for pydron_i in $(seq 0 {cores - 1}); do",
        f"    PYDRON_INDEX=$(( PYDRON_JOB_NUMBER * {cores} + pydron_i )) pydron_worker &",
        '    pydron_pids+=("$!")',
        "done",
        "pydron_status=0",
        'for pydron_pid in "${pydron_pids[@]}"; do',
        '    wait "$pydron_pid" || { s=$?; [ "$pydron_status" -ne 0 ] || pydron_status=$s; }',
        "done",
        'exit "$pydron_status"',
        "",
    ])


def render_step_script(settings: SlurmSettings, command: Sequence[str],
                       secret_file: Path) -> str:
    """The script each task of an ``srun`` step runs: ``bash step.sh BASE``; task
    ``$SLURM_PROCID`` is worker ``BASE + SLURM_PROCID``."""
    return "\n".join([
        "#!/bin/bash",
        'PYDRON_INDEX=$(( ${1:?first worker index} + ${SLURM_PROCID:?not run by srun} ))',
        *batch.setup_block(settings.setup),
        *worker_loop(command, secret_file),
        "pydron_worker",
        "",
    ])


# --------------------------------------------------------------------------- job states


_SLURM_STATES: dict[str, JobState] = {
    # Not (yet, or not now) running workers.
    "PENDING": JobState.PENDING, "CONFIGURING": JobState.PENDING,
    "REQUEUED": JobState.PENDING, "REQUEUE_FED": JobState.PENDING,
    "REQUEUE_HOLD": JobState.PENDING, "RESV_DEL_HOLD": JobState.PENDING,
    "SUSPENDED": JobState.PENDING, "STOPPED": JobState.PENDING,
    # Running, or ending (the final state follows on a later poll).
    "RUNNING": JobState.RUNNING, "COMPLETING": JobState.RUNNING,
    "RESIZING": JobState.RUNNING, "SIGNALING": JobState.RUNNING,
    "STAGE_OUT": JobState.RUNNING,
    # Ended.
    "COMPLETED": JobState.COMPLETED, "FAILED": JobState.FAILED,
    "OUT_OF_MEMORY": JobState.FAILED, "SPECIAL_EXIT": JobState.FAILED,
    "CANCELLED": JobState.CANCELLED, "REVOKED": JobState.CANCELLED,
    "PREEMPTED": JobState.PREEMPTED, "NODE_FAIL": JobState.NODE_FAIL,
    "BOOT_FAIL": JobState.NODE_FAIL, "TIMEOUT": JobState.TIMEOUT,
    "DEADLINE": JobState.TIMEOUT,
}


def job_state(text: str) -> JobState:
    """A SLURM state as squeue or sacct writes it (``"CANCELLED by 0"``, ``"CA"`` is not
    used: we ask for long names). Unknown ones count as pending: not serving, not over."""
    word = text.strip().split(" ")[0].rstrip("+").upper()
    return _SLURM_STATES.get(word, JobState.PENDING)


@dataclass(frozen=True)
class ClusterLimits:
    """What ``scontrol show config`` (and, with accounting, ``sacctmgr``) says about how
    many jobs one submission may hold: array task ids run from 0 to ``max_array_size - 1``;
    ``max_submit_jobs`` is the user's association limit (``None``: none known)."""

    max_array_size: int
    max_job_count: int
    accounting: bool
    max_submit_jobs: int | None = None


@dataclass
class _Job:
    id: JobId
    number: int  # the run's job number: workers number*cores .. number*cores+cores-1
    status: JobStatus = JobStatus(JobState.PENDING)
    seen: bool = False  # squeue listed it at least once
    cancelled: bool = False  # we cancelled it
    proc: subprocess.Popen | None = None  # srun steps only
    workers: int = 0  # srun steps: how many workers (tasks) the step runs
    size: int = 1  # how many of the entry's `jobs` this counts as (a step: all it stands for)

    @property
    def step(self) -> bool:
        return self.id.step


# --------------------------------------------------------------------------- commands


def _run(argv: Sequence[str], env: Mapping[str, str] | None = None,
         timeout: float = 60.0) -> subprocess.CompletedProcess:
    """Run one SLURM command (every call goes through here; the tests count them)."""
    return batch.run_command(argv, env, timeout, SlurmError,
                             "SLURM's client commands are needed on this machine")


def _message(result: subprocess.CompletedProcess) -> str:
    return batch.command_message(result)


def read_limits(env: Mapping[str, str] | None = None) -> ClusterLimits:
    """``MaxArraySize``, ``MaxJobCount`` and the accounting type from ``scontrol show
    config``; where accounting exists, the user's ``MaxSubmitJobs`` from ``sacctmgr``."""
    result = _run(["scontrol", "show", "config"], env)
    if result.returncode != 0:
        raise SlurmError(f"`scontrol show config` failed: {_message(result)}")
    config = dict(re.findall(r"^(\w+)\s*=\s*(.*?)\s*$", result.stdout, re.MULTILINE))
    accounting = config.get("AccountingStorageType", "accounting_storage/none") \
        != "accounting_storage/none"
    return ClusterLimits(
        max_array_size=_config_int(config, "MaxArraySize", 1001),
        max_job_count=_config_int(config, "MaxJobCount", 10000),
        accounting=accounting,
        max_submit_jobs=_max_submit_jobs(env) if accounting else None)


def _config_int(config: Mapping[str, str], key: str, default: int) -> int:
    match = re.match(r"\d+", config.get(key, ""))
    return int(match.group()) if match else default


def _max_submit_jobs(env: Mapping[str, str] | None) -> int | None:
    """The smallest ``MaxSubmitJobs`` of the user's associations (``None``: unlimited or
    not readable; sbatch still refuses what is over it, with a message we pass on)."""
    user = os.environ.get("USER") or str(os.getuid())
    result = _run(["sacctmgr", "--noheader", "--parsable2", "show", "associations",
                   f"where user={user}", "format=MaxSubmitJobs"], env)
    values = [int(v) for v in result.stdout.split() if v.isdigit()]
    return min(values) if result.returncode == 0 and values else None


_KEY_HINTS = (  # sbatch's message -> the entry's key it is about
    ("partition", "partition"), ("account", "account"), ("qos", "qos"),
    ("time limit", "time"), ("--time", "time"), ("memory", "memory"), ("--mem", "memory"),
)


def _submit_error(settings: SlurmSettings, result: subprocess.CompletedProcess) -> SlurmError:
    """sbatch's refusal as an error that names the entry's key it is about."""
    return batch.refusal(settings, _message(result), _KEY_HINTS, "sbatch",  # type: ignore
                         "sbatch_options", _ENTRY, SlurmError)


class SlurmJobs:
    """The jobs of one run: submit, poll, cancel, close.

    ``command`` is the worker command line (with :data:`INDEX` where the worker's index
    goes); ``secret`` the pool's secret, which workers read as a hex line on stdin.
    ``poll_interval``: :meth:`poll` asks SLURM at most once per interval and answers from
    the last answer in between, however often and for however many jobs it is called.
    ``environ``: the environment of the SLURM commands (default: this process's, read
    now), e.g. with ``SLURM_CONF`` naming another cluster's configuration.
    """

    def __init__(self, settings: SlurmSettings, command: Sequence[str], secret: bytes, *,
                 run_id: str | None = None, poll_interval: float = 5.0,
                 environ: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self.command = list(command)
        # The job name finds the run's jobs in squeue: unique per controller.
        self.run_id = run_id or time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)
        self.job_name = f"pydron-{self.run_id}"
        self.poll_interval = poll_interval
        self.environ = dict(os.environ if environ is None else environ)
        self.work_dir = batch.private_dir(settings.work_dir, self.run_id,
                                          Path.home() / ".pydron" / "slurm")
        self.secret_file = batch.write_secret(self.work_dir, secret)
        self.script = self.work_dir / "job.sh"
        self.script.write_text(render_job_script(
            settings, self.command, self.secret_file, self.job_name))
        self.step_script = self.work_dir / "step.sh"
        self.step_script.write_text(render_step_script(settings, self.command,
                                                       self.secret_file))
        self._jobs: dict[JobId, _Job] = {}
        self._next_number = 0
        self._limits: ClusterLimits | None = None
        self._last_poll: float | None = None
        self._closed = False

    # ------------------------------------------------------------------ files

    def log_path(self, job: JobId) -> Path:
        """The job's log (stdout and stderr of the script and its workers; for a step
        task 0's, the others are ``step-<allocation>.<step>-<task>.log``)."""
        if job.step:
            return next(iter(sorted(self.work_dir.glob(f"step-{job.job}.*-{job.task}-0.log"))),
                        self.work_dir / f"step-{job.job}-{job.task}-0.log")
        return self.work_dir / f"job-{job.job}_{job.task}.log"

    # ------------------------------------------------------------------ queries

    @property
    def in_allocation(self) -> bool:
        return self.settings.in_allocation(self.environ)

    def limits(self) -> ClusterLimits:
        """The cluster's limits, read once per controller."""
        if self._limits is None:
            self._limits = read_limits(self.environ)
        return self._limits

    def jobs(self) -> dict[JobId, JobStatus]:
        """Every job of the run and its state at the last poll (no SLURM command)."""
        return {job.id: job.status for job in self._jobs.values()}

    def active(self) -> list[JobId]:
        """Jobs not known to have ended."""
        return [job.id for job in self._jobs.values() if not job.status.state.ended]

    def _active_size(self) -> int:
        return sum(job.size for job in self._jobs.values() if not job.status.state.ended)

    def cancelled_here(self, job: JobId) -> bool:
        """Whether this run cancelled the job (its CANCELLED is then no loss)."""
        return self._jobs[job].cancelled

    def workers_of(self, job: JobId) -> range:
        """The worker indexes a job runs."""
        record = self._jobs[job]
        if record.step:
            return range(record.number * self.settings.cores,
                         record.number * self.settings.cores + record.workers)
        first = record.number * self.settings.cores
        return range(first, first + self.settings.cores)

    def room(self) -> int:
        """How many more jobs may be submitted now: ``jobs`` (and the cluster's
        ``MaxJobCount`` and the user's ``MaxSubmitJobs``, where known) minus the active
        ones (as of the last poll)."""
        cap = self.settings.jobs
        if not self.in_allocation:
            limits = self.limits()
            cap = min(cap, limits.max_job_count, limits.max_submit_jobs or cap)
        return max(0, cap - self._active_size())

    # ------------------------------------------------------------------ submit

    def submit(self, count: int) -> list[JobId]:
        """Ask for ``count`` more jobs (fewer if :meth:`room` says so): one ``sbatch
        --array`` per chunk of at most ``MaxArraySize`` tasks, or inside an allocation one
        ``srun`` step of ``count * cores`` workers. Returns the new jobs' ids."""
        if self._closed:
            raise SlurmError("the SLURM jobs of this run are closed")
        count = min(count, self.room())
        if count <= 0:
            return []
        if self.in_allocation:
            return [self._start_step(count)]
        new: list[JobId] = []
        size = max(1, self.limits().max_array_size)
        for chunk in batch.chunks(count, size):
            new.extend(self._submit_array(chunk))
        return new

    def _submit_array(self, count: int) -> list[JobId]:
        base = self._next_number
        result = _run(["sbatch", "--parsable", f"--array=0-{count - 1}",
                       f"--output={self.work_dir / 'job-%A_%a.log'}", str(self.script),
                       str(base)], self.environ)
        if result.returncode != 0:
            raise _submit_error(self.settings, result)
        try:
            array = int(result.stdout.strip().split(";")[0])
        except ValueError:
            raise SlurmError(f"sbatch answered {result.stdout.strip()!r}, not a job id") from None
        self._next_number += count
        ids = [JobId(array, task) for task in range(count)]
        for task, job in enumerate(ids):
            self._jobs[job] = _Job(job, base + task)
        log.info("slurm: submitted array %d (%d jobs of %d workers)", array, count,
                 self.settings.cores)
        return ids

    def _start_step(self, count: int) -> JobId:
        """Workers as one ``srun`` step in the current allocation, each task a worker."""
        allocation = int(self.environ.get("SLURM_JOB_ID", "0") or 0)
        number = self._next_number
        self._next_number += count
        workers = count * self.settings.cores
        job = JobId(allocation, number, step=True)
        log_pattern = self.work_dir / f"step-%j.%s-{number}-%t.log"
        argv = ["srun", f"--ntasks={workers}", "--cpus-per-task=1", f"--job-name={self.job_name}",
                "--kill-on-bad-exit=0", f"--output={log_pattern}", "--input=none",
                "bash", str(self.step_script), str(number * self.settings.cores)]
        with open(self.work_dir / f"srun-{number}.err", "wb") as err:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=err, env=self.environ, start_new_session=True)
        self._jobs[job] = _Job(job, number, JobStatus(JobState.RUNNING, raw="srun"),
                               proc=proc, workers=workers, size=count)
        return job

    # ------------------------------------------------------------------ poll

    def poll(self, force: bool = False) -> dict[JobId, JobStatus]:
        """Every job's state: from one ``squeue`` call for all of them, at most once per
        ``poll_interval`` (``force`` asks now). Jobs that left the queue are looked up
        once, with one ``sacct`` call where accounting exists, else from their logs."""
        now = time.monotonic()
        if (not force and self._last_poll is not None
                and now - self._last_poll < self.poll_interval):
            return self.jobs()
        self._last_poll = now
        self._poll_steps()
        waiting = [j for j in self._jobs.values() if not j.step and not j.status.state.ended]
        if waiting:
            self._poll_queue(waiting)
        return self.jobs()

    def _poll_queue(self, waiting: list[_Job]) -> None:
        rows = self._squeue()
        if rows is None:
            return  # squeue failed: keep the last states (logged)
        gone: list[_Job] = []
        for job in waiting:
            status = rows.get(job.id)
            if status is None:
                gone.append(job)
            else:
                job.seen = True
                job.status = status
        if gone:
            self._resolve_gone(gone)

    def _squeue(self) -> dict[JobId, JobStatus] | None:
        """One squeue call for all the run's jobs (by the run's job name), one line per
        array task, recently ended ones included (``--states=all``)."""
        result = _run(["squeue", "--noheader", "--array", "--states=all",
                       f"--name={self.job_name}", "--format=%F|%K|%T|%r"], self.environ)
        if result.returncode != 0:
            log.warning("slurm: squeue failed, job states not updated: %s", _message(result))
            return None
        rows: dict[JobId, JobStatus] = {}
        for line in result.stdout.splitlines():
            parts = line.strip().split("|")
            if len(parts) != 4 or not parts[0].isdigit() or not parts[1].isdigit():
                continue
            reason = "" if parts[3] in ("None", "(null)") else parts[3]
            rows[JobId(int(parts[0]), int(parts[1]))] = JobStatus(
                job_state(parts[2]), reason, parts[2])
        return rows

    def _resolve_gone(self, gone: list[_Job]) -> None:
        """Jobs squeue no longer lists: one sacct call (with accounting), else each log's
        exit line; a job we cancelled is CANCELLED whatever its log says."""
        found = self._sacct([job.id for job in gone]) if self.limits().accounting else {}
        for job in gone:
            if job.cancelled:
                job.status = JobStatus(JobState.CANCELLED, raw="cancelled by this run")
            elif job.id in found:
                job.status = found[job.id]
            else:
                job.status = self._status_from_log(job.id)

    def _sacct(self, ids: list[JobId]) -> dict[JobId, JobStatus]:
        result = _run(["sacct", "--noheader", "--parsable2", "--allocations",
                       f"--jobs={','.join(str(i) for i in ids)}", "--format=JobID,State"],
                      self.environ)
        found: dict[JobId, JobStatus] = {}
        for line in result.stdout.splitlines() if result.returncode == 0 else []:
            match = re.fullmatch(r"(\d+)_(\d+)\|(.+)", line.strip())
            if match:
                found[JobId(int(match[1]), int(match[2]))] = JobStatus(
                    job_state(match[3]), raw=match[3])
        return found

    def _status_from_log(self, job: JobId) -> JobStatus:
        return batch.status_from_log(self.log_path(job))

    def _poll_steps(self) -> None:
        for job in self._jobs.values():
            if job.proc is None or job.status.state.ended:
                continue
            code = job.proc.poll()
            if code is None:
                continue
            if job.cancelled:
                state = JobState.CANCELLED
            else:
                state = JobState.COMPLETED if code == 0 else JobState.FAILED
            job.status = JobStatus(state, raw=f"srun exit {code}")

    # ------------------------------------------------------------------ cancel

    def cancel(self, ids: Iterable[JobId] | None = None) -> None:
        """End the given jobs, or all of the run's (one ``scancel`` call; srun steps are
        ended by signalling their srun, which takes the step's tasks with it)."""
        chosen = [self._jobs[i] for i in ids] if ids is not None else list(self._jobs.values())
        chosen = [job for job in chosen if not job.status.state.ended]
        for job in chosen:
            job.cancelled = True
        arrays = [job for job in chosen if not job.step]
        if arrays:
            if ids is None:  # the whole arrays, pending tasks included
                targets = sorted({str(job.id.job) for job in arrays})
            else:
                targets = [str(job.id) for job in arrays]
            result = _run(["scancel", *targets], self.environ)
            if result.returncode != 0:
                log.warning("slurm: scancel %s: %s", " ".join(targets), _message(result))
        for job in chosen:
            if job.proc is not None:
                _stop_step(job.proc)
        self._last_poll = None  # the next poll asks SLURM

    def close(self) -> None:
        """Cancel every job of the run and remove the secret (job scripts and logs stay,
        for a person to read). The launcher calls this at exit and on SIGTERM; twice is
        harmless."""
        if self._closed:
            return
        self._closed = True
        try:
            self.cancel()
        finally:
            try:
                self.secret_file.unlink()
            except FileNotFoundError:
                pass


def _stop_step(proc: subprocess.Popen) -> None:
    """End an srun step: SIGTERM to srun (it forwards it to every task), then, if srun is
    still there after a few seconds, SIGKILL (slurmd then kills the tasks)."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
