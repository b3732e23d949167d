"""Log records made on workers, sent to the caller's own ``logging`` handlers.

A functional call that logs (``logging.getLogger(__name__).info(...)``) on a worker
process should be seen where the program's log goes -- its handlers, files, formats --
not lost in the worker, nor flattened into stderr text. The worker's root logger gets a
:class:`ForwardingHandler` that sends each record as a LOG frame (JSON of the record's
plain fields, the message already formatted, any exception as text); the master turns
it back into a ``logging.LogRecord`` (:func:`record_of`), tags it with the worker and the
call (``pydron_worker``, ``pydron_call``, ``pydron_call_id``) and hands it to the logger
of the same name in the caller, whose level and handlers decide.

The worker's root level is the caller's (its root logger's effective level when the
pool started), so that a worker does not make and send records the caller drops.
``print`` output is not logging: it still travels as OUTPUT frames.
"""
from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["ForwardingHandler", "encode_record", "record_of", "FIELDS"]

FIELDS = ("name", "levelno", "levelname", "pathname", "filename", "module", "lineno",
          "funcName", "created", "msecs", "relativeCreated", "thread", "threadName",
          "process", "processName")
"""The plain fields of a record that travel as they are."""


def encode_record(record: logging.LogRecord, call_id: int | None) -> bytes:
    """A record as the LOG frame's payload: its plain fields, ``msg`` formatted with its
    arguments (which may not be serialisable), exception and stack as text."""
    data: dict[str, Any] = {key: getattr(record, key, None) for key in FIELDS}
    data["msg"] = record.getMessage()
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    data["exc_text"] = record.exc_text
    data["stack_info"] = record.stack_info
    data["call_id"] = call_id
    return json.dumps(data, default=str).encode("utf-8", "backslashreplace")


def record_of(payload: bytes, worker: str, call_name: Callable[[int], str | None]
              ) -> logging.LogRecord:
    """The caller's LogRecord for a LOG payload, tagged with ``worker`` and the call
    (``call_name(call_id)``: the function's name while the call is known)."""
    data = json.loads(bytes(payload).decode("utf-8", "replace"))
    if not isinstance(data, dict):
        raise ValueError("a LOG frame holds a JSON object")
    call_id = data.pop("call_id", None)
    fields = {key: data.get(key) for key in (*FIELDS, "msg", "exc_text", "stack_info")}
    fields["args"] = None
    record = logging.makeLogRecord(fields)
    record.pydron_worker = worker
    record.pydron_call_id = call_id
    name = call_name(call_id) if isinstance(call_id, int) else None
    record.pydron_call = f"{name} (call {call_id})" if name else (
        f"call {call_id}" if call_id is not None else "")
    return record


class ForwardingHandler(logging.Handler):
    """The worker's handler: ``send(payload)`` for each record, tagged with the call the
    worker runs now (``current()``). A record made while sending one (by the sending code
    itself) is dropped rather than sent in a loop."""

    def __init__(self, send: Callable[[bytes], None], current: Callable[[], int | None]) -> None:
        super().__init__()
        self._send = send
        self._current = current
        self._busy = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(self._busy, "on", False):
            return
        self._busy.on = True
        try:
            self._send(encode_record(record, self._current()))
        except Exception:
            self.handleError(record)
        finally:
            self._busy.on = False
