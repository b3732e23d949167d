"""The interface between the worker engine and a launcher.

The engine (:class:`pydron.backend.engine.engine.WorkerEngine`) owns everything about
calls: connections, the queue, batching, prefetch, retries, heartbeats, cancellation,
timeouts and shared objects. A launcher owns everything about processes: where a worker
runs, how it is started, how its end is seen. Neither knows the other's business, so a
new way of getting workers (a batch scheduler, a container service) is a new launcher
and no change to the engine.

Workers are numbered *slots* (``0 .. capacity - 1``, fixed for the pool's life): a slot
that should have a worker and has none gets one started. A launcher says which slots
exist at any moment (:meth:`Launcher.slots`); the ssh launcher drops the slots of a host
that failed or was lost, a batch-scheduler launcher offers the slots of its running jobs.

Every worker, however started, connects back to the engine's listening port and passes
the handshake with the pool's secret (:mod:`pydron.backend.protocol.handshake`); the
engine matches it to its slot by the index in the handshake (and the pid, when the
launcher knows it).

Threads: the engine calls a launcher in its reactor thread (:mod:`pydron.backend.reactor`),
except :meth:`Launcher.close` and :meth:`Launcher.kill_now` (the caller's thread, or the
exiting one). A launcher may call :class:`EngineEvents` from any thread. No method may
block on the network: connecting hosts, provisioning and submitting jobs happen in
threads of the launcher's own.
"""
from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple, Protocol

from pydron.backend.protocol.liveness import STOP_GRACE
from pydron.backend.reactor import in_reactor_thread

__all__ = ["WorkerStart", "WorkerProcess", "EngineEvents", "Launcher", "exit_on_sigterm",
           "release_when_stopped"]


class WorkerStart(NamedTuple):
    """What a launcher needs to start the worker of one slot.

    The command is ``python -m pydron.backend.worker --host H --port P --index I
    *options`` (``--host`` is wherever the engine's port is reachable from the worker:
    ``127.0.0.1`` locally and through an SSH forward, the engine's address for a batch
    job). ``secret`` (hex, a newline, on the worker's stdin; never on a command line,
    where ``ps`` would show it) is what the worker authenticates with."""

    index: int
    """The slot."""
    port: int
    """Where the engine listens (on :attr:`Launcher.listen_host`)."""
    options: list[str]
    """The worker's protocol options (``--heartbeat``, ``--max-frame`` ...)."""
    secret: bytes


class WorkerProcess(Protocol):
    """A started worker, as much of ``subprocess.Popen`` as the engine uses."""

    pid: int
    """Its process id on this machine; 0 if not known here (the handshake tells it)."""

    def kill(self) -> None:
        """End it now (it need not have started yet); its exit is reported as usual."""

    def poll(self) -> int | None:
        """Its exit code once it has ended, else None."""

    def wait(self, timeout: float | None = None) -> int:
        """Wait for its end (raises ``subprocess.TimeoutExpired``); its exit code."""


class EngineEvents(Protocol):
    """What the engine offers its launcher (any thread)."""

    @property
    def stopping(self) -> bool:
        """The pool is shutting down: nothing new should be started for it."""

    def capacity_changed(self, parallelism: int) -> None:
        """The number of workers the pool can have now (``pool.parallelism``)."""

    def slots_changed(self) -> None:
        """Slots appeared (a host is ready, a job started): start workers there."""

    def slots_lost(self, indexes: Iterable[int], reason: str, counted: bool = True) -> None:
        """These slots are gone (their host, their job): end their workers, saying
        ``reason`` in the messages; the calls they ran run elsewhere. ``counted=False``:
        the launcher knows why they went (a batch job ended), so their ends count
        neither as failed starts nor towards ``respawns_per_minute``."""

    def worker_start(self, index: int) -> WorkerStart:
        """What :meth:`Launcher.launch` would be given for slot ``index`` (after
        :meth:`Launcher.begin`): for a launcher whose workers someone else starts (a
        batch job's script needs the port, the options and the secret)."""

    def describe_exit(self, index: int, refused: str = "", how: str = "") -> None:
        """What the launcher knows of the end of the worker in ``index`` that is being
        reported: why it could not start (``refused``), how it was lost (``how``, e.g.
        "lost its SSH connection to h"). Only from :meth:`Launcher.exited`; what the
        engine knew already stays."""

    def failed(self, message: str) -> None:
        """No worker can be had (every host failed, a required one did): fail the queued
        calls and later ones with ``message`` (a WorkerLostError)."""


class Launcher(Protocol):
    """Starts worker processes and watches them end; knows nothing about calls.

    A batch-scheduler launcher (SLURM, Grid Engine;
    :mod:`pydron.backend.launchers.batch`) fits as follows: its :attr:`listen_host` is
    an address the compute nodes reach; :meth:`begin` starts its polling thread; with
    :attr:`wants_demand` the engine tells it through :meth:`demand` how many calls are
    queued and running, so that it submits jobs only while calls are queued; it offers
    no slots, and :meth:`adopt` takes in each worker its jobs start, with a handle whose
    pid is 0; :attr:`idle_timeout` lets workers go when there is no work, so that their
    jobs end; a job that ended, failed or was preempted is reported with
    ``events.slots_lost(..., counted=False)`` (its calls run elsewhere). :meth:`close`
    cancels every job of the run.
    """

    listen_host: str
    """The interface the engine listens on: ``127.0.0.1`` for workers on this machine or
    behind an SSH forward; an address of this host that the workers reach otherwise."""

    wants_demand: bool
    """Whether the engine should call :meth:`demand` (it costs a little per dispatch)."""

    kind: str
    """What a worker of this launcher is called in traces: "multicore", "ssh" ..."""

    idle_timeout: float | None
    """Seconds a connected worker may stay idle, with no call queued, before the engine
    tells it to go (BYE) -- a batch job whose workers all went ends and frees its node;
    None: workers stay for the pool's life."""

    def bind(self, events: EngineEvents) -> None:
        """Called once, when the engine is made: where to report to."""

    def capacity(self) -> int:
        """The number of slots (the pool's parallelism at first)."""

    def begin(self, port: int) -> None:
        """The engine listens on ``port``: start what must come before workers (connect
        hosts, provision instances, start polling a scheduler), in threads of its own."""

    def slots(self) -> Iterable[int]:
        """The slots that should have a worker now."""

    def launch(self, start: WorkerStart) -> WorkerProcess:
        """Start the worker of slot ``start.index`` and hand it the secret; raise if it
        cannot be started (the engine counts it as a failed start)."""

    def watch_exit(self, process: WorkerProcess,
                   callback: Callable[[int], None]) -> Callable[[], None]:
        """Call ``callback(exit code)`` in the reactor thread once ``process`` has ended
        (negative: killed by that signal); returns a function that stops watching."""

    def adopt(self, index: int) -> WorkerProcess | None:
        """A worker passed the handshake for slot ``index``, which has no process: the
        handle to take it in with, or None to turn it away. A launcher whose workers are
        started by someone else (a batch job, which also starts a worker again after
        the engine ended it) offers no slots and adopts what connects; the others
        return None."""

    def connected(self, index: int) -> None:
        """The worker of slot ``index`` passed the handshake."""

    def exited(self, index: int, process: WorkerProcess, code: int, *, connected: bool,
               expected: bool) -> None:
        """The worker of slot ``index`` ended with ``code``, after connecting or not;
        ``expected``: the engine was ending it (BYE, shutdown, interpreter exit). The
        launcher may ``describe_exit`` it and decide its slots are lost."""

    def blames_call(self, index: int, code: int) -> bool:
        """Whether this end may be the doing of the call the worker was running (so that
        it counts towards calling that call poison); a worker lost with its host or its
        job was not killed by its call."""

    def demand(self, queued: int, running: int) -> None:
        """Calls waiting for a worker and calls on workers (when :attr:`wants_demand`)."""

    def close(self, wait: bool, stopped: threading.Event) -> None:
        """The pool is shut down: release what the launcher holds (connections,
        instances, jobs) once ``stopped`` is set, or now if ``wait`` (in the caller's
        thread)."""

    def kill_now(self) -> None:
        """At interpreter exit, after the engine killed its workers: release everything
        at once."""


def exit_on_sigterm() -> None:
    """Make SIGTERM run the exit hooks, unless the program handles SIGTERM itself.

    Python's default for SIGTERM ends the process without ``atexit``; a launcher that
    holds outside resources (cloud instances, batch jobs) frees them in the engine's exit
    hook, so SIGTERM raises SystemExit instead. Only from the main thread (signal's rule);
    elsewhere nothing changes, and the resources end by their own watchdogs."""
    if threading.current_thread() is not threading.main_thread():
        return
    try:
        if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
            signal.signal(signal.SIGTERM, _sigterm)
    except (ValueError, OSError):
        pass


def _sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def release_when_stopped(wait: bool, stopped: threading.Event, release: Callable[[], None],
                         name: str) -> None:
    """A launcher's :meth:`Launcher.close`: ``release()`` now if ``wait`` (and this is
    not the reactor thread, which the engine's stop needs), else in a thread of its own
    once the engine has stopped (or after a grace period: its workers were told to go)."""
    if wait and not in_reactor_thread():
        release()
        return

    def later() -> None:
        stopped.wait(STOP_GRACE + 5)
        release()
    threading.Thread(target=later, daemon=True, name=name).start()
