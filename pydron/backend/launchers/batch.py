"""The batch launcher: workers in jobs of a batch scheduler (SLURM, Grid Engine).

The scheduler is reached through a job controller (:class:`~pydron.backend.launchers.
batch_jobs.JobController`: :mod:`~pydron.backend.launchers.slurm_jobs`,
:mod:`~pydron.backend.launchers.sge_jobs`); this module decides *when* to ask for jobs,
which is the same for every scheduler. A batch pool is the worker engine with this
launcher (:mod:`pydron.backend.slurmpool`, :mod:`pydron.backend.sgepool`).

Fair share, the rule every decision follows: a run holds a cluster's resources only
while it has work for them.

* Jobs are submitted only while calls are queued, enough for the calls queued and
  running (``cores`` workers a job), at most ``jobs`` at once; pending jobs are
  cancelled once nothing has been queued for ``idle_timeout``.
* A worker idle for ``idle_timeout`` with nothing queued is told to go (the engine does
  it: :attr:`BatchLauncher.idle_timeout`); a job whose workers have all gone ends by
  itself, and is not replaced until work returns.
* When the pool shuts down (the run ends, ``pydron.shutdown()``, Ctrl-C, SIGTERM: the
  engine's exit hook) every job of the run is cancelled. When the caller dies by SIGKILL,
  nothing here runs: its workers find their connection gone, fail to connect again,
  and end, and so do their jobs (see :func:`~pydron.backend.launchers.batch_jobs.
  worker_loop`).

Workers are not started by :meth:`BatchLauncher.launch` (the launcher offers no slots):
a job's script starts them on its node, and each connects back and is *adopted*
(:meth:`BatchLauncher.adopt`) with a :class:`JobWorker` handle. The engine ends a worker
(a cancelled call, a call past ``call_timeout``, a worker that stopped answering) by
closing its connection; the worker exits and its job starts it again, and it is adopted
anew. A job that fails, is cancelled by someone else, is preempted or loses its node
takes its workers with it: their calls run again elsewhere (within ``max_retries``) and
a new job is submitted in its place, up to ``max_resubmissions`` in the run; past that,
the queued calls fail with an error that names the job, its state and its log.

Threads: the engine calls :meth:`demand`, :meth:`adopt`, :meth:`exited` and
:meth:`blames_call` in its reactor thread; every scheduler command runs in the
launcher's own thread (``pydron-batch``), which wakes once per ``poll_interval``, or
sooner when calls are queued beyond what the jobs can run. State both threads touch is
under ``_lock``.
"""
from __future__ import annotations

import logging
import math
import shlex
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol, TypeVar

from pydron.backend.launchers.base import EngineEvents, exit_on_sigterm, release_when_stopped
from pydron.backend.launchers.local import worker_env
from pydron.backend.launchers.batch_jobs import (
    INDEX, JobController, JobId, JobState, JobStatus,
)
from pydron.backend.reactor import call_soon
from pydron.errors import PydronError

__all__ = ["BatchSettings", "BatchLauncher", "JobWorker", "JobRecord", "with_caller_path"]

_log = logging.getLogger("pydron.backend")

WAKE_INTERVAL = 0.2
"""The least time between two wake-ups of the launcher's thread for more work (a burst
of submits asks the scheduler once)."""
LOG_TAIL = 5
"""Lines of a lost job's log quoted in the error."""


S = TypeVar("S")


class BatchSettings(Protocol):
    """What the launcher reads of a scheduler's settings (``SlurmSettings``,
    ``SgeSettings``)."""

    jobs: int
    cores: int
    python: str
    idle_timeout: float
    max_resubmissions: int
    poll_interval: float

    def resolve_address(self) -> str: ...


class JobWorker:
    """The engine's handle of a worker that a job started (``pid`` 0: it runs on another
    node; the handshake tells its pid). Its end is known here only as the engine or the
    launcher decides it: :meth:`kill` reports it at once, and the engine then closes the
    worker's connection, which ends the process on its node."""

    pid = 0

    def __init__(self, index: int, job: JobId) -> None:
        self.index = index
        self.job = job
        self.returncode: int | None = None
        self._lock = threading.Lock()
        self._ended = threading.Event()
        self._callback: Callable[[int], None] | None = None

    def kill(self) -> None:
        self._finish(-9)

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._ended.wait(timeout):
            raise subprocess.TimeoutExpired(f"worker {self.index}", timeout or 0)
        return self.returncode  # type: ignore[return-value]

    def on_exit(self, callback: Callable[[int], None]) -> Callable[[], None]:
        with self._lock:
            self._callback = callback
            code = self.returncode
        if code is not None:
            call_soon(callback, code)

        def stop() -> None:
            self._callback = None
        return stop

    def _finish(self, code: int) -> None:
        with self._lock:
            if self.returncode is not None:
                return
            self.returncode = code
            callback = self._callback
        self._ended.set()
        if callback is not None:
            call_soon(callback, code)


@dataclass
class JobRecord:
    """What the launcher knows of one job of the run."""

    id: JobId
    workers: range
    status: JobStatus
    reported: str = ""   # the pending reason last logged
    lost: bool = False   # ended without the run asking


class BatchLauncher:
    """Starts workers as jobs of a batch scheduler (see the module's docstring).

    ``make_jobs(command, secret)`` builds the run's :class:`JobController` once the
    engine listens (the worker command line has :data:`INDEX` for the worker's index);
    ``scheduler`` names the scheduler in messages (``"SLURM"``)."""

    wants_demand = True

    def __init__(self, settings: BatchSettings,
                 make_jobs: Callable[[list[str], bytes], JobController],
                 scheduler: str) -> None:
        self.settings = settings
        self.scheduler = scheduler
        self.kind = scheduler.lower()
        self.listen_host = settings.resolve_address()
        self.idle_timeout: float | None = settings.idle_timeout
        self.controller: JobController | None = None
        self._make_jobs = make_jobs
        self._events: EngineEvents | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._failed = ""               # given up: more jobs were lost than allowed
        self._queued = 0                # as the engine last said (reactor thread)
        self._running = 0
        self._last_queued = time.monotonic()
        self._last_wake = 0.0
        self._offered = 0               # workers the live jobs run or will run
        self._records: dict[JobId, JobRecord] = {}
        self._job_of: dict[int, JobRecord] = {}   # worker index -> its job
        self._handles: dict[int, JobWorker] = {}  # worker index -> its adopted handle
        self._gone: set[int] = set()    # workers told to go: their job does not restart them
        self._resubmissions = 0
        self._submitted_once = False
        exit_on_sigterm()  # SIGTERM must cancel the jobs (the engine's exit hook does)

    # ------------------------------------------------------------------ the launcher

    def bind(self, events: EngineEvents) -> None:
        self._events = events

    def capacity(self) -> int:
        return self.settings.jobs * self.settings.cores

    def begin(self, port: int) -> None:
        """Write the run's job script (through the controller) and start polling."""
        assert self._events is not None
        start = self._events.worker_start(-1)
        command = [self.settings.python, "-m", "pydron.backend.worker", "--host",
                   self.listen_host, "--port", str(port), "--index", INDEX, *start.options]
        try:
            self.controller = self._make_jobs(command, start.secret)
        except Exception as exc:
            self._events.failed(f"pydron cannot prepare {self.scheduler} jobs: {exc}")
            return
        self._thread = threading.Thread(target=self._loop, daemon=True,
                                        name=f"pydron-batch-{self.scheduler.lower()}")
        self._thread.start()

    def slots(self) -> Iterable[int]:
        return ()  # workers are adopted as their jobs start them

    def launch(self, start: object) -> JobWorker:
        raise RuntimeError(f"{self.scheduler} workers are started by their jobs")

    def watch_exit(self, process: JobWorker,  # type: ignore[override]
                   callback: Callable[[int], None]) -> Callable[[], None]:
        return process.on_exit(callback)

    def adopt(self, index: int) -> JobWorker | None:
        with self._lock:
            record = self._job_of.get(index)
            if self._closed or record is None or record.status.state.ended or \
                    index in self._gone or index in self._handles:
                return None
            handle = self._handles[index] = JobWorker(index, record.id)
        return handle

    def connected(self, index: int) -> None:
        pass

    def exited(self, index: int, process: object, code: int, *, connected: bool,
               expected: bool) -> None:
        with self._lock:
            if self._handles.get(index) is process:
                del self._handles[index]
            if expected:
                # Told to go (idle, shutdown) or lost with its job: its job does not
                # start it again.
                self._gone.add(index)
        self._wake_soon()

    def blames_call(self, index: int, code: int) -> bool:
        """Not when the worker's job has ended: it went with its job, not its call."""
        with self._lock:
            record = self._job_of.get(index)
            return record is None or not record.status.state.ended

    def demand(self, queued: int, running: int) -> None:
        self._queued, self._running = queued, running
        if queued:
            self._last_queued = time.monotonic()
            if queued + running > self._offered:
                self._wake_soon()

    def close(self, wait: bool, stopped: threading.Event) -> None:
        """Cancel every job of the run once the engine has stopped (its workers were
        told BYE, so most jobs have ended already), or now if ``wait``."""
        release_when_stopped(wait, stopped, self._finish, "pydron-batch-close")

    def kill_now(self) -> None:
        self._finish()

    # ------------------------------------------------------------------ status

    def job_list(self) -> list[dict[str, object]]:
        """Each job of the run: ``id``, ``state``, ``reason`` (while pending), ``workers``
        (indexes), ``log``."""
        with self._lock:
            records = list(self._records.values())
        controller = self.controller
        return [{"id": str(r.id), "state": r.status.state.value, "reason": r.status.reason,
                 "workers": list(r.workers),
                 "log": str(controller.log_path(r.id)) if controller else ""}
                for r in records]

    # ------------------------------------------------------------------ the thread

    def _wake_soon(self) -> None:
        now = time.monotonic()
        if now - self._last_wake >= WAKE_INTERVAL:
            self._last_wake = now
            self._wake.set()

    def _loop(self) -> None:
        while not self._closed:
            self._wake.wait(self.settings.poll_interval)
            self._wake.clear()
            if self._closed:
                return
            try:
                self._step()
            except Exception as exc:  # a scheduler command failed: try again next time
                _log.warning("pydron: %s: %s", self.scheduler, exc)

    def _step(self) -> None:
        controller = self.controller
        assert controller is not None
        statuses = controller.poll()
        ended = []
        with self._lock:
            for job, status in statuses.items():
                record = self._records.get(job)
                if record is None or record.status == status:
                    continue
                was = record.status.state
                record.status = status
                if status.state.ended:
                    ended.append(record)
                elif status.state is JobState.RUNNING and was is not JobState.RUNNING:
                    _log.info("pydron: %s job %s is running (workers %d-%d)", self.scheduler,
                              job, record.workers.start, record.workers.stop - 1)
            self._report_pending()
        for record in ended:
            self._ended(record)
        self._count_offered()
        if self._failed or self._closed:
            return
        self._cancel_unneeded()
        self._submit_needed()

    def _report_pending(self) -> None:
        """Say why a job waits, once per reason (SLURM's ``Resources``, ``Priority``,
        ``QOSMaxJobsPerUserLimit``, ``PartitionTimeLimit`` ...)."""
        for record in self._records.values():
            status = record.status
            if status.state is JobState.PENDING and status.reason and \
                    status.reason != record.reported:
                record.reported = status.reason
                _log.warning("pydron: %s job %s is pending (reason: %s)", self.scheduler,
                             record.id, status.reason)

    def _ended(self, record: JobRecord) -> None:
        """A job ended: its workers go; a loss is replaced, within max_resubmissions."""
        controller = self.controller
        assert controller is not None and self._events is not None
        state = record.status.state
        lost = state.lost or (state is JobState.CANCELLED and
                              not controller.cancelled_here(record.id))
        if lost and self._events.stopping:
            # The pool is shutting down: a job that starts now finds the caller no longer
            # listening and fails; that is the end of the run, not a loss to replace.
            lost = False
        with self._lock:
            live = [i for i in record.workers if i in self._handles]
            record.lost = lost
        what = f"{self.scheduler} job {record.id} ({_describe(record.status)})"
        if live:
            self._events.slots_lost(live, f"was lost with its {what}" if lost
                                    else f"ended with its {what}", counted=False)
        if not lost:
            return
        self._resubmissions += 1
        allowed = self.settings.max_resubmissions
        log_file = controller.log_path(record.id)
        if self._resubmissions > allowed:
            self._failed = (
                f"{what} ended without being asked to, the {_ordinal(self._resubmissions)} "
                f"job of this run to be lost, more than max_resubmissions={allowed} allows; "
                f"its log is {log_file}{_tail(log_file)}")
            _log.error("pydron: %s", self._failed)
            self._events.failed(self._failed)
            return
        _log.warning("pydron: %s ended without being asked to; its calls run again "
                     "elsewhere and a new job replaces it (%d of max_resubmissions=%d); "
                     "its log: %s", what, self._resubmissions, allowed, log_file)

    def _count_offered(self) -> None:
        """The workers that live jobs run or will run (those told to go excepted)."""
        with self._lock:
            self._offered = sum(1 for r in self._records.values()
                                if not r.status.state.ended
                                for i in r.workers if i not in self._gone)

    def _cancel_unneeded(self) -> None:
        """Pending jobs when nothing has been queued for ``idle_timeout``: the work they
        were asked for is done."""
        if self._queued or time.monotonic() - self._last_queued < self.settings.idle_timeout:
            return
        with self._lock:
            pending = [r.id for r in self._records.values()
                       if r.status.state is JobState.PENDING]
        if pending:
            _log.info("pydron: cancelling %d pending %s job(s): no work is queued",
                      len(pending), self.scheduler)
            self.controller.cancel(pending)  # type: ignore[union-attr]

    def _submit_needed(self) -> None:
        """Submit jobs for the calls queued and running beyond what live jobs run."""
        queued, running = self._queued, self._running
        missing = queued + running - self._offered
        if not queued or missing <= 0:
            return
        controller = self.controller
        assert controller is not None
        count = min(math.ceil(missing / self.settings.cores), controller.room())
        if count <= 0:
            return
        try:
            new = controller.submit(count)
        except PydronError as exc:
            if self._submitted_once:
                _log.warning("pydron: %s: %s; trying again", self.scheduler, exc)
                return
            self._failed = str(exc)  # the first submission failed: the entry is wrong
            self._events.failed(self._failed)  # type: ignore[union-attr]
            return
        self._submitted_once = True
        with self._lock:
            for job in new:
                record = JobRecord(job, controller.workers_of(job), JobStatus(JobState.PENDING))
                self._records[job] = record
                for index in record.workers:
                    self._job_of[index] = record
        self._count_offered()

    # ------------------------------------------------------------------ the end

    def _finish(self) -> None:
        """Cancel every job of the run; remove the logs of the jobs that ended cleanly
        (the run's directory too, when no job was lost). Twice is harmless."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            records = list(self._records.values())
        self._wake.set()
        controller = self.controller
        if controller is None:
            return
        try:
            controller.close()
        except Exception as exc:
            _log.error("pydron: cannot cancel the %s jobs of this run (%s): %s",
                       self.scheduler, ", ".join(str(r.id) for r in records), exc)
            return
        if not any(r.lost for r in records):
            shutil.rmtree(controller.work_dir, ignore_errors=True)
            return
        for record in records:
            if not record.lost:
                _unlink(controller.log_path(record.id))


def with_caller_path(settings: S) -> S:
    """``settings`` whose ``setup`` first exports the caller's ``sys.path`` as
    ``PYTHONPATH`` (as a local worker gets it), so that workers import what the caller
    imports, from the same folders: compute nodes share the file system. The entry's own
    ``setup`` lines come after it, and may change it (a virtual environment elsewhere)."""
    path = worker_env()["PYTHONPATH"]
    return replace(settings, setup=(f"export PYTHONPATH={shlex.quote(path)}",  # type: ignore
                                    *settings.setup))  # type: ignore[attr-defined]


def _describe(status: JobStatus) -> str:
    words = status.state.value
    if status.raw and status.raw.split(" ")[0] != status.state.value:
        words += f": {status.raw}"
    return words


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _tail(log_file: Path) -> str:
    """The last lines of a log, for an error message (empty if there is none)."""
    try:
        lines = log_file.read_text(errors="replace").strip().splitlines()
    except OSError:
        return " (not written: the job did not start)"
    if not lines:
        return " (empty)"
    return "; it ends: " + " / ".join(lines[-LOG_TAIL:])


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass
