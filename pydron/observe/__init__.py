"""Seeing long runs: progress, traces and their timeline.

What turns it on, checked each time a pool is built from a configuration
(:data:`pydron.backend.recorder.on_config`): the environment first, then ``pydron.conf``:

* the progress line (:mod:`.progress`): ``PYDRON_PROGRESS=1`` or ``0``; else
  ``"progress": true`` or ``false``; else on when stderr is a terminal;
* the trace file (:mod:`.trace`): ``PYDRON_TRACE=path`` (empty: off); else
  ``"trace": "trace-{time}.json"``. It is written when the program exits (and by
  :func:`write_trace`).

Once on, the recorder (:mod:`.recorder`) stays for the process's life: calls of every
pool and every API report to the same one.
"""
from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydron import callsite
from pydron.backend import recorder as backend_recorder
from pydron.observe.recorder import CallRecorder

__all__ = ["configure_from", "active_recorder", "write_trace", "progress_wanted",
           "trace_wanted", "recording"]

_log = logging.getLogger("pydron.observe")
_lock = threading.Lock()
_recorder: CallRecorder | None = None
_progress: Any = None
_trace_template: str | None = None
_exit_hook = False


def progress_wanted(config: Any, environ: Any = os.environ, stream: Any = None) -> bool:
    """Whether the progress line is on: ``PYDRON_PROGRESS``, else the configuration's
    ``progress``, else whether stderr is a terminal."""
    value = environ.get("PYDRON_PROGRESS", "").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    setting = getattr(config, "progress", None)
    if setting is not None:
        return bool(setting)
    stream = stream if stream is not None else sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def trace_wanted(config: Any, environ: Any = os.environ) -> str | None:
    """The trace file's name template, or None: ``PYDRON_TRACE``, else ``trace``."""
    if "PYDRON_TRACE" in environ:
        return environ["PYDRON_TRACE"].strip() or None
    return getattr(config, "trace", None) or None


def configure_from(config: Any) -> None:
    """Turn on what ``config`` (and the environment) asks for; never turns anything off
    (a run's calls keep reporting to one recorder)."""
    global _recorder, _progress, _trace_template, _exit_hook
    from pydron.backend.context import in_worker
    if in_worker():
        return  # a worker's own inline pool: the caller records its calls
    progress = progress_wanted(config)
    trace = trace_wanted(config)
    if not (progress or trace):
        return
    with _lock:
        if _recorder is None:
            _recorder = CallRecorder(keep_events=bool(trace))
            backend_recorder.set_active(_recorder)
            callsite.wanted = True
        elif trace and not _recorder.keep_events:
            _recorder.keep_events = True  # from now on
        if trace and _trace_template is None:
            _trace_template = trace
        if progress and _progress is None:
            from pydron.observe.progress import ProgressLine
            _progress = ProgressLine(_recorder)
        if not _exit_hook:
            _exit_hook = True
            atexit.register(_at_exit)


def active_recorder() -> CallRecorder | None:
    return _recorder


@contextlib.contextmanager
def recording(keep_events: bool = True) -> Iterator[CallRecorder]:
    """Record the calls made inside the block in a recorder of their own (the process's,
    if one is on, hears nothing of them meanwhile): ``with recording() as rec: ...``, then
    :func:`pydron.observe.trace.write_trace` (rec, path) or ``rec.counts()``."""
    previous, wanted = backend_recorder.active, callsite.wanted
    recorder = CallRecorder(keep_events=keep_events)
    backend_recorder.set_active(recorder)
    callsite.wanted = True
    try:
        yield recorder
    finally:
        backend_recorder.set_active(previous)
        callsite.wanted = wanted


def write_trace(path: str | os.PathLike[str] | None = None) -> Path | None:
    """Write the trace of the calls so far (to ``path``, default the configured name);
    None when nothing is traced."""
    from pydron.observe.trace import trace_path
    from pydron.observe.trace import write_trace as write
    recorder = _recorder
    if recorder is None or not recorder.keep_events:
        return None
    template = str(path) if path is not None else _trace_template
    if template is None:
        return None
    return write(recorder, trace_path(template, recorder.started))


def _at_exit() -> None:
    if _progress is not None:
        try:
            _progress.stop()
        except Exception:
            pass
    try:
        written = write_trace()
    except OSError as exc:
        _log.error("pydron: cannot write the trace file: %s", exc)
        return
    if written is not None:
        print(f"pydron: trace written to {written}", file=sys.stderr)
