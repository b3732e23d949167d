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

A kept value that moved (see :mod:`pydron.backend.engine.locality`) is a complete event
named ``transfer`` (worker to worker, on the receiving worker's track) or ``fetch`` (to the
caller, on the holding worker's track), category ``transfer``, with ``bytes``, ``from``
and ``to`` (``host/pool/index`` of each worker, or ``caller``) in its args.

Instant events mark retries (``retry``), workers lost (``worker lost``) and failures
(``failure``) on the track where they happened. Calls that never reached a worker (they
failed while queued) are on a track of their own, ``not run``.

The file is written once, at the end, from the recorder's reports; each event is
formatted as a line of JSON text directly (json.dumps only for the strings in it), which
is several times faster than building and dumping a dict per event: a run of a million
calls should not wait long at its exit.
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
from pydron.observe.recorder import FINISHED, LOST, MOVED, REQUEUED, CallRecorder

__all__ = ["trace_document", "trace_text", "write_trace", "trace_path"]

_NOT_RUN = WorkerTag("not run", "", 0, 0)
_quote = json.JSONEncoder(ensure_ascii=False).encode


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
        self._threads: dict[int, int] = {}  # pid -> threads so far

    def of(self, worker: tuple | None) -> tuple[int, int]:
        worker = WorkerTag(*worker) if worker else _NOT_RUN
        ids = self.workers.get(worker)
        if ids is None:
            pid = self.hosts.setdefault((worker.host, worker.pool), len(self.hosts) + 1)
            tid = self._threads[pid] = self._threads.get(pid, 0) + 1
            ids = self.workers[worker] = (pid, tid)
        return ids

    def metadata(self) -> list[str]:
        lines = []
        for (host, pool), pid in self.hosts.items():
            name = "not run" if pool == "not run" else f"{host} ({pool})"
            lines.append(f'{{"ph":"M","name":"process_name","pid":{pid},'
                         f'"args":{{"name":{_quote(name)}}}}}')
            lines.append(f'{{"ph":"M","name":"process_sort_index","pid":{pid},'
                         f'"args":{{"sort_index":{pid}}}}}')
        for worker, (pid, tid) in self.workers.items():
            if worker.pool == "not run":
                label = "calls that failed before they ran"
            elif worker.pid:
                label = f"worker {worker.index} (pid {worker.pid})"
            else:
                label = f"{worker.pool} thread {worker.index}"
            lines.append(f'{{"ph":"M","name":"thread_name","pid":{pid},"tid":{tid},'
                         f'"args":{{"name":{_quote(label)}}}}}')
            lines.append(f'{{"ph":"M","name":"thread_sort_index","pid":{pid},"tid":{tid},'
                         f'"args":{{"sort_index":{worker.index}}}}}')
        return lines


def trace_text(recorder: CallRecorder) -> str:
    """The trace-event document of everything ``recorder`` kept, as JSON text."""
    origin = recorder.origin
    tracks = _Tracks()
    for worker in recorder.seen_workers():  # idle workers are rows too
        tracks.of(worker)
    body: list[str] = []
    append = body.append
    calls = 0
    quoted: dict[str, str] = {}

    def q(text: str) -> str:
        found = quoted.get(text)
        if found is None:
            found = quoted[text] = _quote(text)
        return found

    for event in list(recorder.events):
        kind = event[0]
        if kind == FINISHED:
            (_, end, call, name, site, items, nbytes, submitted, sent, worker, attempt, ok,
             run, result_bytes, error) = event
            pid, tid = tracks.of(worker)
            calls += 1
            failure = f',"error":{_quote(error)}' if not ok else ""
            append(f'{{"ph":"X","name":{q(name)},"cat":"call","pid":{pid},'
                   f'"tid":{tid},"ts":{(end - run - origin) * 1e6:.1f},'
                   f'"dur":{max(run, 1e-6) * 1e6:.1f},"args":{{"call":{call},'
                   f'"site":{q(site)},"items":{items},'
                   f'"arg_bytes":{nbytes},"result_bytes":{result_bytes},'
                   f'"queued_ms":{(sent - submitted) * 1e3:.3f},'
                   f'"transfer_ms":{max(0.0, end - sent - run) * 1e3:.3f},'
                   f'"run_ms":{run * 1e3:.3f},"ok":{"true" if ok else "false"},'
                   f'"attempt":{attempt}{failure}}}}}')
            if not ok:
                append(f'{{"ph":"i","s":"t","name":"failure","cat":"failure","pid":{pid},'
                       f'"tid":{tid},"ts":{(end - origin) * 1e6:.1f},'
                       f'"args":{{"call":{call},"error":{_quote(error)}}}}}')
        elif kind == REQUEUED:
            _, when, call, worker, why = event
            pid, tid = tracks.of(worker)
            append(f'{{"ph":"i","s":"t","name":"retry","cat":"retry","pid":{pid},'
                   f'"tid":{tid},"ts":{(when - origin) * 1e6:.1f},'
                   f'"args":{{"call":{call},"why":{_quote(why)}}}}}')
        elif kind == MOVED:
            _, end, what, source, target, nbytes, seconds = event
            pid, tid = tracks.of(target if target is not None else source)
            append(f'{{"ph":"X","name":{q(what)},"cat":"transfer","pid":{pid},'
                   f'"tid":{tid},"ts":{(end - seconds - origin) * 1e6:.1f},'
                   f'"dur":{max(seconds, 1e-6) * 1e6:.1f},"args":{{"bytes":{nbytes},'
                   f'"from":{q(_endpoint(source))},"to":{q(_endpoint(target))}}}}}')
        elif kind == LOST:
            _, when, worker, why = event
            pid, tid = tracks.of(worker)
            append(f'{{"ph":"i","s":"t","name":"worker lost","cat":"worker","pid":{pid},'
                   f'"tid":{tid},"ts":{(when - origin) * 1e6:.1f},'
                   f'"args":{{"why":{_quote(why)}}}}}')
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(recorder.started))
    other = json.dumps({"pydron": __version__, "started": started, "calls": calls,
                        "cached": recorder.counts().cached})
    events = ",\n".join(tracks.metadata() + body)
    return f'{{"traceEvents":[\n{events}\n],"displayTimeUnit":"ms","otherData":{other}}}\n'


def _endpoint(worker: tuple | None) -> str:
    """A worker (``(pool, host, index, pid)``) as the trace names a transfer's end."""
    if worker is None:
        return "caller"
    pool, host, index, _ = worker
    return f"{host}/{pool}/{index}"


def trace_document(recorder: CallRecorder) -> dict[str, Any]:
    """The trace-event document as Python data (what the file holds)."""
    return json.loads(trace_text(recorder))


def write_trace(recorder: CallRecorder, path: str | os.PathLike[str]) -> Path:
    """Write the trace file atomically (a reader never sees half of one)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    text = trace_text(recorder)
    fd, temporary = tempfile.mkstemp(prefix=target.name + ".", dir=target.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(temporary, target)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
    return target
