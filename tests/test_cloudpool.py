"""The cloud pool (``"type": "cloud"``) end to end on libcloud's Dummy driver, whose nodes
get 127.0.0.N addresses that the test sshd serves: provision, run @schedule'd calls on the
nodes, Ctrl-C in the middle of a run, and nothing left in the driver's node list."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

import pydron.backend as backend
from pydron.backend.launchers import cloud_provider as cloud
from pydron.backend.cloudpool import CloudPool
from test_sshpool import spread

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _fresh_drivers():
    cloud.reset_drivers()
    yield
    cloud.reset_drivers()


def _entry(sshd, **extra) -> dict:
    return {"type": "cloud", "provider": "dummy", "image": "1", "size": "1",
            "port": sshd.port, "username": "root", "key_filename": sshd.key_filename,
            "python": sshd.python, **extra}


def test_provision_run_and_destroy(sshd, ssh_home, caplog):
    caplog.set_level("INFO", logger="pydron.backend")
    entry = _entry(sshd, count=2, cores=1)
    previous = backend._config
    backend.configure({"workers": [entry]})
    try:
        pool = backend.get_pool()
        assert isinstance(pool, CloudPool) and pool.parallelism == 2
        pool.poll = 0.1
        out = spread(8, 0.1)
        assert [r[0] for r in out] == list(range(8))
        assert {r[2] for r in out} <= set(pool.worker_pids())
        nodes = pool.nodes()
        assert len(nodes) == 2
        assert {n.id for n in cloud.list_tagged(entry, pool.run_id)} == {n.id for n in nodes}
        assert [h["state"] for h in pool.hosts()] == ["ready", "ready"]
        assert sorted(h["name"].split("(")[1] for h in pool.hosts()) == \
            ["127.0.0.3)", "127.0.0.4)"]
        text = caplog.text
        assert "starting" in text and "ready" in text
        # Host keys of the instances went to the run's own file, not ~/.ssh/known_hosts.
        assert not (ssh_home / ".ssh" / "known_hosts").exists()
    finally:
        backend.configure(previous)
    assert cloud.list_tagged(entry) == []
    assert "destroyed" in caplog.text
    assert len(cloud.driver_for(entry).list_nodes()) == 2  # only the driver's own


def test_instances_that_never_answer_fail_the_calls_and_are_destroyed(ssh_home):
    from realhosts import free_port
    entry = {"provider": "dummy", "image": "1", "size": "1", "port": free_port(),
             "count": 1, "ready_timeout": 1}
    pool = CloudPool([entry], poll=0.1)
    try:
        from pydron.errors import WorkerLostError
        with pytest.raises(WorkerLostError) as info:
            pool.start(timeout=30)
        assert "no ssh host can be used" in str(info.value)
        assert "none of the 1 instance(s)" in str(info.value)
    finally:
        pool.shutdown()
    assert cloud.list_tagged(entry) == []


_SCRIPT = """
import atexit, json, sys, time
from pydron.backend.launchers import cloud_provider as cloud
ENTRY = {entry!r}

def check():  # registered first, so it runs last: after pydron's own exit hooks
    nodes = cloud.driver_for(ENTRY).list_nodes()
    print("left", json.dumps([n.id for n in nodes if cloud.node_tags(n)]), flush=True)

atexit.register(check)

import pydron.backend as backend
from pydron import functional, schedule

@functional
def nap(i):
    time.sleep(0.2)
    return i

@schedule
def long_run(n):
    out = []
    for i in range(n):
        out.append(nap(i))
    return out

backend.configure({{"workers": [ENTRY]}})
pool = backend.get_pool()
pool.poll = 0.1
pool.start(timeout=60)
print("nodes", len(cloud.list_tagged(ENTRY, pool.run_id)), flush=True)
long_run(1000)
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_in_the_middle_destroys_the_nodes(sshd, ssh_home, tmp_path, sig):
    """A real SIGINT (or SIGTERM) to a program in the middle of a run on cloud nodes: it
    exits within seconds, and its last exit hook finds no tagged node in the driver."""
    entry = _entry(sshd, count=2, cores=1)
    script = tmp_path / "run.py"
    script.write_text(_SCRIPT.format(entry=entry))
    env = dict(os.environ, PYTHONPATH=ROOT, HOME=str(ssh_home))
    env.pop("PYDRON_CONF", None)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=str(tmp_path))
    try:
        line = proc.stdout.readline()
        assert line.strip() == "nodes 2", (line, proc.stderr.read() if proc.poll() else "")
        time.sleep(1.0)  # in the middle of the run
        proc.send_signal(sig)
        sent = time.monotonic()
        out, err = proc.communicate(timeout=20)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    assert took < 8, took
    assert out.strip().splitlines()[-1] == "left []", (out, err)
    assert "lost" not in err, err  # the end of the run is not reported as a lost host
    found = subprocess.run(["pgrep", "-f", "pydron.backend.worker --host"],
                           capture_output=True, text=True)
    deadline = time.monotonic() + 10
    while found.stdout.strip() and time.monotonic() < deadline:
        time.sleep(0.2)
        found = subprocess.run(["pgrep", "-f", "pydron.backend.worker --host"],
                               capture_output=True, text=True)
    assert found.stdout.strip() == ""
