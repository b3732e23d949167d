"""The process-wide pool that every ``@schedule`` call shares.

One pool per process, created on first use from ``pydron.conf``: starting workers is the
expensive part (processes, SSH connections, cloud instances), so it is paid once and
amortised over every scheduled call; it is shut down at interpreter exit.
"""
from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Callable, Mapping

from pydron.backend.composite import CompositePool
from pydron.backend.context import in_worker, worker_context
from pydron.backend.inline import InlinePool
from pydron.backend.pool import Pool
from pydron.backend.threads import ThreadPool
from pydron.config import Config, WorkerSpec, load_config, parse_config

__all__ = [
    "Pool", "InlinePool", "ThreadPool", "CompositePool", "POOL_FACTORIES", "GROUP_FACTORIES",
    "get_pool", "configure", "shutdown", "current_config", "pool_from_config",
    "in_worker", "worker_context",
]



def _multicore(spec: WorkerSpec, config: Config) -> Pool:
    # Imported here: it brings in Twisted, which only process pools need.
    from pydron.backend.multicore import MulticorePool
    return MulticorePool(spec.count, max_retries=config.max_retries)


def _ssh_group(specs: list[WorkerSpec], config: Config) -> Pool:
    # One pool for all "ssh" entries: a host that fails leaves its calls to the others.
    from pydron.backend.sshpool import SshPool
    return SshPool([dict(spec.options) for spec in specs], max_retries=config.max_retries)


def _cloud_group(specs: list[WorkerSpec], config: Config) -> Pool:
    from pydron.backend.cloudpool import CloudPool
    return CloudPool(specs, max_retries=config.max_retries)


GROUP_FACTORIES: dict[str, Callable[[list[WorkerSpec], Config], Pool]] = {
    "ssh": _ssh_group,
    "cloud": _cloud_group,
}
"""Worker types whose entries share one pool (every "ssh" entry is a host of one ssh pool),
so that calls of a host that fails or is lost run again on the other hosts."""

POOL_FACTORIES: dict[str, Callable[[WorkerSpec, Config], Pool]] = {
    "threads": lambda spec, config: ThreadPool(spec.count),
    "inline": lambda spec, config: InlinePool(),
    "multicore": _multicore,
    "ssh": lambda spec, config: _ssh_group([spec], config),
    "cloud": lambda spec, config: _cloud_group([spec], config),
}
"""How to build a pool for each worker type of :data:`pydron.config.WORKER_TYPES`, from
its entry and the whole configuration (for settings such as ``max_retries``)."""

_lock = threading.RLock()
_pool: Pool | None = None
_config: Config | None = None  # None: discover on next use


def pool_from_config(config: Config) -> Pool:
    """Build (but do not register) the pool a configuration describes."""
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


def configure(conf: Mapping[str, object] | str | os.PathLike[str] | Config | None) -> None:
    """Replace the configuration: a dict, a path to a pydron.conf, a Config, or None.

    None forgets any earlier choice so the file is discovered again. The new configuration
    is validated before the current pool is shut down, so a bad one changes nothing. The
    new pool is created lazily, on the next :func:`get_pool`.
    """
    global _config, _pool
    if conf is None:
        new = None
    elif isinstance(conf, Config):
        new = conf
    elif isinstance(conf, Mapping):
        new = parse_config(conf, "<dict>")
    elif isinstance(conf, (str, os.PathLike)):
        new = load_config(conf)
    else:
        raise TypeError("configure() takes a dict, a path, a Config or None, "
                        f"not {type(conf).__name__}")
    with _lock:
        pool, _pool = _pool, None
        _config = new
    if pool is not None:  # outside the lock: a running call may need get_pool()
        pool.shutdown(wait=True)


def shutdown(wait: bool = True) -> None:
    """Shut the shared pool down; a later :func:`get_pool` starts a fresh one."""
    global _pool
    with _lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait)


@atexit.register
def _shutdown_at_exit() -> None:
    # Do not block interpreter exit on calls still running (after a Ctrl-C, say): thread
    # workers are daemons, and pools owning outside resources free them even without wait.
    shutdown(wait=False)
