"""Durable results: functional calls answered from an on-disk cache across runs.

A pipeline killed at any moment (``kill -9`` of the caller or of a worker) and started
again recomputes only the calls whose results were not stored yet::

    from pydron.backend.multicore import MulticorePool
    from pydron.result_cache import CachingPool, ResultCache

    pool = CachingPool(MulticorePool(4), ResultCache("~/.cache/my-pipeline", "20GB"))

Three parts, one job each: :mod:`~pydron.result_cache.keys` (what identifies a call: its code
and its arguments' content), :mod:`~pydron.result_cache.store` (where results live: a
diskcache directory), :mod:`~pydron.result_cache.pool` (a Pool wrapper that uses both). The
helpers :func:`info_text` and :func:`clear` back ``python -m pydron cache info|clear PATH``.
"""
from __future__ import annotations

import os

from pydron.result_cache.keys import args_digest, call_key, code_digest
from pydron.result_cache.pool import CachingPool
from pydron.result_cache.store import (
    CacheWarning, ResultCache, open_existing, parse_size, store_info,
)

__all__ = ["ResultCache", "CachingPool", "CacheWarning", "call_key", "code_digest",
           "args_digest", "parse_size", "info_text", "clear"]


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def info_text(path: str | os.PathLike[str]) -> str:
    """What ``python -m pydron cache info PATH`` prints: entries, size on disk, limit.
    Creates nothing: a path without a cache says so."""
    path = os.path.expanduser(os.fspath(path))
    store = open_existing(path)
    if store is None:
        return f"no pydron cache at {path}"
    try:
        info = store_info(store, path)
    finally:
        store.close()
    limit = "none" if info["max_size"] is None else _human(info["max_size"])
    return (f"pydron cache at {info['path']}\n"
            f"  entries:  {info['entries']}\n"
            f"  on disk:  {_human(info['bytes'])} ({info['bytes']} bytes)\n"
            f"  max size: {limit}")


def clear(path: str | os.PathLike[str]) -> int:
    """``python -m pydron cache clear PATH``: remove every entry; the number removed
    (0 where there is no cache). Safe while another process uses the cache."""
    store = open_existing(os.path.expanduser(os.fspath(path)))
    if store is None:
        return 0
    try:
        return int(store.clear(retry=True))
    finally:
        store.close()
