"""What runs on a worker for the explicit API, and how its outcomes travel back.

A chunk of a map is one call on the pool but many calls of the user's function; each item
has its own outcome, and a failed item's exception must reach the caller exactly as
raised: its type, args, attributes, chain and frames. Plain pickling keeps none of the
chain and no frames, so a failed item travels as a :class:`Failure`, which pickles through
the same encoder that worker processes use for a call that raised
(:func:`pydron.backend.protocol.shipping.dumps_exception`). In an in-process pool nothing is
pickled and the Failure simply carries the exception object.

Everything here must be importable on a worker by reference (no closures), and cheap:
:func:`run_chunk` is the inner loop of a map of tiny calls.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["Failure", "ChunkOutcome", "run_chunk", "Initializer", "run_initialized",
           "InitializerFailed"]

EXCEPTION_LIMIT = 64 << 20
"""Bytes one item's exception report may take inside a chunk's result."""


class Failure:
    """An item's exception, kept whole across pickling (see the module docstring)."""

    __slots__ = ("exception",)

    def __init__(self, exception: BaseException) -> None:
        self.exception = exception

    def __reduce__(self) -> tuple:
        from pydron.backend.protocol.shipping import dumps_exception
        exc = self.exception
        tb = exc.__traceback__
        return (_rebuild_failure, dumps_exception(exc, tb, EXCEPTION_LIMIT))


def _rebuild_failure(blob: bytes | None, name: str, message: str, text: str) -> Failure:
    from pydron.backend.protocol.shipping import loads_exception
    return Failure(loads_exception(blob, name, message, text))


class ChunkOutcome(tuple):
    """``(outcomes, elapsed, clean)``: one result or :class:`Failure` per item run, in
    order; the seconds the items took (what the map's chunk sizing learns from); whether
    no item failed (then the caller hands the results on without looking at each). With
    ``stop_on_error`` the outcomes end at the first Failure."""

    __slots__ = ()

    def __new__(cls, outcomes: list[Any], elapsed: float, clean: bool = False
                ) -> ChunkOutcome:
        return super().__new__(cls, (outcomes, elapsed, clean))

    def __reduce__(self) -> tuple:
        return (ChunkOutcome, (self[0], self[1], self[2]))


def _strip_first_frame(exc: BaseException) -> BaseException:
    """Drop :func:`run_chunk`'s own frame: the user's function is where the item failed."""
    tb = exc.__traceback__
    if tb is not None and tb.tb_frame.f_code is run_chunk.__code__:
        exc.__traceback__ = tb.tb_next
    return exc


def run_chunk(fn: Callable[..., Any], items: Sequence[tuple], star: bool,
              stop_on_error: bool) -> ChunkOutcome:
    """Call ``fn`` on each item of one chunk: ``fn(*item)`` (``star``) or ``fn(item)``.

    Every BaseException an item raises is its outcome (as on the pools themselves), so
    one failing item cannot take the chunk's other results with it.
    """
    outcomes: list[Any] = []
    append = outcomes.append
    clean = True
    start = time.perf_counter()
    for item in items:
        try:
            append(fn(*item) if star else fn(item))
        except BaseException as exc:  # noqa: B902 -- the item's outcome, whatever it is
            append(Failure(_strip_first_frame(exc)))
            clean = False
            del exc
            if stop_on_error:
                break
    return ChunkOutcome(outcomes, time.perf_counter() - start, clean)


run_chunk.pydron_chunk = True  # type: ignore[attr-defined]  # counted as its items (observe)
run_chunk.pydron_items = Failure  # type: ignore[attr-defined]  # cached item by item


class InitializerFailed(Exception):
    """Raised on a worker, in place of a call, when the executor's initializer raised
    there: the executor is then broken, as the standard library's executors are."""


class Initializer:
    """An executor's ``initializer(*initargs)``, run once per worker before its first call.

    ``token`` names the executor, so two executors sharing a pool each get their own
    initialization. "Once per worker" means once per worker process on process pools and
    once per thread on the threads pool (as ``ThreadPoolExecutor`` does).
    """

    __slots__ = ("token", "function", "args")

    def __init__(self, token: str, function: Callable[..., Any], args: tuple) -> None:
        self.token = token
        self.function = function
        self.args = args

    def __reduce__(self) -> tuple:
        return (Initializer, (self.token, self.function, self.args))


_done = threading.local()


def run_initialized(init: Initializer, fn: Callable[..., Any], args: tuple,
                    kwargs: dict) -> Any:
    """``fn(*args, **kwargs)`` after ``init`` has run in this worker (once)."""
    done = getattr(_done, "tokens", None)
    if done is None:
        done = _done.tokens = {}
    state = done.get(init.token)
    if state is None:
        try:
            init.function(*init.args)
        except BaseException as exc:  # noqa: B902
            done[init.token] = f"{type(exc).__name__}: {exc}"
            raise InitializerFailed(
                f"the executor's initializer {_name(init.function)} raised "
                f"{type(exc).__name__}: {exc}") from exc
        state = done[init.token] = ""
    if state:
        raise InitializerFailed(f"the executor's initializer {_name(init.function)} failed "
                                f"on this worker earlier ({state})")
    return fn(*args, **kwargs)


run_initialized.pydron_wraps = 1  # type: ignore[attr-defined]  # recorded as the call it wraps


def _name(fn: object) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)
