"""Real hosts for the tests: OpenSSH servers, a second host in a network namespace, and a
local EC2-compatible endpoint (moto).

The SSH and cloud code talks to real servers in the tests, not to mocks: paramiko's
behaviour on a refused key, a changed host key or a dropped connection is what matters,
and only a real sshd shows it. Everything here is started from scratch with throwaway keys
in a temporary directory, listens only on 127.0.0.0/8 or inside a network namespace this
module creates, and is stopped by its ``stop()`` (the pytest fixtures in
``conftest_hosts.py`` call it at the end of the session).

Nothing here depends on pytest: a failure to set something up raises :class:`Unavailable`
with a reason a person can act on, and the fixtures turn that into a skip.

Recipes follow ``shared/notes/real-components.md`` (sections 1, 1b and 3).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

SSHD = "/usr/sbin/sshd"
SSH_KEYGEN = "/usr/bin/ssh-keygen"

__all__ = [
    "Unavailable", "SSHHost", "SSHServer", "NetnsHost", "MotoServer",
    "ensure_openssh", "make_keys", "free_port", "wait_for_banner",
]


class Unavailable(RuntimeError):
    """A real component cannot be set up on this machine; the message says why."""


# --------------------------------------------------------------------------- helpers


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (chosen by the kernel)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for_banner(host: str, port: int, timeout: float = 10.0) -> None:
    """Wait until an SSH server answers on host:port with its ``SSH-`` banner."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1.0) as s:
                if s.recv(4).startswith(b"SSH-"):
                    return
        except OSError as exc:
            last = exc
        time.sleep(0.05)
    raise Unavailable(f"no SSH server answered on {host}:{port} within {timeout:.0f} s ({last})")


def _apt_install(*packages: str) -> None:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    # Wait for the dpkg lock rather than fail: another test run may be installing too.
    cmd = ["apt-get", "-o", "DPkg::Lock::Timeout=120", "install", "-y", "-q",
           "--no-install-recommends", *packages]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        # The package lists may be missing or stale on a fresh machine: update once, retry.
        subprocess.run(["apt-get", "-o", "DPkg::Lock::Timeout=120", "update", "-q"], env=env,
                       capture_output=True, text=True)
        result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise Unavailable(f"`{' '.join(cmd)}` failed: {' / '.join(tail)}")


def ensure_openssh() -> None:
    """Install openssh-server with apt if sshd is missing (needs root)."""
    if os.path.exists(SSHD) and os.path.exists(SSH_KEYGEN):
        return
    if os.geteuid() != 0:
        raise Unavailable(f"{SSHD} is missing and installing openssh-server needs root")
    if shutil.which("apt-get") is None:
        raise Unavailable(f"{SSHD} is missing and there is no apt-get to install it")
    _apt_install("openssh-server")
    if not os.path.exists(SSHD):
        raise Unavailable(f"openssh-server was installed but {SSHD} is still missing")


def make_keys(directory: Path) -> dict[str, Path]:
    """Throwaway ed25519 keys: a host key, a client key (authorized) and a second client key
    that the servers do not accept."""
    directory.mkdir(parents=True, exist_ok=True)
    keys = {}
    for name in ("host", "client", "stranger", "host_other"):
        path = directory / f"{name}_ed25519"
        if not path.exists():
            subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "",
                            "-C", f"pydron-test-{name}",
                            "-f", str(path)], check=True)
        keys[name] = path
    authorized = directory / "authorized_keys"
    authorized.write_text((directory / "client_ed25519.pub").read_text())
    authorized.chmod(0o600)
    keys["authorized_keys"] = authorized
    return keys


def _public_key(private: Path) -> str:
    """``"ssh-ed25519 AAAA..."``, the type and base64 of a key (without the comment)."""
    return " ".join(Path(str(private) + ".pub").read_text().split()[:2])


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc), children first found first."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _terminate(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass


# --------------------------------------------------------------------------- sshd


@dataclass
class SSHHost:
    """Where and how to reach one test sshd: what an ``"ssh"`` worker entry needs."""

    hostname: str
    port: int
    username: str
    key_filename: str
    host_public_key: str  # "ssh-ed25519 AAAA..."
    name: str = "localhost"  # the host's own hostname, as `hostname` prints it there
    python: str = sys.executable

    @property
    def known_hosts_name(self) -> str:
        """The name this host has in a known_hosts file (``[host]:port`` unless port 22)."""
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"

    def known_hosts_line(self, name: str | None = None) -> str:
        return f"{name or self.known_hosts_name} {self.host_public_key}\n"

    def entry(self, **overrides: object) -> dict[str, object]:
        """An ``"ssh"`` worker entry (without ``type``) for this host."""
        entry: dict[str, object] = {
            "hostname": self.hostname, "port": self.port, "username": self.username,
            "key_filename": self.key_filename, "python": self.python,
        }
        entry.update(overrides)
        return {k: v for k, v in entry.items() if v is not None}


_SSHD_CONFIG = """\
Port {port}
{listen}
HostKey {host_key}
PidFile {pidfile}
AuthorizedKeysFile {authorized}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
AllowTcpForwarding yes
GatewayPorts no
MaxStartups 100:30:200
MaxSessions 100
Subsystem sftp internal-sftp
LogLevel VERBOSE
"""


@dataclass
class SSHServer:
    """One sshd process, started in the foreground (``-D``) so that we own its PID.

    ``prefix`` is a command to run it under (``ip netns exec ...``), ``addresses`` the
    addresses it listens on (all on ``port``).
    """

    workdir: Path
    keys: dict[str, Path]
    addresses: list[str]
    port: int
    tag: str = "sshd"
    prefix: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    extra_config: str = ""  # appended to the sshd_config (e.g. a Match block)

    def config_path(self) -> Path:
        return self.workdir / f"{self.tag}_config"

    def log_path(self) -> Path:
        return self.workdir / f"{self.tag}.log"

    def start(self, timeout: float = 10.0) -> None:
        try:
            os.makedirs("/run/sshd", exist_ok=True)  # privilege separation directory
            os.chmod("/run/sshd", 0o755)
        except OSError as exc:
            raise Unavailable(f"cannot prepare /run/sshd for sshd: {exc}") from None
        listen = "\n".join(f"ListenAddress {a}" for a in self.addresses)
        self.config_path().write_text(_SSHD_CONFIG.format(
            port=self.port, listen=listen, host_key=self.keys["host"],
            pidfile=self.workdir / f"{self.tag}.pid", authorized=self.keys["authorized_keys"])
            + self.extra_config)
        check = subprocess.run([SSHD, "-t", "-f", str(self.config_path())],
                               capture_output=True, text=True)
        if check.returncode != 0:
            raise Unavailable(f"sshd rejects its test configuration: {check.stderr.strip()}")
        log = open(self.log_path(), "ab")
        self.proc = subprocess.Popen([*self.prefix, SSHD, "-D", "-e",
                                      "-f", str(self.config_path())],
                                     stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        log.close()
        try:
            wait_for_banner(self.addresses[0], self.port, timeout)
        except Unavailable:
            self.stop()
            raise Unavailable(f"sshd did not start: {self.log_tail()}") from None

    def log_tail(self, lines: int = 5) -> str:
        try:
            return " / ".join(self.log_path().read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Stop this sshd. Its per-connection children end with their connections."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        # sshd's per-connection processes outlive a SIGTERM to the listener; a connection
        # still open at the end of the session must not leave them behind.
        sessions = _descendants(proc.pid)
        proc.send_signal(signal.SIGTERM)
        _terminate(sessions)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def start_local_sshd(workdir: Path, keys: dict[str, Path], loopbacks: int = 16
                     ) -> tuple[SSHServer, SSHHost]:
    """sshd on 127.0.0.1 .. 127.0.0.<loopbacks>, one free port for all of them.

    The extra loopback addresses serve libcloud's Dummy driver, whose nodes get the public
    IPs 127.0.0.N. All of 127.0.0.0/8 is the loopback interface, so nothing is reachable
    from outside this machine.
    """
    last: Exception | None = None
    for _ in range(5):  # a port free on 127.0.0.1 may be taken on 127.0.0.N: try again
        port = free_port()
        server = SSHServer(workdir, keys, [f"127.0.0.{i}" for i in range(1, loopbacks + 1)],
                           port, tag=f"sshd_{port}")
        try:
            server.start()
        except Unavailable as exc:
            last = exc
            continue
        host = SSHHost("127.0.0.1", port, "root", str(keys["client"]), _public_key(keys["host"]),
                       name=socket.gethostname())
        return server, host
    raise Unavailable(f"could not start sshd on 127.0.0.1: {last}")


# --------------------------------------------------------------------------- namespace


@dataclass
class NetnsHost:
    """A second host: a network namespace joined to this one by a veth pair, with its own
    sshd (port 22 on its veth address and on its own loopback) and its own hostname.

    The namespace shares the file system and the process table with this machine (it is
    only a network namespace plus a UTS namespace for the hostname), so the same Python
    interpreter runs there.
    """

    workdir: Path
    keys: dict[str, Path]
    netns: str = ""
    outer_if: str = ""
    outer_addr: str = ""
    inner_addr: str = ""
    hostname: str = ""
    server: SSHServer | None = None
    host: SSHHost | None = None

    def start(self) -> SSHHost:
        if os.geteuid() != 0:
            raise Unavailable("a network namespace needs root")
        if shutil.which("ip") is None:
            raise Unavailable("the `ip` command (iproute2) is missing")
        suffix = f"{os.getpid() % 100000}"
        self.netns = f"pyd_h2_{suffix}"
        self.outer_if, inner_if = f"pydv0_{suffix}", f"pydv1_{suffix}"
        subnet = self._free_subnet()
        self.outer_addr, self.inner_addr = f"{subnet}.1", f"{subnet}.2"
        self.hostname = f"pydron-h2-{suffix}"
        steps = [
            ["ip", "netns", "add", self.netns],
            ["ip", "link", "add", self.outer_if, "type", "veth", "peer", "name", inner_if],
            ["ip", "link", "set", inner_if, "netns", self.netns],
            ["ip", "addr", "add", f"{self.outer_addr}/24", "dev", self.outer_if],
            ["ip", "link", "set", self.outer_if, "up"],
            ["ip", "-n", self.netns, "addr", "add", f"{self.inner_addr}/24", "dev", inner_if],
            ["ip", "-n", self.netns, "link", "set", inner_if, "up"],
            ["ip", "-n", self.netns, "link", "set", "lo", "up"],
        ]
        for step in steps:
            result = subprocess.run(step, capture_output=True, text=True)
            if result.returncode != 0:
                self.stop()
                raise Unavailable(f"`{' '.join(step)}` failed: {result.stderr.strip()}")
        self.server = SSHServer(
            self.workdir, self.keys, [self.inner_addr, "127.0.0.1"], 22, tag=f"sshd_{self.netns}",
            prefix=["ip", "netns", "exec", self.netns, "unshare", "--uts", "sh", "-c",
                    f'hostname {self.hostname} && exec "$0" "$@"'])
        try:
            self.server.start()
        except Unavailable as exc:
            log = self.server.log_tail() if self.server else ""
            self.stop()
            raise Unavailable(f"sshd in namespace {self.netns}: {exc} {log}") from None
        self.host = SSHHost(self.inner_addr, 22, "root", str(self.keys["client"]),
                            _public_key(self.keys["host"]), name=self.hostname)
        return self.host

    @staticmethod
    def _free_subnet() -> str:
        """A 10.231.X.0/24 subnet no interface here uses yet (for concurrent runs)."""
        used = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True).stdout
        start = os.getpid() % 200
        for i in range(200):
            subnet = f"10.231.{20 + (start + i) % 200}"
            if f" {subnet}." not in used:
                return subnet
        raise Unavailable("no free 10.231.X.0/24 subnet for the test namespace")

    def exec(self, *argv: str, **kwargs: object) -> subprocess.CompletedProcess:
        """Run a command inside the namespace (as the second host's network sees it)."""
        return subprocess.run(["ip", "netns", "exec", self.netns, *argv], **kwargs)  # type: ignore[call-overload]

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self.netns:
            # Whatever still runs in the namespace was started by these tests (sshd sessions,
            # remote commands): end it, or it would linger in a namespace without a network.
            listed = subprocess.run(["ip", "netns", "pids", self.netns], capture_output=True,
                                    text=True).stdout.split()
            _terminate([int(p) for p in listed if p.isdigit()])
            # Deleting the namespace also deletes the veth pair (both ends).
            subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)
            subprocess.run(["ip", "link", "del", self.outer_if], capture_output=True)
            self.netns = ""


# --------------------------------------------------------------------------- moto


@dataclass
class MotoServer:
    """A local EC2-compatible endpoint: moto's threaded HTTP server on 127.0.0.1."""

    port: int = 0
    server: object | None = None

    def start(self) -> "MotoServer":
        try:
            from moto.server import ThreadedMotoServer
        except ImportError as exc:
            raise Unavailable(f"moto is not installed ({exc}); it is in the test extra: "
                              "pip install -e '.[test]'") from None
        self.port = free_port()
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()  # type: ignore[attr-defined]
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise Unavailable("moto server did not start") from None
                time.sleep(0.05)
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reset(self) -> None:
        """Forget every resource moto holds (between tests)."""
        import urllib.request
        urllib.request.urlopen(urllib.request.Request(f"{self.url}/moto-api/reset", method="POST"),
                               timeout=10).read()

    def stop(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            server.stop()  # type: ignore[attr-defined]
