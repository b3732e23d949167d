"""Knowing whether the current thread is running a functional call for a pool.

A ``@schedule`` function called from inside a functional call must run sequentially
there: starting a second level of parallelism from a worker would oversubscribe the
cores, and with a bounded pool it can deadlock (every worker waiting for calls that no
free worker is left to run). Pools mark their worker threads; the runtime asks
:func:`in_worker`.
"""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

__all__ = ["in_worker", "worker_context"]

_state = threading.local()


def in_worker() -> bool:
    """True if the current thread is executing calls on behalf of a pool."""
    return getattr(_state, "active", False)


@contextlib.contextmanager
def worker_context() -> Iterator[None]:
    """Mark the current thread as a worker for the duration of the block.

    Nests correctly (the previous state is restored), so an inline pool may use it around
    each call while a thread pool wraps its whole worker loop in it once.
    """
    previous = getattr(_state, "active", False)
    _state.active = True
    try:
        yield
    finally:
        _state.active = previous
