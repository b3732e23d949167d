"""The multicore pool (``"type": "multicore"``): worker processes on this machine.

The worker engine (:mod:`pydron.backend.engine.engine`: connections, queue, batching,
retries, heartbeats, cancellation) with the local launcher
(:mod:`pydron.backend.launchers.local`: one child process per core).
"""
from __future__ import annotations

from typing import Any

from pydron.backend.engine.engine import WorkerEngine
from pydron.backend.launchers.local import LocalLauncher

__all__ = ["MulticorePool"]


class MulticorePool(WorkerEngine):
    """``cores`` worker processes on this machine, talking to the caller over TCP.

    Keyword arguments tune the protocol; they are the engine's (see
    :class:`~pydron.backend.engine.engine.WorkerEngine`)."""

    def __init__(self, cores: int, **kwargs: Any) -> None:
        if isinstance(cores, bool) or not isinstance(cores, int) or cores < 1:
            raise ValueError(f"MulticorePool needs an integer cores >= 1, got {cores!r}")
        super().__init__(LocalLauncher(cores), **kwargs)
