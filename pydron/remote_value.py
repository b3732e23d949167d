"""A functional call's result that stays on the worker that computed it.

A large result read only by other functional calls need not travel to the caller and
back: the worker keeps it, and the caller holds a :class:`Remote` in its place. Passed to
another call of the same pool, a Remote travels as a key (the worker that holds the value
uses it where it lies; another fetches it); read by anything else -- a sync point, a
``return``, a ``print``, a plain step, another pool -- it is fetched once and the value is
used (:meth:`Remote.get`, :func:`materialize`).

This module sits below both the runtime and the backend (neither imports the other): the
runtime only needs to recognise a Remote and ask for its value; the pool that made it
(its *source*, see :class:`ValueSource`) does the fetching, and hears when nobody holds
the Remote any more, so that the worker can drop the value at once.
"""
from __future__ import annotations

import threading
from typing import Any, Protocol

__all__ = ["Remote", "ValueSource", "materialize", "materialize_args", "live_remotes",
           "as_value"]

_MISSING = object()


class ValueSource(Protocol):
    """The pool behind a Remote: it fetches values and hears of Remotes going away."""

    def fetch_value(self, remote: Remote) -> Any:
        """The value, fetched from a worker (blocking); raises what the producing call
        would raise if the value cannot be had (its worker lost beyond retries)."""

    def prefetch_value(self, remote: Remote) -> None:
        """Start fetching the value without waiting for it (a later get() waits)."""

    def forget_value(self, key: int) -> None:
        """No Remote of ``key`` exists any more in the caller: the workers may drop it."""


_live = 0
_live_lock = threading.Lock()


def live_remotes() -> int:
    """How many Remotes exist in this process (a truth test saves work when none does)."""
    return _live


class Remote:
    """The caller's handle on a value kept on a worker: ``key`` names it in its pool
    (``source``), ``nbytes`` is its pickled size, ``label`` its type's name."""

    __slots__ = ("source", "key", "nbytes", "label", "parts", "_value", "_lock",
                 "__weakref__")

    def __init__(self, source: ValueSource, key: int, nbytes: int, label: str,
                 parts: tuple | None = None) -> None:
        global _live
        self.source = source
        self.key = key
        self.nbytes = nbytes
        self.label = label
        self.parts = parts
        """A tuple result whose large items were kept each on its own: the items, kept
        ones as Remotes (key 0: the tuple itself has no key). Unpacking it
        (``a, b = f(x)``) hands the items on without fetching any."""
        self._value: Any = _MISSING
        self._lock = threading.Lock()
        with _live_lock:
            _live += 1

    def __del__(self) -> None:
        global _live
        with _live_lock:
            _live -= 1
        if not self.key:
            return
        try:
            self.source.forget_value(self.key)
        except Exception:  # noqa: BLE001 -- at interpreter exit the pool may be gone
            pass

    def get(self) -> Any:
        """The value: fetched once (blocking), then the same object every time."""
        value = self._value
        if value is not _MISSING:
            return value
        with self._lock:
            if self._value is _MISSING:
                if self.parts is not None:
                    self._value = tuple(materialize(p) for p in self.parts)
                else:
                    self._value = self.source.fetch_value(self)
            return self._value

    def prefetch(self) -> None:
        """Have the value on its way, if it is not here yet."""
        if self._value is not _MISSING:
            return
        if self.parts is None:
            self.source.prefetch_value(self)
            return
        for part in self.parts:
            if type(part) is Remote:
                part.prefetch()

    @property
    def here(self) -> bool:
        """Whether the value has been fetched to this process already."""
        return self._value is not _MISSING

    def __reduce_ex__(self, protocol: int) -> Any:
        # Pickled by its own pool for one of its calls, a Remote travels as its key (the
        # pool's pickler is told so by the hook it installs); pickled by anyone else, it
        # is the value itself.
        hook = _hooks.hooks.get(self.source)
        if hook is not None:
            return hook(self)
        return as_value(self)

    # ``f(*r)`` and ``f(**r)`` unpack the value (argument building is plain code).
    def __iter__(self) -> Any:
        return iter(self.get())

    def keys(self) -> Any:
        return self.get().keys()

    def __getitem__(self, key: Any) -> Any:
        return self.get()[key]

    def __repr__(self) -> str:
        where = "here" if self.here else "on a worker"
        return f"<pydron.Remote {self.label} {self.nbytes} bytes, {where}>"


class _HookTable(threading.local):
    """Per thread: source -> how a Remote of that source pickles while that source is
    pickling a call's arguments (see :func:`set_reduce_hook`)."""

    def __init__(self) -> None:
        self.hooks: dict[Any, Any] = {}


_hooks = _HookTable()


def set_reduce_hook(source: Any, hook: Any) -> Any:
    """Make Remotes of ``source`` pickle through ``hook(remote)`` in this thread (None:
    as their values again); returns the hook it replaces."""
    hooks = _hooks.hooks
    old = hooks.get(source)
    if hook is None:
        hooks.pop(source, None)
    else:
        hooks[source] = hook
    return old


def _same(value: Any) -> Any:
    return value


def as_value(remote: Remote) -> tuple:
    """How ``remote`` pickles as the value it stands for (the value is pickled as it
    would be on its own, out-of-band buffers and all)."""
    return _same, (remote.get(),)


def materialize(value: Any) -> Any:
    """``value``, or the value a Remote stands for."""
    return value.get() if type(value) is Remote else value


def materialize_args(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """``(args, kwargs)`` with each top-level Remote replaced by its value (for a pool
    that did not make them)."""
    if not _live:
        return args, kwargs
    if any(type(a) is Remote for a in args):
        args = tuple(materialize(a) for a in args)
    if any(type(v) is Remote for v in kwargs.values()):
        kwargs = {k: materialize(v) for k, v in kwargs.items()}
    return args, kwargs
