"""Grid Engine jobs for remote workers: settings, job scripts, submission, polling, cancellation.

A ``{"type": "sge"}`` entry in ``pydron.conf`` runs workers as tasks of Grid Engine array
jobs (Son of Grid Engine, Open/Altair Grid Engine, Univa: the ``qsub`` family). This
module is the job controller a launcher drives
(:class:`~pydron.backend.launchers.batch_jobs.JobController`); it knows Grid Engine and
nothing of the engine. It mirrors :mod:`~pydron.backend.launchers.slurm_jobs`, and differs
where Grid Engine does:

* array task ids are **1-based** (``qsub -t 1-N``): a :class:`JobId` is ``(job, task)``
  with ``task`` the task id Grid Engine shows (``"123.4"`` is what qstat, qdel and qacct
  write), and task ``t`` of an array submitted with base ``B`` is the run's job number
  ``B + t - 1``, which runs workers ``number * cores .. number * cores + cores - 1``;
* one submission may hold at most ``max_aj_tasks`` tasks and a user at most
  ``max_u_jobs`` jobs, where *an array counts as one job* (both from ``qconf -sconf``;
  0 there means no limit);
* ``qstat -xml`` lists the user's jobs (there is no filter by name), with pending tasks
  folded into ranges (``"3-5:1"``, ``"1,2"``);
* a job that cannot start (its log path cannot be created, its shell is missing) sits in
  the queue in the error state ``Eqw`` for ever: it is FAILED here, and deleted with the
  next ``qdel`` so that it does not hold a place of the user's ``max_u_jobs``;
* the log path goes on qsub's command line (``-o``), as a ``#$`` line cannot quote it.
  Grid Engine reads ``-o [host:]path``, so ``work_dir`` must not contain a colon.

Running workers inside an existing Grid Engine parallel job (``qrsh -inherit``, the
analogue of ``srun`` steps in a SLURM allocation) is not supported yet:
:meth:`SgeSettings.in_allocation` is always false, and workers always come as new jobs.

Every Grid Engine command goes through :func:`_run` (``subprocess.run``), so that a test
can count them. The module installs nothing global: the launcher calls
:meth:`SgeJobs.close` at exit and on SIGTERM.
"""
from __future__ import annotations

import logging
import os
import pwd
import re
import secrets
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydron.backend.launchers import batch_jobs as batch
from pydron.backend.launchers.batch_jobs import (
    EXIT_MARKER, INDEX, JobId, JobState, JobStatus, worker_loop,
)
from pydron.errors import PydronError

__all__ = [
    "SgeError", "SgeSettings", "JobState", "JobId", "JobStatus", "ClusterLimits",
    "SgeJobs", "CHECKS", "render_job_script", "worker_argv", "job_state", "INDEX", "EXIT_MARKER",
]

log = logging.getLogger("pydron.backend")

_ENTRY = "sge entry"
MAX_JOBS = 100_000
MAX_CORES = 1024
ACCOUNTING_GRACE = 20.0
"""How long a killed job that left the queue waits for its accounting record (Grid
Engine's default ``flush_time`` is 15 s) before its log alone decides: FAILED."""
SEPARATOR = "."
"""How Grid Engine writes a task of an array: ``123.4``."""


class SgeError(PydronError):
    """Grid Engine refused or failed a request; the message names the entry's key at fault
    (if one is) and quotes the Grid Engine command's own message."""


# --------------------------------------------------------------------------- settings


_TIME = re.compile(r"\d+(:\d+){0,2}")
_MEMORY = re.compile(r"\d+(\.\d+)?[KMGTkmgt]?")


MAX_TIME_SECONDS = 30 * 24 * 3600
MAX_MEMORY_BYTES = 1 << 50


def _time(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 < value <= MAX_TIME_SECONDS:
            raise ValueError(f"a time limit in seconds from 1 to {MAX_TIME_SECONDS} "
                             '(30 days), or "H:MM:SS"')
        return str(value)  # seconds, as Grid Engine reads a bare number
    if not isinstance(value, str) or not _TIME.fullmatch(value):
        raise ValueError('a Grid Engine time limit (h_rt): seconds or "H:MM:SS"')
    return value


def _memory(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 < value <= MAX_MEMORY_BYTES:
            raise ValueError(f"bytes from 1 to {MAX_MEMORY_BYTES}, or \"4G\", \"500M\"")
        return str(value)  # bytes, as Grid Engine reads a bare number
    if not isinstance(value, str) or not _MEMORY.fullmatch(value):
        raise ValueError('memory per slot as Grid Engine writes it: "4G", "500M"')
    return value


@dataclass(frozen=True)
class SgeSettings:
    """The keys of a ``{"type": "sge"}`` entry.

    ``jobs`` is the most jobs (array tasks) the run holds at once, ``cores`` the workers
    each job runs. With a ``parallel_environment`` (the name of a PE with
    ``allocation_rule $pe_slots``, usually ``smp``) and ``cores > 1`` a job asks for
    ``-pe NAME cores`` slots on one host; without one it holds one slot whatever its
    ``cores`` (many sites have no PE for plain users: ask the admins). ``queue`` becomes
    ``-q``, ``time`` ``-l h_rt=`` (the hard wall-clock limit), ``memory`` ``-l h_vmem=``:
    the limit Grid Engine enforces (and which sites usually make consumable, so that it
    also steers scheduling), *per slot*, so a job with a PE may use ``cores`` times as
    much. h_vmem limits virtual memory, which Python with threads or numpy reserves
    generously: give room, or use ``qsub_options`` (``"-l mem_free=4G"``) where the site
    schedules on ``mem_free``. ``qsub_options`` adds any other ``#$`` lines. ``setup`` is
    shell code run in each job before the workers start; a failing line fails the job.
    Jobs get Grid Engine's default environment (qsub without ``-V``: exported shell
    functions upset some versions), so ``setup`` is also where variables are set.
    ``python``, ``address``, ``work_dir`` (on a file system the compute nodes share;
    no colon: qsub's ``-o`` reads ``host:path``), ``idle_timeout``,
    ``max_resubmissions`` and ``poll_interval`` are as for SLURM.
    """

    jobs: int = 1
    cores: int = 1
    queue: str | None = None
    parallel_environment: str | None = None
    qsub_options: tuple[str, ...] = ()
    time: str | None = None
    memory: str | None = None
    setup: tuple[str, ...] = ()
    python: str = field(default_factory=lambda: sys.executable)
    address: str | None = None
    idle_timeout: float = 60.0
    max_resubmissions: int = 3
    work_dir: str | None = None
    poll_interval: float = 5.0

    @classmethod
    def from_entry(cls, entry: Mapping[str, object]) -> "SgeSettings":
        """The settings of an entry as written in pydron.conf (``type`` is ignored);
        :class:`ConfigError` names the first key that is unknown or invalid."""
        return batch.settings_from_entry(cls, entry, CHECKS, _ENTRY)

    def in_allocation(self, environ: Mapping[str, str] = os.environ) -> bool:
        """Always false: starting workers inside a running parallel job (``qrsh
        -inherit``) is not supported yet, so workers always come as new jobs."""
        return False

    def resolve_address(self) -> str:
        """The address compute nodes connect back to (see
        :func:`~pydron.backend.launchers.batch_jobs.resolve_address`)."""
        return batch.resolve_address(self.address, _ENTRY)


CHECKS: dict[str, batch.Check] = {
    "jobs": batch.integer(1, MAX_JOBS),
    "cores": batch.integer(1, MAX_CORES),
    "queue": batch.word, "parallel_environment": batch.word,
    "qsub_options": batch.options("qsub", "-l gpu=1"),
    "time": _time, "memory": _memory,
    "setup": batch.lines,
    "python": batch.path,
    "address": batch.word,
    "idle_timeout": batch.seconds,
    "max_resubmissions": batch.integer(0, 1000),
    "work_dir": batch.path,
    "poll_interval": lambda v: batch.seconds(v, 0.05),
}


def worker_argv(settings: SgeSettings, port: int, *extra: str) -> list[str]:
    """The worker command line a launcher would give :class:`SgeJobs`: the worker program
    on the compute node, connecting back to ``address:port``, with the index placeholder."""
    return [settings.python, "-m", "pydron.backend.worker", "--host",
            settings.resolve_address(), "--port", str(port), "--index", INDEX, *extra]


# --------------------------------------------------------------------------- scripts


def _directives(settings: SgeSettings, job_name: str) -> list[str]:
    """The ``#$`` lines: the job's name, bash as its shell (whatever the queue's
    ``shell``), stderr into the log, and the entry's resources. (The log path goes on
    qsub's command line instead: a directive cannot quote a path with spaces.)"""
    lines = [f"-N {job_name}", "-S /bin/bash", "-j y"]
    if settings.queue is not None:
        lines.append(f"-q {settings.queue}")
    if settings.parallel_environment is not None and settings.cores > 1:
        lines.append(f"-pe {settings.parallel_environment} {settings.cores}")
    if settings.time is not None:
        lines.append(f"-l h_rt={settings.time}")
    if settings.memory is not None:
        lines.append(f"-l h_vmem={settings.memory}")
    lines.extend(settings.qsub_options)
    return [f"#$ {line}" for line in lines]


def render_job_script(settings: SgeSettings, command: Sequence[str], secret_file: Path,
                      job_name: str) -> str:
    """The job script of one array: ``qsub -t 1-N script BASE``. Task ``t`` (1-based) is
    the run's job number ``BASE + t - 1`` and runs workers ``number * cores + i`` for
    ``i`` below ``cores``, each with the secret on stdin (and started again after the
    engine ended it: :func:`~pydron.backend.launchers.batch_jobs.worker_loop`). The job's
    exit status is the first failing worker's; its last log line is :data:`EXIT_MARKER`
    with that status."""
    cores = settings.cores
    return "\n".join([
        "#!/bin/bash",
        *_directives(settings, job_name),
        "# Pydron workers: written by pydron.backend.launchers.sge_jobs for one run.",
        f"trap 'echo \"{EXIT_MARKER} $?\"' EXIT",
        'PYDRON_JOB_NUMBER=$(( ${1:?job number base} + ${SGE_TASK_ID:-1} - 1 ))',
        "export PYDRON_JOB_NUMBER",
        'echo "pydron-job: number $PYDRON_JOB_NUMBER, Grid Engine job ${JOB_ID:-?}.'
        '${SGE_TASK_ID:-?} on $(hostname)"',
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


# --------------------------------------------------------------------------- job states


def job_state(text: str) -> JobState:
    """A state as qstat writes it (letters: ``qw``, ``hqw``, ``r``, ``t``, ``Rr``,
    ``dr``, ``Eqw``, ``s``, ``S``, ``T`` ...). An error state is FAILED (the job will
    never start); a job being deleted counts as running until it leaves the queue
    (its workers may still be there); suspended ones are pending (not serving, not
    over); running or being sent to its host is RUNNING; anything else pending."""
    letters = text.strip()
    if "E" in letters:
        return JobState.FAILED
    if "d" in letters:
        return JobState.RUNNING
    if any(c in letters for c in "sST"):
        return JobState.PENDING
    if "r" in letters or "t" in letters:
        return JobState.RUNNING
    return JobState.PENDING


_REASONS = {"h": "held", "q": "queued", "w": "waiting", "E": "error state", "s": "suspended",
            "S": "queue suspended", "T": "suspended by threshold"}


def _reason(letters: str, state: JobState) -> str:
    """qstat gives no reason without a call per job (``qstat -j``): the state's letters
    spelled out, for a pending or failed job only."""
    if state is JobState.RUNNING:
        return ""
    if state is JobState.FAILED:
        return "error state: the job cannot start (see `qstat -j` or its log)"
    return ", ".join(_REASONS[c] for c in letters if c in _REASONS)


def task_ids(text: str | None) -> list[int]:
    """The task ids of a qstat line: ``"4"``, ``"3-5:1"``, ``"1,2"``, ``"1-7:2,9"``;
    ``None`` or empty (a job that is no array): task 1, as Grid Engine counts it."""
    if not text or not text.strip():
        return [1]
    found: list[int] = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)(?:-(\d+)(?::(\d+))?)?\s*", part)
        if not match:
            continue
        first = int(match[1])
        last = int(match[2]) if match[2] else first
        step = int(match[3]) if match[3] else 1
        found.extend(range(first, last + 1, max(step, 1)))
    return found


@dataclass(frozen=True)
class ClusterLimits:
    """What ``qconf -sconf`` says about how many jobs may be had (0: no limit):
    ``max_aj_tasks`` tasks per array, ``max_u_jobs`` jobs of the user and ``max_jobs``
    in the cluster, where an array counts as one job; ``accounting``: finished jobs are
    in ``qacct`` (``reporting_params accounting=true``)."""

    max_aj_tasks: int = 75000
    max_u_jobs: int = 0
    max_jobs: int = 0
    accounting: bool = True

    @property
    def max_arrays(self) -> int | None:
        """The most arrays (jobs, to Grid Engine) the run may hold; ``None``: no limit."""
        known = [v for v in (self.max_u_jobs, self.max_jobs) if v > 0]
        return min(known) if known else None


@dataclass
class _Job:
    id: JobId
    number: int  # the run's job number: workers number*cores .. number*cores+cores-1
    status: JobStatus = JobStatus(JobState.PENDING)
    seen: bool = False  # qstat listed it at least once
    cancelled: bool = False  # we cancelled it
    delete: bool = False  # in the error state: to be deleted (not a cancel of ours)
    gone_since: float | None = None  # when qstat first no longer listed it


# --------------------------------------------------------------------------- commands


def _run(argv: Sequence[str], env: Mapping[str, str] | None = None,
         timeout: float = 60.0) -> subprocess.CompletedProcess:
    """Run one Grid Engine command (every call goes through here; the tests count them)."""
    return batch.run_command(argv, env, timeout, SgeError,
                             "Grid Engine's client commands are needed on this machine, "
                             "with SGE_ROOT and SGE_CELL set")


def _message(result: subprocess.CompletedProcess) -> str:
    return batch.command_message(result, ("Exiting.",))


def parse_config(text: str) -> dict[str, str]:
    """``qconf -sconf``'s ``name value`` lines (a value continued with ``\\`` joined)."""
    joined = re.sub(r"\s*\\\n\s*", " ", text)
    config: dict[str, str] = {}
    for line in joined.splitlines():
        parts = line.strip().split(None, 1)
        if len(parts) == 2 and not parts[0].startswith("#"):
            config[parts[0]] = parts[1].strip()
    return config


def read_limits(env: Mapping[str, str] | None = None) -> ClusterLimits:
    """The cluster's limits from ``qconf -sconf`` (the global configuration)."""
    result = _run(["qconf", "-sconf"], env)
    if result.returncode != 0:
        raise SgeError(f"`qconf -sconf` failed: {_message(result)}")
    config = parse_config(result.stdout)
    reporting = config.get("reporting_params", "accounting=true").lower()
    return ClusterLimits(
        max_aj_tasks=_config_int(config, "max_aj_tasks", 75000),
        max_u_jobs=_config_int(config, "max_u_jobs", 0),
        max_jobs=_config_int(config, "max_jobs", 0),
        accounting="accounting=false" not in reporting)


def _config_int(config: Mapping[str, str], key: str, default: int) -> int:
    match = re.match(r"\d+", config.get(key, ""))
    return int(match.group()) if match else default


_KEY_HINTS = (  # qsub's message -> the entry's key it is about (first match wins)
    ("parallel environment", "parallel_environment"), ("queue", "queue"),
    ("h_rt", "time"), ("h_vmem", "memory"),
)


def _submit_error(settings: SgeSettings, result: subprocess.CompletedProcess) -> SgeError:
    """qsub's refusal as an error that names the entry's key it is about."""
    return batch.refusal(settings, _message(result), _KEY_HINTS, "qsub",  # type: ignore
                         "qsub_options", _ENTRY, SgeError)


def _user() -> str:
    """The user whose jobs qstat lists (qstat's ``-u``)."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return os.environ.get("USER") or str(os.getuid())


def parse_qstat_xml(text: str, job_name: str) -> dict[JobId, JobStatus]:
    """The tasks of ``qstat -xml`` named ``job_name`` (running ones one per entry, pending
    ones folded into a range in ``<tasks>``)."""
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError as exc:
        raise SgeError(f"qstat -xml answered what is not XML ({exc})") from None
    rows: dict[JobId, JobStatus] = {}
    for entry in root.iter("job_list"):
        if (entry.findtext("JB_name") or "") != job_name:
            continue
        number = (entry.findtext("JB_job_number") or "").strip()
        if not number.isdigit():
            continue
        letters = (entry.findtext("state") or "").strip()
        state = job_state(letters)
        status = JobStatus(state, _reason(letters, state), letters)
        for task in task_ids(entry.findtext("tasks")):
            rows[JobId(int(number), task, separator=SEPARATOR)] = status
    return rows


def parse_qacct(text: str) -> dict[JobId, JobStatus]:
    """``qacct -j``'s records (blocks of ``name value`` lines between ``=====`` lines):
    ``failed`` 0 and ``exit_status`` 0 is COMPLETED; ``failed`` naming only the time
    limit TIMEOUT; anything else FAILED, with qacct's words in ``raw``."""
    found: dict[JobId, JobStatus] = {}
    for block in re.split(r"^=+\s*$", text, flags=re.MULTILINE):
        fields = parse_config(block)
        number, task = fields.get("jobnumber", ""), fields.get("taskid", "")
        if not number.isdigit():
            continue
        task_id = int(task) if task.isdigit() else 1  # "undefined": not an array
        failed = fields.get("failed", "0")
        exit_status = fields.get("exit_status", "0").split()[0] if fields.get(
            "exit_status") else "0"
        if failed.split()[0] == "0" and exit_status == "0":
            state = JobState.COMPLETED
        elif re.search(r"\b[hs]_rt\b", failed) and "vmem" not in failed:
            state = JobState.TIMEOUT
        else:  # 37 "qmaster enforced h_rt, h_cpu, or h_vmem limit" is any of them
            state = JobState.FAILED
        found[JobId(int(number), task_id, separator=SEPARATOR)] = JobStatus(
            state, raw=f"failed {failed}, exit_status {exit_status} (qacct)")
    return found


# --------------------------------------------------------------------------- controller


class SgeJobs:
    """The jobs of one run: submit, poll, cancel, close.

    ``command`` is the worker command line (with :data:`INDEX` where the worker's index
    goes); ``secret`` the pool's secret, which workers read as a hex line on stdin.
    ``poll_interval`` (default: the settings'): :meth:`poll` asks Grid Engine at most once
    per interval and answers from the last answer in between, however often and for
    however many jobs it is called. ``environ``: the environment of the Grid Engine
    commands (default: this process's, read now), e.g. with ``SGE_ROOT``/``SGE_CELL``
    naming another cell.
    """

    def __init__(self, settings: SgeSettings, command: Sequence[str], secret: bytes, *,
                 run_id: str | None = None, poll_interval: float | None = None,
                 environ: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self.command = list(command)
        # The job name finds the run's jobs in qstat and qacct: unique per controller.
        self.run_id = run_id or time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)
        self.job_name = f"pydron-{self.run_id}"
        self.poll_interval = settings.poll_interval if poll_interval is None else poll_interval
        self.environ = dict(os.environ if environ is None else environ)
        self.work_dir = batch.private_dir(settings.work_dir, self.run_id,
                                          Path.home() / ".pydron" / "sge")
        self.secret_file = batch.write_secret(self.work_dir, secret)
        self.script = self.work_dir / "job.sh"
        self.script.write_text(render_job_script(
            settings, self.command, self.secret_file, self.job_name))
        self._jobs: dict[JobId, _Job] = {}
        self._next_number = 0
        self._limits: ClusterLimits | None = None
        self._last_poll: float | None = None
        self._closed = False

    # ------------------------------------------------------------------ files

    def log_path(self, job: JobId) -> Path:
        """The job's log (stdout and stderr of the script and its workers)."""
        return self.work_dir / f"job-{job.job}.{job.task}.log"

    # ------------------------------------------------------------------ queries

    def limits(self) -> ClusterLimits:
        """The cluster's limits, read once per controller."""
        if self._limits is None:
            self._limits = read_limits(self.environ)
        return self._limits

    def jobs(self) -> dict[JobId, JobStatus]:
        """Every job of the run and its state at the last poll (no Grid Engine command)."""
        return {job.id: job.status for job in self._jobs.values()}

    def active(self) -> list[JobId]:
        """Jobs not known to have ended."""
        return [job.id for job in self._jobs.values() if not job.status.state.ended]

    def cancelled_here(self, job: JobId) -> bool:
        """Whether this run cancelled the job (its CANCELLED is then no loss)."""
        return self._jobs[job].cancelled

    def workers_of(self, job: JobId) -> range:
        """The worker indexes a job runs (the script's ``number * cores + i``)."""
        first = self._jobs[job].number * self.settings.cores
        return range(first, first + self.settings.cores)

    def _arrays_left(self) -> int | None:
        """How many more arrays may be submitted under ``max_u_jobs``/``max_jobs``
        (``None``: no limit). Other jobs of the user count too, but are not known here:
        qsub then refuses, with a message passed on."""
        most = self.limits().max_arrays
        if most is None:
            return None
        held = {job.id.job for job in self._jobs.values() if not job.status.state.ended}
        return max(0, most - len(held))

    def room(self) -> int:
        """How many more jobs may be submitted now: ``jobs`` minus the active ones (as of
        the last poll), and no more than the arrays still allowed can hold."""
        room = max(0, self.settings.jobs - len(self.active()))
        arrays = self._arrays_left()
        if arrays is not None:
            per_array = self.limits().max_aj_tasks or room
            room = min(room, arrays * per_array)
        return room

    # ------------------------------------------------------------------ submit

    def submit(self, count: int) -> list[JobId]:
        """Ask for ``count`` more jobs (fewer if :meth:`room` says so): one ``qsub -t``
        per chunk of at most ``max_aj_tasks`` tasks. Returns the new jobs' ids."""
        if self._closed:
            raise SgeError("the Grid Engine jobs of this run are closed")
        count = min(count, self.room())
        if count <= 0:
            return []
        size = self.limits().max_aj_tasks or count
        new: list[JobId] = []
        for chunk in batch.chunks(count, size):
            new.extend(self._submit_array(chunk))
        return new

    def _submit_array(self, count: int) -> list[JobId]:
        base = self._next_number
        log_pattern = self.work_dir / "job-$JOB_ID.$TASK_ID.log"
        result = _run(["qsub", "-terse", "-t", f"1-{count}", "-o", str(log_pattern),
                       str(self.script), str(base)], self.environ)
        if result.returncode != 0:
            raise _submit_error(self.settings, result)
        match = re.match(r"\s*(\d+)", result.stdout)
        if match is None:
            raise SgeError(f"qsub answered {result.stdout.strip()!r}, not a job id")
        array = int(match[1])
        self._next_number += count
        ids = [JobId(array, task, separator=SEPARATOR) for task in range(1, count + 1)]
        for job in ids:
            self._jobs[job] = _Job(job, base + job.task - 1)
        log.info("sge: submitted array %d (%d jobs of %d workers)", array, count,
                 self.settings.cores)
        return ids

    # ------------------------------------------------------------------ poll

    def poll(self, force: bool = False) -> dict[JobId, JobStatus]:
        """Every job's state: from one ``qstat`` call for all of them, at most once per
        ``poll_interval`` (``force`` asks now). Jobs that left the queue are looked up
        once, with one ``qacct`` call where accounting exists, else from their logs."""
        now = time.monotonic()
        if (not force and self._last_poll is not None
                and now - self._last_poll < self.poll_interval):
            return self.jobs()
        self._last_poll = now
        waiting = [j for j in self._jobs.values() if not j.status.state.ended]
        if waiting:
            self._poll_queue(waiting)
        self._delete_failed()
        return self.jobs()

    def _poll_queue(self, waiting: list[_Job]) -> None:
        rows = self._qstat()
        if rows is None:
            return  # qstat failed: keep the last states (logged)
        gone: list[_Job] = []
        for job in waiting:
            status = rows.get(job.id)
            if status is None:
                gone.append(job)
                continue
            job.seen = True
            job.status = status
            if status.state is JobState.FAILED and not job.cancelled:
                job.delete = True  # Eqw: it would wait in the queue for ever
        if gone:
            self._resolve_gone(gone)

    def _qstat(self) -> dict[JobId, JobStatus] | None:
        """One qstat call for all the run's jobs: the user's jobs as XML, those with the
        run's job name kept."""
        result = _run(["qstat", "-xml", "-u", _user()], self.environ)
        if result.returncode != 0:
            log.warning("sge: qstat failed, job states not updated: %s", _message(result))
            return None
        try:
            return parse_qstat_xml(result.stdout, self.job_name)
        except SgeError as exc:
            log.warning("sge: %s; job states not updated", exc)
            return None

    def _resolve_gone(self, gone: list[_Job]) -> None:
        """Jobs qstat no longer lists: one qacct call (with accounting), else each log's
        exit line; a job we cancelled is CANCELLED whatever its log says. A job killed
        (a log without exit line) that qacct does not know yet keeps its last state for up
        to :data:`ACCOUNTING_GRACE` seconds: Grid Engine writes the accounting file only
        every ``flush_time``, and qacct is what tells why a job was killed."""
        found = self._qacct() if self.limits().accounting else {}
        now = time.monotonic()
        for job in gone:
            if job.cancelled:
                job.status = JobStatus(JobState.CANCELLED, raw="cancelled by this run")
            elif job.id in found:
                job.status = found[job.id]
            else:
                status = self._status_from_log(job.id)
                job.gone_since = job.gone_since or now
                if (status.raw != "log without exit line" or not self.limits().accounting
                        or now - job.gone_since >= ACCOUNTING_GRACE):
                    job.status = status

    def _qacct(self) -> dict[JobId, JobStatus]:
        """The run's finished jobs in the accounting file (by job name: one call). A job
        that just ended may not be written there yet (``flush_time``): its log tells."""
        try:
            result = _run(["qacct", "-j", self.job_name], self.environ)
        except SgeError as exc:  # no qacct here: the logs must do
            log.info("sge: %s", exc)
            return {}
        return parse_qacct(result.stdout) if result.returncode == 0 else {}

    def _status_from_log(self, job: JobId) -> JobStatus:
        return batch.status_from_log(self.log_path(job))

    def _delete_failed(self) -> None:
        """Delete the jobs qstat showed in an error state (one ``qdel``): they would never
        start, and would hold a place of the user's ``max_u_jobs``."""
        doomed = [job for job in self._jobs.values() if job.delete]
        if not doomed:
            return
        for job in doomed:
            job.delete = False
        self._qdel([str(job.id) for job in doomed])

    # ------------------------------------------------------------------ cancel

    def _qdel(self, targets: list[str]) -> None:
        result = _run(["qdel", *targets], self.environ)
        if result.returncode != 0:  # e.g. some had ended meanwhile
            log.warning("sge: qdel %s: %s", " ".join(targets), _message(result))

    def cancel(self, ids: Iterable[JobId] | None = None) -> None:
        """End the given jobs, or all of the run's (one ``qdel`` call: whole arrays when
        all are meant, pending tasks included; else ``job.task`` for each)."""
        chosen = [self._jobs[i] for i in ids] if ids is not None else list(self._jobs.values())
        chosen = [job for job in chosen if not job.status.state.ended]
        if not chosen:
            return
        for job in chosen:
            job.cancelled = True
        if ids is None:
            targets = [str(n) for n in sorted({job.id.job for job in chosen})]
        else:
            targets = [str(job.id) for job in chosen]
        self._qdel(targets)
        self._last_poll = None  # the next poll asks Grid Engine

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
