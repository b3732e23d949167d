"""pydron.backend.launchers.ssh_transport against real OpenSSH servers: one on 127.0.0.1 and one
on a second host in a network namespace (fixtures in conftest_hosts.py). No mocks: connection, host
keys, ~/.ssh/config, forwarding, uploads and process lifetimes are the real thing."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from conftest_hosts import pin_host, unavailable
from pydron.backend.launchers import ssh_transport as ssh
from pydron.backend.launchers.ssh_transport import HostError
from realhosts import free_port


def _connect(host, home, **overrides):
    pin_host(home, host)
    return ssh.connect(host.entry(**overrides))


def _alive(pid: int) -> bool:
    """True while pid is a live process (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def _wait_gone(pid: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def _read_line(channel, timeout: float = 20.0) -> str:
    channel.settimeout(timeout)
    data = b""
    while not data.endswith(b"\n"):
        chunk = channel.recv(1)
        if not chunk:
            err = channel.recv_stderr(10000) if channel.recv_stderr_ready() else b""
            raise AssertionError(f"channel closed early: {data!r} {err!r}")
        data += chunk
    return data.decode().strip()


# --------------------------------------------------------------------------- connect


def test_connect_with_pinned_host_key(sshd, ssh_home):
    client = _connect(sshd, ssh_home)
    try:
        status, out, _ = ssh.run_command(client, ["hostname"])
        assert status == 0 and out.decode().strip() == sshd.name
        assert "127.0.0.1" in client.host and str(sshd.port) in client.host
    finally:
        client.close()


def test_unknown_host_key_is_rejected_by_default(sshd, ssh_home):
    with pytest.raises(HostError) as info:
        ssh.connect(sshd.entry())
    err = info.value
    assert err.cause == HostError.UNKNOWN_HOST_KEY
    assert err.host == f"127.0.0.1:{sshd.port}"
    assert f"ssh host 127.0.0.1:{sshd.port}: unknown host key" in str(err)
    assert "accept-new" in str(err) and "ssh-keyscan" in str(err)
    assert not (ssh_home / ".ssh" / "known_hosts").exists()


def test_accept_new_records_the_key_and_then_pins_it(sshd, ssh_home):
    client = ssh.connect(sshd.entry(host_key="accept-new"))
    client.close()
    known = (ssh_home / ".ssh" / "known_hosts").read_text()
    assert known == sshd.known_hosts_line()
    # From now on the default policy knows the host.
    ssh.connect(sshd.entry()).close()


def test_changed_host_key_is_rejected_even_with_accept_new(sshd, ssh_home, ssh_keys):
    other = Path(str(ssh_keys["host_other"]) + ".pub").read_text().split()[:2]
    (ssh_home / ".ssh" / "known_hosts").write_text(f"{sshd.known_hosts_name} {' '.join(other)}\n")
    for policy in ("known_hosts", "accept-new"):
        with pytest.raises(HostError) as info:
            ssh.connect(sshd.entry(host_key=policy))
        assert info.value.cause == HostError.HOST_KEY_MISMATCH
        assert f"127.0.0.1:{sshd.port}" in str(info.value)
        assert "ssh-keygen -R" in str(info.value)


def test_known_hosts_option_replaces_the_default_file(sshd, ssh_home, tmp_path):
    pinned = tmp_path / "pinned_hosts"
    pinned.write_text(sshd.known_hosts_line())
    ssh.connect(sshd.entry(known_hosts=str(pinned))).close()
    assert not (ssh_home / ".ssh" / "known_hosts").exists()


def test_wrong_key_is_refused_with_the_host_named(sshd, ssh_home, ssh_keys):
    pin_host(ssh_home, sshd)
    with pytest.raises(HostError) as info:
        ssh.connect(sshd.entry(key_filename=str(ssh_keys["stranger"])))
    err = info.value
    assert err.cause == HostError.REFUSED_KEY
    assert str(err).startswith(f"ssh host 127.0.0.1:{sshd.port}: refused key: ")
    assert str(ssh_keys["stranger"]) in str(err) and "'root'" in str(err)


def test_missing_key_file(sshd, ssh_home, tmp_path):
    pin_host(ssh_home, sshd)
    with pytest.raises(HostError) as info:
        ssh.connect(sshd.entry(key_filename=str(tmp_path / "nope")))
    assert info.value.cause == HostError.KEY_FILE and "does not exist" in str(info.value)


def test_unreachable_port(sshd, ssh_home):
    port = free_port()  # nothing listens there
    started = time.monotonic()
    with pytest.raises(HostError) as info:
        ssh.connect(sshd.entry(port=port))
    assert time.monotonic() - started < 5
    err = info.value
    assert err.cause == HostError.UNREACHABLE and err.host == f"127.0.0.1:{port}"
    assert "refused" in str(err).lower()


def test_a_silent_server_times_out(ssh_home):
    """Something accepts the connection but never speaks SSH (a hung host, a wrong port)."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    port = silent.getsockname()[1]
    try:
        started = time.monotonic()
        with pytest.raises(HostError) as info:
            ssh.connect({"hostname": "127.0.0.1", "port": port}, timeout=1.0)
        assert time.monotonic() - started < 10
        assert info.value.cause == HostError.UNREACHABLE
        assert f"127.0.0.1:{port}" in str(info.value) and "banner" in str(info.value)
    finally:
        silent.close()


def test_ssh_config_is_honoured(sshd, ssh_home):
    key = ssh_home / ".ssh" / "id_testbox"
    shutil.copy(sshd.key_filename, key)
    (ssh_home / ".ssh" / "config").write_text(textwrap.dedent(f"""\
        Host testbox
            HostName 127.0.0.1
            Port {sshd.port}
            User root
            IdentityFile ~/.ssh/id_testbox
        """))
    pin_host(ssh_home, sshd)
    client = ssh.connect({"hostname": "testbox"})
    try:
        assert client.host == f"testbox (127.0.0.1:{sshd.port})"
        assert ssh.run_command(client, "whoami")[1].decode().strip() == "root"
    finally:
        client.close()
    # Values in the entry win over the file: a wrong port in the entry is used.
    with pytest.raises(HostError) as info:
        ssh.connect({"hostname": "testbox", "port": free_port()})
    assert info.value.cause == HostError.UNREACHABLE and "testbox" in info.value.host


def test_proxyjump_reaches_a_host_only_the_jump_host_can_reach(netns_host, ssh_home):
    """The target is the second host's own loopback (127.0.0.1:22 inside the namespace),
    which this machine cannot reach; only the jump host (the namespace's sshd on its veth
    address) can."""
    h2 = netns_host.host
    key = ssh_home / ".ssh" / "id_h2"
    shutil.copy(h2.key_filename, key)
    (ssh_home / ".ssh" / "config").write_text(textwrap.dedent(f"""\
        Host inner
            HostName 127.0.0.1
            Port 22
            User root
            IdentityFile ~/.ssh/id_h2
            ProxyJump root@{h2.hostname}
        Host {h2.hostname}
            IdentityFile ~/.ssh/id_h2
        """))
    (ssh_home / ".ssh" / "known_hosts").write_text(
        h2.known_hosts_line() + h2.known_hosts_line("127.0.0.1"))
    client = ssh.connect({"hostname": "inner"})
    try:
        assert [j.host for j in client.jumps] == [h2.hostname]
        assert ssh.run_command(client, "hostname")[1].decode().strip() == h2.name
    finally:
        client.close()
    assert not client.jumps  # closed with the client

    # The same through ProxyCommand (OpenSSH's client, installed with the server).
    if not os.path.exists("/usr/bin/ssh"):
        unavailable("no OpenSSH client (/usr/bin/ssh) for ProxyCommand")
    kh = ssh_home / ".ssh" / "known_hosts"
    proxy = (f"/usr/bin/ssh -q -i {key} -o BatchMode=yes -o UserKnownHostsFile={kh} "
             f"root@{h2.hostname} -W %h:%p")
    (ssh_home / ".ssh" / "config").write_text(textwrap.dedent(f"""\
        Host inner2
            HostName 127.0.0.1
            Port 22
            User root
            IdentityFile ~/.ssh/id_h2
            ProxyCommand {proxy}
        """))
    client = ssh.connect({"hostname": "inner2"})
    try:
        assert ssh.run_command(client, "hostname")[1].decode().strip() == h2.name
    finally:
        client.close()


# --------------------------------------------------------------------------- python


def test_remote_python_version(sshd, ssh_home, tmp_path):
    client = _connect(sshd, ssh_home)
    try:
        assert ssh.remote_python_version(client, sys.executable) == sys.version_info[:2]

        with pytest.raises(HostError) as info:
            ssh.remote_python_version(client, "/nonexistent/python3.11")
        assert info.value.cause == HostError.MISSING_INTERPRETER
        assert "/nonexistent/python3.11" in str(info.value)
        assert f"127.0.0.1:{sshd.port}" in str(info.value)

        # An interpreter of another version (a stand-in that answers like Python 2.7).
        old = tmp_path / "python2.7"
        old.write_text("#!/bin/sh\necho '2 7'\n")
        old.chmod(0o755)
        with pytest.raises(HostError) as info:
            ssh.remote_python_version(client, str(old))
        local = "%d.%d" % sys.version_info[:2]
        assert info.value.cause == HostError.PYTHON_VERSION
        assert "Python 2.7" in str(info.value) and f"Python {local}" in str(info.value)
        assert ssh.remote_python_version(client, str(old), check=False) == (2, 7)
    finally:
        client.close()


# --------------------------------------------------------------------------- forwarding


class _EchoServer:
    """A local TCP server that answers each connection with b"echo:" + everything it
    received, after the client has finished sending (half-close)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.peers: list[tuple[str, int]] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            self.peers.append(peer)
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            data = bytearray()
            while chunk := conn.recv(65536):
                data += chunk
            conn.sendall(b"echo:" + bytes(data))

    def close(self) -> None:
        self.sock.close()


_REMOTE_CLIENT = """
import hashlib, socket, sys
port, size = int(sys.argv[1]), int(sys.argv[2])
payload = bytes(range(256)) * (size // 256)
s = socket.create_connection(("127.0.0.1", port), timeout=20)
s.sendall(payload)
s.shutdown(socket.SHUT_WR)
got = bytearray()
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    got += chunk
print(len(got), hashlib.sha256(got).hexdigest())
"""


def test_reverse_forward_carries_bytes_both_ways(netns_host, ssh_home):
    h2 = netns_host.host
    echo, other = _EchoServer(), _EchoServer()
    client = _connect(h2, ssh_home)
    try:
        # The second host cannot reach this machine's loopback: only the tunnel can.
        probe = netns_host.exec(sys.executable, "-c",
                                "import socket; socket.create_connection("
                                f"('127.0.0.1', {echo.port}), timeout=2)",
                                capture_output=True)
        assert probe.returncode != 0

        transport = client.get_transport()
        port = ssh.reverse_forward(transport, "127.0.0.1", echo.port)
        port2 = ssh.reverse_forward(transport, "127.0.0.1", other.port)  # same transport
        assert port != port2
        size = 1 << 20
        payload = bytes(range(256)) * (size // 256)
        expected = hashlib.sha256(b"echo:" + payload).hexdigest()
        for remote_port, server in ((port, echo), (port2, other)):
            status, out, err = ssh.run_command(
                client, [sys.executable, "-c", _REMOTE_CLIENT, str(remote_port), str(size)])
            assert status == 0, err
            assert out.decode().split() == [str(size + 5), expected]
            assert len(server.peers) == 1  # each port reached its own server

        ssh.cancel_forward(transport, port2)
        status, _, err = ssh.run_command(
            client, [sys.executable, "-c", _REMOTE_CLIENT, str(port2), "256"])
        assert status != 0 and b"refused" in err.lower()
        # The other forward still works.
        status, out, _ = ssh.run_command(
            client, [sys.executable, "-c", _REMOTE_CLIENT, str(port), "256"])
        assert status == 0 and out.split()[0] == b"261"
    finally:
        client.close()
        echo.close()
        other.close()


# --------------------------------------------------------------------------- shipping


def test_ensure_pydron_uploads_into_tmp_dir(netns_host, ssh_home, tmp_path):
    """The second host's Python, run with -S, cannot import the pydron installed here
    (an editable install lives in site-packages): pydron is uploaded and imported."""
    client = _connect(netns_host.host, ssh_home)
    python = f"{sys.executable} -S"
    tmp_dir = str(tmp_path / "remote tmp")  # a space, to test the quoting too
    try:
        sftp = client.open_sftp()
        version, digest = ssh.local_pydron_hash()
        path = ssh.ensure_pydron(client, sftp, python, tmp_dir)
        assert path == f"{tmp_dir}/pydron-{version}-{digest}"
        uploaded = sorted(str(p.relative_to(path)) for p in Path(path).rglob("*") if p.is_file())
        assert uploaded and all(name.endswith(".py") for name in uploaded)
        assert "pydron/__init__.py" in uploaded
        assert "pydron/backend/launchers/ssh_transport.py" in uploaded
        assert os.stat(path).st_mode & 0o077 == 0  # private

        import shlex
        status, out, err = ssh.run_command(
            client, f"PYTHONPATH={shlex.quote(path)} {python} -c "
                    "'import pydron, pydron.config; print(pydron.__file__, pydron.__version__)'")
        assert status == 0, err
        assert out.decode().rsplit(None, 1) == [f"{path}/pydron/__init__.py", version]

        # A second run finds it and uploads nothing.
        stamp = os.stat(f"{path}/pydron/__init__.py").st_mtime_ns
        assert ssh.ensure_pydron(client, sftp, python, tmp_dir) == path
        assert os.stat(f"{path}/pydron/__init__.py").st_mtime_ns == stamp
        assert [p.name for p in Path(tmp_dir).iterdir()] == [Path(path).name]  # no staging left
        sftp.close()
    finally:
        client.close()


def test_ensure_pydron_needs_nothing_when_the_remote_has_this_pydron(sshd, ssh_home, tmp_path):
    plain = subprocess.run([sys.executable, "-c", "import pydron; print(pydron.__file__)"],
                           cwd="/", capture_output=True, text=True,
                           env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not plain.stdout.startswith(os.path.join(here, "pydron")):
        unavailable(f"this checkout is not the pydron that {sys.executable} imports "
                    f"(it imports {plain.stdout.strip() or plain.stderr.strip()!r}): "
                    f"python -m pip install -e .")
    client = _connect(sshd, ssh_home)
    remote_tmp = tmp_path / "remote"
    try:
        sftp = client.open_sftp()
        # This interpreter imports this very checkout (editable install): nothing to ship.
        assert ssh.ensure_pydron(client, sftp, sys.executable, str(remote_tmp)) is None
        assert not remote_tmp.exists()
        forced = ssh.ensure_pydron(client, sftp, sys.executable, str(remote_tmp), force=True)
        assert forced is not None and Path(forced, "pydron", "__init__.py").is_file()
        sftp.close()
    finally:
        client.close()


def test_ensure_pydron_with_a_missing_interpreter(sshd, ssh_home, tmp_path):
    client = _connect(sshd, ssh_home)
    try:
        with pytest.raises(HostError) as info:
            ssh.ensure_pydron(client, client.open_sftp(), "/no/such/python", str(tmp_path))
        assert info.value.cause == HostError.MISSING_INTERPRETER
    finally:
        client.close()


# --------------------------------------------------------------------------- processes


_SLEEPER = ("import os, sys, time; "
            "print(os.getpid(), sys.stdin.readline().strip(), os.environ.get('PYDRON_T'), "
            "os.getcwd(), flush=True); time.sleep(120)")


def test_start_remote_passes_stdin_env_and_exit_status(sshd, ssh_home, tmp_path):
    client = _connect(sshd, ssh_home)
    try:
        code = ("import os, sys; data = sys.stdin.buffer.read(); "
                "sys.stdout.write('%d %s %s' % (len(data), os.environ['PYDRON_T'], os.getcwd())); "
                "sys.stderr.write('to stderr'); sys.exit(7)")
        channel = ssh.start_remote(client, [sys.executable, "-c", code], {"PYDRON_T": "x y"},
                                   b"\0" * 100000, python=sys.executable, cwd=str(tmp_path))
        assert channel.recv_exit_status() == 7
        out = channel.makefile("rb").read().decode()
        assert out == f"100000 x y {tmp_path}"
        assert channel.makefile_stderr("rb").read() == b"to stderr"
        # A shell command string, and a command that cannot start.
        channel = ssh.start_remote(client, "echo $PYDRON_T; exit 3", {"PYDRON_T": "sh"},
                                   python=sys.executable)
        assert channel.recv_exit_status() == 3 and channel.makefile("rb").read() == b"sh\n"
        channel = ssh.start_remote(client, ["/no/such/program"], python=sys.executable)
        assert channel.recv_exit_status() == 127
        assert b"/no/such/program" in channel.makefile_stderr("rb").read()
    finally:
        client.close()


def test_remote_process_ends_when_the_connection_closes(sshd, ssh_home, tmp_path):
    client = _connect(sshd, ssh_home)
    channel = ssh.start_remote(client, [sys.executable, "-c", _SLEEPER], {"PYDRON_T": "v"},
                               b"secret\n", python=sys.executable, cwd=str(tmp_path))
    pid, word, env, cwd = _read_line(channel).split()
    assert (word, env, cwd) == ("secret", "v", str(tmp_path))
    assert _alive(int(pid))
    client.close()
    assert _wait_gone(int(pid)), f"remote process {pid} outlived the connection"


def test_closing_the_channel_write_side_stops_the_process(netns_host, ssh_home):
    client = _connect(netns_host.host, ssh_home)
    try:
        channel = ssh.start_remote(client, [sys.executable, "-c", _SLEEPER], None, b"s\n",
                                   python=sys.executable, grace=1.0)
        pid = int(_read_line(channel).split()[0])
        channel.shutdown_write()
        assert channel.recv_exit_status() == 128 + signal.SIGTERM
        assert _wait_gone(pid)
    finally:
        client.close()


def test_remote_process_group_ends_when_the_master_is_killed(netns_host, ssh_home, tmp_path):
    """The master dies by SIGKILL (no clean SSH disconnect): the remote command, and a
    grandchild it started, still end."""
    h2 = netns_host.host
    pin_host(ssh_home, h2)
    grandchild = ("import subprocess, sys, time, os; "
                  "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
                  "print(os.getpid(), p.pid, flush=True); time.sleep(120)")
    master = textwrap.dedent(f"""
        import json, sys
        from pydron.backend.launchers import ssh_transport as ssh
        client = ssh.connect(json.loads(sys.argv[1]))
        ch = ssh.start_remote(client, [sys.executable, "-c", {grandchild!r}],
                              python=sys.executable)
        line = b""
        while not line.endswith(b"\\n"):
            line += ch.recv(1)
        print(line.decode().strip(), flush=True)
        import time; time.sleep(120)
        """)
    proc = subprocess.Popen([sys.executable, "-c", master, json.dumps(h2.entry())],
                            stdout=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        line = proc.stdout.readline()
        pids = [int(p) for p in line.split()]
        assert len(pids) == 2 and all(_alive(p) for p in pids), line
        proc.kill()
        proc.wait(10)
        for pid in pids:
            assert _wait_gone(pid), f"remote process {pid} outlived its killed master"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
