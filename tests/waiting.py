"""Waiting on real processes in tests: one copy of the polling loops several test modules
need (is a pid alive, wait until pids are gone, wait until a condition holds, read a
child's output until it says enough, the pids its calls recorded)."""
from __future__ import annotations

import subprocess
import threading
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


def runs(path: Any) -> list[int]:
    """The pids a test's functional calls wrote into ``path``, one per line (none yet: [])."""
    try:
        with open(path) as f:
            return [int(line) for line in f.read().split()]
    except FileNotFoundError:
        return []


def lines_until(proc: subprocess.Popen, predicate: Callable[[list[str]], Any],
                timeout: float) -> list[str]:
    """Lines of ``proc``'s stdout read until ``predicate(lines)`` holds or ``timeout``
    seconds have passed (the lines so far, either way: the caller asserts what it needs)."""
    lines: list[str] = []

    def reader() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line.rstrip("\n"))
            if predicate(lines):
                return

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    thread.join(timeout)
    return list(lines)
