"""SSH password login, as the original Pydron documented it (``"username"`` and
``"password"`` in an ``"ssh"`` entry), against a real sshd that accepts passwords.

The test sshd of conftest_hosts.py takes keys only, so this module starts its own (the same
throwaway host key, its own port) with password login enabled for one throwaway account
only, which a fixture creates with ``useradd``/``chpasswd`` and removes afterwards.

That account has uid 0: every SSH test runs as root, and the test interpreter lives
under /root (mode 0700), which no other user could execute. It is a second name for root
with a random password, which only this sshd, on 127.0.0.1 and a free port, accepts (the
system sshd's default ``PermitRootLogin prohibit-password`` refuses passwords for uid 0);
its home is a temporary folder, and it is deleted when the module ends.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass

import pytest

import pydron.backend as backend
from conftest_hosts import pin_host, unavailable
from pydron.backend.launchers import ssh_transport as ssh
from pydron.backend.sshpool import SshPool
from pydron.config import load_config
from realhosts import SSHHost, SSHServer, Unavailable, free_port

PASSWORD_WARNING = "a password is written in the configuration"


@dataclass
class PasswordHost(SSHHost):
    """A test sshd and the account that may log into it with ``password``."""

    password: str = ""


@pytest.fixture(scope="module")
def password_host(ssh_keys, tmp_path_factory) -> PasswordHost:
    """An sshd on 127.0.0.1 that lets one throwaway account log in with its password."""
    if os.geteuid() != 0:
        unavailable("creating a throwaway account needs root")
    for tool in ("useradd", "chpasswd", "userdel"):
        if shutil.which(tool) is None:
            unavailable(f"the {tool} command is missing")
    user = f"pydron-pw-{os.getpid() % 100000}"
    password = secrets.token_urlsafe(18)
    home = tmp_path_factory.mktemp("pwhome")
    made = subprocess.run(["useradd", "-o", "-u", "0", "-g", "0", "-M", "-N", "-d", str(home),
                           "-s", "/bin/sh", user], capture_output=True, text=True)
    if made.returncode != 0:
        unavailable(f"useradd failed: {made.stderr.strip()}")
    server = None
    try:
        chpasswd = subprocess.run(["chpasswd"], input=f"{user}:{password}\n",
                                  capture_output=True, text=True)
        if chpasswd.returncode != 0:
            unavailable(f"chpasswd failed: {chpasswd.stderr.strip()}")
        server = SSHServer(tmp_path_factory.mktemp("pwsshd"), ssh_keys, ["127.0.0.1"],
                           free_port(), tag="sshd_password",
                           extra_config=f"Match User {user}\n"
                                        "    PasswordAuthentication yes\n"
                                        "    PermitRootLogin yes\n")
        try:
            server.start()
        except Unavailable as exc:
            unavailable(str(exc))
        host_key = " ".join((ssh_keys["host"].with_suffix(".pub")).read_text().split()[:2])
        yield PasswordHost("127.0.0.1", server.port, user, "", host_key, password=password)
    finally:
        if server is not None:
            server.stop()
        # -f: the account shares uid 0 with every root process, which userdel would
        # otherwise take for the account being in use. No -r: nothing of root's is removed.
        subprocess.run(["userdel", "-f", user], capture_output=True, text=True)


def _entry(host: PasswordHost, **extra: object) -> dict[str, object]:
    """The entry as the original Pydron's documentation wrote it (plus port and python,
    which a real host would not need)."""
    return {"type": "ssh", "hostname": host.hostname, "port": host.port,
            "username": host.username, "password": host.password,
            "tmp_dir": "/tmp", "data_ports": "10000-10010", "cores": 2,
            "python": host.python, **extra}


def _hostname_and_uid():
    # A closure, so that it travels by value (the remote worker need not import this file).
    def probe(i):
        import os
        import pwd
        return i, os.getpid(), pwd.getpwuid(os.getuid()).pw_name, os.environ.get("USER")
    return probe


def test_password_login_runs_calls_and_warns_once(password_host, ssh_home, tmp_path, caplog):
    """A pydron.conf with username and password is accepted with a warning naming the
    file and the key (once, however often the file is read), and its workers run calls
    after logging in with that password: there is no key that could have let them in."""
    from pydron import functional, schedule

    pin_host(ssh_home, password_host)
    conf = tmp_path / "pydron.conf"
    conf.write_text(json.dumps({"workers": [_entry(password_host)]}))
    conf.chmod(0o644)
    caplog.set_level(logging.INFO, logger="pydron")
    config = load_config(conf)
    load_config(conf)  # read again: still one warning
    warnings = [r for r in caplog.records
                if r.name == "pydron.config" and PASSWORD_WARNING in r.getMessage()]
    assert len(warnings) == 1, caplog.text
    message = warnings[0].getMessage()
    assert warnings[0].levelno == logging.WARNING
    assert message.startswith(f"{conf}: workers[0].password: ")
    assert f"anyone who can read the file {conf} can read it" in message
    assert "mode 644 lets other users read it" in message
    assert "key_filename" in message  # what to use instead
    assert password_host.password not in caplog.text
    assert "workers[0].data_ports is ignored" in caplog.text
    assert password_host.password not in repr(config.workers[0])
    assert not list((ssh_home / ".ssh").glob("id_*"))  # no key to fall back on

    probe = functional(_hostname_and_uid())

    @schedule
    def run(n):
        out = []
        for i in range(n):
            out.append(probe(i))
        return out

    previous = backend._config
    backend.configure(config)
    try:
        pool = backend.get_pool()
        assert isinstance(pool, SshPool) and pool.parallelism == 2
        results = run(6)
        assert [r[0] for r in results] == list(range(6))
        assert {r[1] for r in results} <= set(pool.worker_pids())
        assert [h["state"] for h in pool.hosts()] == ["ready"]
    finally:
        backend.configure(previous)
    # The workers ran under the password account's login (sshd sets USER to its name).
    assert {r[3] for r in results} == {password_host.username}


def test_wrong_password_is_refused_with_a_clear_error(password_host, ssh_home):
    pin_host(ssh_home, password_host)
    entry = {k: v for k, v in _entry(password_host, password="not-the-password").items()
             if k not in ("type", "data_ports")}
    with pytest.raises(ssh.HostError) as info:
        ssh.connect(entry, timeout=20)
    assert info.value.cause == ssh.HostError.REFUSED_PASSWORD
    assert f"refused the password (and the key(s) the SSH agent's keys) for user " \
           f"'{password_host.username}'" in str(info.value)
    assert "not-the-password" not in str(info.value)


def test_the_right_password_connects_and_runs_a_command(password_host, ssh_home):
    pin_host(ssh_home, password_host)
    entry = {k: v for k, v in _entry(password_host).items() if k not in ("type", "data_ports")}
    client = ssh.connect(entry, timeout=20)
    try:
        assert ssh.remote_python_version(client, password_host.python) == sys.version_info[:2]
        status, out, _ = ssh.run_command(client, "echo $USER", timeout=20)
        assert status == 0 and out.decode().strip() == password_host.username
    finally:
        client.close()
