"""A pool that runs every call at once, in the caller's thread.

For debugging (breakpoints and tracebacks stay in one thread, in program order) and for
deterministic tests: with this pool a ``@schedule`` run has exactly one interleaving.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydron.backend.context import worker_context
from pydron.backend.pool import OnDone, Pool, record_submit, run_call

__all__ = ["InlinePool"]


class InlinePool(Pool):
    """Runs each call synchronously inside :meth:`submit` (parallelism 1).

    The call runs inside :func:`~pydron.backend.context.worker_context`, as it would on a
    worker thread, so nested ``@schedule`` functions behave the same under every pool.
    """

    parallelism = 1

    def __init__(self) -> None:
        self._closed = False

    def submit(self, fn: Callable[..., Any], args: tuple, kwargs: dict,
               on_done: OnDone) -> object:
        """Run the call now; on_done has been called when this returns."""
        if self._closed:
            raise RuntimeError("cannot submit to a pool that has been shut down")
        with worker_context():
            run_call(fn, args, kwargs, on_done, record_submit(fn, args), "inline")
        return None

    def cancel(self, handle: object) -> bool:
        """Always False: by the time a handle exists, its call has already run."""
        return False

    def shutdown(self, wait: bool = True) -> None:
        """Refuse further calls; there is nothing to wait for."""
        self._closed = True
