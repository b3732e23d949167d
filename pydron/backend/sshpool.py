"""The ssh pool (``"type": "ssh"``): worker processes on other hosts, reached over SSH.

The worker engine (:mod:`pydron.backend.engine.engine`) with the ssh launcher
(:mod:`pydron.backend.launchers.ssh`: hosts connected, checked and given pydron, workers
started there under a supervisor, connecting back through a forward of the SSH
connection).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pydron.backend.engine.engine import WorkerEngine
from pydron.backend.launchers.ssh import HOST_EVENTS, Host, SshLauncher, hosts_of

__all__ = ["SshPool", "HOST_EVENTS"]


class SshPool(WorkerEngine):
    """Workers on the hosts of ``"ssh"`` entries (mappings with the keys of
    :func:`pydron.backend.launchers.ssh_transport.connect` plus ``cores``, ``python``,
    ``tmp_dir`` and ``required``). Its parallelism is the cores of the hosts that are not
    known to have failed; keyword arguments are the engine's (as :class:`MulticorePool`'s),
    plus ``connect_timeout`` and ``progress(event, host, detail)``."""

    def __init__(self, entries: Sequence[Mapping[str, Any]], *,
                 connect_timeout: float = 10.0,
                 progress: Callable[[str, str, str], None] | None = None,
                 **kwargs: Any) -> None:
        hosts = hosts_of(entries)
        if not hosts:
            raise ValueError("SshPool needs at least one host entry")
        self.launcher = SshLauncher(hosts, connect_timeout=connect_timeout, progress=progress)
        super().__init__(self.launcher, **kwargs)

    @property
    def progress(self) -> Callable[[str, str, str], None] | None:
        return self.launcher.progress

    @progress.setter
    def progress(self, callback: Callable[[str, str, str], None] | None) -> None:
        self.launcher.progress = callback

    @property
    def connect_timeout(self) -> float:
        return self.launcher.connect_timeout

    @property
    def _hosts(self) -> list[Host]:
        return self.launcher.hosts

    def hosts(self) -> list[dict[str, Any]]:
        """Each host: ``name``, ``state`` (pending, ready, failed, lost), ``cause``,
        ``cores``, ``workers`` (indexes)."""
        return self.launcher.host_list()
