"""The local launcher: ``cores`` worker processes on this machine (the multicore pool).

Each worker is ``sys.executable -m pydron.backend.worker`` with the caller's ``sys.path``
as ``PYTHONPATH``, connecting to the engine on 127.0.0.1; it knows the caller's pid, so
that on Linux it dies with the caller (see :mod:`pydron.backend.worker.program`).
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable

from pydron.backend.launchers.base import EngineEvents, WorkerStart
from pydron.backend.reactor import watch_exit

__all__ = ["LocalLauncher", "worker_env"]


class LocalLauncher:
    """Starts the workers of slots ``0 .. cores - 1`` as child processes."""

    listen_host = "127.0.0.1"
    wants_demand = False
    idle_timeout = None
    kind = "multicore"

    def __init__(self, cores: int) -> None:
        self.cores = cores

    def bind(self, events: EngineEvents) -> None:
        pass  # slots never change, and a local worker's exit says all there is

    def capacity(self) -> int:
        return self.cores

    def begin(self, port: int) -> None:
        pass

    def slots(self) -> Iterable[int]:
        return range(self.cores)

    def launch(self, start: WorkerStart) -> subprocess.Popen:
        """Start the process of worker ``start.index`` and hand it the secret on stdin."""
        command = [sys.executable, "-m", "pydron.backend.worker",
                   "--port", str(start.port), "--index", str(start.index),
                   "--master-pid", str(os.getpid()), *start.options]
        popen = subprocess.Popen(command, stdin=subprocess.PIPE, env=worker_env(),
                                 close_fds=True)
        try:
            popen.stdin.write(start.secret.hex().encode() + b"\n")  # type: ignore[union-attr]
            popen.stdin.close()  # type: ignore[union-attr]
        except OSError:
            pass  # it died already; its exit is on the way
        return popen

    def watch_exit(self, process: subprocess.Popen,  # type: ignore[override]
                   callback: Callable[[int], None]) -> Callable[[], None]:
        return watch_exit(process, callback)

    def adopt(self, index: int) -> None:
        return None  # every worker here is one this launcher started

    def connected(self, index: int) -> None:
        pass

    def exited(self, index: int, process: object, code: int, *, connected: bool,
               expected: bool) -> None:
        pass

    def blames_call(self, index: int, code: int) -> bool:
        """Always: a worker on this machine dies of what runs in it, or of something that
        cannot be told from it (a SIGKILL from outside looks like the OOM killer's)."""
        return True

    def demand(self, queued: int, running: int) -> None:
        pass

    def close(self, wait: bool, stopped: threading.Event) -> None:
        pass

    def kill_now(self) -> None:
        pass


def worker_env() -> dict[str, str]:
    """The caller's environment, with its sys.path as PYTHONPATH (pydron's own folder
    first), so that the worker imports the same modules the caller does."""
    import pydron
    here = os.path.dirname(os.path.dirname(os.path.abspath(pydron.__file__)))
    paths = [here] + [os.path.abspath(p) if p else os.getcwd() for p in sys.path]
    seen: set[str] = set()
    unique = [p for p in paths if not (p in seen or seen.add(p))]  # type: ignore[func-returns-value]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(unique)
    return env
