"""The explicit API on the ssh pool with real parts (the test sshd on 127.0.0.1 and a second
host in a network namespace): moving from local cores to other hosts is a change of
configuration, not of code. The functions travel by value (made in a factory), since the
remote workers cannot import this test module."""
from __future__ import annotations

import concurrent.futures as cf
import subprocess

import pytest

import pydron
import pydron.backend as backend
from conftest_hosts import pin_host
from waiting import wait_for

REMOTE_WORKER = "pydron.backend.worker --host"


def _make():
    def where(i, delay=0.0):
        import os
        import socket
        import time
        time.sleep(delay)
        return i, socket.gethostname(), os.getpid()

    def failing(i):
        if i == 13:
            raise LookupError(i) from ValueError("cause")
        return i * 2

    def add(a, b):
        return a + b
    return where, failing, add


where, failing, add = _make()


@pytest.fixture
def two_hosts(sshd, netns_host, ssh_home):
    h2 = netns_host.host
    pin_host(ssh_home, sshd, h2)
    conf = {"workers": [{"type": "ssh", **sshd.entry(cores=2)},
                        {"type": "ssh", **h2.entry(cores=2)}], "max_retries": 5}
    yield conf, h2
    backend.configure(None)


def _remote_workers() -> set[int]:
    found = subprocess.run(["pgrep", "-f", REMOTE_WORKER], capture_output=True, text=True)
    return {int(p) for p in found.stdout.split()}


def test_map_executor_and_reduce_on_two_ssh_hosts(two_hosts):
    conf, h2 = two_hosts
    backend.configure(conf)
    results = list(pydron.map(where, range(24), [0.05] * 24, chunksize=1))
    assert [r[0] for r in results] == list(range(24))
    assert len({r[1] for r in results}) == 2 and h2.name in {r[1] for r in results}

    got = []
    with pytest.raises(LookupError) as info:
        for value in pydron.map(failing, range(40)):
            got.append(value)
    assert got == [i * 2 for i in range(13)]
    assert isinstance(info.value.__cause__, ValueError)
    assert list(pydron.map(failing, range(15), errors="return"))[13].args == (13,)

    with pydron.Executor() as ex:
        futures = [ex.submit(where, i) for i in range(16)]
        assert sorted(f.result()[0] for f in cf.as_completed(futures, timeout=60)) == \
            list(range(16))
    assert pydron.reduce(add, range(1000)) == sum(range(1000))
    backend.shutdown()
    wait_for(lambda: not _remote_workers(), timeout=20, what="the remote workers to exit")


def test_an_executor_with_its_own_ssh_pool_stops_it(two_hosts):
    conf, _ = two_hosts
    with pydron.Executor(conf=conf) as ex:
        assert [f.result(timeout=60)[0] for f in [ex.submit(where, i) for i in range(8)]] \
            == list(range(8))
        assert _remote_workers()
    wait_for(lambda: not _remote_workers(), timeout=20, what="the remote workers to exit")


def _make_sized():
    def size_of(data, i):
        return i, len(data)
    return size_of


size_of = _make_sized()


def test_pool_and_shared_data_on_two_ssh_hosts(two_hosts):
    """pydron.Pool as multiprocessing.Pool on remote hosts, and a shared object crossing
    the wire at most once per remote worker (4), however many calls use it."""
    conf, _ = two_hosts
    backend.configure(conf)
    with pydron.Pool() as pool:
        assert pool.map(failing, range(10)) == [i * 2 for i in range(10)]
        assert sorted(pool.imap_unordered(failing, range(12))) == [i * 2 for i in range(12)]
        with pytest.raises(LookupError):
            pool.map(failing, range(20))
    data = pydron.shared(bytes(3 << 20))
    got = list(pydron.map(size_of, [data] * 40, range(40), chunksize=1))
    assert got == [(i, 3 << 20) for i in range(40)]
    pool = backend.get_pool()
    assert 1 <= pool.shared_sent <= pool.parallelism, pool.shared_sent
    assert pool.shared_bytes_sent <= pool.parallelism * ((3 << 20) + 4096)
