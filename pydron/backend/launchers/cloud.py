"""The cloud launcher (``"type": "cloud"``): instances created for the run, used as ssh hosts.

When the pool starts, each cloud entry's ``count`` instances are created (tagged with the
run's id) by :func:`pydron.backend.launchers.cloud_provider.provision`, in a thread per entry,
with progress on the ``pydron.backend`` logger; each instance that becomes ready is then
brought up as a host of the :class:`~pydron.backend.launchers.ssh.SshLauncher` this launcher
holds (its host keys go to a known_hosts file of the run unless the entry names one).

The instances are destroyed when the pool (:class:`pydron.backend.cloudpool.CloudPool`, the
worker engine with this launcher) shuts down (which the shared pool does at
interpreter exit, after an error or a Ctrl-C that ends the program), by an ``atexit`` hook
of the pool's own, and on SIGTERM (a handler that raises SystemExit is installed if the
program has none). Besides the instances it knows, the destruction also looks up the
run's tag, so that instances still being created are found too. Only a SIGKILL skips all
this: ``python -m pydron cloud cleanup`` is for that.

An entry with ``idle_timeout`` keeps its instances instead, on all those paths: the
instances whose host worked are tagged idle (:func:`cloud.release`) and a detached reaper
process destroys them once idle that long (:func:`cloud.start_reaper`), unless a later
run with an equal entry claims them first (its start reuses idle instances and creates
only the missing ones). Instances whose host failed or was lost are destroyed.
"""
from __future__ import annotations

import atexit
import logging
import os
import tempfile
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from pydron.backend.launchers import cloud_provider as cloud
from pydron.backend.launchers.base import EngineEvents, WorkerStart, exit_on_sigterm
from pydron.backend.launchers.ssh import Host, SshLauncher
from pydron.backend.reactor import call_soon

__all__ = ["CloudLauncher"]

_log = logging.getLogger("pydron.backend")


class _Abandoned(BaseException):
    """Raised inside provision() (through its progress callback) once the pool is gone,
    so that it destroys what it created and stops."""


class _Instance:
    """What the cloud launcher notes on a host: its entry, and once created, its node."""

    __slots__ = ("entry", "node")

    def __init__(self, entry: int) -> None:
        self.entry = entry
        self.node: Any = None


class CloudLauncher:
    """Starts workers on instances created from ``"cloud"`` entries (WorkerSpecs or
    mappings, see :func:`cloud.entry_of`): provisions them when the engine begins, then
    hands each to its :class:`SshLauncher` as a host. ``run_id`` tags the instances
    (default: a new one); ``progress(event, name, detail)`` hears of instances and hosts;
    ``poll`` is the seconds between state checks while instances start.
    ``address_of(node)`` overrides where SSH of an instance is (default: its first public,
    else private, IP and the entry's ``port``), for instances reached through a tunnel or
    a bastion's forward."""

    def __init__(self, entries: Sequence[Any], *, run_id: str | None = None,
                 progress: Callable[[str, str, str], None] | None = None,
                 poll: float = 2.0,
                 address_of: Callable[[Any], tuple[str, int] | None] | None = None,
                 connect_timeout: float = 10.0) -> None:
        self._cloud_entries = [cloud.entry_of(e) for e in entries]
        if not self._cloud_entries:
            raise ValueError("CloudPool needs at least one cloud entry")
        self.run_id = run_id or cloud.new_run_id()
        self.poll = poll
        self.address_of = address_of
        self._nodes: list[Any] = []
        self._nodes_lock = threading.Lock()
        self._destroyed = False
        self._known_hosts = ""
        self.ssh = SshLauncher(self._make_hosts(), connect_timeout=connect_timeout,
                               progress=progress, start_hosts=self._start_hosts)
        exit_on_sigterm()
        ref = weakref.ref(self)
        self._atexit = lambda: (lambda launcher: launcher and launcher.destroy_nodes())(ref())
        atexit.register(self._atexit)

    @property
    def progress(self) -> Callable[[str, str, str], None] | None:
        return self.ssh.progress

    def _make_hosts(self) -> list[Host]:
        hosts, base = [], 0
        for e, entry in enumerate(self._cloud_entries):
            count, cores = int(entry.get("count", 1)), int(entry.get("cores", 1))
            for k in range(count):
                host = Host(None, base, cores, f"{entry['provider']} instance {k + 1}/{count}")
                host.label = _Instance(e)
                hosts.append(host)
                base += cores
        return hosts

    # ------------------------------------------------------------------ the launcher
    # As the ssh launcher's, but for begin (provision first) and close (destroy after).

    @property
    def listen_host(self) -> str:
        return self.ssh.listen_host

    wants_demand = False
    idle_timeout = None
    kind = "cloud"

    def bind(self, events: EngineEvents) -> None:
        self.ssh.bind(events)

    def capacity(self) -> int:
        return self.ssh.capacity()

    def begin(self, port: int) -> None:
        self.ssh.begin(port)  # which calls _start_hosts

    def slots(self) -> list[int]:
        return self.ssh.slots()

    def launch(self, start: WorkerStart) -> Any:
        return self.ssh.launch(start)

    def watch_exit(self, process: Any, callback: Callable[[int], None]) -> Callable[[], None]:
        return self.ssh.watch_exit(process, callback)

    def adopt(self, index: int) -> None:
        return None

    def connected(self, index: int) -> None:
        self.ssh.connected(index)

    def exited(self, index: int, process: Any, code: int, *, connected: bool,
               expected: bool) -> None:
        self.ssh.exited(index, process, code, connected=connected, expected=expected)

    def blames_call(self, index: int, code: int) -> bool:
        return self.ssh.blames_call(index, code)

    def demand(self, queued: int, running: int) -> None:
        pass

    def close(self, wait: bool, stopped: threading.Event) -> None:
        """Stop using the hosts (as the ssh launcher), then destroy the instances."""
        try:
            self.ssh.close(wait, stopped)
            if not wait:
                self.ssh.close_hosts()
        finally:
            self.destroy_nodes()

    def kill_now(self) -> None:
        self.ssh.kill_now()

    def nodes(self) -> list[Any]:
        """The instances this pool created and has not destroyed yet."""
        with self._nodes_lock:
            return list(self._nodes)

    # ------------------------------------------------------------------ start

    def _start_hosts(self) -> None:
        """Create the instances of each entry, in a thread per entry (reactor thread)."""
        for e in range(len(self._cloud_entries)):
            threading.Thread(target=self._provision, args=(e,), daemon=True,
                             name=f"pydron-cloud-{e}").start()

    def _progress(self, event: str, node: str, detail: str) -> None:
        if self._destroyed and event in ("starting", "ready"):
            raise _Abandoned()  # not on "destroyed": that would stop the destruction
        if self.progress is not None:
            self.progress(event, node, detail)

    def _provision(self, e: int) -> None:
        entry = self._cloud_entries[e]
        hosts = [h for h in self.ssh.hosts if h.label.entry == e]
        try:
            nodes = cloud.provision(entry, self.run_id, progress=self._progress,
                                    poll=self.poll, address_of=self.address_of)
        except BaseException as exc:  # _Abandoned included: nothing of it is left
            for host in hosts:
                call_soon(self.ssh.host_failed, host, exc)
            return
        with self._nodes_lock:
            gone = self._destroyed
            if not gone:
                self._nodes.extend(nodes)
        if gone:
            cloud.destroy(nodes)
            return
        known = entry.get("known_hosts") or self._run_known_hosts()
        for host, node in zip(hosts, nodes):
            try:
                address = self.address_of(node) if self.address_of is not None else None
                host.entry = cloud.node_ssh_entry(node, entry, known_hosts=known,
                                                  address=address)
            except Exception as exc:
                call_soon(self.ssh.host_failed, host, exc)
                continue
            host.name = f"{node.name} ({host.entry['hostname']})"
            host.label.node = node
            self.ssh.bring_up_later(host)
        for host in hosts[len(nodes):]:
            call_soon(self.ssh.host_failed, host,
                      cloud.CloudError("the instance did not become ready"))

    def _run_known_hosts(self) -> str:
        with self._nodes_lock:
            if not self._known_hosts:
                fd, path = tempfile.mkstemp(prefix=f"pydron-{self.run_id}-", suffix=".known_hosts")
                os.close(fd)
                self._known_hosts = path
            return self._known_hosts

    # ------------------------------------------------------------------ end

    def destroy_nodes(self) -> int:
        """Destroy every instance of this run (the ones known here, and any other that
        carries the run's tag); returns how many went. Idempotent."""
        with self._nodes_lock:
            first = not self._destroyed
            self._destroyed = True
            nodes, self._nodes = self._nodes, []
        if first:
            atexit.unregister(self._atexit)
            # Stop using the hosts first: at interpreter exit this hook runs before the
            # pool's own, and workers cut off by the destruction are not lost hosts.
            self.ssh.close_hosts()
        nodes = self._release_idle(nodes)
        done = cloud.destroy(nodes, progress=self.progress) if nodes else 0
        if (not first and not nodes) or not self.ssh.hosts_started:
            return done  # (never started: no instance was created)
        for entry in self._cloud_entries:
            try:
                left = cloud.list_tagged(entry, self.run_id)
            except Exception as exc:
                _log.error("pydron: cannot list the instances of run %s to destroy them "
                           "(%s); run `python -m pydron cloud cleanup`", self.run_id, exc)
                continue
            left = [n for n in left if cloud.TAG_IDLE not in cloud.node_tags(n)]
            if left:
                done += cloud.destroy(left, progress=self.progress)
        if self._known_hosts:
            try:
                os.unlink(self._known_hosts)
            except OSError:
                pass
        return done

    def _release_idle(self, nodes: list[Any]) -> list[Any]:
        """Keep the working nodes of entries with ``idle_timeout`` (tagged idle, with a
        reaper started); returns the nodes still to destroy."""
        usable = {id(h.label.node) for h in self.ssh.hosts
                  if h.state in ("pending", "ready") and h.label.node is not None}
        rest = list(nodes)
        for e, entry in enumerate(self._cloud_entries):
            if cloud.idle_timeout_of(entry) is None:
                continue
            mine = {id(h.label.node) for h in self.ssh.hosts
                    if h.label.entry == e and h.label.node is not None}
            keep = [n for n in rest if id(n) in mine and id(n) in usable]
            if not keep:
                continue
            try:
                if not cloud.can_keep_idle(entry):
                    _log.warning("pydron: cloud entry %s: its provider cannot tag instances "
                                 "idle, so idle_timeout is ignored", entry.get("provider"))
                    continue
                stamp = cloud.release(keep, entry, progress=self.progress)
                cloud.start_reaper(entry, stamp)
            except Exception as exc:  # then destroy them: nothing may be left unwatched
                _log.error("pydron: cannot keep the instances of run %s idle (%s); destroying "
                           "them", self.run_id, exc)
                continue
            kept = {id(n) for n in keep}
            rest = [n for n in rest if id(n) not in kept]
        return rest
