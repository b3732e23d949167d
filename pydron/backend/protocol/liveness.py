"""Telling a silent peer that works from one that is gone, at both ends."""
from __future__ import annotations

__all__ = ["cpu_ticks", "Liveness", "MASTER_TIMEOUT", "STOP_GRACE"]

MASTER_TIMEOUT = 300.0
"""Default seconds of silence from a master whose connection is still open before a
worker gives up on it. Long on purpose: a dead master closes the connection (the worker
then exits at once) and a dead local one also triggers the parent-death signal; only a
hung master, or a network that vanished without a reset, needs this to expire."""

STOP_GRACE = 5.0
"""Seconds a worker told BYE gets to exit before the master kills it (and so, after which a
launcher may close what its workers ran through)."""


def cpu_ticks(pid: int) -> int | None:
    """CPU time a process on this machine has used (clock ticks, user + system), or
    None if that cannot be known or it cannot progress: no /proc, no such process, a
    zombie, a stopped process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        fields = data.rsplit(b")", 1)[1].split()
        if fields[0] in (b"Z", b"X", b"T", b"t"):
            return None
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return None


class Liveness:
    """Tells a silent peer that is working from one that is gone or hung.

    Heartbeats come from a thread of the peer, which needs the GIL: a call that holds it
    for long (a C extension, ``sorted`` of a huge list, ``sum(range(10**9))``) silences a
    healthy worker, and a caller doing so silences the master. So, for a peer process on
    this machine, silence only counts as loss while the peer's CPU time stands still too.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.ticks: int | None = None
        self.progress = 0.0

    def working(self, now: float, within: float) -> bool:
        """Sample the peer's CPU time: True if it has advanced within the last
        ``within`` seconds (the first sample counts as an advance: the benefit of the
        doubt). False at once for a stopped or dead process, or one we cannot see."""
        ticks = cpu_ticks(self.pid) if self.pid > 0 else None
        if ticks is None:
            return False
        if ticks != self.ticks:
            self.ticks = ticks
            self.progress = now
        return now - self.progress < within
