"""pydron.conf entries of type "ssh" and "cloud": what is accepted, what is refused, and
with which message (the parser is shared; see test_config.py for the rest)."""
from __future__ import annotations

import json
import pathlib

import pytest

from pydron.backend import pool_from_config
from pydron.config import WorkerSpec, load_config, parse_config
from pydron.errors import ConfigError

SSH = {"type": "ssh", "hostname": "gpu1"}
CLOUD = {"type": "cloud", "provider": "ec2", "image": "ami-1", "size": "t3.micro"}


def error(entry: dict) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config({"workers": [entry]}, "pydron.conf")
    return str(info.value)


def test_ssh_entry():
    conf = parse_config({"workers": [{**SSH, "port": 2222, "username": "me",
                                      "key_filename": "~/.ssh/k", "python": "python3.11",
                                      "tmp_dir": "~/tmp", "cores": 8, "host_key": "accept-new",
                                      "known_hosts": "~/kh", "required": True}]})
    (spec,) = conf.workers
    assert spec.type == "ssh" and spec.count == 8 and conf.capacity == 8
    assert spec.options["hostname"] == "gpu1" and spec.options["required"] is True
    assert parse_config({"workers": [SSH]}).workers == (WorkerSpec("ssh", 1, {"hostname": "gpu1"}),)


@pytest.mark.parametrize("entry, message", [
    ({"type": "ssh"}, 'workers[0].hostname: expected a value (required for type "ssh"), '
                      "found nothing (the key is missing)"),
    ({**SSH, "host_key": "yes"}, 'workers[0].host_key: expected one of "accept-new", '
                                 '"known_hosts", found "yes"'),
    ({**SSH, "port": 70000}, "workers[0].port: expected a port number from 1 to 65535"),
    ({**SSH, "required": "no"}, 'workers[0].required: expected true or false, found "no"'),
    ({**SSH, "cores": 0}, "workers[0].cores: expected an integer >= 1"),
    ({**SSH, "hostname": ""}, 'workers[0].hostname: expected a non-empty string, found ""'),
    ({**SSH, "password": "x"}, 'found unknown key "password"'),
])
def test_bad_ssh_entries(entry, message):
    assert message in error(entry)


def test_cloud_entry():
    conf = parse_config({"workers": [{
        **CLOUD, "region": "eu-central-1", "key_name": "k", "key_filename": "~/.ssh/k",
        "security_group": ["a", "sg-1"], "count": 3, "cores": 2, "idle_timeout": 90.5,
        "ready_timeout": 300, "credentials": {"env": {"key": "AWS_ACCESS_KEY_ID",
                                                      "secret": "AWS_SECRET_ACCESS_KEY"}},
        "driver_options": {"host": "127.0.0.1", "port": 5000, "secure": False},
        "username": "ubuntu", "port": 22, "python": "python3", "tmp_dir": "/tmp",
        "host_key": "accept-new", "known_hosts": "/tmp/kh"}]})
    (spec,) = conf.workers
    assert spec.type == "cloud" and spec.count == 6  # 3 instances of 2 cores
    assert spec.options["security_group"] == ("a", "sg-1")
    assert spec.options["credentials"]["env"]["key"] == "AWS_ACCESS_KEY_ID"
    with pytest.raises(TypeError):
        spec.options["credentials"]["env"]["key"] = "x"  # read-only all the way down
    file_creds = {**CLOUD, "credentials": {"file": "~/.aws/credentials", "profile": "ci"}}
    assert parse_config({"workers": [file_creds]}).workers[0].count == 1


@pytest.mark.parametrize("entry, message", [
    ({"type": "cloud", "image": "i", "size": "s"}, "workers[0].provider: expected a value"),
    ({**CLOUD, "credentials": {"key": "AKIAEXAMPLE", "secret": "abc/def+ghi"}},
     'workers[0].credentials: expected {"env": {"key": "ENV_VAR", ...}} or {"file": "/path"}'),
    ({**CLOUD, "credentials": {"env": {"secret": "abc/def+ghi"}}},
     "names of environment variables"),
    ({**CLOUD, "credentials": {"file": "/x", "env": {"key": "K"}}}, "expected {"),
    ({**CLOUD, "driver_options": {"nested": {"a": 1}}},
     "workers[0].driver_options: expected an object whose values are strings, numbers"),
    ({**CLOUD, "security_group": []}, "expected a non-empty string or an array of them"),
    ({**CLOUD, "idle_timeout": -1}, "workers[0].idle_timeout: expected a number of seconds >= 0"),
    ({**CLOUD, "idle_timeout": True}, "workers[0].idle_timeout: expected a number of seconds"),
    ({**CLOUD, "count": 0}, "workers[0].count: expected an integer >= 1"),
])
def test_bad_cloud_entries(entry, message):
    assert message in error(entry)


def test_example_file_has_ssh_and_cloud_entries():
    example = pathlib.Path(__file__).resolve().parents[1] / "pydron.conf.example"
    json.loads(example.read_text())
    kinds = [w.type for w in load_config(example).workers]
    assert "ssh" in kinds and "cloud" in kinds


def test_ssh_and_cloud_entries_build_their_pools():
    """Building a pool starts nothing (no connection, no instance): that happens on the
    first call. Every ssh entry is a host of one ssh pool; with other entries they add up
    in a CompositePool. (Running them: test_sshpool.py, test_cloudpool.py.)"""
    from pydron.backend.cloudpool import CloudPool
    from pydron.backend.composite import CompositePool
    from pydron.backend.sshpool import SshPool

    ssh_pool = pool_from_config(parse_config(
        {"workers": [{**SSH, "cores": 2}, {**SSH, "hostname": "gpu2", "cores": 3}]}))
    assert type(ssh_pool) is SshPool and ssh_pool.parallelism == 5
    assert [h["name"] for h in ssh_pool.hosts()] == ["gpu1", "gpu2"]
    ssh_pool.shutdown()

    cloud_pool = pool_from_config(parse_config({"workers": [{**CLOUD, "count": 2, "cores": 4}]}))
    assert type(cloud_pool) is CloudPool and cloud_pool.parallelism == 8
    cloud_pool.shutdown()
    assert cloud_pool.nodes() == []

    mixed = pool_from_config(parse_config(
        {"workers": [{"type": "multicore", "cores": 1}, SSH, {"type": "threads", "count": 2}]}))
    assert isinstance(mixed, CompositePool)
    assert [type(m).__name__ for m in mixed.members] == ["MulticorePool", "SshPool", "ThreadPool"]
    assert mixed.parallelism == 4
    mixed.shutdown()
