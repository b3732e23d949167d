"""pydron.backend.launchers.cloud_provider and ``python -m pydron cloud`` with real libcloud
drivers: the Dummy driver (its nodes get 127.0.0.N addresses, which the test sshd serves) and
the EC2 driver against a local moto server. Instance addresses moto invents are never contacted.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from pydron.backend.launchers import cloud_provider as cloud
from pydron.backend.launchers import ssh_transport as ssh
from pydron.backend.launchers.cloud_provider import TAG_ENTRY, TAG_RUN, CloudError
from pydron.config import WorkerSpec, parse_config
from realhosts import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _fresh_drivers():
    """Each test starts with new driver objects (the Dummy driver keeps its nodes in its
    object, and driver_for caches one per entry)."""
    cloud.reset_drivers()
    yield
    cloud.reset_drivers()


class Events:
    """A progress callback that records what a person would see."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []

    def __call__(self, event: str, node: str, detail: str) -> None:
        self.seen.append((event, node, detail))

    def of(self, event: str) -> list[str]:
        return [node for e, node, _ in self.seen if e == event]


def _dummy(port: int, **extra) -> dict:
    return {"provider": "dummy", "image": "1", "size": "1", "port": port, **extra}


# --------------------------------------------------------------------------- dummy


def test_dummy_provision_tags_waits_for_ssh_and_destroys(sshd, caplog):
    entry = _dummy(sshd.port, count=2)
    events = Events()
    caplog.set_level("INFO", logger="pydron.backend")
    nodes = cloud.provision(entry, "run-a", progress=events, poll=0.1)
    driver = cloud.driver_for(entry)
    assert len(nodes) == 2
    # Dummy starts with 2 nodes of its own (dummy-1, dummy-2): ours are 127.0.0.3 and .4,
    # where the test sshd listens too.
    assert sorted(n.public_ips[0] for n in nodes) == ["127.0.0.3", "127.0.0.4"]
    for node in nodes:
        assert cloud.node_tags(node)[TAG_RUN] == "run-a"
        assert len(cloud.node_tags(node)[TAG_ENTRY]) == 12
    assert len(events.of("starting")) == 2 and len(events.of("ready")) == 2
    assert all("SSH answers" in d for e, _, d in events.seen if e == "ready")
    assert "pydron-run-a-0" in caplog.text and "ready" in caplog.text

    assert {n.id for n in cloud.list_tagged(entry)} == {n.id for n in nodes}
    assert cloud.list_tagged(entry, "another-run") == []
    untagged = {n.id for n in driver.list_nodes()} - {n.id for n in nodes}
    assert len(untagged) == 2  # the driver's own nodes are never Pydron's

    assert cloud.destroy(nodes, progress=events) == 2
    assert len(events.of("destroyed")) == 2
    assert cloud.list_tagged(entry) == []
    assert {n.id for n in driver.list_nodes()} == untagged


def test_dummy_node_without_ssh_fails_and_is_destroyed():
    entry = _dummy(free_port(), count=2, ready_timeout=1)  # nothing listens there
    events = Events()
    started = time.monotonic()
    with pytest.raises(CloudError) as info:
        cloud.provision(entry, "run-b", progress=events, poll=0.1)
    assert time.monotonic() - started < 10
    assert "none of the 2 instance(s) of run run-b became ready" in str(info.value)
    assert len(events.of("failed")) == 2
    assert all("not ready within 1 s" in d for e, _, d in events.seen if e == "failed")
    assert len(events.of("destroyed")) == 2
    assert cloud.list_tagged(entry) == []
    assert len(cloud.driver_for(entry).list_nodes()) == 2  # only the driver's own


def test_an_error_during_provisioning_destroys_what_was_created(sshd):
    entry = _dummy(sshd.port, count=3)

    def progress(event, node, detail):
        if event == "starting" and node.startswith("pydron-run-c-1"):
            raise KeyboardInterrupt  # as Ctrl-C would, in the middle of the start

    with pytest.raises(KeyboardInterrupt):
        cloud.provision(entry, "run-c", progress=progress)
    assert cloud.list_tagged(entry) == []
    assert len(cloud.driver_for(entry).list_nodes()) == 2


def test_ctrl_c_while_waiting_destroys_the_nodes(tmp_path):
    """A real SIGINT to a process that waits for its nodes: they are destroyed before the
    KeyboardInterrupt leaves provision()."""
    script = textwrap.dedent(f"""
        import json, sys
        from pydron.backend.launchers import cloud_provider as cloud
        entry = {{"provider": "dummy", "image": "1", "size": "1", "count": 2,
                  "port": {free_port()}, "ready_timeout": 60}}
        def progress(event, node, detail):
            print(event, node, flush=True)
        try:
            cloud.provision(entry, "run-int", progress=progress, poll=0.1)
        except KeyboardInterrupt:
            nodes = cloud.driver_for(entry).list_nodes()
            print("left", json.dumps([n.id for n in nodes if cloud.node_tags(n)]), flush=True)
        """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            cwd=ROOT)
    lines = [proc.stdout.readline(), proc.stdout.readline()]
    assert all(line.startswith("starting pydron-run-int-") for line in lines), lines
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert out.count("destroyed") == 2, out
    assert out.strip().endswith("left []"), out


def test_provisioned_nodes_work_as_ssh_hosts(sshd, ssh_home, tmp_path):
    entry = _dummy(sshd.port, count=1, username="root", key_filename=sshd.key_filename,
                   python=sshd.python, cores=2)
    known_hosts = str(tmp_path / "run_known_hosts")
    with cloud.provisioned(entry, "run-d", poll=0.1) as nodes:
        (node,) = nodes
        host_entry = cloud.node_ssh_entry(node, entry, known_hosts=known_hosts)
        assert host_entry == {"hostname": "127.0.0.3", "port": sshd.port, "username": "root",
                              "host_key": "accept-new", "cores": 2,
                              "key_filename": sshd.key_filename, "python": sshd.python,
                              "known_hosts": known_hosts}
        client = ssh.connect(host_entry)  # a fresh instance: its key is accepted, recorded
        try:
            assert ssh.remote_python_version(client, host_entry["python"]) == sys.version_info[:2]
        finally:
            client.close()
        assert "[127.0.0.3]:" in open(known_hosts).read()
        assert not (ssh_home / ".ssh" / "known_hosts").exists()
    assert cloud.list_tagged(entry) == []


def test_provisioned_destroys_on_error(sshd):
    entry = _dummy(sshd.port)
    with pytest.raises(RuntimeError):
        with cloud.provisioned(entry, "run-e", poll=0.1) as nodes:
            assert len(cloud.list_tagged(entry)) == len(nodes) == 1
            raise RuntimeError("the run failed")
    assert cloud.list_tagged(entry) == []


def test_entry_of_a_worker_spec_gives_back_the_instance_count():
    conf = parse_config({"workers": [{"type": "cloud", "provider": "dummy", "image": "1",
                                      "size": "1", "count": 3, "cores": 4}]})
    (spec,) = conf.workers
    assert spec == WorkerSpec("cloud", 12, spec.options) and "count" not in spec.options
    assert cloud.entry_of(spec)["count"] == 3 and cloud.entry_of(spec)["cores"] == 4


def test_unknown_provider():
    with pytest.raises(CloudError) as info:
        cloud.driver_for({"provider": "no-such-cloud", "image": "1", "size": "1"})
    assert "no-such-cloud" in str(info.value)


# --------------------------------------------------------------------------- ec2 (moto)


@pytest.fixture
def ec2(moto_server, monkeypatch):
    """An EC2 cloud entry for the moto server, emptied first; credentials from the
    environment variables it names."""
    moto_server.reset()
    monkeypatch.setenv("PYDRON_TEST_EC2_KEY", "testing")
    monkeypatch.setenv("PYDRON_TEST_EC2_SECRET", "testing")
    return {
        "provider": "ec2", "region": "us-east-1", "image": "ami-03cf127a",
        "size": "t2.micro", "key_name": "pydron-test", "security_group": "default",
        "credentials": {"env": {"key": "PYDRON_TEST_EC2_KEY",
                                "secret": "PYDRON_TEST_EC2_SECRET"}},
        "driver_options": {"host": "127.0.0.1", "port": moto_server.port, "secure": False},
    }


def _untagged(entry: dict) -> object:
    driver = cloud.driver_for(entry)
    return driver.create_node(name="not-pydron", size=cloud._size(driver, entry),
                              image=cloud._image(driver, entry))


def test_ec2_tagged_instances_are_listed_and_cleaned_up(ec2):
    cloud.driver_for(ec2).create_key_pair("pydron-test")
    other = _untagged(ec2)
    events = Events()
    nodes = cloud.provision({**ec2, "count": 2}, "run-1", progress=events,
                            wait_for_ssh=False, poll=0.2)
    more = cloud.provision(ec2, "run-2", wait_for_ssh=False, poll=0.2)
    assert len(nodes) == 2 and len(events.of("ready")) == 2
    for node in nodes:
        tags = node.extra["tags"]
        assert tags[TAG_RUN] == "run-1" and tags["Name"].startswith("pydron-run-1-")
        assert node.extra["key_name"] == "pydron-test"

    listed = cloud.list_tagged(ec2)
    assert {n.id for n in listed} == {n.id for n in nodes + more}  # not the untagged one
    assert {n.id for n in cloud.list_tagged(ec2, "run-2")} == {more[0].id}

    assert cloud.cleanup(ec2, "run-2") == 1
    assert {n.id for n in cloud.list_tagged(ec2)} == {n.id for n in nodes}
    assert cloud.cleanup(ec2) == 2
    assert cloud.list_tagged(ec2) == []
    states = {n.id: n.state for n in cloud.driver_for(ec2).list_nodes()}
    assert states[other.id] == "running"  # what Pydron did not create, it leaves alone
    assert all(states[n.id] == "terminated" for n in nodes + more)


def test_ec2_waits_until_ssh_answers(ec2, sshd):
    """moto's instance addresses are fake: reach "the instance's" SSH at the test sshd."""
    events = Events()
    nodes = cloud.provision(ec2, "run-3", progress=events, poll=0.2,
                            address_of=lambda node: ("127.0.0.1", sshd.port))
    assert len(nodes) == 1 and events.of("ready")
    assert f"127.0.0.1:{sshd.port}, SSH answers" in events.seen[-1][2]
    cloud.destroy(nodes)


def test_ec2_credentials(ec2, tmp_path, monkeypatch):
    monkeypatch.delenv("PYDRON_TEST_EC2_SECRET")
    with pytest.raises(CloudError) as info:
        cloud.driver_for(ec2)
    assert "PYDRON_TEST_EC2_SECRET" in str(info.value) and "not set" in str(info.value)

    as_json = tmp_path / "creds.json"
    as_json.write_text(json.dumps({"key": "testing", "secret": "testing"}))
    as_json.chmod(0o600)
    as_aws = tmp_path / "credentials"
    as_aws.write_text("[ci]\naws_access_key_id = testing\naws_secret_access_key = testing\n")
    as_aws.chmod(0o600)
    for creds in ({"file": str(as_json)}, {"file": str(as_aws), "profile": "ci"}):
        entry = {**ec2, "credentials": creds}
        assert cloud.list_tagged(entry) == []
    with pytest.raises(CloudError) as info:
        cloud.driver_for({**ec2, "credentials": {"file": str(as_aws), "profile": "nope"}})
    assert "no profile [nope]" in str(info.value)


def _conf(tmp_path, ec2: dict) -> str:
    path = tmp_path / "pydron.conf"
    path.write_text(json.dumps({"workers": [{"type": "threads", "count": 1},
                                            {"type": "cloud", "count": 2, **ec2}]}))
    return str(path)


def _cli(conf: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYDRON_CONF=conf)
    return subprocess.run([sys.executable, "-m", "pydron", "cloud", *args], env=env,
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_cli_lists_and_cleans_up(ec2, tmp_path):
    conf = _conf(tmp_path, ec2)
    nodes = cloud.provision(ec2, "run-cli", wait_for_ssh=False, poll=0.2)
    other = _untagged(ec2)

    listed = _cli(conf, "list")
    assert listed.returncode == 0, listed.stderr
    assert "workers[1] (ec2 us-east-1): 1 instance(s) tagged by pydron" in listed.stdout
    assert nodes[0].id in listed.stdout and "run=run-cli" in listed.stdout
    assert other.id not in listed.stdout

    cleaned = _cli(conf, "cleanup")
    assert cleaned.returncode == 0, cleaned.stderr
    assert f"destroyed pydron-run-cli-0 [{nodes[0].id}]" in cleaned.stdout
    assert "destroyed 1 instance(s) in all" in cleaned.stdout
    assert cloud.list_tagged(ec2) == []
    again = _cli(conf, "list")
    assert "0 instance(s) tagged by pydron" in again.stdout


def test_cli_without_cloud_entries_and_with_a_bad_conf(tmp_path):
    conf = tmp_path / "pydron.conf"
    conf.write_text(json.dumps({"workers": [{"type": "threads", "count": 1}]}))
    result = _cli(str(conf), "list")
    assert result.returncode == 0 and f"no cloud entries in {conf}" in result.stdout
    conf.write_text(json.dumps({"workers": [{"type": "cloud", "provider": "ec2"}]}))
    result = _cli(str(conf), "cleanup")
    assert result.returncode == 1
    assert f"{conf}: workers[0].image: expected a value" in result.stderr


def test_cleanup_after_a_run_killed_with_sigkill(ec2, tmp_path):
    """A process creates instances and dies by SIGKILL (no clean-up code runs): the
    command finds them by their tags and destroys them."""
    conf = _conf(tmp_path, ec2)
    script = textwrap.dedent("""
        import json, sys, time
        from pydron.backend.launchers import cloud_provider as cloud
        from pydron.config import load_config
        spec = [w for w in load_config().workers if w.type == "cloud"][0]
        with cloud.provisioned(spec, wait_for_ssh=False, poll=0.2) as nodes:
            print(json.dumps([n.id for n in nodes]), flush=True)
            time.sleep(300)
        """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYDRON_CONF=conf), cwd=ROOT)
    try:
        ids = json.loads(proc.stdout.readline())
        assert len(ids) == 2
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert {n.id for n in cloud.list_tagged(ec2)} == set(ids)  # left billing

    cleaned = _cli(conf, "cleanup")
    assert cleaned.returncode == 0, cleaned.stderr
    assert "destroyed 2 instance(s) in all" in cleaned.stdout
    assert cloud.list_tagged(ec2) == []
