"""The process-wide pool that every ``@schedule`` call shares.

One pool per process, created on first use from ``pydron.conf``: starting workers is the
expensive part (processes, SSH connections, cloud instances), so it is paid once and
amortised over every scheduled call; it is shut down at interpreter exit.

A run (one call of a ``@schedule`` function) holds the pool it started with until it ends
(:func:`run_pool`): :func:`configure` or :func:`shutdown` in another thread must not pull
the workers from under calls in flight. The pool they replace is *retired*: later runs get
the new one, and the old one is shut down when its last run has ended.
"""
from __future__ import annotations

import atexit
import contextlib
import os
import threading
from collections.abc import Callable, Iterator, Mapping

from pydron.backend import recorder
from pydron.backend.composite import CompositePool
from pydron.backend.context import in_worker, worker_context
from pydron.backend.inline import InlinePool
from pydron.backend.pool import Pool
from pydron.backend.threads import ThreadPool
from pydron.config import Config, WorkerSpec, load_config, parse_config

__all__ = [
    "Pool", "InlinePool", "ThreadPool", "CompositePool", "POOL_FACTORIES", "GROUP_FACTORIES",
    "get_pool", "configure", "shutdown", "current_config", "pool_from_config", "run_pool",
    "acquire_pool", "release_pool", "as_config",
    "in_worker", "worker_context",
]



def _limits(config: Config) -> dict[str, object]:
    """The settings that bound what a pool of worker processes spends on a bad call or a
    stalled caller, and on shared objects: ``call_timeout``, ``respawns_per_minute``,
    ``shared_cache``, ``keep_min`` (what stays on workers) and ``master_timeout`` (only if
    set: the pool's default otherwise)."""
    limits: dict[str, object] = {"call_timeout": config.call_timeout,
                                 "respawns_per_minute": config.respawns_per_minute,
                                 "shared_cache": config.shared_cache,
                                 "keep_min": config.keep_min}
    if config.master_timeout is not None:
        limits["master_timeout"] = config.master_timeout
    return limits


def _multicore(spec: WorkerSpec, config: Config) -> Pool:
    # Imported here: it brings in Twisted, which only process pools need.
    from pydron.backend.multicore import MulticorePool
    return MulticorePool(spec.count, max_retries=config.max_retries,
                         max_frame=config.max_frame, prefetch_bytes=config.prefetch_bytes,
                         **_limits(config))


def _ssh_group(specs: list[WorkerSpec], config: Config) -> Pool:
    # One pool for all "ssh" entries: a host that fails leaves its calls to the others.
    from pydron.backend.sshpool import SshPool
    return SshPool([dict(spec.options) for spec in specs], max_retries=config.max_retries,
                   **_limits(config))


def _cloud_group(specs: list[WorkerSpec], config: Config) -> Pool:
    from pydron.backend.cloudpool import CloudPool
    return CloudPool(specs, max_retries=config.max_retries, **_limits(config))


def _slurm(spec: WorkerSpec, config: Config) -> Pool:
    from pydron.backend.slurmpool import SlurmPool
    return SlurmPool(dict(spec.options), max_retries=config.max_retries, **_limits(config))


def _sge(spec: WorkerSpec, config: Config) -> Pool:
    from pydron.backend.sgepool import SgePool
    return SgePool(dict(spec.options), max_retries=config.max_retries, **_limits(config))


def _dask(spec: WorkerSpec, config: Config) -> Pool:
    from pydron.backend.daskpool import DaskPool
    options = dict(spec.options)
    return DaskPool(options.get("address"), options.get("scheduler_file"),  # type: ignore[arg-type]
                    options.get("threads"), float(options.get("timeout", 30.0)),  # type: ignore[arg-type]
                    max_retries=config.max_retries, source=config.source)


GROUP_FACTORIES: dict[str, Callable[[list[WorkerSpec], Config], Pool]] = {
    "ssh": _ssh_group,
    "cloud": _cloud_group,
}
"""Worker types whose entries share one pool (every "ssh" entry is a host of one ssh pool),
so that calls of a host that fails or is lost run again on the other hosts."""

POOL_FACTORIES: dict[str, Callable[[WorkerSpec, Config], Pool]] = {
    "threads": lambda spec, config: ThreadPool(spec.count, call_timeout=config.call_timeout),
    "inline": lambda spec, config: InlinePool(),
    "multicore": _multicore,
    "ssh": lambda spec, config: _ssh_group([spec], config),
    "cloud": lambda spec, config: _cloud_group([spec], config),
    "slurm": _slurm,
    "sge": _sge,
    "dask": _dask,
}
"""How to build a pool for each worker type of :data:`pydron.config.WORKER_TYPES`, from
its entry and the whole configuration (for settings such as ``max_retries``)."""

_lock = threading.RLock()
_pool: Pool | None = None
_config: Config | None = None  # None: discover on next use
_runs: dict[Pool, int] = {}  # pool -> runs in progress on it (absent: none)
_retired: set[Pool] = set()  # replaced or shut down while runs hold them
_stopping: set[Pool] = set()  # retired, last run ended, being shut down right now
_changed = threading.Condition(_lock)  # notified when a retired pool has stopped
_held = threading.local()  # .pools: the pools this thread's runs hold (nested runs)


def pool_from_config(config: Config) -> Pool:
    """Build (but do not register) the pool a configuration describes: its workers, and
    around them the result cache if ``cache`` names one; the progress line and the trace
    file it asks for start here too (:data:`pydron.backend.recorder.on_config`)."""
    if recorder.on_config is not None:
        recorder.on_config(config)
    pool = _workers_pool(config)
    if config.cache is not None:
        from pydron.result_cache import CachingPool, ResultCache
        pool = CachingPool(pool, ResultCache.shared(config.cache["path"],
                                                    config.cache.get("max_size")))
    return pool


def _workers_pool(config: Config) -> Pool:
    for spec in config.workers:
        if spec.type not in POOL_FACTORIES:
            raise NotImplementedError(
                f'{config.source}: workers of type "{spec.type}" are accepted in pydron.conf '
                "but this version of pydron cannot start them yet")
    grouped: dict[str, list[WorkerSpec]] = {}
    order: list[WorkerSpec | str] = []
    for spec in config.workers:
        if spec.type in GROUP_FACTORIES:
            if spec.type not in grouped:
                grouped[spec.type] = []
                order.append(spec.type)
            grouped[spec.type].append(spec)
        else:
            order.append(spec)
    members: list[Pool] = []
    try:
        for item in order:
            members.append(GROUP_FACTORIES[item](grouped[item], config) if isinstance(item, str)
                           else POOL_FACTORIES[item.type](item, config))
    except BaseException:
        for member in members:
            member.shutdown(wait=False)
        raise
    return members[0] if len(members) == 1 else CompositePool(members)


def current_config() -> Config:
    """The configuration in force: the one given to :func:`configure`, else discovered."""
    global _config
    with _lock:
        if _config is None:
            _config = load_config()
        return _config


def get_pool() -> Pool:
    """Return the shared pool, creating it from :func:`current_config` on first use.

    Thread-safe: callers racing on the first use all get the same pool.
    """
    global _pool
    pool = _pool
    if pool is not None:  # fast path, no lock: this runs on every scheduled call
        return pool
    with _lock:
        if _pool is None:
            _pool = pool_from_config(current_config())
        return _pool


def acquire_pool() -> tuple[Pool, Config]:
    """Hold the shared pool (and its configuration) until :func:`release_pool`: what a run
    does for its whole length, and the explicit API for each call in flight.

    While any holder has a pool, :func:`configure` and :func:`shutdown` only retire it:
    later holders get the new pool, and this one is shut down (waiting for its workers)
    when its last holder releases it. Without this a ``configure()`` in one thread made a
    run in another fail with "cannot submit to a pool that has been shut down".
    """
    with _lock:
        pool = get_pool()
        config = current_config()
        _runs[pool] = _runs.get(pool, 0) + 1
    return pool, config


def release_pool(pool: Pool) -> None:
    """End one hold of ``pool`` taken by :func:`acquire_pool`."""
    _release(pool)


@contextlib.contextmanager
def run_pool() -> Iterator[tuple[Pool, Config]]:
    """Hold the shared pool for one run: ``with run_pool() as (pool, config): ...`` (see
    :func:`acquire_pool`). The hold is also recorded for this thread, so that a
    ``shutdown()`` made from inside the run does not wait for the run itself to end."""
    pool, config = acquire_pool()
    held = _held_pools()
    held.append(pool)
    try:
        yield pool, config
    finally:
        held.remove(pool)
        _release(pool)


def _held_pools() -> list[Pool]:
    pools = getattr(_held, "pools", None)
    if pools is None:
        pools = _held.pools = []
    return pools


def _release(pool: Pool) -> None:
    """One run of ``pool`` has ended; the last one of a retired pool shuts it down."""
    with _lock:
        left = _runs[pool] - 1
        if left:
            _runs[pool] = left
            return
        del _runs[pool]
        if pool not in _retired:
            return
        _retired.discard(pool)
        _stopping.add(pool)
    try:
        pool.shutdown(wait=True)
    finally:
        with _lock:
            _stopping.discard(pool)
            _changed.notify_all()


def _retire(pool: Pool | None, wait: bool, wait_for_runs: bool) -> None:
    """Shut ``pool`` (no longer the shared one) down now, or, if runs hold it, when the
    last of them ends. ``wait``: block until the workers of an idle pool are gone;
    ``wait_for_runs``: also wait for the runs holding it to end and the pool to stop --
    except when this thread's own run holds it (shutdown() from a sync point of a
    @schedule function), which could never end while we wait for it."""
    if pool is None:
        return
    with _lock:
        busy = pool in _runs
        if busy:
            _retired.add(pool)
        if busy and wait_for_runs and pool not in _held_pools():
            while pool in _runs or pool in _stopping:
                _changed.wait()
            return
    if not busy:  # outside the lock: a call still finishing may need get_pool()
        pool.shutdown(wait)


def as_config(conf: Mapping[str, object] | str | os.PathLike[str] | Config,
              what: str = "configure()") -> Config:
    """A validated Config from a dict, a path to a pydron.conf, or a Config."""
    if isinstance(conf, Config):
        return conf
    if isinstance(conf, Mapping):
        return parse_config(conf, "<dict>")
    if isinstance(conf, (str, os.PathLike)):
        return load_config(conf)
    raise TypeError(f"{what} takes a dict, a path or a Config as its configuration, "
                    f"not {type(conf).__name__}")


def configure(conf: Mapping[str, object] | str | os.PathLike[str] | Config | None) -> None:
    """Replace the configuration: a dict, a path to a pydron.conf, a Config, or None.

    None forgets any earlier choice so the file is discovered again. The new configuration
    is validated before the current pool is touched, so a bad one changes nothing. The
    new pool is created lazily, on the next :func:`get_pool`. Runs in progress (in other
    threads) keep the pool they started with until they end; it is shut down after the
    last of them, and ``configure`` does not wait for that. An idle pool is shut down
    before ``configure`` returns.
    """
    global _config, _pool
    if conf is not None and not isinstance(conf, (Config, Mapping, str, os.PathLike)):
        raise TypeError("configure() takes a dict, a path, a Config or None, "
                        f"not {type(conf).__name__}")
    new = None if conf is None else as_config(conf)
    with _lock:
        pool, _pool = _pool, None
        _config = new
    _retire(pool, wait=True, wait_for_runs=False)


def shutdown(wait: bool = True) -> None:
    """Shut the shared pool down; a later :func:`get_pool` starts a fresh one.

    Runs in progress finish on it first (their calls are not cut off); then it stops.
    ``wait`` blocks until then and until its workers are gone, unless the calling
    thread's own run holds the pool (then it stops when that run ends).
    """
    global _pool
    with _lock:
        pool, _pool = _pool, None
    _retire(pool, wait, wait_for_runs=wait)


@atexit.register
def _shutdown_at_exit() -> None:
    # Do not block interpreter exit on calls still running (after a Ctrl-C, say): thread
    # workers are daemons, and pools owning outside resources free them even without wait.
    # Runs still holding pools now are in daemon threads that will never end: every pool,
    # retired or held, is shut down here rather than by its last run.
    global _pool
    with _lock:
        pools = [p for p in (_pool, *_retired, *_runs) if p is not None]
        _pool = None
        _retired.clear()
    for pool in dict.fromkeys(pools):
        pool.shutdown(wait=False)
