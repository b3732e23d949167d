"""The named states of a call and of a worker process, with the moves each may make.

A call (the engine's ``_Call``)::

    QUEUED --dispatch--> SENT --result--> DONE
       |                  |  \\--worker died--> QUEUED again (up to max_retries), or DONE
       \\----cancel-------\\--> CANCELLED        with WorkerLostError

Whoever moves a call out of QUEUED or SENT, under the engine's lock, owns it: that is how
a cancel and a result arriving at the same moment agree on which of them wins.

A worker process (the engine's ``_Proc``)::

    STARTING --handshake--> READY --BYE--> LEAVING --exit--> DEAD
        \\-------------stopped before it connected--/        (from any state)

The tables are what the code does, written down; the hot path (about 10 µs a call) does
not look them up, but tests and a launcher's author can.
"""
from __future__ import annotations

import enum

__all__ = ["CallState", "WorkerState", "CALL_MOVES", "WORKER_MOVES"]


class CallState(enum.IntEnum):
    """Where a submitted call is."""

    QUEUED = 0
    """Waiting in the engine's queue for a worker."""
    SENT = 1
    """On a worker: running, or queued there behind others (prefetched)."""
    DONE = 2
    """Its outcome is delivered, or being delivered (by the one who moved it here)."""
    CANCELLED = 3
    """Cancelled by its caller; its callback never comes."""


class WorkerState(enum.Enum):
    """Where a worker process is in its life."""

    STARTING = "starting"
    """Started (or being started by a launcher); not connected yet."""
    READY = "ready"
    """Authenticated; it takes calls."""
    LEAVING = "leaving"
    """Told to go (BYE), or stopped before it connected; it takes no more calls."""
    DEAD = "dead"
    """Its process has exited (its launcher said so)."""


CALL_MOVES: dict[CallState, frozenset[CallState]] = {
    CallState.QUEUED: frozenset({CallState.SENT, CallState.DONE, CallState.CANCELLED}),
    CallState.SENT: frozenset({CallState.QUEUED, CallState.DONE, CallState.CANCELLED}),
    CallState.DONE: frozenset(),
    CallState.CANCELLED: frozenset(),
}
"""The states a call may move to from each state."""

WORKER_MOVES: dict[WorkerState, frozenset[WorkerState]] = {
    WorkerState.STARTING: frozenset({WorkerState.READY, WorkerState.LEAVING,
                                     WorkerState.DEAD}),
    WorkerState.READY: frozenset({WorkerState.LEAVING, WorkerState.DEAD}),
    WorkerState.LEAVING: frozenset({WorkerState.DEAD}),
    WorkerState.DEAD: frozenset(),
}
"""The states a worker may move to from each state."""
