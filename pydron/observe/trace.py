"""The trace file: a run's calls as Chrome/Perfetto trace events.

The trace-event JSON format (``{"traceEvents": [...]}``) opens in https://ui.perfetto.dev
and in ``chrome://tracing`` -- both load a local file with no server -- and
``python -m pydron timeline`` draws it as a picture (:mod:`pydron.observe.timeline`).

One *process* track per host and pool kind (``vm (multicore)``), one *thread* track per
worker process under it (``worker 3 (pid 4711)``; a worker replaced after a crash is a
new track), and for each call one complete event (``"ph": "X"``) named by the function:

* its bar is the call's run on the worker, placed on the caller's clock: it ends when
  the result arrived and lasts as long as the worker says the call ran;
* ``args``: ``call`` (a number), ``site`` (``file:line`` of the call in a scheduled
  function, else where the function is defined), ``items`` (calls a map chunk stands
  for), ``arg_bytes`` and ``result_bytes`` (as sent), ``queued_ms`` (from submit to being
  sent to the worker), ``transfer_ms`` (from being sent to the result's arrival, less the
  run: the wire both ways and any wait behind earlier calls on that worker), ``run_ms``,
  ``ok``, ``attempt`` and, for a failure, ``error``.

Instant events mark retries (``retry``), workers lost (``worker lost``) and failures
(``failure``) on the track where they happened. Calls that never reached a worker (they
failed while queued) are on a track of their own, ``not run``.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from pydron._version import __version__
from pydron.backend.recorder import WorkerTag
from pydron.observe.recorder import CallRecorder

__all__ = ["trace_document", "write_trace", "trace_path"]

_NOT_RUN = WorkerTag("not run", "", 0, 0)


def trace_path(template: str, started: float | None = None) -> Path:
    """``template`` with ``{time}`` (the run's start, ``20261202-013000``) and ``{pid}``
    filled in."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(started or time.time()))
    return Path(template.replace("{time}", stamp).replace("{pid}", str(os.getpid())))


class _Tracks:
    """Process and thread ids for workers, in the order they were first seen."""

    def __init__(self) -> None:
        self.hosts: dict[tuple[str, str], int] = {}
        self.workers: dict[WorkerTag, tuple[int, int]] = {}

    def of(self, worker: WorkerTag | None) -> tuple[int, int]:
        worker = worker or _NOT_RUN
        ids = self.workers.get(worker)
        if ids is None:
            pid = self.hosts.setdefault((worker.host, worker.pool), len(self.hosts) + 1)
            tid = sum(1 for w in self.workers if self.hosts[(w.host, w.pool)] == pid) + 1
            ids = self.workers[worker] = (pid, tid)
        return ids

    def metadata(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        for (host, pool), pid in self.hosts.items():
            name = "not run" if pool == "not run" else f"{host} ({pool})"
            events.append({"ph": "M", "name": "process_name", "pid": pid,
                           "args": {"name": name}})
            events.append({"ph": "M", "name": "process_sort_index", "pid": pid,
                           "args": {"sort_index": pid}})
        for worker, (pid, tid) in self.workers.items():
            if worker.pool == "not run":
                label = "calls that failed before they ran"
            elif worker.pid:
                label = f"worker {worker.index} (pid {worker.pid})"
            else:
                label = f"{worker.pool} thread {worker.index}"
            events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid,
                           "args": {"name": label}})
            events.append({"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": tid,
                           "args": {"sort_index": worker.index}})
        return events


def trace_document(recorder: CallRecorder) -> dict[str, Any]:
    """The trace-event document of everything ``recorder`` kept."""
    origin = recorder.origin
    tracks = _Tracks()
    for worker in recorder.workers_seen:  # idle workers are rows too
        tracks.of(worker)
    body: list[dict[str, Any]] = []
    calls = 0

    def us(t: float) -> float:
        return round((t - origin) * 1e6, 1)

    for event in list(recorder.events):
        kind = event[0]
        if kind == "call":
            _, record, end, ok, run, result_bytes, error = event
            pid, tid = tracks.of(record.worker)
            calls += 1
            sent = record.sent or end
            args: dict[str, Any] = {
                "call": record.id, "site": record.site, "items": record.weight,
                "arg_bytes": record.nbytes, "result_bytes": result_bytes,
                "queued_ms": round((sent - record.submitted) * 1e3, 3),
                "transfer_ms": round(max(0.0, end - sent - run) * 1e3, 3),
                "run_ms": round(run * 1e3, 3), "ok": ok, "attempt": record.attempt}
            if not ok:
                args["error"] = error
            body.append({"ph": "X", "name": record.name, "cat": "call", "pid": pid,
                         "tid": tid, "ts": us(end - run), "dur": round(max(run, 1e-6) * 1e6, 1),
                         "args": args})
            if not ok:
                body.append({"ph": "i", "s": "t", "name": "failure", "cat": "failure",
                             "pid": pid, "tid": tid, "ts": us(end),
                             "args": {"call": record.id, "error": error}})
        elif kind == "retry":
            _, record, when, worker, why = event
            pid, tid = tracks.of(worker)
            body.append({"ph": "i", "s": "t", "name": "retry", "cat": "retry", "pid": pid,
                         "tid": tid, "ts": us(when), "args": {"call": record.id, "why": why}})
        elif kind == "lost":
            _, worker, when, why = event
            pid, tid = tracks.of(worker)
            body.append({"ph": "i", "s": "t", "name": "worker lost", "cat": "worker",
                         "pid": pid, "tid": tid, "ts": us(when), "args": {"why": why}})
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(recorder.started))
    return {"traceEvents": tracks.metadata() + body, "displayTimeUnit": "ms",
            "otherData": {"pydron": __version__, "started": started, "calls": calls,
                          "cached": recorder.counts().cached}}


def write_trace(recorder: CallRecorder, path: str | os.PathLike[str]) -> Path:
    """Write the trace file atomically (a reader never sees half of one)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    document = trace_document(recorder)
    fd, temporary = tempfile.mkstemp(prefix=target.name + ".", dir=target.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(document, f, separators=(",", ":"))
        os.replace(temporary, target)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
    return target
