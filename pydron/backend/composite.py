"""Several pools used as one: how a ``pydron.conf`` with several worker entries runs.

Each call goes to the member with the most free capacity (parallelism minus calls in
flight). With equal members that is the member with the fewest calls in flight; with
unequal ones it keeps a big pool's idle workers from waiting while a small pool queues.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from pydron.backend.pool import OnDone, Pool

__all__ = ["CompositePool"]


class CompositePool(Pool):
    """Spreads calls over member pools; its parallelism is the sum of theirs."""

    def __init__(self, members: Sequence[Pool]) -> None:
        if not members:
            raise ValueError("CompositePool needs at least one member pool")
        self.members: tuple[Pool, ...] = tuple(members)
        self.parallelism = sum(m.parallelism for m in self.members)
        self._in_flight = [0] * len(self.members)
        self._lock = threading.Lock()

    def in_flight(self) -> list[int]:
        """Calls submitted to each member whose on_done has not come yet (for tests, stats)."""
        with self._lock:
            return list(self._in_flight)

    def submit(self, fn: Callable[..., Any], args: tuple, kwargs: dict,
               on_done: OnDone) -> object:
        """Send the call to the member with the most free capacity (first one on ties)."""
        with self._lock:
            index = max(range(len(self.members)),
                        key=lambda i: self.members[i].parallelism - self._in_flight[i])
            self._in_flight[index] += 1

        def done(ok: bool, value: Any) -> None:
            with self._lock:
                self._in_flight[index] -= 1
            on_done(ok, value)

        try:
            handle = self.members[index].submit(fn, args, kwargs, done)
        except BaseException:
            with self._lock:
                self._in_flight[index] -= 1
            raise
        return (index, handle)

    def cancel(self, handle: object) -> bool:
        """Cancel through the member that got the call."""
        index, inner = handle  # type: ignore[misc]
        if self.members[index].cancel(inner):
            with self._lock:
                self._in_flight[index] -= 1
            return True
        return False

    def shutdown(self, wait: bool = True) -> None:
        """Shut every member down (all of them, even if one fails)."""
        errors = []
        for member in self.members:
            try:
                member.shutdown(wait)
            except Exception as exc:  # keep going: the others still hold resources
                errors.append(exc)
        if errors:
            raise errors[0]
