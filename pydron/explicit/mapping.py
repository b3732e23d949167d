"""``pydron.map``, ``pydron.reduce`` and ``pydron.map_reduce``: many calls of one function.

A map is a :class:`MapRun`: it reads its inputs in the caller's thread, groups them into
chunks, keeps a bounded window of chunks on the pool and hands the outcomes back one
item at a time. Memory is bounded both ways: inputs are read only as far as the window
reaches beyond the results already consumed, and a result is let go as soon as it has
been yielded, so a map over ten million generated items holds a few chunks at a time.

Chunk sizes (``chunksize="auto"``) come from measured call times: the first chunk holds
one item, each later one at most :data:`GROWTH` times the one before, aiming at
:data:`TARGET_SECONDS` of work per chunk (as timed on the worker), so a map of 10 µs
calls pays the round trip to a worker once per few thousand items while a map of
one-second calls sends them one by one and keeps every worker busy.

Failures: with ``errors="raise"`` an item's exception is raised at its position, after
every earlier result has been yielded (calls of later items are then cancelled: queued
ones dropped, running ones stopped); with ``errors="return"`` the exception object is
yielded in the failed item's place and the map goes on.

A tree reduction is a map whose chunks each reduce their items, then a map over those
partial results, and so on until one value is left: every level runs on the workers, the
order of the operands is kept (``fn`` must be associative, not commutative).
"""
from __future__ import annotations

import builtins
import collections
import concurrent.futures as cf
import functools
import itertools
import queue
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from pydron.errors import SerializationError
from pydron.explicit.dispatch import Dispatcher
from pydron.explicit.outcomes import ChunkOutcome, Failure, run_chunk

__all__ = ["MapRun", "ChunkSizer", "map", "reduce", "map_reduce", "TARGET_SECONDS"]

TARGET_SECONDS = 0.03
"""Work per chunk that ``chunksize="auto"`` aims at: long enough that a round trip to a
worker (about 0.1-1 ms) costs a few percent, short enough to spread work evenly."""

MAX_AUTO_CHUNK = 16384
"""The largest chunk ``"auto"`` forms (memory: the window holds a few of them)."""

GROWTH = 4
"""How much larger than the last one a chunk may be: fast enough that a map of tiny
calls reaches its chunk size within a few round trips, slow enough that a first item
much faster than the rest cannot make one chunk hold minutes of work."""

FAST_GROWTH = 16
FAST_CHUNK = 0.001
"""A chunk that took less than this many seconds may be followed by one
:data:`FAST_GROWTH` times as large: its work is still well below a round trip."""

ERRORS = ("raise", "return")
_NO_INITIAL = object()


class ChunkSizer:
    """Picks each chunk's size from the item times measured so far (see the module
    docstring); a fixed integer when the user gave one."""

    def __init__(self, chunksize: int | str, minimum: int = 1) -> None:
        self.fixed = None if chunksize == "auto" else int(chunksize)
        self.minimum = minimum
        self._next = max(1, minimum)
        self._goal = self._next
        self._growth = GROWTH
        self._per_item: float | None = None

    def size(self) -> int:
        """The next chunk's size. Chunks formed one after another (a window being filled)
        keep growing towards the goal the last measurement set."""
        if self.fixed is not None:
            return self.fixed
        size = self._next
        if self._per_item is not None:
            self._next = min(self._goal, size * self._growth)
        return size

    @property
    def guessing(self) -> bool:
        """True until the first chunk's time is known (``"auto"`` only)."""
        return self.fixed is None and self._per_item is None

    def learn(self, items: int, elapsed: float) -> None:
        """A chunk of ``items`` took ``elapsed`` seconds on its worker."""
        if self.fixed is not None or items <= 0:
            return
        per_item = max(elapsed / items, 1e-7)
        # An exponential average: one slow item (a cold cache, a page fault) must not
        # shrink the chunks at once, nor one fast one make them huge.
        self._per_item = per_item if self._per_item is None else \
            0.7 * self._per_item + 0.3 * per_item
        floor = max(self.minimum, 1)
        self._goal = max(floor, min(int(TARGET_SECONDS / self._per_item), MAX_AUTO_CHUNK))
        self._growth = FAST_GROWTH if elapsed < FAST_CHUNK else GROWTH
        # Shrink at once when the goal says so; grow from whichever is larger, this
        # chunk or the chunks already formed since (a late answer for a small chunk
        # must not start the growth again from its size).
        self._next = max(floor, min(self._goal, max(self._growth * items, self._next)))


def _check_chunksize(chunksize: object, what: str) -> int | str:
    if chunksize == "auto":
        return "auto"
    if isinstance(chunksize, bool) or not isinstance(chunksize, int):
        raise TypeError(f"{what}: chunksize must be \"auto\" or an integer >= 1, got "
                        f"{chunksize!r}")
    if chunksize < 1:
        raise ValueError(f"{what}: chunksize must be \"auto\" or an integer >= 1, got "
                         f"{chunksize!r}")
    return chunksize


class _Chunk:
    """Consecutive items sent as one call; the items are kept until its outcome is in,
    so that a chunk that fails as a whole can be split (see :meth:`MapRun._failed`)."""

    __slots__ = ("future", "items", "direct")

    def __init__(self, future: cf.Future, items: list[Any], direct: bool) -> None:
        self.future = future
        self.items: list[Any] | None = items
        self.direct = direct   # one item, sent as a plain call of the user's function


class MapRun:
    """One map in progress (see the module docstring). ``results()`` is its generator;
    the first window of chunks is submitted at once, before the first ``next()``."""

    def __init__(self, dispatcher: Dispatcher, fn: Callable[..., Any],
                 iterables: tuple[Iterable[Any], ...], *, ordered: bool = True,
                 chunksize: int | str = "auto", errors: str = "raise",
                 timeout: float | None = None, runner: Callable[..., ChunkOutcome] = run_chunk,
                 runner_args: tuple = (), minimum_chunk: int = 1,
                 window: int | None = None, star: bool | None = None) -> None:
        if not iterables:
            raise TypeError("map() needs at least one iterable")
        self.dispatcher = dispatcher
        self.fn = fn
        zipped = len(iterables) != 1
        self._inputs: Iterator[Any] = zip(*iterables) if zipped else iter(iterables[0])
        self.star = zipped if star is None else star
        self.ordered = ordered
        self.errors = errors
        self.stop_on_error = errors == "raise"
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.sizer = ChunkSizer(chunksize, minimum_chunk)
        self.runner = runner
        self.runner_args = runner_args
        self.window = window or dispatcher.limit
        self._chunks: collections.deque[_Chunk] = collections.deque()  # submitted, in order
        self._done: queue.SimpleQueue[_Chunk] = queue.SimpleQueue()  # unordered: finished
        self._exhausted = False
        self._input_error: Exception | None = None
        self._closed = False
        self.items_read = 0
        self._top_up()

    # -- feeding -----------------------------------------------------------------------------
    def _top_up(self) -> None:
        """Submit chunks until the window is full or the inputs are exhausted."""
        # Until the first chunk's time is known, one one-item chunk per worker: more of
        # them would only be more round trips before the chunks can grow.
        window = self.window if not self.sizer.guessing else \
            min(self.window, self.dispatcher.source.parallelism())
        while not self._exhausted and len(self._chunks) < window:
            size = self.sizer.size()
            items: list[Any] = []
            try:
                items.extend(itertools.islice(self._inputs, size))
            except Exception as exc:
                # The input itself failed: raised after the results of the items read
                # before it, as the builtin map() has it.
                self._input_error = exc
                self._exhausted = True
                del exc
            if len(items) < size:
                self._exhausted = True
                if not items:
                    return
            self.items_read += len(items)
            self._chunks.append(self._submit(items))
            del items

    def _submit(self, items: list[Any], direct: bool = False) -> _Chunk:
        if direct:
            args = tuple(items[0]) if self.star else (items[0],)
            future = self.dispatcher.submit(self.fn, args, {})
        else:
            future = self.dispatcher.submit(
                self.runner, (self.fn, items, self.star, self.stop_on_error,
                              *self.runner_args), {}, origin=self.fn)
        chunk = _Chunk(future, items, direct)
        if not self.ordered:
            future.add_done_callback(functools.partial(_finished, self._done, chunk))
        return chunk

    def _failed(self, chunk: _Chunk, error: BaseException) -> list[Any] | None:
        """A chunk failed as a whole: an item could not be sent, its worker was lost past
        the retries, it ran out of time, the pool was shut down. A chunk of one item:
        that is the item's outcome. A longer one is split into single items sent again
        in its place, so that the failure lands on the item it belongs to and the items
        before it still yield their results (they run a second time: functional calls
        may, as after a lost worker). Returns the outcomes to yield, or None
        after a split."""
        items, chunk.items = chunk.items or [], None
        # Items sent again go as plain calls of the user's function (a map's; a reduction
        # must keep reducing), so that the pool's own error message names that function.
        direct = self.runner is run_chunk
        if len(items) <= 1:
            redo = direct and not chunk.direct and isinstance(error, SerializationError)
            if not redo:
                return [Failure(error)]
            singles = [self._submit(items, direct=True)]  # its message named run_chunk
        else:
            singles = [self._submit([item], direct=direct) for item in items]
        if self.ordered:
            self._chunks.popleft()
            self._chunks.extendleft(reversed(singles))
        else:
            self._chunks.remove(chunk)
            self._chunks.extend(singles)
        return None

    # -- consuming ---------------------------------------------------------------------------
    def _wait(self, future: cf.Future) -> Any:
        left = None if self.deadline is None else self.deadline - time.monotonic()
        return future.result(timeout=left)

    def _next_finished(self) -> _Chunk:
        if self.ordered:
            return self._chunks[0]
        left = None if self.deadline is None else max(0.0, self.deadline - time.monotonic())
        try:
            return self._done.get(timeout=left)
        except queue.Empty:
            raise cf.TimeoutError() from None

    def results(self) -> Iterator[Any]:
        """The outcomes, one per item: in input order, or in completion order."""
        gen = self._results()
        weakref.finalize(gen, self.close)  # a map dropped before its first next()
        return gen

    def _results(self) -> Iterator[Any]:
        try:
            while self._chunks:
                chunk = self._next_finished()
                try:
                    outcome: ChunkOutcome = self._wait(chunk.future)
                except BaseException as exc:  # noqa: B902
                    if not chunk.future.done():
                        raise             # this map's own timeout, or a KeyboardInterrupt
                    failed = self._failed(chunk, exc)
                    del exc
                    if failed is None:
                        continue          # split: its items come again one by one
                    outcome = ChunkOutcome(failed, 0.0)
                else:
                    if chunk.direct:
                        outcome = ChunkOutcome([outcome], 0.0)
                    else:
                        self.sizer.learn(len(outcome[0]), outcome[1])
                chunk.items = None
                outcomes, clean = outcome[0], outcome[2]
                del outcome
                self._chunks.remove(chunk) if not self.ordered else self._chunks.popleft()
                self._top_up()
                if clean:
                    # No failure inside: hand the results on at C speed, each dropped
                    # (popped) as it is yielded.
                    outcomes.reverse()
                    yield from builtins.map(outcomes.pop, itertools.repeat(-1, len(outcomes)))
                    del outcomes, chunk
                    continue
                for i in range(len(outcomes)):
                    value = outcomes[i]
                    outcomes[i] = None      # dropped once yielded
                    if type(value) is Failure:
                        exc = value.exception
                        del value
                        if self.stop_on_error:
                            self.close()
                            try:
                                raise exc
                            finally:
                                del exc
                        value = exc
                        del exc
                    yield value
                    del value
                del outcomes, chunk
            if self._input_error is not None:
                error, self._input_error = self._input_error, None
                try:
                    raise error
                finally:
                    del error
        finally:
            self.close()

    def close(self) -> None:
        """Stop: queued chunks are cancelled, running ones withdrawn from the pool."""
        if self._closed:
            return
        self._closed = True
        self._exhausted = True
        chunks, self._chunks = list(self._chunks), collections.deque()
        for chunk in chunks:
            if not chunk.future.cancel():
                self.dispatcher.withdraw(chunk.future)


def _finished(done: queue.SimpleQueue, chunk: _Chunk, future: cf.Future) -> None:
    done.put(chunk)


# ------------------------------------------------------------------------------ public faces


def _dispatcher_of(executor: Any) -> Dispatcher:
    if executor is None:
        from pydron.explicit.executor import default_dispatcher
        return default_dispatcher()
    dispatcher = getattr(executor, "dispatcher", None)
    if not isinstance(dispatcher, Dispatcher):
        raise TypeError(f"executor must be a pydron.Executor, not {type(executor).__name__}")
    return dispatcher


def map(fn: Callable[..., Any], *iterables: Iterable[Any], ordered: bool = True,
        chunksize: int | str = "auto", errors: str = "raise",
        executor: Any = None, timeout: float | None = None,
        call_timeout: float | None = None) -> Iterator[Any]:
    """``fn`` over the items of ``iterables`` (several: ``fn(a, b)`` for zipped items), on
    the pool: a generator of the results. See the module docstring for ``ordered``,
    ``chunksize`` and ``errors``; ``executor``: a :class:`pydron.Executor` whose pool to
    use (default: the process-wide pool); ``timeout``: seconds from this call after which
    waiting for a result raises TimeoutError; ``call_timeout``: seconds one call may run
    before it is stopped and fails with :class:`pydron.CallTimeoutError` (it then applies
    to each item: ``"auto"`` chunks are single items; with an integer chunksize, to each
    chunk)."""
    if not callable(fn):
        raise TypeError(f"pydron.map() needs a callable, got {type(fn).__name__}")
    if errors not in ERRORS:
        raise ValueError(f"pydron.map(): errors must be \"raise\" or \"return\", got "
                         f"{errors!r}")
    chunksize = _check_chunksize(chunksize, "pydron.map()")
    dispatcher = _dispatcher_of(executor)
    if call_timeout is not None:
        _check_timeout(call_timeout)
        dispatcher = Dispatcher(dispatcher.source, dispatcher.initializer, call_timeout)
        if chunksize == "auto":
            chunksize = 1
    return MapRun(dispatcher, fn, iterables, ordered=bool(ordered),
                  chunksize=chunksize, errors=errors, timeout=timeout).results()


def _check_timeout(value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not 0 < value < float("inf"):
        raise ValueError(f"call_timeout must be a number of seconds > 0, got {value!r}")


def reduce_chunk(fn: Callable[[Any, Any], Any], items: list[Any], star: bool,
                 stop_on_error: bool, mapper: Callable[..., Any] | None = None
                 ) -> ChunkOutcome:
    """One node of a tree reduction: ``functools.reduce(fn, items)`` (after ``mapper`` on
    each item, for map_reduce); its one outcome is the value or a Failure."""
    start = time.perf_counter()
    try:
        if mapper is not None:
            values = (mapper(*item) for item in items) if star else builtins.map(mapper, items)
            value = functools.reduce(fn, values)
        else:
            value = functools.reduce(fn, items)
    except BaseException as exc:  # noqa: B902 -- the node's outcome
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code in _OWN_CODES:
            tb = tb.tb_next
        exc.__traceback__ = tb
        value = Failure(exc)
        del exc, tb
    return ChunkOutcome([value], time.perf_counter() - start)


reduce_chunk.pydron_chunk = True  # type: ignore[attr-defined]  # counted as its items (observe)


_OWN_CODES = {reduce_chunk.__code__}


def _tree(dispatcher: Dispatcher, fn: Callable[[Any, Any], Any], level: Iterable[Any],
          mapper: Callable[..., Any] | None, star: bool) -> Any:
    """Reduce level by level until one value is left; the first failure is raised."""
    first = True
    while True:
        source: Iterable[Any] = level
        run = MapRun(dispatcher, fn, (source,), chunksize="auto", errors="raise",
                     runner=reduce_chunk, runner_args=(mapper if first else None,),
                     minimum_chunk=1 if first else 2, star=star and first)
        partials = list(run.results())
        if first and not partials:
            return _NO_INITIAL
        first, mapper = False, None
        if len(partials) == 1:
            return partials[0]
        level = partials


def reduce(fn: Callable[[Any, Any], Any], iterable: Iterable[Any],
           initial: Any = _NO_INITIAL, *, executor: Any = None) -> Any:
    """``functools.reduce(fn, iterable[, initial])`` as a tree whose levels run on the
    workers. ``fn`` must be associative (``fn(fn(a, b), c) == fn(a, fn(b, c))``); the order
    of operands is kept, so it need not be commutative."""
    if not callable(fn):
        raise TypeError(f"pydron.reduce() needs a callable, got {type(fn).__name__}")
    items: Iterable[Any] = iterable if initial is _NO_INITIAL else \
        itertools.chain((initial,), iterable)
    value = _tree(_dispatcher_of(executor), fn, items, None, False)
    if value is _NO_INITIAL:
        raise TypeError("reduce() of empty iterable with no initial value")
    return value


def map_reduce(mapper: Callable[..., Any], reducer: Callable[[Any, Any], Any],
               *iterables: Iterable[Any], executor: Any = None) -> Any:
    """``functools.reduce(reducer, map(mapper, *iterables))``: each chunk maps and
    reduces its items on a worker, then the partial results are reduced as a tree
    (``reducer`` must be associative). TypeError for empty input, as reduce() has it."""
    if not callable(mapper) or not callable(reducer):
        raise TypeError("pydron.map_reduce() needs a callable mapper and reducer")
    if not iterables:
        raise TypeError("pydron.map_reduce() needs at least one iterable")
    star = len(iterables) != 1
    source = iterables[0] if not star else zip(*iterables)
    value = _tree(_dispatcher_of(executor), reducer, source, mapper, star)
    if value is _NO_INITIAL:
        raise TypeError("map_reduce() of empty iterable")
    return value
