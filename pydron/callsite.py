"""Where the next functional call is made, for the trace file.

The runtime knows the line of a scheduled function that makes each call; the recorder
(:mod:`pydron.observe.recorder`), which hears of the call from the pool, does not. This
leaf module (no imports of pydron's own, like :mod:`pydron.errors`, so that every layer
may use it) carries that line from one to the other within a thread: the runtime calls
:func:`announce` just before it submits a call, while :data:`wanted` is set (only while
something records: the cost when nothing does is one global test per call), and the
recorder calls :func:`take` at submit.
"""
from __future__ import annotations

import threading

__all__ = ["wanted", "announce", "take", "peek", "here"]

wanted = False
"""Set by the recorder while it records, and while a Dask pool is open (its task keys
name the site, :mod:`pydron.backend.daskpool`); the runtime announces sites only then."""

class _Here(threading.local):
    where: str | None = None  # a class default: reading it never fails in a new thread


here = _Here()
"""This thread's announced site (``here.where``), for a reader that cannot afford a
function call per call (the recorder)."""


def announce(where: str) -> None:
    """The next call submitted from this thread is made at ``where`` (``file:line``)."""
    here.where = where


def take() -> str | None:
    """The site announced for this thread's call being submitted (then forgotten)."""
    where = here.where
    if where is not None:
        here.where = None
    return where


def peek() -> str | None:
    """The site announced for this thread's call, left for :func:`take` (a pool that
    names its tasks after the call site reads it before the recorder takes it)."""
    return here.where
