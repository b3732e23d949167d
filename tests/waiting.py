"""Waiting on real processes in tests: one copy of the polling loops several test modules
need (is a pid alive, wait until pids are gone, wait until a condition holds)."""
from __future__ import annotations

import time
from typing import Any, Callable, Iterable


def alive(pid: int) -> bool:
    """True if the process exists and is not a zombie (a zombie computes nothing)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def wait_gone(pids: Iterable[int], timeout: float = 10.0) -> list[int]:
    """Wait until none of ``pids`` is alive; the ones still alive at the deadline."""
    pids = list(pids)
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in pids if alive(p)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.02)


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0,
             what: str = "a condition") -> Any:
    """Poll ``predicate`` until it returns something true (returned); fail the test with
    ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)
