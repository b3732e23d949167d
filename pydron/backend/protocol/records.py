"""The records a TASKS or RESULTS frame carries, as named types both ends build and read.

The frame format itself is in :mod:`.frames`; a TASKS payload is the pickle
of a list of :class:`Task`, a RESULTS payload that of a list of :class:`Outcome`, each
record's out-of-band buffers sent just before the frame, in order (``nbuf`` of them per
record). On the wire a record is a plain tuple (the cheapest thing to pickle, and what a
test's fake master or worker builds by hand); in the code on either end it is the named
type, so no one reads a field by its position.
"""
from __future__ import annotations

import pickle
from typing import NamedTuple

__all__ = ["Task", "Outcome", "dumps_records", "tasks_of", "outcomes_of", "FUNCTION_CACHE_SIZE",
           "KEEP_MIN"]

KEEP_MIN = 1 << 20
"""Default size (bytes of the result's pickle) from which a worker keeps a result it may
keep (a :class:`Task` with ``keep``) instead of sending it: below this, the round trip of
fetching it later would cost more than sending it at once."""

FUNCTION_CACHE_SIZE = 1024
"""Function blobs a worker keeps (oldest first out). The master mirrors this bookkeeping
exactly, so it always knows whether a worker still holds a function (and sends a
:class:`Task` without its ``blob``)."""


class Task(NamedTuple):
    """One call sent to a worker (an entry of a TASKS frame)."""

    call_id: int
    digest: bytes
    """The function's content hash: the key of the worker's function cache."""
    blob: bytes | None
    """The pickled function, or None when the worker already holds ``digest``."""
    args: bytes
    """The in-band pickle of ``(args, kwargs)``."""
    nbuf: int
    """How many of the buffers before the frame belong to these arguments."""
    keep: int = 0
    """Nonzero: the worker may keep a large result under this key instead of sending it
    (see :mod:`pydron.backend.protocol.values`); the key stays the same when the call is
    run again to recompute a lost value."""
    sources: tuple = ()
    """``(key, host, port, worker index)`` for each kept value among the arguments that
    lies on another worker: where to fetch it directly (see ``worker.peers``)."""


class Outcome(NamedTuple):
    """How one call ended on a worker (an entry of a RESULTS frame).

    A success carries the result's in-band pickle in ``blob`` and ``nbuf`` buffers; a
    failure carries the exception as :func:`~pydron.backend.protocol.shipping.dumps_exception`
    made it: ``blob`` (or None), ``name``, ``message``, ``text``."""

    call_id: int
    ok: bool
    blob: bytes | None
    nbuf: int
    elapsed: float
    """Seconds the call itself ran (the master's prefetching goes by it)."""
    name: str | None = None
    message: str | None = None
    text: str | None = None
    kept: int = 0
    """Nonzero: the result stays on the worker under the task's ``keep`` key, and this is
    its pickled size; ``blob`` is then None and ``name`` the result's type name."""
    parts: tuple = ()
    """For a tuple result whose large items stay on the worker each on its own:
    ``(key, bytes, type name, index)`` of each; ``blob`` is then the tuple with a
    :class:`~pydron.backend.protocol.values.KeptPart` in place of each."""
    moves: tuple = ()
    """``(key, bytes, seconds, worker index)`` for each kept value the call's worker
    fetched for it (index -1: relayed by the master), for the trace."""


def dumps_records(records: list[Task] | list[Outcome], protocol: int) -> bytes:
    """The payload of a TASKS or RESULTS frame: the records as plain tuples."""
    return pickle.dumps([tuple(r) for r in records], protocol)


def tasks_of(payload: bytes | bytearray) -> list[Task]:
    """The records of a TASKS payload."""
    return [Task(*entry) for entry in pickle.loads(payload)]


def outcomes_of(entries: list[tuple]) -> list[Outcome]:
    """The records of an unpickled RESULTS payload (the master unpickles it itself, to
    tell an unreadable frame from a malformed record)."""
    return [Outcome(*entry) for entry in entries]
