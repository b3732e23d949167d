"""``idle_timeout``: instances kept idle after a run, reused by a later one, destroyed by a
detached reaper once idle that long -- with the real libcloud EC2 driver against a local
moto server (whose instances outlive a process, as real ones do), and end to end through
the cloud pool on the Dummy driver (in-process only) with the test sshd."""
from __future__ import annotations

import time

import pytest

import pydron.backend as backend
from pydron.backend.launchers import cloud_provider as cloud
from pydron.backend.launchers.cloud_provider import TAG_IDLE, TAG_RUN
from pydron.backend.cloudpool import CloudPool
from test_cloud import ec2  # noqa: F401  (the fixture)
from test_sshpool import spread


@pytest.fixture(autouse=True)
def _fresh_drivers():
    cloud.reset_drivers()
    yield
    cloud.reset_drivers()


def _server_tags(entry: dict) -> dict[str, dict[str, str]]:
    """Every live tagged instance's tags, as the server has them (a fresh driver)."""
    cloud.reset_drivers()
    return {n.id: cloud.node_tags(n) for n in cloud.list_tagged(entry)}


def _states(entry: dict) -> dict[str, str]:
    return {n.id: n.state for n in cloud.driver_for(entry).list_nodes()}


def test_released_nodes_are_tagged_idle_and_reused(ec2):  # noqa: F811
    entry = {**ec2, "count": 2, "idle_timeout": 600}
    first = cloud.provision(entry, "run-1", wait_for_ssh=False, poll=0.2)
    before = time.time()
    stamp = cloud.release(first, entry)
    assert before - 1 <= float(stamp) <= time.time() + 1
    tags = _server_tags(entry)
    assert set(tags) == {n.id for n in first}
    assert all(t[TAG_IDLE] == stamp and t[TAG_RUN] == "run-1" for t in tags.values())

    # A later run with an equal entry claims them instead of creating instances.
    events = []
    second = cloud.provision({**entry, "count": 3}, "run-2", wait_for_ssh=False, poll=0.2,
                             progress=lambda *e: events.append(e))
    assert len(second) == 3
    assert {n.id for n in first} < {n.id for n in second}
    assert sum("reused" in e[2] for e in events if e[0] == "starting") == 2
    assert len([s for s in _states(entry).values() if s == "running"]) == 3  # one new
    tags = _server_tags(entry)
    assert all(t[TAG_RUN] == "run-2" and TAG_IDLE not in t for t in tags.values())

    # Another entry (another size) does not get them.
    cloud.release(second, entry)
    other = cloud.provision({**entry, "count": 1, "size": "t2.small"}, "run-3",
                            wait_for_ssh=False, poll=0.2)
    assert other[0].id not in {n.id for n in second}
    assert cloud.cleanup(entry) == 4


def test_without_idle_timeout_idle_nodes_are_not_claimed(ec2):  # noqa: F811
    entry = {**ec2, "idle_timeout": 600}
    (node,) = cloud.provision(entry, "run-1", wait_for_ssh=False, poll=0.2)
    cloud.release([node], entry)
    (fresh,) = cloud.provision(ec2, "run-2", wait_for_ssh=False, poll=0.2)
    assert fresh.id != node.id
    assert cloud.cleanup(ec2) == 2


def test_reaper_process_destroys_idle_nodes_and_spares_reused_ones(ec2):  # noqa: F811
    entry = {**ec2, "count": 2, "idle_timeout": 2}
    nodes = cloud.provision(entry, "run-1", wait_for_ssh=False, poll=0.2)
    stamp = cloud.release(nodes, entry)
    reaper = cloud.start_reaper(entry, stamp)
    try:
        # Detached: its own session, so a Ctrl-C to the program does not reach it.
        import os
        assert os.getsid(reaper.pid) == reaper.pid
        (reused,) = cloud.claim_idle(entry, "run-2", 1)
        assert reaper.wait(timeout=60) == 0
    finally:
        if reaper.poll() is None:
            reaper.kill()
    states = _states(entry)
    (idle,) = [n for n in nodes if n.id != reused.id]
    assert states[idle.id] == "terminated"
    assert states[reused.id] == "running"
    assert set(_server_tags(entry)) == {reused.id}

    # Released again later: a reaper of that earlier time spares it too.
    newer = cloud.release([reused], entry)
    assert cloud.reap_idle(entry, before=float(stamp)) == 0
    assert cloud.reap_idle(entry, before=float(newer)) == 1
    assert cloud.list_tagged(entry) == []


def test_cleanup_destroys_idle_nodes_too(ec2):  # noqa: F811
    entry = {**ec2, "count": 2, "idle_timeout": 600}
    nodes = cloud.provision(entry, "run-1", wait_for_ssh=False, poll=0.2)
    cloud.release(nodes[:1], entry)
    assert cloud.cleanup(entry) == 2
    assert cloud.list_tagged(entry) == []


def _entry(sshd, **extra) -> dict:
    return {"type": "cloud", "provider": "dummy", "image": "1", "size": "1",
            "port": sshd.port, "username": "root", "key_filename": sshd.key_filename,
            "python": sshd.python, **extra}


def _run_pool(entry: dict) -> tuple[list[str], str]:
    previous = backend._config
    backend.configure({"workers": [entry]})
    try:
        pool = backend.get_pool()
        assert isinstance(pool, CloudPool)
        pool.poll = 0.1
        out = spread(4, 0.05)
        assert [r[0] for r in out] == list(range(4))
        return [n.id for n in pool.nodes()], pool.run_id
    finally:
        backend.configure(previous)


def test_cloud_pool_keeps_reuses_and_reaps(sshd, ssh_home):
    """Dummy nodes live in this process only: two pools one after the other reuse them,
    and the reaper (a thread, for Dummy) destroys them once idle that long."""
    entry = _entry(sshd, count=2, cores=1, idle_timeout=3)
    ids, run1 = _run_pool(entry)
    released = time.time()
    idle = cloud.list_tagged(entry)
    assert {n.id for n in idle} == set(ids)
    assert all(TAG_IDLE in cloud.node_tags(n) for n in idle)

    # (idle_timeout is no part of the fingerprint: this entry is equal to the first.)
    again, run2 = _run_pool({**entry, "idle_timeout": 6})
    assert set(again) == set(ids) and run2 != run1
    assert all(cloud.node_tags(n)[TAG_RUN] == run2 for n in cloud.list_tagged(entry))
    # The first run's reaper came due meanwhile and spared them: they were reused.
    time.sleep(max(0.0, released + 3.5 - time.time()))
    assert {n.id for n in cloud.list_tagged(entry)} == set(ids)
    deadline = time.monotonic() + 15
    while cloud.list_tagged(entry) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert cloud.list_tagged(entry) == []  # the second run's reaper destroyed them
