"""SSH plumbing for remote workers (paramiko): connect, check, ship, forward, start.

These are the pieces of the ``"ssh"`` pool that do not depend on the wire protocol. A pool
uses them, per host, in this order:

1. :func:`connect` -- an authenticated :class:`SSHClient`, with the host key checked and
   ``~/.ssh/config`` honoured (a user who can ``ssh gpu1`` should be able to write
   ``"hostname": "gpu1"`` and nothing else);
2. :func:`remote_python_version` -- pickles (and so functional calls) only travel between
   interpreters of the same major.minor, so a mismatch must stop that host at once, with a
   message, instead of failing later inside the first call;
3. :func:`ensure_pydron` -- the remote needs this very pydron (the wire protocol changes
   between versions, and between commits of a development checkout), so unless it already
   has an identical copy the package is uploaded into ``tmp_dir`` for the run;
4. :func:`reverse_forward` -- workers connect back to the master through the SSH connection
   itself: a port on the remote's 127.0.0.1 is forwarded to the master's listening socket.
   No port has to be open between the hosts, so a firewall or NAT in between does not
   matter, and nothing on the remote network can reach the master;
5. :func:`start_remote` -- starts a worker under a small supervisor that ends it (and its
   process group) as soon as the SSH connection drops, so a master that dies -- even by
   SIGKILL -- leaves no worker behind on the remote host.

Every failure is a :class:`HostError` that names the host and the cause, so that a pool
can report "gpu3: unreachable: ..." and go on with the hosts that work.
"""
from __future__ import annotations

import getpass
import io
import json
import logging
import os
import posixpath
import re
import secrets
import select
import shlex
import socket
import sys
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import paramiko

from pydron.backend.launchers.remote import source_of, supervisor, tree_hash
from pydron.errors import PydronError

__all__ = [
    "HostError", "SSHClient", "connect", "remote_python_version", "reverse_forward",
    "cancel_forward", "ensure_pydron", "start_remote", "run_command", "local_pydron_hash",
    "HOST_KEY_POLICIES", "DEFAULT_PYTHON", "DEFAULT_TMP_DIR",
]

log = logging.getLogger("pydron.backend")

DEFAULT_PYTHON = "python3"
DEFAULT_TMP_DIR = "/tmp"
HOST_KEY_POLICIES = ("known_hosts", "accept-new")
"""``"host_key"`` values: ``known_hosts`` rejects a host whose key is not known (the
default, like ``ssh -o StrictHostKeyChecking=yes``); ``accept-new`` trusts a host seen for
the first time and records its key (like OpenSSH's ``StrictHostKeyChecking=accept-new``).
A *changed* key is rejected by both."""


# --------------------------------------------------------------------------- errors


class HostError(PydronError):
    """A remote host cannot be used. ``host`` names it, ``cause`` says why in a word or
    two (one of the ``HostError.*`` constants), the message adds the details."""

    UNREACHABLE = "unreachable"
    KEY_FILE = "key file problem"
    REFUSED_KEY = "refused key"
    REFUSED_PASSWORD = "refused password"
    UNKNOWN_HOST_KEY = "unknown host key"
    HOST_KEY_MISMATCH = "host key mismatch"
    MISSING_INTERPRETER = "missing interpreter"
    PYTHON_VERSION = "python version mismatch"
    FORWARD_REFUSED = "port forwarding refused"
    UPLOAD_FAILED = "upload failed"
    COMMAND_FAILED = "command failed"

    def __init__(self, host: str, cause: str, detail: str) -> None:
        super().__init__(f"ssh host {host}: {cause}: {detail}")
        self.host = host
        self.cause = cause
        self.detail = detail


# --------------------------------------------------------------------------- connect


class SSHClient(paramiko.SSHClient):
    """A paramiko client that knows which configured host it is connected to.

    ``host`` is the name used in messages (the entry's hostname, with the address it
    resolved to when ``~/.ssh/config`` changed it). Closing the client also closes the
    connections to the ProxyJump hosts it was reached through.
    """

    def __init__(self) -> None:
        super().__init__()
        self.host = "?"
        self.jumps: list[SSHClient] = []

    def close(self) -> None:
        super().close()
        jumps, self.jumps = self.jumps, []
        for jump in reversed(jumps):
            jump.close()


@dataclass
class _Target:
    """One SSH destination after ``~/.ssh/config`` has been applied."""

    alias: str
    hostname: str
    port: int
    username: str
    identities: list[str] = field(default_factory=list)
    explicit_identity: bool = False
    proxyjump: str | None = None
    proxycommand: str | None = None
    known_hosts: list[str] = field(default_factory=list)
    password: str | None = field(default=None, repr=False)

    @property
    def display(self) -> str:
        where = self.hostname if self.port == 22 else f"{self.hostname}:{self.port}"
        return where if self.alias in (self.hostname, where) else f"{self.alias} ({where})"

    @property
    def known_hosts_name(self) -> str:
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"


def _ssh_config() -> paramiko.SSHConfig | None:
    """``~/.ssh/config`` (read each time: $HOME may differ between calls, e.g. in tests)."""
    path = os.path.expanduser("~/.ssh/config")
    if not os.path.isfile(path):
        return None
    return paramiko.SSHConfig.from_path(path)


def _resolve(alias: str, username: str | None = None, port: int | None = None,
             key_filename: str | Sequence[str] | None = None,
             known_hosts: str | None = None, password: str | None = None) -> _Target:
    """Apply ``~/.ssh/config`` to ``alias``; explicit values win, as on ssh's command line.
    ``password`` is for this host only, never for the jump hosts on the way to it."""
    conf = _ssh_config()
    found = conf.lookup(alias) if conf is not None else {}
    hostname = found.get("hostname", alias)
    if port is None:
        port = int(found.get("port", 22))
    if username is None:
        username = found.get("user") or getpass.getuser()
    if key_filename:
        names = [key_filename] if isinstance(key_filename, str) else list(key_filename)
        identities = [os.path.expanduser(k) for k in names]
        explicit = True
    else:
        # Like ssh: IdentityFile lines that name no file are skipped, not an error.
        identities = [os.path.expanduser(k) for k in found.get("identityfile", [])
                      if os.path.isfile(os.path.expanduser(k))]
        explicit = False
    proxyjump = found.get("proxyjump")
    if proxyjump and proxyjump.strip().lower() == "none":
        proxyjump = None
    proxycommand = found.get("proxycommand")
    if proxycommand and proxycommand.strip().lower() == "none":
        proxycommand = None
    if known_hosts:
        files = [os.path.expanduser(known_hosts)]
    elif found.get("userknownhostsfile"):
        files = [os.path.expanduser(f) for f in found["userknownhostsfile"].split()]
    else:
        files = [os.path.expanduser("~/.ssh/known_hosts")]
    return _Target(alias, hostname, port, username, identities, explicit, proxyjump,
                   proxycommand, files, password)


def _parse_jump(spec: str) -> tuple[str, str | None, int | None]:
    """``[user@]host[:port]`` (or ``ssh://[user@]host[:port]``) of a ProxyJump list."""
    spec = spec.strip()
    if spec.startswith("ssh://"):
        spec = spec[len("ssh://"):]
    user = None
    if "@" in spec:
        user, spec = spec.rsplit("@", 1)
    port = None
    match = re.fullmatch(r"\[(.+)\](?::(\d+))?|([^:]+)(?::(\d+))?", spec)
    if match:
        host = match.group(1) or match.group(3)
        digits = match.group(2) or match.group(4)
        port = int(digits) if digits else None
    else:
        host = spec
    return host, user, port


class _RejectUnknown(paramiko.MissingHostKeyPolicy):
    """The default: a host whose key is in no known_hosts file is refused."""

    def __init__(self, target: _Target) -> None:
        self.target = target

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str,
                         key: paramiko.PKey) -> None:
        raise HostError(
            self.target.display, HostError.UNKNOWN_HOST_KEY,
            f"its {key.get_name()} key {key.fingerprint} is in no known_hosts file "
            f"({', '.join(self.target.known_hosts)}); check the key and add it (for example "
            f"`ssh-keyscan -p {self.target.port} {self.target.hostname} >> ~/.ssh/known_hosts`), "
            'or set "host_key": "accept-new" in the worker entry to trust it on first contact')


class _AcceptNew(paramiko.MissingHostKeyPolicy):
    """``accept-new``: trust a host seen for the first time and append its key to the
    known_hosts file, so that a later *change* of the key is caught."""

    def __init__(self, target: _Target) -> None:
        self.target = target

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str,
                         key: paramiko.PKey) -> None:
        client.get_host_keys().add(hostname, key.get_name(), key)
        path = self.target.known_hosts[0]
        try:
            os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
            with open(path, "a", encoding="ascii") as f:
                f.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
        except OSError as exc:  # the connection may still go ahead: the key is trusted now
            log.warning("ssh host %s: could not record its host key in %s: %s",
                        self.target.display, path, exc)
            return
        log.info("ssh host %s: first contact, added its %s key %s to %s",
                 self.target.display, key.get_name(), key.fingerprint, path)


def _open(target: _Target, sock: object | None, host_key: str, timeout: float,
          via: str = "") -> SSHClient:
    """Connect and authenticate to one target (through ``sock`` when given)."""
    client = SSHClient()
    client.host = target.display
    for path in ["/etc/ssh/ssh_known_hosts", *target.known_hosts]:
        if os.path.isfile(path):
            try:
                client.load_system_host_keys(path)
            except (OSError, paramiko.SSHException) as exc:
                log.warning("ssh: cannot read known_hosts file %s: %s", path, exc)
    client.set_missing_host_key_policy(
        _AcceptNew(target) if host_key == "accept-new" else _RejectUnknown(target))
    for path in target.identities if target.explicit_identity else ():
        if not os.path.isfile(path):
            raise HostError(target.display, HostError.KEY_FILE, f"{path} does not exist")
    keys_text = (", ".join(target.identities) if target.identities
                 else "the SSH agent's keys" if target.password
                 else "the SSH agent's keys and ~/.ssh/id_*")
    try:
        client.connect(
            target.hostname, port=target.port, username=target.username,
            key_filename=target.identities or None, password=target.password,
            # Named keys (or a password) are what the user chose: do not also offer every
            # key in ~/.ssh (a server may count each offer as a failed attempt, and lock
            # the account out before the password is tried). The agent stays allowed.
            look_for_keys=not target.identities and not target.password, allow_agent=True,
            timeout=timeout, banner_timeout=timeout, auth_timeout=timeout,
            sock=sock)  # type: ignore[arg-type]
    except HostError:
        client.close()
        raise
    except paramiko.BadHostKeyException as exc:
        client.close()
        raise HostError(
            target.display, HostError.HOST_KEY_MISMATCH,
            f"it offered the {exc.key.get_name()} key {exc.key.fingerprint}, but known_hosts "
            f"has {exc.expected_key.fingerprint} for {target.known_hosts_name}: the host was "
            f"reinstalled or someone is in between; if the change is expected, remove the old "
            f"entry with `ssh-keygen -R '{target.known_hosts_name}'`") from None
    except paramiko.PasswordRequiredException:
        client.close()
        raise HostError(target.display, HostError.KEY_FILE,
                        f"the key {keys_text} is protected by a passphrase; load it into "
                        "ssh-agent (ssh-add) so that pydron can use it") from None
    except paramiko.AuthenticationException as exc:
        client.close()
        if target.password:
            raise HostError(target.display, HostError.REFUSED_PASSWORD,
                            f"the server refused the password (and the key(s) "
                            f"{keys_text}) for user {target.username!r}: {exc}") from None
        raise HostError(target.display, HostError.REFUSED_KEY,
                        f"the server refused the key(s) offered for user "
                        f"{target.username!r} ({keys_text}): {exc}") from None
    except (socket.timeout, TimeoutError) as exc:
        client.close()
        raise HostError(target.display, HostError.UNREACHABLE,
                        f"no answer from {target.hostname}:{target.port}{via} within "
                        f"{timeout:g} s ({exc or 'timed out'})") from None
    except paramiko.SSHException as exc:
        # paramiko may report a later symptom ("No existing session"); the transport keeps
        # the first error (such as no SSH banner within the timeout): report that one.
        transport = client.get_transport()
        if transport is not None and transport.is_alive():
            transport.join(min(timeout, 2.0))  # the thread that saw the error is finishing
        cause = getattr(transport, "saved_exception", None) or exc
        client.close()
        raise HostError(target.display, HostError.UNREACHABLE,
                        f"SSH handshake with {target.hostname}:{target.port}{via} failed: "
                        f"{cause}") from None
    except OSError as exc:  # refused, no route, unknown name (NoValidConnectionsError too)
        client.close()
        reason = exc.strerror or str(exc)
        if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
            # One error per address tried (IPv4, IPv6): say what each said.
            reason = "; ".join(sorted({e.strerror or str(e) for e in exc.errors.values()}))
        if isinstance(exc, socket.gaierror):
            reason = f"cannot resolve the name: {reason}"
        raise HostError(target.display, HostError.UNREACHABLE,
                        f"cannot connect to {target.hostname}:{target.port}{via}: "
                        f"{reason}") from None
    return client


def connect(entry: Mapping[str, object], *, timeout: float = 10.0,
            keepalive: float = 15.0) -> SSHClient:
    """Open an authenticated SSH connection for an ``"ssh"`` worker entry.

    Keys used: ``hostname`` (required; may be a ``Host`` alias of ``~/.ssh/config``),
    ``port``, ``username``, ``key_filename`` (else the SSH agent and ``~/.ssh/id_*``),
    ``password`` (password login, as the original Pydron offered it: tried after the named
    key and the agent's keys; ``~/.ssh/id_*`` are then not offered),
    ``host_key`` (``"known_hosts"`` or ``"accept-new"``, see :data:`HOST_KEY_POLICIES`) and
    ``known_hosts`` (a file used instead of ``~/.ssh/known_hosts``). From ``~/.ssh/config``
    the entry's hostname picks up HostName, User, Port, IdentityFile, UserKnownHostsFile,
    ProxyJump (each jump host is itself looked up there) and ProxyCommand; keys written in
    the entry win over the file, as options on ssh's command line do.

    ``keepalive`` makes the client send a keep-alive every so many seconds, so that a NAT
    in between does not drop a quiet connection and a dead peer is noticed.

    Raises :class:`HostError` naming the host and the cause.
    """
    host_key = str(entry.get("host_key", "known_hosts"))
    if host_key not in HOST_KEY_POLICIES:
        raise ValueError(f"host_key must be one of {HOST_KEY_POLICIES}, not {host_key!r}")
    port = entry.get("port")
    target = _resolve(str(entry["hostname"]),
                      username=entry.get("username"),  # type: ignore[arg-type]
                      port=int(port) if port is not None else None,  # type: ignore[call-overload]
                      key_filename=entry.get("key_filename"),  # type: ignore[arg-type]
                      known_hosts=entry.get("known_hosts"),  # type: ignore[arg-type]
                      password=entry.get("password"))  # type: ignore[arg-type]
    jumps: list[SSHClient] = []
    sock: object | None = None
    try:
        if target.proxyjump:
            hops = [h for h in target.proxyjump.split(",") if h.strip()]
            if len(hops) > 8:
                raise HostError(target.display, HostError.UNREACHABLE,
                                f"ProxyJump chain too long: {target.proxyjump}")
            for hop in hops:
                host, user, hop_port = _parse_jump(hop)
                jump_target = _resolve(host, user, hop_port, known_hosts=entry.get("known_hosts"))  # type: ignore[arg-type]
                if jump_target.proxyjump and not jumps:
                    log.debug("ssh: ignoring ProxyJump of jump host %s: the chain of %s "
                              "is used instead", host, target.alias)
                sock = _channel_via(jumps, jump_target, target, timeout)
                jump = _open(jump_target, sock, host_key, timeout,
                             via=f" via {jumps[-1].host}" if jumps else "")
                jumps.append(jump)
            sock = _channel_via(jumps, target, target, timeout)
        elif target.proxycommand:
            sock = paramiko.ProxyCommand(target.proxycommand)
        via = f" via jump host {jumps[-1].host}" if jumps else ""
        client = _open(target, sock, host_key, timeout, via=via)
    except BaseException:
        for jump in reversed(jumps):
            jump.close()
        raise
    client.jumps = jumps
    transport = client.get_transport()
    if transport is not None and keepalive:
        transport.set_keepalive(int(max(1, keepalive)))
    log.debug("ssh host %s: connected as %s", target.display, target.username)
    return client


def _channel_via(jumps: list[SSHClient], hop: _Target, final: _Target,
                 timeout: float) -> paramiko.Channel | None:
    """A direct-tcpip channel from the last jump host to ``hop`` (None if no jump yet)."""
    if not jumps:
        return None
    transport = jumps[-1].get_transport()
    assert transport is not None
    try:
        return transport.open_channel("direct-tcpip", (hop.hostname, hop.port),
                                      ("127.0.0.1", 0), timeout=timeout)
    except (paramiko.SSHException, OSError) as exc:
        raise HostError(final.display, HostError.UNREACHABLE,
                        f"jump host {jumps[-1].host} cannot reach {hop.hostname}:{hop.port}: "
                        f"{exc}") from None


def _host(client: paramiko.SSHClient) -> str:
    """The name of the host a client is connected to, for messages."""
    name = getattr(client, "host", None)
    if name and name != "?":
        return name
    transport = client.get_transport()
    try:
        peer = transport.getpeername() if transport is not None else None
    except OSError:
        peer = None
    return f"{peer[0]}:{peer[1]}" if peer else "?"


# --------------------------------------------------------------------------- commands


def _python_argv(python: str) -> list[str]:
    """The interpreter command of an entry: a path or a command with options."""
    argv = shlex.split(python)
    if not argv:
        raise ValueError("python must name an interpreter, e.g. 'python3'")
    return argv


def run_command(client: paramiko.SSHClient, command: str | Sequence[str], *,
                stdin_data: bytes = b"", timeout: float = 60.0) -> tuple[int, bytes, bytes]:
    """Run a short command on the remote host and wait for it: ``(status, stdout, stderr)``.

    A sequence is quoted for the remote shell; a string is passed to it as it is.
    """
    if not isinstance(command, str):
        command = shlex.join(command)
    transport = client.get_transport()
    if transport is None or not transport.is_active():
        raise HostError(_host(client), HostError.UNREACHABLE, "the SSH connection is closed")
    try:
        channel = transport.open_session(timeout=timeout)
        channel.settimeout(timeout)
        channel.exec_command(command)
        if stdin_data:
            channel.sendall(stdin_data)
        channel.shutdown_write()
        out, err = io.BytesIO(), io.BytesIO()
        deadline = time.monotonic() + timeout
        while not (channel.exit_status_ready() and not channel.recv_ready()
                   and not channel.recv_stderr_ready()):
            if time.monotonic() > deadline:
                channel.close()
                raise HostError(_host(client), HostError.COMMAND_FAILED,
                                f"`{command[:80]}` did not finish within {timeout:g} s")
            select.select([channel], [], [], 0.2)
            while channel.recv_ready():
                out.write(channel.recv(65536))
            while channel.recv_stderr_ready():
                err.write(channel.recv_stderr(65536))
        status = channel.recv_exit_status()
        channel.close()
    except (paramiko.SSHException, OSError) as exc:
        raise HostError(_host(client), HostError.UNREACHABLE,
                        f"running `{command[:80]}` failed: {exc}") from None
    return status, out.getvalue(), err.getvalue()


def _missing_interpreter(client: paramiko.SSHClient, python: str, status: int,
                         err: bytes) -> HostError:
    text = err.decode(errors="replace").strip().splitlines()
    why = text[-1] if text else f"exit status {status}"
    return HostError(_host(client), HostError.MISSING_INTERPRETER,
                     f"cannot run the Python interpreter {python!r} there ({why}); set "
                     '"python" in the worker entry to one that exists')


def remote_python_version(client: paramiko.SSHClient, python: str = DEFAULT_PYTHON, *,
                          check: bool = True) -> tuple[int, int]:
    """``(major, minor)`` of the remote interpreter ``python``.

    With ``check`` (the default) a major.minor different from this interpreter's raises a
    :class:`HostError` naming the host and both versions: functions and values travel as
    pickles of code objects, which only another interpreter of the same major.minor
    understands, so such a host could run nothing.
    """
    code = "import sys; print('%d %d' % sys.version_info[:2])"
    status, out, err = run_command(client, [*_python_argv(python), "-c", code], timeout=30)
    match = re.search(rb"^(\d+) (\d+)\s*$", out, re.M)
    if status != 0 or match is None:
        raise _missing_interpreter(client, python, status, err or out)
    version = (int(match.group(1)), int(match.group(2)))
    local = sys.version_info[:2]
    if check and version != local:
        raise HostError(_host(client), HostError.PYTHON_VERSION,
                        f"its {python} is Python {version[0]}.{version[1]}, but this program "
                        f"runs on Python {local[0]}.{local[1]}; pydron needs the same "
                        f"major.minor on both sides (set \"python\" in the worker entry)")
    return version


# --------------------------------------------------------------------------- shipping


# Run here, and sent to the remote as source, so that both sides hash a tree the same way.
_REMOTE_PROBE = source_of(tree_hash)


def _local_root() -> str:
    import pydron
    return os.path.dirname(os.path.abspath(pydron.__file__))


def local_pydron_hash() -> tuple[str, str]:
    """``(version, hash)`` of the pydron package this process runs (its .py files only)."""
    root = _local_root()
    return str(tree_hash.pydron_version(root)), tree_hash.pydron_hash(root)


def _probe(client: paramiko.SSHClient, python: str, pythonpath: str | None) -> dict | None:
    argv = _python_argv(python)
    command = shlex.join([*argv, "-c", _REMOTE_PROBE])
    if pythonpath is not None:
        command = f"PYTHONPATH={shlex.quote(pythonpath)} {command}"
    else:
        command = f"unset PYTHONPATH; {command}"
    status, out, err = run_command(client, command, timeout=60)
    if status != 0:
        raise _missing_interpreter(client, python, status, err)
    try:
        return json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise HostError(_host(client), HostError.COMMAND_FAILED,
                        f"unexpected answer from {python}: {out[:200]!r}") from None


def _remote_dir(sftp: paramiko.SFTPClient, tmp_dir: str) -> str:
    """``tmp_dir`` as an absolute remote path (``~`` is the remote home directory)."""
    if tmp_dir == "~" or tmp_dir.startswith("~/"):
        home = sftp.normalize(".")
        return posixpath.join(home, tmp_dir[2:]) if tmp_dir != "~" else home
    if not tmp_dir.startswith("/"):
        return posixpath.join(sftp.normalize("."), tmp_dir)
    return tmp_dir


def _makedirs(sftp: paramiko.SFTPClient, path: str, mode: int = 0o700) -> None:
    parts = [p for p in path.split("/") if p]
    current = "/" if path.startswith("/") else ""
    for part in parts:
        current = posixpath.join(current, part) if current else part
        try:
            sftp.stat(current)
        except FileNotFoundError:
            sftp.mkdir(current, mode)


def ensure_pydron(client: paramiko.SSHClient, sftp: paramiko.SFTPClient,
                  python: str = DEFAULT_PYTHON, tmp_dir: str = DEFAULT_TMP_DIR, *,
                  force: bool = False) -> str | None:
    """Make this pydron importable by the remote ``python``; return what to put on the
    remote ``PYTHONPATH`` for that, or None when nothing is needed.

    Nothing is needed when the remote interpreter already imports a pydron with the same
    version *and* the same source (a hash of its .py files): the version alone is not
    enough, because two checkouts of one version may speak different wire protocols.
    Otherwise the package's .py files are uploaded once into
    ``tmp_dir/pydron-<version>-<hash>/pydron`` and that directory is returned; a later run
    with the same code finds it there and uploads nothing. The upload goes to a private
    staging directory (mode 0700) renamed into place, so concurrent runs never see half a
    package, and a directory that another user could have planted or changed is not used.
    ``force`` ships the package even if the remote has an identical one.
    """
    host = _host(client)
    version, digest = local_pydron_hash()
    if not force:
        found = _probe(client, python, None)
        if found and found.get("version") == version and found.get("hash") == digest:
            log.debug("ssh host %s: has pydron %s (%s) at %s", host, version, digest,
                      found.get("root"))
            return None
    try:
        base = _remote_dir(sftp, tmp_dir)
        final = posixpath.join(base, f"pydron-{version}-{digest}")
        status, out, _ = run_command(client, "id -u", timeout=30)
        uid = int(out.strip()) if status == 0 and out.strip().isdigit() else None
        if _usable(sftp, final, uid) and _probe_at(client, python, final, version, digest):
            log.debug("ssh host %s: reusing pydron %s at %s", host, digest, final)
            return final
        _makedirs(sftp, base, 0o700)
        staging = f"{final}.part-{secrets.token_hex(4)}"
        _upload_tree(sftp, _local_root(), posixpath.join(staging, "pydron"), staging)
        try:
            sftp.posix_rename(staging, final)
        except OSError:
            # Another run renamed an identical upload into place first, or an unusable
            # directory is in the way: use ours under its unique staging name then.
            if _usable(sftp, final, uid) and _probe_at(client, python, final, version, digest):
                run_command(client, ["rm", "-rf", "--", staging], timeout=60)
            else:
                final = staging
    except (OSError, paramiko.SSHException) as exc:
        raise HostError(host, HostError.UPLOAD_FAILED,
                        f"cannot upload pydron into {tmp_dir!r}: {exc}") from None
    if not _probe_at(client, python, final, version, digest):
        raise HostError(host, HostError.UPLOAD_FAILED,
                        f"{python} does not import the pydron uploaded to {final}")
    log.info("ssh host %s: uploaded pydron %s (%s) to %s", host, version, digest, final)
    return final


def _usable(sftp: paramiko.SFTPClient, path: str, uid: int | None) -> bool:
    """Ours and writable by nobody else (else someone could change the code we run)."""
    try:
        st = sftp.stat(path)
    except OSError:
        return False
    mode = st.st_mode or 0
    return (uid is None or st.st_uid == uid) and not mode & 0o022


def _probe_at(client: paramiko.SSHClient, python: str, path: str, version: str,
              digest: str) -> bool:
    found = _probe(client, python, path)
    return bool(found and found.get("root", "").rstrip("/") == posixpath.join(path, "pydron")
                and found.get("version") == version and found.get("hash") == digest)


def _upload_tree(sftp: paramiko.SFTPClient, local_root: str, remote_root: str,
                 top: str) -> None:
    sftp.mkdir(top, 0o700)
    made = {top}
    for rel, path in tree_hash.pydron_tree(local_root):
        remote = posixpath.join(remote_root, rel)
        parent = posixpath.dirname(remote)
        missing = []
        while parent not in made:
            missing.append(parent)
            parent = posixpath.dirname(parent)
        for d in reversed(missing):
            sftp.mkdir(d, 0o700)
            made.add(d)
        sftp.put(path, remote, confirm=True)
        sftp.chmod(remote, 0o600)


# --------------------------------------------------------------------------- forwarding


class _Forwards:
    """The reverse forwards of one transport: paramiko keeps a single handler per
    transport, so one dispatcher routes each incoming channel by the remote port."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.targets: dict[int, tuple[str, int]] = {}

    def handler(self, channel: paramiko.Channel, origin: tuple[str, int],
                server: tuple[str, int]) -> None:
        # Called on paramiko's transport thread: hand over at once, connect elsewhere.
        with self.lock:
            target = self.targets.get(server[1])
            if target is None and len(self.targets) == 1:
                target = next(iter(self.targets.values()))
        if target is None:
            channel.close()
            return
        threading.Thread(target=_pump, args=(channel, target), daemon=True,
                         name=f"pydron-forward-{server[1]}").start()


_forwards: "weakref.WeakKeyDictionary[paramiko.Transport, _Forwards]" = weakref.WeakKeyDictionary()
_forwards_lock = threading.Lock()


def reverse_forward(transport: paramiko.Transport, local_host: str, local_port: int,
                    remote_host: str = "127.0.0.1") -> int:
    """Forward connections to ``remote_host:<port>`` on the remote side (a port the
    remote sshd picks) to ``local_host:local_port`` here; returns that remote port.

    This is how remote workers reach the master: they connect to 127.0.0.1 on their own
    host and the bytes travel inside the SSH connection, so no port has to be open between
    the hosts and the master listens only on its own loopback. Several forwards may share
    a transport. Needs ``AllowTcpForwarding yes`` (the default) on the server.
    """
    with _forwards_lock:
        table = _forwards.get(transport)
        if table is None:
            table = _forwards[transport] = _Forwards()
    try:
        port = transport.request_port_forward(remote_host, 0, handler=table.handler)
    except paramiko.SSHException as exc:
        peer = _peer(transport)
        raise HostError(peer, HostError.FORWARD_REFUSED,
                        f"the server refused to forward a port to us ({exc}); it needs "
                        "AllowTcpForwarding yes (remote forwarding) in its sshd_config") from None
    with table.lock:
        table.targets[port] = (local_host, local_port)
    log.debug("ssh host %s: remote %s:%d forwards to %s:%d", _peer(transport), remote_host,
              port, local_host, local_port)
    return port


def cancel_forward(transport: paramiko.Transport, remote_port: int,
                   remote_host: str = "127.0.0.1") -> None:
    """Stop a forward made by :func:`reverse_forward`; connections already made stay."""
    table = _forwards.get(transport)
    if table is not None:
        with table.lock:
            table.targets.pop(remote_port, None)
    if transport.is_active():
        # Not transport.cancel_port_forward(): that drops the handler of every forward.
        transport.global_request("cancel-tcpip-forward", (remote_host, remote_port), wait=True)


def _peer(transport: paramiko.Transport) -> str:
    try:
        host, port = transport.getpeername()[:2]
    except (OSError, TypeError):
        return "?"
    return host if port == 22 else f"{host}:{port}"


def _pump(channel: paramiko.Channel, target: tuple[str, int]) -> None:
    """Copy bytes both ways between a forwarded channel and a new local connection,
    passing on half-closes, until both directions are done."""
    try:
        sock = socket.create_connection(target, timeout=10)
    except OSError as exc:
        log.warning("ssh forward: cannot connect to %s:%d: %s", target[0], target[1], exc)
        channel.close()
        return
    sock.settimeout(None)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    open_in = open_out = True  # channel -> socket, socket -> channel
    try:
        while open_in or open_out:
            readable, _, _ = select.select(
                ([channel] if open_in else []) + ([sock] if open_out else []), [], [], 5.0)
            if channel in readable:
                data = channel.recv(65536)
                if data:
                    sock.sendall(data)
                else:
                    open_in = False
                    sock.shutdown(socket.SHUT_WR)
            if sock in readable:
                data = sock.recv(65536)
                if data:
                    channel.sendall(data)
                else:
                    open_out = False
                    channel.shutdown_write()
            if channel.closed:
                break
    except (OSError, EOFError, paramiko.SSHException):
        pass
    finally:
        sock.close()
        channel.close()


# --------------------------------------------------------------------------- processes


# The supervisor that start_remote runs with the remote interpreter (see its module).
_SUPERVISOR = source_of(supervisor)


def start_remote(client: paramiko.SSHClient, command: str | Sequence[str],
                 env: Mapping[str, str] | None = None, stdin_data: bytes = b"", *,
                 python: str = DEFAULT_PYTHON, cwd: str | None = None,
                 grace: float = 3.0) -> paramiko.Channel:
    """Start ``command`` on the remote host so that it ends when the connection drops.

    ``command`` is an argv list (run without a shell) or a string (run by ``/bin/sh -c``).
    It runs under a small supervisor started with the remote ``python``; ``env`` is added
    to its environment and ``stdin_data`` is its whole standard input. Both travel inside
    the SSH channel, not on a command line, so a secret in them is not shown by ``ps`` on
    the remote host (and sshd's ``AcceptEnv`` does not matter).

    Returns the session channel: the command's stdout and stderr arrive on it, and
    ``channel.recv_exit_status()`` is its exit status (128+N if killed by signal N). The
    command and everything in its process group is ended (SIGTERM, then SIGKILL after
    ``grace`` seconds) when the SSH connection drops for any reason -- the master exits,
    is killed, or the network goes -- and also when the master closes the channel's
    write side (``channel.shutdown_write()``), which is the way to stop it on purpose.
    """
    argv = ["/bin/sh", "-c", command] if isinstance(command, str) else list(command)
    if not argv:
        raise ValueError("start_remote needs a command")
    head = json.dumps({"argv": argv, "env": dict(env or {}), "n": len(stdin_data),
                       "cwd": cwd, "grace": float(grace)}).encode() + b"\n"
    transport = client.get_transport()
    if transport is None or not transport.is_active():
        raise HostError(_host(client), HostError.UNREACHABLE, "the SSH connection is closed")
    try:
        channel = transport.open_session(timeout=30)
        channel.exec_command(shlex.join([*_python_argv(python), "-c", _SUPERVISOR]))
        channel.sendall(head + stdin_data)
    except (paramiko.SSHException, OSError) as exc:
        raise HostError(_host(client), HostError.COMMAND_FAILED,
                        f"cannot start {argv[0]!r}: {exc}") from None
    return channel
