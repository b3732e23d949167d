"""Where pools report what happens to calls, for the progress line and the trace file.

Every pool (the worker engine, threads, inline) tells the *active recorder* when a call
is submitted, sent to a worker, finished, run again or cancelled, and when a worker joins
or leaves. The recorder itself lives above the backend (:mod:`pydron.observe.recorder`):
it counts for the progress line and keeps events for the trace. The backend knows only
this module's :class:`Recorder` protocol and the module attribute :data:`active`, so that
a pool reports with one global read and a None test when nothing records -- the usual
case, and the one whose cost matters (a call costs about 10 µs on a worker process).

``on_config`` is how recording starts: :func:`pydron.backend.pool_from_config` hands every
configuration it builds a pool from to it (``pydron`` sets it at import to the observe
layer's, which reads ``progress`` and ``trace``).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

__all__ = ["Recorder", "WorkerTag", "active", "on_config", "set_active"]


class WorkerTag(NamedTuple):
    """Who ran a call: a worker process (``index``, ``pid``, ``host``; ``pool`` names the
    kind: "multicore", "ssh", "slurm" ...) or a thread of the caller (``pid`` 0)."""

    pool: str
    host: str
    index: int
    pid: int


class Recorder(Protocol):
    """What pools report. ``submitted`` returns the recorder's token for the call, which
    the pool passes back with each later report of that call (any thread)."""

    def submitted(self, fn: Callable[..., Any], args: tuple, nbytes: int) -> Any: ...

    def sent(self, token: Any, worker: WorkerTag) -> None: ...

    def finished(self, token: Any, ok: bool, worker: WorkerTag | None, run_seconds: float,
                 result_bytes: int, error: str = "") -> None: ...

    def requeued(self, token: Any, worker: WorkerTag | None, why: str) -> None: ...

    def cancelled(self, token: Any) -> None: ...

    def answered(self, fn: Callable[..., Any], count: int) -> None:
        """``count`` calls of ``fn`` were answered from the result cache (never sent)."""

    def worker_joined(self, worker: WorkerTag) -> None: ...

    def worker_left(self, worker: WorkerTag, why: str) -> None:
        """A worker was lost (it died, its host or job went)."""

    def worker_gone(self, worker: WorkerTag) -> None:
        """A worker ended as the pool asked (told to go, or ended to stop a call)."""

    def moved(self, kind: str, source: WorkerTag | None, target: WorkerTag | None,
              nbytes: int, seconds: float) -> None:
        """A value kept on a worker moved: ``transfer`` to another worker, or ``fetch``
        to the caller (``target`` None); ``nbytes`` in ``seconds``, ending now."""


active: Recorder | None = None
"""The recorder pools report to; None: nothing records."""

on_config: Callable[[Any], None] | None = None
"""Called with each configuration a pool is built from (see the module docstring)."""


def set_active(recorder: Recorder | None) -> None:
    global active
    active = recorder
