"""What SLURM and Grid Engine jobs have in common: states, ids, settings checks, scripts.

A batch scheduler's job controller (:mod:`~pydron.backend.launchers.slurm_jobs`,
:mod:`~pydron.backend.launchers.sge_jobs`) turns "I need N more jobs of workers" into
the scheduler's commands and tells what became of each job; the batch launcher
(:mod:`~pydron.backend.launchers.batch`) decides when to ask, and is the same for every
scheduler. What they share lives here, so that the two controllers differ only in what
the schedulers really do differently (command names, output formats, array syntax):

* :class:`JobState`, :class:`JobStatus`, :class:`JobId` -- what a poll says of a job;
* :class:`JobController` -- what the launcher needs of a controller;
* checks for the keys of an entry (:func:`settings_from_entry`), with errors that name
  the entry and the key;
* :func:`worker_loop` -- the bash lines that run one worker in a job and start it again
  when the engine ended it (a cancelled or timed-out call, a lost heartbeat), but not
  when it was told to go, could not reach the caller, or was started wrongly;
* :func:`private_dir`, :func:`write_secret` and :func:`resolve_address`.
"""
from __future__ import annotations

import enum
import fcntl
import math
import os
import re
import shlex
import signal
import socket
import struct
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Protocol, TypeVar

from pydron.backend.protocol import frames
from pydron.errors import ConfigError

__all__ = [
    "JobState", "JobStatus", "JobId", "JobController", "INDEX", "EXIT_MARKER",
    "run_command", "command_message", "refusal", "chunks", "setup_block", "status_from_log",
    "settings_from_entry", "integer", "seconds", "word", "lines", "options", "path",
    "optional_bool", "shell_command", "worker_loop", "private_dir", "write_secret",
    "resolve_address", "MAX_SECONDS", "RESTARTS",
]

INDEX = "{index}"
"""Placeholder in a worker command line for the worker's index (the script fills it in)."""
EXIT_MARKER = "pydron-job-exit:"
"""A job script's last log line, with its exit status: where the scheduler keeps no
record of ended jobs, it is how a job that left the queue tells whether it failed."""
MAX_SECONDS = 30 * 24 * 3600.0
RESTARTS = 100
"""How often one worker of a job is started again after the engine ended it (each time a
call was cancelled or timed out there): past that the job ends, and is replaced."""


# --------------------------------------------------------------------------- job states


class JobState(enum.Enum):
    """What became of a job. ``GONE``: it left the queue and nothing tells how it ended
    (no accounting, no exit line in its log)."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    PREEMPTED = "PREEMPTED"
    NODE_FAIL = "NODE_FAIL"
    TIMEOUT = "TIMEOUT"
    GONE = "GONE"

    @property
    def ended(self) -> bool:
        return self not in (JobState.PENDING, JobState.RUNNING)

    @property
    def lost(self) -> bool:
        """Ended without being asked to (a CANCELLED job is lost unless the run
        cancelled it itself, which only the controller knows)."""
        return self in (JobState.FAILED, JobState.PREEMPTED, JobState.NODE_FAIL,
                        JobState.TIMEOUT, JobState.GONE)


@dataclass(frozen=True, order=True)
class JobId:
    """One job of the run: a task of an array (SLURM writes ``"123_4"``, Grid Engine
    ``"123.4"``: ``separator``), or a worker step this controller started inside an
    existing allocation (``task`` is then our step number and ``step`` is true)."""

    job: int
    task: int
    step: bool = False
    separator: str = field(default="_", compare=False)

    def __str__(self) -> str:
        if self.step:
            return f"{self.job}+step{self.task}"
        return f"{self.job}{self.separator}{self.task}"


@dataclass(frozen=True)
class JobStatus:
    """A job's state at the last poll, the scheduler's reason while it is pending
    (``"Priority"``, ``"Resources"`` ...) and the state as the scheduler wrote it."""

    state: JobState
    reason: str = ""
    raw: str = ""


class JobController(Protocol):
    """The jobs of one run, as the batch launcher drives them. Every method may run a
    scheduler command (and so block): the launcher calls them in a thread of its own."""

    job_name: str
    """What the run's jobs are called in the scheduler's queue."""
    work_dir: Path
    """The run's private directory: scripts, logs, the secret."""

    def submit(self, count: int) -> list[JobId]:
        """Ask for ``count`` more jobs (fewer if :meth:`room` says so); their ids."""

    def room(self) -> int:
        """How many more jobs may be submitted now."""

    def poll(self, force: bool = False) -> dict[JobId, JobStatus]:
        """Every job's state, asking the scheduler at most once per poll interval."""

    def workers_of(self, job: JobId) -> range:
        """The worker indexes a job runs."""

    def cancelled_here(self, job: JobId) -> bool:
        """Whether this run cancelled the job (so that its CANCELLED is no loss)."""

    def log_path(self, job: JobId) -> Path:
        """The job's log."""

    def cancel(self, ids: Iterable[JobId] | None = None) -> None:
        """End the given jobs, or all of the run's."""

    def close(self) -> None:
        """Cancel every job of the run and remove the secret; twice is harmless."""


# --------------------------------------------------------------------------- settings

S = TypeVar("S")
Check = Callable[[object], object]


def settings_from_entry(cls: type[S], entry: Mapping[str, object],
                        checks: Mapping[str, Check], what: str) -> S:
    """``cls`` (a dataclass) from an entry as written in pydron.conf (``type`` is
    ignored); a :class:`ConfigError` names ``what`` (``"slurm entry"``) and the first
    key that is unknown or invalid. A check raises ValueError with what it expected."""
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    for key in entry:
        if key != "type" and key not in known:
            raise ConfigError(f"{what}: unknown key `{key}` (known: "
                              f"{', '.join(sorted(known))})")
    values: dict[str, object] = {}
    for key, value in entry.items():
        if key == "type":
            continue
        try:
            values[key] = checks[key](value)
        except ValueError as exc:
            raise ConfigError(f"{what}: `{key}` must be {exc}, not {value!r}") from None
    return cls(**values)


def integer(low: int, high: int) -> Check:
    def check(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"an integer from {low} to {high}")
        return value
    return check


def seconds(value: object, low: float = 0.0) -> float:
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or not low <= value <= MAX_SECONDS):
        raise ValueError(f"a number of seconds from {low:g} to {MAX_SECONDS:.0f}")
    return float(value)


def word(value: object) -> str:
    """A value that goes into a directive line (``#SBATCH``, ``#$``): one word, so that
    it can neither end the directive nor add a line to the script."""
    if not isinstance(value, str) or not re.fullmatch(r"[^\s'\"\\]+", value):
        raise ValueError("a non-empty string without spaces or quotes")
    return value


def lines(value: object) -> tuple[str, ...]:
    """A string (split into lines) or an array of one-line strings."""
    items = value.splitlines() if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(
            isinstance(v, str) and "\n" not in v and "\r" not in v and "\0" not in v
            for v in items):
        raise ValueError("a string or an array of one-line strings")
    return tuple(v for v in items if v.strip())


def options(command: str, example: str) -> Check:
    """An array of a submit command's options (each starting with ``-``)."""
    def check(value: object) -> tuple[str, ...]:
        try:
            items = lines(value)
        except ValueError:
            items = ()
        else:
            if all(v.strip().startswith("-") for v in items):
                return tuple(v.strip() for v in items)
        raise ValueError(f'an array of {command} options such as "{example}"')
    return check


def path(value: object) -> str:
    if not isinstance(value, str) or not value or "\n" in value:
        raise ValueError("a path")
    return os.path.expanduser(value)


def optional_bool(value: object) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise ValueError("true, false or null")


def resolve_address(address: str | None, what: str) -> str:
    """The address compute nodes connect back to: ``address`` as given, or the IPv4
    address of the local interface it names, or (by default) this host name's address."""
    if address is None:
        return socket.gethostbyname(socket.gethostname())
    if address in {name for _, name in socket.if_nameindex()}:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:  # Linux SIOCGIFADDR
                packed = fcntl.ioctl(s.fileno(), 0x8915,
                                     struct.pack("256s", address.encode()[:15]))
            except OSError as exc:
                raise ConfigError(f"{what}: `address`: interface {address!r} has no IPv4 "
                                  f"address ({exc})") from None
        return socket.inet_ntoa(packed[20:24])
    return address


# --------------------------------------------------------------------------- scripts


def shell_command(argv: Sequence[str], index: str = '"$PYDRON_INDEX"') -> str:
    """``argv`` as one bash command, each argument quoted, :data:`INDEX` replaced by
    ``index`` (a shell expression)."""
    words = []
    for arg in argv:
        parts = arg.split(INDEX)
        words.append(index.join(shlex.quote(p) if p else "" for p in parts) or "''")
    return " ".join(words)


_RESTART_EXITS = (frames.EXIT_MASTER_LOST, frames.EXIT_CANCELLED,
                  *(128 + sig for sig in (signal.SIGABRT, signal.SIGBUS, signal.SIGKILL,
                                          signal.SIGSEGV)))
"""The ends after which a job starts its worker again: the engine closed its connection
(to stop a call, or a worker that stopped answering), or a call crashed it (abort, bus
error, SIGKILL from the OOM killer, segfault; bash says 128 + the signal)."""


def worker_loop(command: Sequence[str], secret_file: Path) -> list[str]:
    """A bash function ``pydron_worker`` that runs the worker command (with the secret
    on stdin) for ``$PYDRON_INDEX`` and returns its exit status.

    The engine ends a worker by closing its connection -- to stop a cancelled call or one
    past ``call_timeout``, or a worker that stopped answering -- and a call may crash its
    worker (:data:`_RESTART_EXITS`); then the worker is started again, a second later,
    with the same index, and the engine takes it back, up to :data:`RESTARTS` times. Any
    other end is final: told to go (exit 0: the run ended, or it was idle past
    ``idle_timeout``), unable to reach or convince the caller (the caller is gone: this
    is how a job notices a caller killed with SIGKILL), started wrongly, or any exit
    status of the program's own, which becomes the job's."""
    again = "|".join(str(int(code)) for code in _RESTART_EXITS)
    return [
        "pydron_worker() {",
        "    local restarts=0 status",
        "    while true; do",
        f"        {shell_command(command)} < {shlex.quote(str(secret_file))}",
        "        status=$?",
        f'        case "$status" in {again}) ;; *) return "$status";; esac',
        "        restarts=$((restarts + 1))",
        f'        [ "$restarts" -le {RESTARTS} ] || return "$status"',
        '        echo "pydron-job: worker $PYDRON_INDEX ended with status $status; '
        'starting it again"',
        "        sleep 1",
        "    done",
        "}",
    ]


def private_dir(parent: str | None, run_id: str, default: Path) -> Path:
    """A fresh 0700 directory for the run: under ``parent`` if given, else under
    ``default`` (a directory compute nodes usually share, under the home directory:
    ``/tmp`` is per node)."""
    base = Path(parent) if parent else default
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    made = Path(tempfile.mkdtemp(prefix=f"{run_id}-", dir=base))
    os.chmod(made, 0o700)
    return made


def write_secret(work_dir: Path, secret: bytes) -> Path:
    """The secret as a hex line in a file only we can read (created 0600, never
    world-readable for an instant), in the run's 0700 directory."""
    target = work_dir / "secret"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret.hex() + "\n")
    return target


# --------------------------------------------------------------------------- commands


def run_command(argv: Sequence[str], env: Mapping[str, str] | None, timeout: float,
                error: type[Exception], missing: str) -> subprocess.CompletedProcess:
    """Run one scheduler command; ``error`` (with ``missing``, what to install, when the
    command is not there) for a command that is missing or does not answer in time."""
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, env=None if env is None else dict(env))
    except FileNotFoundError:
        raise error(f"`{argv[0]}` is not installed here ({missing})") from None
    except subprocess.TimeoutExpired:
        raise error(f"`{' '.join(argv)}` did not answer within {timeout:.0f} s") from None


def command_message(result: subprocess.CompletedProcess, noise: Iterable[str] = ()) -> str:
    """A failed command's message on one line (lines in ``noise`` left out)."""
    text = (result.stderr or result.stdout).strip()
    lines = [line for line in text.splitlines() if line.strip() not in noise]
    return " / ".join(lines) or f"exit status {result.returncode}"


def refusal(settings: object, message: str, hints: Iterable[tuple[str, str]],
            command: str, options_key: str, what: str, error: type[Exception]) -> Exception:
    """The submit command's refusal as an error that names the entry's key it is about
    (the first of ``hints``, ``(words in the message, key)``, that matches a key the entry
    sets), else its extra options, else just the message."""
    lowered = message.lower()
    for hint, key in hints:
        if hint in lowered and getattr(settings, key) is not None:
            return error(f"{what}: `{key}` = {getattr(settings, key)!r}: {command} refused "
                         f"the job: {message}")
    extra = getattr(settings, options_key)
    if extra:
        return error(f"{what}: {command} refused the job (check `{options_key}` "
                     f"{list(extra)}): {message}")
    return error(f"{what}: {command} refused the job: {message}")


def chunks(count: int, size: int) -> Iterable[int]:
    """``count`` split into parts of at most ``size``."""
    while count > 0:
        yield min(count, size)
        count -= size


def setup_block(setup: Sequence[str]) -> list[str]:
    """The ``setup`` lines under ``set -e`` (a failing line fails the job, visibly in its
    log, rather than starting workers in a half-prepared environment)."""
    if not setup:
        return []
    return ["set -e", *setup, "set +e"]


def status_from_log(log: Path) -> JobStatus:
    """A job's end from its log, once the scheduler has forgotten it: the script's exit
    line (0: COMPLETED, else FAILED); a log without one (killed) is FAILED, no log at
    all GONE."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return JobStatus(JobState.GONE, raw="no log")
    codes = re.findall(rf"^{re.escape(EXIT_MARKER)} (\d+)\s*$", text, re.MULTILINE)
    if not codes:
        return JobStatus(JobState.FAILED, raw="log without exit line")
    state = JobState.COMPLETED if codes[-1] == "0" else JobState.FAILED
    return JobStatus(state, raw=f"exit {codes[-1]} (log)")
