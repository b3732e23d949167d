"""The cloud pool (``"type": "cloud"``): instances created for the run, used as ssh hosts.

The worker engine (:mod:`pydron.backend.engine.engine`) with the cloud launcher
(:mod:`pydron.backend.launchers.cloud`: instances provisioned with libcloud, then used
through the ssh launcher, and destroyed -- or kept idle -- when the pool ends).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pydron.backend.engine.engine import WorkerEngine
from pydron.backend.launchers.cloud import CloudLauncher
from pydron.backend.launchers.ssh import Host

__all__ = ["CloudPool"]


class CloudPool(WorkerEngine):
    """Workers on instances created from ``"cloud"`` entries (WorkerSpecs or mappings,
    see :func:`pydron.backend.launchers.cloud_provider.entry_of`). ``run_id`` tags the
    instances (default: a new one); ``progress(event, name, detail)`` hears of instances
    and hosts; ``poll`` is the seconds between state checks while instances start.
    ``address_of(node)`` overrides where SSH of an instance is (default: its first
    public, else private, IP and the entry's ``port``), for instances reached through a
    tunnel or a bastion's forward. Other keyword arguments are the engine's, plus
    ``connect_timeout``."""

    def __init__(self, entries: Sequence[Any], *, run_id: str | None = None,
                 progress: Callable[[str, str, str], None] | None = None,
                 poll: float = 2.0,
                 address_of: Callable[[Any], tuple[str, int] | None] | None = None,
                 connect_timeout: float = 10.0, **kwargs: Any) -> None:
        self.launcher = CloudLauncher(entries, run_id=run_id, progress=progress, poll=poll,
                                      address_of=address_of, connect_timeout=connect_timeout)
        super().__init__(self.launcher, **kwargs)

    @property
    def run_id(self) -> str:
        return self.launcher.run_id

    @property
    def poll(self) -> float:
        return self.launcher.poll

    @poll.setter
    def poll(self, seconds: float) -> None:
        self.launcher.poll = seconds

    @property
    def address_of(self) -> Callable[[Any], tuple[str, int] | None] | None:
        return self.launcher.address_of

    @address_of.setter
    def address_of(self, function: Callable[[Any], tuple[str, int] | None] | None) -> None:
        self.launcher.address_of = function

    @property
    def progress(self) -> Callable[[str, str, str], None] | None:
        return self.launcher.progress

    @progress.setter
    def progress(self, callback: Callable[[str, str, str], None] | None) -> None:
        self.launcher.ssh.progress = callback

    @property
    def _hosts(self) -> list[Host]:
        return self.launcher.ssh.hosts

    def hosts(self) -> list[dict[str, Any]]:
        """Each host: ``name``, ``state`` (pending, ready, failed, lost), ``cause``,
        ``cores``, ``workers`` (indexes)."""
        return self.launcher.ssh.host_list()

    def nodes(self) -> list[Any]:
        """The instances this pool created and has not destroyed yet."""
        return self.launcher.nodes()

    def destroy_nodes(self) -> int:
        """Destroy every instance of this run (the ones known here, and any other that
        carries the run's tag); returns how many went. Idempotent."""
        return self.launcher.destroy_nodes()
