"""The ssh pool (``"type": "ssh"``) with real parts: the test sshd on 127.0.0.1 and a second
host in a network namespace with its own hostname (fixtures in conftest_hosts.py). Calls
are @schedule'd the way a user writes them; what runs where is told by the workers'
hostnames and pids."""
from __future__ import annotations

import logging
import subprocess
import threading
import time

import pytest

import pydron.backend as backend
from conftest_hosts import pin_host
from pydron import functional, schedule
from pydron.backend.composite import CompositePool
from pydron.backend.sshpool import SshPool
from pydron.errors import WorkerLostError
from realhosts import free_port

REMOTE_WORKER = "pydron.backend.worker --host"  # in a remote worker's command line only


def _make_where():
    # Defined in a function, so that it travels by value: the remote workers cannot
    # import this test module.
    @functional
    def where(i, delay=0.0):
        import os
        import socket
        import time
        time.sleep(delay)
        return i, socket.gethostname(), os.getpid()
    return where


where = _make_where()


@schedule
def spread(n, delay):
    out = []
    for i in range(n):
        out.append(where(i, delay))
    return out


def _remote_workers(netns=None) -> set[int]:
    """Pids of remote workers alive on this machine (or only in the namespace)."""
    found = subprocess.run(["pgrep", "-f", REMOTE_WORKER], capture_output=True, text=True)
    pids = {int(p) for p in found.stdout.split()}
    if netns is not None:
        listed = subprocess.run(["ip", "netns", "pids", netns.netns], capture_output=True,
                                text=True).stdout.split()
        pids &= {int(p) for p in listed if p.isdigit()}
    return pids


def _wait_no_workers(netns=None, timeout: float = 15.0) -> set[int]:
    deadline = time.monotonic() + timeout
    while True:
        left = _remote_workers(netns)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


@pytest.fixture
def configured():
    """configure(...) for one test; the previous configuration comes back afterwards."""
    previous = backend._config

    def use(workers: list[dict], **top) -> object:
        backend.configure({"workers": workers, **top})
        return backend.get_pool()
    yield use
    backend.configure(previous)


def _ssh(host, **extra) -> dict:
    return {"type": "ssh", **host.entry(**extra)}


def test_calls_land_on_both_hosts_and_nothing_is_left(sshd, netns_host, ssh_home, configured,
                                                      caplog):
    caplog.set_level(logging.INFO, logger="pydron.backend")
    h2 = netns_host.host
    pin_host(ssh_home, sshd, h2)
    pool = configured([_ssh(sshd, cores=2), _ssh(h2, cores=2)])
    assert isinstance(pool, SshPool) and pool.parallelism == 4
    results = spread(16, 0.15)
    assert [r[0] for r in results] == list(range(16))
    names = {r[1] for r in results}
    assert h2.name in names and len(names) == 2, names
    assert {r[2] for r in results} <= set(pool.worker_pids())
    assert _remote_workers(netns_host)  # some of them run in the namespace
    assert "starting" in caplog.text and "ready" in caplog.text
    assert [h["state"] for h in pool.hosts()] == ["ready", "ready"]

    backend.shutdown()
    assert _wait_no_workers() == set()
    assert _wait_no_workers(netns_host) == set()


def test_a_host_whose_workers_are_killed_mid_run(sshd, netns_host, ssh_home, configured):
    h2 = netns_host.host
    pin_host(ssh_home, sshd, h2)
    pool = configured([_ssh(sshd, cores=2), _ssh(h2, cores=2)], max_retries=5)
    pool.start(timeout=60)
    box: dict = {}
    runner = threading.Thread(target=lambda: box.update(out=spread(24, 0.25)))
    runner.start()
    time.sleep(0.8)
    victims = _remote_workers(netns_host)
    assert victims
    subprocess.run(["kill", "-9", *map(str, victims)])
    runner.join(60)
    assert not runner.is_alive()
    assert [r[0] for r in box["out"]] == list(range(24))
    backend.shutdown()
    assert _wait_no_workers() == set() and _wait_no_workers(netns_host) == set()


def test_a_host_lost_mid_run_leaves_its_calls_to_the_others(sshd, netns_host, ssh_home,
                                                            configured, caplog):
    h2 = netns_host.host
    pin_host(ssh_home, sshd, h2)
    pool = configured([_ssh(sshd, cores=2), _ssh(h2, cores=2)])
    pool.start(timeout=60)
    box: dict = {}
    runner = threading.Thread(target=lambda: box.update(out=spread(24, 0.25)))
    runner.start()
    time.sleep(0.8)
    lost = next(h for h in pool._hosts if h.name.startswith(h2.hostname))
    lost.client.get_transport().close()  # as if the network or its sshd went away
    runner.join(60)
    assert not runner.is_alive()
    out = box["out"]
    assert [r[0] for r in out] == list(range(24))
    assert [h["state"] for h in pool.hosts()] == ["ready", "lost"]
    assert "lost" in caplog.text and h2.hostname in caplog.text
    assert pool.parallelism == 2
    # Later calls run on the host that is left.
    assert h2.name not in {r[1] for r in spread(4, 0)}
    backend.shutdown()
    assert _wait_no_workers() == set() and _wait_no_workers(netns_host) == set()


def test_an_unreachable_host_is_named_and_the_run_goes_on(sshd, ssh_home, configured, caplog):
    pin_host(ssh_home, sshd)
    dead = free_port()
    pool = configured([{"type": "ssh", "hostname": "127.0.0.1", "port": dead,
                        "key_filename": sshd.key_filename, "cores": 2},
                       _ssh(sshd, cores=2)])
    assert [r[0] for r in spread(6, 0)] == list(range(6))
    states = {h["name"]: (h["state"], h["cause"]) for h in pool.hosts()}
    assert states[f"127.0.0.1:{dead}"][0] == "failed"
    assert "unreachable" in states[f"127.0.0.1:{dead}"][1]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(f"127.0.0.1:{dead}" in m and "unreachable" in m for m in errors), errors
    assert pool.parallelism == 2


def test_no_usable_host_fails_calls_naming_each_cause(sshd, ssh_home, configured, tmp_path):
    pin_host(ssh_home, sshd)
    dead = free_port()
    configured([{"type": "ssh", "hostname": "127.0.0.1", "port": dead, "cores": 1},
                _ssh(sshd, python=str(tmp_path / "no-such-python"))])
    started = time.monotonic()
    with pytest.raises(WorkerLostError) as info:
        spread(3, 0)
    assert time.monotonic() - started < 30
    message = str(info.value)
    assert f"127.0.0.1:{dead}: unreachable" in message
    assert "missing interpreter" in message and "no-such-python" in message


def test_a_required_host_that_fails_fails_the_pool(sshd, ssh_home, configured):
    pin_host(ssh_home, sshd)
    dead = free_port()
    pool = configured([_ssh(sshd, cores=1),
                       {"type": "ssh", "hostname": "127.0.0.1", "port": dead,
                        "required": True}])
    with pytest.raises(WorkerLostError) as info:
        pool.start(timeout=30)
    assert f"required ssh host 127.0.0.1:{dead}" in str(info.value)
    with pytest.raises(WorkerLostError):
        spread(2, 0)


def test_multicore_and_ssh_entries_add_up(sshd, ssh_home, configured):
    pin_host(ssh_home, sshd)
    pool = configured([{"type": "multicore", "cores": 1}, _ssh(sshd, cores=2)])
    assert isinstance(pool, CompositePool) and pool.parallelism == 3
    local, remote = pool.members
    out = spread(12, 0.2)
    assert [r[0] for r in out] == list(range(12))
    pids = {r[2] for r in out}
    assert pids & set(remote.worker_pids()) and pids & set(local.worker_pids())
