"""Session fixtures that start real hosts for the SSH and cloud tests (see realhosts.py).

Loaded as a plugin by tests/conftest.py. Each fixture sets its component up on first use
(installing openssh-server with apt if it is missing) and stops it at the end of the
session; a component that cannot be had on this machine (not root, no apt, no network
namespaces) skips the tests that need it, with the reason -- except under ``CI=true``,
where it fails them (see :func:`unavailable`): a green CI means the real components ran.
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest

import realhosts
from realhosts import MotoServer, NetnsHost, SSHHost, Unavailable


def in_ci() -> bool:
    """True when the tests run as CI (``CI=true``, as CI services and ``.ci/run`` set it)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def unavailable(reason: str) -> NoReturn:
    """Give up on a test whose real component (an sshd, a second host, a moto server, a
    test dependency ...) cannot be had here: a skip on a developer's machine, a failure
    with the same reason under ``CI=true``, where a skip would let a green run hide that
    the component never ran."""
    if in_ci():
        pytest.fail(f"CI=true and a real component is unavailable: {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)  # also from a module's top level


def require_module(name: str) -> ModuleType:
    """``import name``, or :func:`unavailable` naming the missing test dependency (the
    ``pytest.importorskip`` of the tests, which must not turn into a skip on CI)."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        unavailable(f"{name} cannot be imported ({exc}); it is in the test extra: "
                    f"python -m pip install -e '.[test]'")


@pytest.fixture(scope="session")
def ssh_keys(tmp_path_factory) -> dict[str, Path]:
    """Throwaway host and client keys (installs openssh-server first if needed)."""
    try:
        realhosts.ensure_openssh()
    except Unavailable as exc:
        unavailable(f"no OpenSSH server: {exc}")
    return realhosts.make_keys(tmp_path_factory.mktemp("sshkeys"))


@pytest.fixture(scope="session")
def sshd(ssh_keys, tmp_path_factory) -> SSHHost:
    """An sshd for root on 127.0.0.1 (and 127.0.0.2-16, for the Dummy cloud driver's
    nodes), on a free port; stopped at the end of the session."""
    try:
        server, host = realhosts.start_local_sshd(tmp_path_factory.mktemp("sshd"), ssh_keys)
    except Unavailable as exc:
        unavailable(f"no local sshd: {exc}")
    yield host
    server.stop()


@pytest.fixture(scope="session")
def netns_host(ssh_keys, tmp_path_factory) -> NetnsHost:
    """A second host: a network namespace with its own hostname and an sshd on port 22.
    ``netns_host.host`` is its :class:`SSHHost`; ``netns_host.exec(...)`` runs a command in
    its network."""
    h2 = NetnsHost(tmp_path_factory.mktemp("netns"), ssh_keys)
    try:
        h2.start()
    except Unavailable as exc:
        unavailable(f"no second host in a network namespace: {exc}")
    yield h2
    h2.stop()


@pytest.fixture(scope="session")
def moto_server() -> MotoServer:
    """A local EC2-compatible endpoint (moto) on 127.0.0.1."""
    try:
        server = MotoServer().start()
    except Unavailable as exc:
        unavailable(f"no moto server: {exc}")
    yield server
    server.stop()


@pytest.fixture
def ssh_home(tmp_path, monkeypatch) -> Path:
    """A fresh, empty home directory (``~/.ssh`` exists, 0700) and no SSH agent, so the
    user's own keys, known_hosts and ssh config play no part in a test."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return home


def pin_host(home: Path, *hosts: SSHHost) -> Path:
    """Write the hosts' keys into ``~/.ssh/known_hosts`` of a test home."""
    path = home / ".ssh" / "known_hosts"
    with open(path, "a") as f:
        for host in hosts:
            f.write(host.known_hosts_line())
    os.chmod(path, 0o600)
    return path
