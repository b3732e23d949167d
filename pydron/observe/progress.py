"""The progress line: calls done, running and queued, failures, retries, workers, ETA.

Drawn with tqdm (terminal widths, carriage returns, rates and the ETA are its business,
not ours) on stderr, from the recorder's counts (:class:`~pydron.observe.recorder.
CallRecorder`), by one daemon thread that looks five times a second.

A *burst* is the work between two idle moments: the line starts with the first call
after a pause, counts up to everything submitted since (a ``pydron.map`` over a
generator, or a loop still submitting, makes the total grow: the ETA is for the work
known so far), and ends once every call has finished and nothing has happened for a
second. tqdm's ``delay`` keeps a burst shorter than about a second from printing at all.
"""
from __future__ import annotations

import shutil
import sys
import threading
import time
from typing import IO, Any

from pydron.observe.recorder import CallRecorder, Counts

__all__ = ["ProgressLine"]

INTERVAL = 0.2
QUIET_AFTER = 1.0
"""Seconds with nothing running or queued after which a burst's line is finished."""
DELAY = 1.0
"""A burst shorter than this prints nothing."""


class ProgressLine:
    """Shows ``recorder``'s counts on ``stream`` (default: stderr) until :meth:`stop`."""

    def __init__(self, recorder: CallRecorder, stream: IO[str] | None = None,
                 interval: float = INTERVAL, delay: float = DELAY) -> None:
        self.recorder = recorder
        self.stream = stream
        self.interval = interval
        self.delay = delay
        self._bar: Any = None
        self._began = 0.0           # when the current burst's line was made
        self._base = Counts()       # the counts when the current burst began
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, daemon=True,
                                        name="pydron-progress")
        self._thread.start()

    def stop(self) -> None:
        """Draw the last counts and end the line (at exit)."""
        self._stop.set()
        self._thread.join(2 * self.interval + 1)
        with self._lock:
            self._update(self.recorder.counts(), final=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                try:
                    self._update(self.recorder.counts())
                except Exception:  # a closed stream, say: the line is not worth a crash
                    return

    def _update(self, counts: Counts, final: bool = False) -> None:
        base = self._base
        busy = counts.running or counts.queued
        if self._bar is None:
            if counts.submitted == base.submitted:
                return  # nothing new since the last burst
            self._bar = self._new_bar()
            self._began = time.perf_counter()
        bar = self._bar
        bar.total = counts.submitted - base.submitted
        bar.n = counts.finished - base.finished
        bar.set_postfix_str(self._postfix(counts, base), refresh=False)
        shown = time.perf_counter() - self._began >= self.delay
        if shown:
            bar.refresh()
        quiet = time.perf_counter() - counts.last_change >= QUIET_AFTER
        if final or (not busy and quiet):
            if not shown:
                bar.disable = True  # a burst shorter than the delay leaves no trace
            bar.close()
            self._bar = None
            self._base = counts

    def _new_bar(self) -> Any:
        from tqdm import tqdm
        # The size once per burst: a terminal that reports none (a pseudo-terminal nobody
        # sized says 0 x 0, and tqdm then hides the line as off-screen) gets $COLUMNS and
        # $LINES, else 100 x 24.
        size = shutil.get_terminal_size((100, 24))
        return tqdm(total=0, file=self.stream if self.stream is not None else sys.stderr,
                    unit="call", delay=self.delay, ncols=size.columns or 100,
                    nrows=size.lines or 24, leave=True,
                    desc="pydron", smoothing=0.1,
                    bar_format="{desc}: {n}/{total} calls {bar} {elapsed}<{remaining}"
                               "{postfix}")

    @staticmethod
    def _postfix(counts: Counts, base: Counts) -> str:
        parts = [f"{counts.running} running", f"{counts.queued} queued"]
        failed = counts.failed - base.failed
        retries = counts.retries - base.retries
        if failed:
            parts.append(f"{failed} failed")
        if retries:
            parts.append(f"{retries} retried")
        cached = counts.cached - base.cached
        if cached:
            parts.append(f"{cached} from the cache")
        parts.append(f"{counts.workers} worker{'s' if counts.workers != 1 else ''}")
        return ", ".join(parts)  # tqdm puts ", " in front
