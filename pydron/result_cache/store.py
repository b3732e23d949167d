"""The on-disk store of results: a key -> pickled value map that survives ``kill -9``.

Built on :class:`diskcache.Cache` rather than files of our own, because what a durable
result cache needs is exactly what it already does well and what is easy to get wrong:

* every write is one SQLite transaction (values above 32 KB go to a file first, then the
  row that names it is committed), so a process killed at any instant leaves either the
  old state or the new one, never a torn entry;
* several processes (two runs of a pipeline, a run and ``python -m pydron cache info``)
  may read and write one directory at once: SQLite's locking, with retries on a busy
  database;
* a size limit with eviction (``max_size``), kept without scanning the directory.

Durability is against the death of processes (``kill -9``, a crash), which is what a
long pipeline meets: SQLite runs in WAL mode with ``synchronous=NORMAL``, so a committed
entry is in the operating system's hands at once, without an fsync per result (which
would cost milliseconds each). A power cut may lose the last results, never corrupt the
store.

Eviction is "least recently stored": a hit then costs one read and no write (LRU would
write an access time on every hit, which serializes readers). Values are pickled here
(protocol 5; cloudpickle for what plain pickle refuses), so diskcache only sees bytes.
"""
from __future__ import annotations

import logging
import os
import pickle
import re
import threading
import warnings
from typing import Any

import diskcache

__all__ = ["ResultCache", "parse_size", "CacheWarning", "dumps", "store_info",
           "open_existing"]

_log = logging.getLogger("pydron.result_cache")

_UNLIMITED = 2 ** 62
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3, "t": 1024 ** 4,
          "kb": 1000, "mb": 1000 ** 2, "gb": 1000 ** 3, "tb": 1000 ** 4,
          "kib": 1024, "mib": 1024 ** 2, "gib": 1024 ** 3, "tib": 1024 ** 4,
          "ki": 1024, "mi": 1024 ** 2, "gi": 1024 ** 3, "ti": 1024 ** 4}
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*")


class CacheWarning(UserWarning):
    """A result that the cache could not store (it is still returned to the caller)."""


def parse_size(size: int | str) -> int:
    """Bytes from an int or a string: ``"500MB"``, ``"10GB"`` (powers of 1000),
    ``"1.5GiB"`` or ``"1.5Gi"`` (powers of 1024), ``"2G"`` (a bare letter: powers of 1024,
    as in ``du``), ``"4096"``. Case does not matter."""
    if isinstance(size, bool):
        raise TypeError(f"a size is an int of bytes or a string like '10GB', not {size!r}")
    if isinstance(size, int):
        if size < 0:
            raise ValueError(f"a size cannot be negative: {size}")
        return size
    if not isinstance(size, str):
        raise TypeError(f"a size is an int of bytes or a string like '10GB', not {size!r}")
    match = _SIZE.fullmatch(size)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise ValueError(f"cannot read {size!r} as a size: use bytes or a number with "
                         "B, KB, MB, GB, TB, KiB, MiB, GiB or TiB")
    return int(float(match.group(1)) * _UNITS[unit])


def dumps(value: object) -> bytes:
    """Pickle a result: plain pickle (classes by reference, which the next run of the same
    program can load), else cloudpickle (lambdas, local classes: by value)."""
    try:
        return pickle.dumps(value, 5)
    except Exception:
        import cloudpickle
        return cloudpickle.dumps(value, 5)


_shared: dict[str, ResultCache] = {}
_shared_lock = threading.Lock()


class ResultCache:
    """Results of functional calls by key, in the directory ``path`` (created if need be).

    ``max_size``: an int of bytes or a string (see :func:`parse_size`); None for no limit.
    When the store grows past it, the entries stored longest ago are evicted. Safe to use
    from several threads and several processes at once; each process opens its own.
    """

    def __init__(self, path: str | os.PathLike[str], max_size: int | str | None = None
                 ) -> None:
        self.path = os.path.expanduser(os.fspath(path))
        self.max_size = None if max_size is None else parse_size(max_size)
        limit = _UNLIMITED if self.max_size is None else self.max_size
        self._store = diskcache.Cache(self.path, size_limit=limit,
                                      eviction_policy="least-recently-stored")
        self._warned: set[str] = set()
        self._lock = threading.Lock()

    @classmethod
    def shared(cls, path: str | os.PathLike[str], max_size: int | str | None = None
               ) -> ResultCache:
        """This process's one ResultCache for ``path``: what every pool built from a
        configuration uses, so that ``configure()`` replacing the pool neither opens the
        store again nor closes it under calls still finishing on the old pool. A
        ``max_size`` given here (not None) becomes the store's limit."""
        real = os.path.realpath(os.path.expanduser(os.fspath(path)))
        with _shared_lock:
            cache = _shared.get(real)
            if cache is None:
                cache = _shared[real] = cls(path, max_size)
            elif max_size is not None and parse_size(max_size) != cache.max_size:
                cache.max_size = parse_size(max_size)
                cache._store.reset("size_limit", cache.max_size)
            return cache

    def get(self, key: str) -> tuple[bool, Any]:
        """``(True, value)`` if ``key`` is stored, else ``(False, None)``. An entry that
        cannot be loaded any more (its class is gone, the program changed) is a miss,
        and is dropped."""
        blob = self._store.get(key, default=None, retry=True)
        if blob is None:
            return False, None
        try:
            return True, pickle.loads(blob)
        except Exception as exc:
            _log.info("pydron: dropping cache entry %s that no longer loads: %r", key, exc)
            self._store.delete(key, retry=True)
            return False, None

    def put(self, key: str, value: object, label: str = "") -> bool:
        """Store ``value`` under ``key``; False (and one :class:`CacheWarning` per label,
        the function's name) if it cannot be pickled."""
        try:
            blob = dumps(value)
        except Exception as exc:
            with self._lock:
                first = label not in self._warned
                self._warned.add(label)
            if first:
                warnings.warn(f"pydron cache: results of {label or 'a call'} are not stored: "
                              f"{type(value).__name__} cannot be pickled ({exc})",
                              CacheWarning, stacklevel=2)
            return False
        self._store.set(key, blob, retry=True)
        return True

    def __contains__(self, key: str) -> bool:
        return key in self._store

    def __len__(self) -> int:
        return len(self._store)

    def info(self) -> dict[str, Any]:
        """``path``, ``entries``, ``bytes`` on disk (values and database) and ``max_size``
        (None: no limit)."""
        return store_info(self._store, self.path)

    def clear(self) -> int:
        """Remove every entry; the number removed."""
        return int(self._store.clear(retry=True))

    def close(self) -> None:
        """Close this process's connections (reopened on next use)."""
        self._store.close()

    def __enter__(self) -> ResultCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ResultCache({self.path!r}, max_size={self.max_size!r})"


def store_info(store: diskcache.Cache, path: str) -> dict[str, Any]:
    limit = int(store.size_limit)
    return {"path": path, "entries": len(store), "bytes": int(store.volume()),
            "max_size": None if limit >= _UNLIMITED else limit}


def open_existing(path: str | os.PathLike[str]) -> diskcache.Cache | None:
    """The store at ``path`` with its own settings (its size limit kept), or None if
    there is none there: what the command line looks at, without creating anything."""
    path = os.fspath(path)
    if not os.path.isfile(os.path.join(path, diskcache.core.DBNAME)):
        return None
    return diskcache.Cache(path)
