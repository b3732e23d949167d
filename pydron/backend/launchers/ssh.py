"""The ssh launcher: worker processes on other hosts, reached over SSH (``"type": "ssh"``).

It starts the workers of the ssh pool (:class:`pydron.backend.sshpool.SshPool`, the
worker engine with this launcher): each host is connected in a thread of its own when the
pool starts (all hosts
at once), checked, given this pydron if it lacks it, and asked to forward a port on its
own 127.0.0.1 to the master's listening socket through the SSH connection
(:mod:`pydron.backend.launchers.ssh_transport`). Then ``cores`` workers start there, under a
supervisor that ends them when the pool ends or the SSH connection drops, and connect back
through that forward: the wire protocol, batching, heartbeats, retries and cancels are the engine's.

Each host owns a fixed range of worker indexes ("slots"). A host that cannot be used --
unreachable, a refused key, a missing or different interpreter -- is logged as an error
naming it and the cause, and the pool goes on with the others; its slots are dropped (an
entry with ``"required": true`` makes that failure fatal for the pool instead). A host lost
in the middle of a run (its SSH connection gone, or its workers failing to start again
and again) is dropped the same way; the calls its workers were running are re-run on the
other hosts. If no host is left, calls fail with an error that names every host and why.

Progress a person can follow goes to the ``pydron.backend`` logger (``ssh host X:
starting / ready / failed / lost``) and to an optional ``progress(event, host, detail)``
callback.
"""
from __future__ import annotations

import logging
import os
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pydron.backend.launchers import ssh_transport as ssh
from pydron.backend.launchers.base import EngineEvents, WorkerStart, release_when_stopped
from pydron.backend.reactor import call_soon

__all__ = ["SshLauncher", "Host", "HOST_EVENTS", "hosts_of"]

_log = logging.getLogger("pydron.backend")

HOST_EVENTS = ("starting", "ready", "failed", "lost")
MAX_HOST_START_FAILURES = 3
"""Workers of one host that exit before connecting, in a row, before the host is dropped."""


class Host:
    """One configured host and how far it got (``state``: pending -> ready -> lost, or
    pending -> failed). ``label`` is the launcher's own note on it (the cloud launcher:
    which entry, which instance)."""

    def __init__(self, entry: Mapping[str, Any] | None, base: int, cores: int,
                 name: str) -> None:
        self.entry = dict(entry) if entry is not None else None
        self.base = base
        self.cores = cores
        self.name = name
        self.required = bool(entry and entry.get("required"))
        self.state = "pending"      # -> ready -> lost, or -> failed
        self.cause = ""
        self.client: ssh.SSHClient | None = None
        self.rport = 0
        self.path: str | None = None
        self.python = ssh.DEFAULT_PYTHON
        self.failures = 0
        self.label: Any = None

    @property
    def slots(self) -> range:
        return range(self.base, self.base + self.cores)

    def alive(self) -> bool:
        client = self.client
        transport = client.get_transport() if client is not None else None
        return transport is not None and transport.is_active()


class _RemoteProcess:
    """A Popen-like handle (``pid``, ``kill``, ``poll``, ``wait``) of a worker started
    with :func:`ssh.start_remote`. The start itself and the copying of the worker's
    stdout/stderr to ours happen in a thread, so the reactor thread never waits on the
    network."""

    def __init__(self, host: Host, index: int, command: list[str], env: dict[str, str],
                 stdin_data: bytes) -> None:
        self.pid = 0                     # the handshake tells the remote pid
        self.returncode: int | None = None
        self.error = ""                  # why it could not be started
        self.lost = False                # the SSH connection went away under it
        self._host = host
        self._lock = threading.Lock()
        self._exit = threading.Event()
        self._channel: Any = None
        self._killed = False
        self._callback: Callable[[int], None] | None = None
        threading.Thread(target=self._run, args=(command, env, stdin_data), daemon=True,
                         name=f"pydron-ssh-{host.name}-{index}").start()

    def _run(self, command: list[str], env: dict[str, str], stdin_data: bytes) -> None:
        client = self._host.client
        try:
            if client is None:
                raise ssh.HostError(self._host.name, ssh.HostError.UNREACHABLE,
                                    "not connected")
            channel = ssh.start_remote(client, command, env, stdin_data,
                                       python=self._host.python)
        except Exception as exc:
            self.error = str(exc)
            self.lost = not self._host.alive()
            self._finish(127)
            return
        with self._lock:
            self._channel = channel
            killed = self._killed
        if killed:
            channel.close()
        self._pump(channel)
        if channel.exit_status_ready():
            code = channel.recv_exit_status()
            if 128 < code < 192:
                code = 128 - code     # the supervisor says 128+N for signal N
        else:
            self.lost = not self._killed
            code = -9 if self._killed else -1
        channel.close()
        self._finish(code)

    def _pump(self, channel: Any) -> None:
        """Copy the worker's output to ours (file descriptors 1 and 2, as a local
        worker's goes) until it exits or the channel closes."""
        while True:
            got = False
            try:
                if channel.recv_ready():
                    data = channel.recv(65536)
                    if data:
                        _write(1, data)
                        got = True
                if channel.recv_stderr_ready():
                    data = channel.recv_stderr(65536)
                    if data:
                        _write(2, data)
                        got = True
            except Exception:
                return
            if got:
                continue
            if channel.closed or channel.eof_received or channel.exit_status_ready() \
                    or not self._host.alive():
                if not (channel.recv_ready() or channel.recv_stderr_ready()):
                    return
                continue
            channel.status_event.wait(0.05)

    def _finish(self, code: int) -> None:
        with self._lock:
            self.returncode = code
            callback = self._callback
        self._exit.set()
        if callback is not None:
            call_soon(callback, code)

    def on_exit(self, callback: Callable[[int], None]) -> Callable[[], None]:
        with self._lock:
            self._callback = callback
            code = self.returncode
        if code is not None:
            call_soon(callback, code)

        def stop() -> None:
            self._callback = None
        return stop

    def kill(self) -> None:
        """End the worker: closing its channel makes the supervisor end its process
        group (SIGTERM, then SIGKILL)."""
        with self._lock:
            self._killed = True
            channel = self._channel
        if channel is not None:
            try:
                channel.close()
            except Exception:
                pass

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._exit.wait(timeout):
            raise subprocess.TimeoutExpired("remote worker", timeout or 0)
        return self.returncode  # type: ignore[return-value]


def _write(fd: int, data: bytes) -> None:
    try:
        while data:
            data = data[os.write(fd, data):]
    except OSError:
        pass


def hosts_of(entries: Sequence[Mapping[str, Any]]) -> list[Host]:
    """The hosts of ``"ssh"`` entries, each owning the next ``cores`` slots."""
    hosts, base = [], 0
    for entry in entries:
        cores = int(entry.get("cores", 1))
        if cores < 1:
            raise ValueError(f"ssh host {entry.get('hostname')}: cores must be >= 1")
        port = entry.get("port")
        name = str(entry["hostname"]) + (f":{port}" if port not in (None, 22) else "")
        hosts.append(Host(entry, base, cores, name))
        base += cores
    return hosts


class SshLauncher:
    """Starts workers on ``hosts`` (see :func:`hosts_of`): connects each host when the
    engine begins, and drops the slots of a host that fails or is lost.

    A host without an entry yet (a cloud instance still being created) is connected once
    :meth:`bring_up_later` is called for it; until then it is pending."""

    listen_host = "127.0.0.1"  # the workers connect through a forward of their SSH connection
    wants_demand = False
    idle_timeout = None
    kind = "ssh"

    def __init__(self, hosts: list[Host], *, connect_timeout: float = 10.0,
                 progress: Callable[[str, str, str], None] | None = None,
                 start_hosts: Callable[[], None] | None = None) -> None:
        self.hosts = hosts
        self._by_index = {i: h for h in hosts for i in h.slots}
        self.connect_timeout = connect_timeout
        self.progress = progress
        self._start_hosts = start_hosts or self._connect_all
        self._events: EngineEvents | None = None
        self._port = 0
        self.hosts_started = False
        self._hosts_closed = False
        self._hosts_lock = threading.Lock()

    # ------------------------------------------------------------------ the launcher

    def bind(self, events: EngineEvents) -> None:
        self._events = events

    def capacity(self) -> int:
        return sum(h.cores for h in self.hosts)

    def begin(self, port: int) -> None:
        self._port = port
        self.hosts_started = True
        self._start_hosts()

    def slots(self) -> list[int]:
        return [i for h in self.hosts if h.state == "ready" for i in h.slots]

    def launch(self, start: WorkerStart) -> _RemoteProcess:
        host = self._by_index[start.index]
        if host.state != "ready" or self._hosts_closed:
            raise ssh.HostError(host.name, ssh.HostError.UNREACHABLE, "not connected")
        command = [*ssh._python_argv(host.python), "-m", "pydron.backend.worker",
                   "--host", "127.0.0.1", "--port", str(host.rport),
                   "--index", str(start.index), *start.options]
        env = {"PYTHONPATH": host.path} if host.path else {}
        return _RemoteProcess(host, start.index, command, env,
                              (start.secret.hex() + "\n").encode())

    def watch_exit(self, process: Any, callback: Callable[[int], None]) -> Callable[[], None]:
        return process.on_exit(callback)

    def adopt(self, index: int) -> None:
        return None  # every worker here is one this launcher started

    def connected(self, index: int) -> None:
        host = self._by_index.get(index)
        if host is not None:
            host.failures = 0

    def exited(self, index: int, process: Any, code: int, *, connected: bool,
               expected: bool) -> None:
        host = self._by_index.get(index)
        if host is None or not isinstance(process, _RemoteProcess):
            return
        events = self._events
        assert events is not None
        if self._hosts_closed:
            return  # the pool let the hosts go: a channel cut by that is nobody's loss
        if process.error:
            events.describe_exit(index, refused=process.error)
        if host.state == "ready" and not expected:
            if process.lost or not host.alive():
                events.describe_exit(index, how=f"lost its SSH connection to {host.name}")
                self._lose(host, "the SSH connection is gone")
            elif not connected:
                host.failures += 1
                if host.failures >= MAX_HOST_START_FAILURES:
                    self._lose(host, f"{host.failures} workers in a row exited before "
                                     f"they connected ({process.error or f'code {code}'})")

    def blames_call(self, index: int, code: int) -> bool:
        return True

    def demand(self, queued: int, running: int) -> None:
        pass

    def close(self, wait: bool, stopped: threading.Event) -> None:
        """Close the SSH connections (which ends anything of ours still running there):
        now if ``wait`` (not in the reactor thread), else once the engine has stopped."""
        release_when_stopped(wait, stopped, self.close_hosts, "pydron-ssh-close")

    def kill_now(self) -> None:
        self.close_hosts()

    # ------------------------------------------------------------------ status

    def host_list(self) -> list[dict[str, Any]]:
        """Each host: ``name``, ``state`` (pending, ready, failed, lost), ``cause``,
        ``cores``, ``workers`` (indexes)."""
        return [{"name": h.name, "state": h.state, "cause": h.cause, "cores": h.cores,
                 "workers": list(h.slots)} for h in self.hosts]

    # ------------------------------------------------------------------ hosts

    def _stopping(self) -> bool:
        return self._events is not None and self._events.stopping

    def _connect_all(self) -> None:
        """Connect every host, each in a thread of its own (reactor thread)."""
        for host in self.hosts:
            self.bring_up_later(host)

    def bring_up_later(self, host: Host) -> None:
        """Connect ``host`` (its entry known by now) in a thread of its own."""
        threading.Thread(target=self._bring_up, args=(host,), daemon=True,
                         name=f"pydron-ssh-connect-{host.name}").start()

    def _report(self, event: str, host: Host, detail: str) -> None:
        level = logging.ERROR if event in ("failed", "lost") else logging.INFO
        _log.log(level, "pydron: ssh host %s: %s%s", host.name, event,
                 f": {detail}" if detail else "")
        if self.progress is not None:
            try:
                self.progress(event, host.name, detail)
            except Exception:
                _log.exception("pydron: the progress callback of the ssh pool raised")

    def _bring_up(self, host: Host) -> None:
        """connect -> python version -> pydron there -> reverse forward (own thread)."""
        assert host.entry is not None
        entry = host.entry
        self._report("starting", host, f"connecting ({host.cores} worker(s))")
        client = None
        try:
            client = ssh.connect(entry, timeout=self.connect_timeout)
            with self._hosts_lock:
                if self._hosts_closed:
                    client.close()
                    return
                host.client = client
            host.python = str(entry.get("python", ssh.DEFAULT_PYTHON))
            ssh.remote_python_version(client, host.python)
            sftp = client.open_sftp()
            try:
                host.path = ssh.ensure_pydron(
                    client, sftp, host.python, str(entry.get("tmp_dir", ssh.DEFAULT_TMP_DIR)))
            finally:
                sftp.close()
            host.rport = ssh.reverse_forward(client.get_transport(), "127.0.0.1", self._port)
        except Exception as exc:
            if client is not None:
                client.close()
            call_soon(self.host_failed, host, exc)
            return
        call_soon(self._host_ready, host)

    def _host_ready(self, host: Host) -> None:
        if self._stopping() or self._hosts_closed:
            return
        host.state = "ready"
        self._report("ready", host, f"{host.cores} worker(s) starting there")
        self._events.slots_changed()  # type: ignore[union-attr]

    def host_failed(self, host: Host, exc: BaseException) -> None:
        """``host`` cannot be used (reactor thread): drop its slots; give up if it was
        required or no host is left."""
        if isinstance(exc, ssh.HostError):
            host.cause = f"{exc.cause}: {exc.detail}"
        else:
            host.cause = f"{type(exc).__name__}: {exc}"
        host.state = "failed"
        self._report("failed", host, host.cause)
        self._drop(host)
        if host.required and not self._stopping():
            self._events.failed(f"the required ssh host {host.name} cannot be used: "  # type: ignore[union-attr]
                                f"{host.cause}")
        else:
            self._check_hosts()

    def _lose(self, host: Host, why: str) -> None:
        """A host that worked is gone: drop its slots, end its workers (their calls run
        elsewhere), close its connection."""
        if host.state != "ready":
            return
        host.state = "lost"
        host.cause = why
        self._report("lost", host, why + "; its calls run again on the other hosts")
        self._drop(host)
        self._events.slots_lost(host.slots, f"lost its host {host.name} ({why})")  # type: ignore[union-attr]
        client, host.client = host.client, None
        if client is not None:
            threading.Thread(target=client.close, daemon=True).start()
        self._check_hosts()

    def _drop(self, host: Host) -> None:
        self._events.capacity_changed(sum(  # type: ignore[union-attr]
            h.cores for h in self.hosts if h.state in ("pending", "ready")))

    def _check_hosts(self) -> None:
        if self._stopping() or any(h.state in ("pending", "ready") for h in self.hosts):
            return
        causes = "; ".join(f"{h.name}: {h.cause}" for h in self.hosts)
        self._events.failed(f"no ssh host can be used ({causes})")  # type: ignore[union-attr]

    # ------------------------------------------------------------------ stopping

    def close_hosts(self) -> None:
        with self._hosts_lock:
            self._hosts_closed = True
            hosts = [(h, h.client) for h in self.hosts]
            for h in self.hosts:
                h.client = None
        for host, client in hosts:
            if client is None:
                continue
            try:
                transport = client.get_transport()
                if transport is not None and host.rport:
                    ssh.cancel_forward(transport, host.rport)
            except Exception:
                pass
            client.close()
