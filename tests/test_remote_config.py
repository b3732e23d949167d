"""pydron.conf entries of type "ssh" and "cloud": what is accepted, what is refused, and
with which message (the parser is shared; see test_config.py for the rest)."""
from __future__ import annotations

import json
import logging
import pathlib

import pytest

import pydron.config as config

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
    ({**SSH, "cores": 0}, "workers[0].cores: expected an integer from 1 to 1024"),
    ({**SSH, "hostname": ""}, 'workers[0].hostname: expected a non-empty string, found ""'),
    ({**SSH, "pasword": "x"}, 'found unknown key "pasword" (did you mean "password"?)'),
    ({**SSH, "host_key": "accept_new"}, 'found "accept_new" (did you mean "accept-new"?)'),
    ({**SSH, "data_ports": "10010-10000"}, 'workers[0].data_ports: expected a port range'),
    ({**SSH, "password": ""}, 'workers[0].password: expected a non-empty string, found ""'),
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
    ({**CLOUD, "idle_timeout": -1},
     "workers[0].idle_timeout: expected a number of seconds from 0 to 2592000"),
    ({**CLOUD, "idle_timeout": True}, "workers[0].idle_timeout: expected a number of seconds"),
    ({**CLOUD, "count": 0}, "workers[0].count: expected an integer from 1 to 1000"),
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


# --------------------------------------------------------------------------- original Pydron

# The examples of the original Pydron documentation (doc/index.rst of pydron/pydron),
# key for key; only the secrets are made up.
ORIGINAL_SSH = {"type": "ssh", "hostname": "node1.mydomain.tld", "username": "myusername",
                "password": "mypassword", "tmp_dir": "/tmp", "data_ports": "10000-10010",
                "cores": 4}
ORIGINAL_CLOUD = {"type": "cloud", "username": "root", "provider": "ec2_us_east",
                  "accesskeyid": "ABCDEF12345", "accesskey": "AbDef012+Zsecret",
                  "imageid": "ami-abcdef", "sizeid": "t1.micro",
                  "publickey": "~/.ssh/id_rsa.pub", "privatekey": "~/.ssh/id_rsa",
                  "tmp_dir": "/tmp", "data_ports": "10000-10010", "count": 10}


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch):
    """Each test sees the once-per-file warnings afresh."""
    monkeypatch.setattr(config, "_warned", set())


def test_the_original_ssh_example_is_accepted_with_a_warning(tmp_path, caplog):
    path = tmp_path / "pydron.conf"
    path.write_text(json.dumps({"workers": [ORIGINAL_SSH]}))
    path.chmod(0o600)
    caplog.set_level(logging.INFO, logger="pydron.config")
    (spec,) = load_config(path).workers
    assert spec == WorkerSpec("ssh", 4, {"hostname": "node1.mydomain.tld",
                                         "username": "myusername", "password": "mypassword",
                                         "tmp_dir": "/tmp", "cores": 4})
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        f"{path}: workers[0].password: a password is written in the configuration, so "
        f"anyone who can read the file {path} can read it; log in with a key instead: "
        '"key_filename" (or ssh-agent), with the public key in the host\'s '
        "~/.ssh/authorized_keys"]
    assert "mypassword" not in caplog.text and "mypassword" not in repr(spec)
    assert f"{path}: workers[0].data_ports is ignored: workers now reach the caller " \
           "through the SSH connection" in caplog.text
    caplog.clear()
    load_config(path)  # once per file and key, however often it is read
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_the_original_cloud_example_is_accepted_as_todays_keys(caplog):
    caplog.set_level(logging.WARNING, logger="pydron.config")
    (spec,) = parse_config({"workers": [ORIGINAL_CLOUD]}, "orig.conf").workers
    assert spec.type == "cloud" and spec.count == 10
    options = dict(spec.options)
    credentials = options.pop("credentials")
    assert options == {"provider": "ec2", "region": "us-east-1", "username": "root",
                       "image": "ami-abcdef", "size": "t1.micro",
                       "public_key": "~/.ssh/id_rsa.pub", "key_filename": "~/.ssh/id_rsa",
                       "tmp_dir": "/tmp"}
    assert dict(credentials["inline"]) == {"key": "ABCDEF12345", "secret": "AbDef012+Zsecret"}
    with pytest.raises(TypeError):
        credentials["inline"]["secret"] = "x"  # type: ignore[index]
    (warning,) = caplog.records
    assert warning.getMessage().startswith(
        "orig.conf: workers[0].accesskey: a secret access key is written in the "
        "configuration, so anyone who can read the code or file it comes from can read it; "
        'name the credentials instead of writing them: "credentials": {"env": ')
    assert "AbDef012+Zsecret" not in caplog.text and "AbDef012+Zsecret" not in repr(spec)
    from pydron.backend.launchers import cloud_provider as cloud
    assert cloud.entry_of(spec)["count"] == 10
    assert cloud._credentials(cloud.entry_of(spec)) == {"key": "ABCDEF12345",
                                                         "secret": "AbDef012+Zsecret"}


@pytest.mark.parametrize("provider, region", sorted(config.LEGACY_EC2_PROVIDERS.items()))
def test_old_per_region_ec2_provider_names(provider, region):
    entry = {**CLOUD, "provider": provider}
    (spec,) = parse_config({"workers": [entry]}).workers
    assert spec.options["provider"] == "ec2" and spec.options["region"] == region
    same = parse_config({"workers": [{**entry, "region": region}]}).workers[0]
    assert same.options == spec.options


def test_written_credentials_cannot_take_the_inline_form_directly():
    assert "workers[0].credentials: expected {" in error(
        {**CLOUD, "credentials": {"inline": {"key": "A", "secret": "B"}}})


@pytest.mark.parametrize("entry, message", [
    ({**CLOUD, "imageid": "ami-2"},
     'workers[0].imageid: expected either "image" or its old name "imageid", not both, '
     "found both"),
    ({**CLOUD, "provider": "ec2_us_east", "region": "eu-west-1"},
     'workers[0].region: expected "us-east-1" or no region (provider "ec2_us_east" means '
     'EC2 in us-east-1), found "eu-west-1"'),
    ({**CLOUD, "accesskeyid": "AKIA"},
     'workers[0].accesskey: expected a value ("accesskeyid" and "accesskey" go together), '
     "found nothing (the key is missing)"),
    ({**CLOUD, "accesskeyid": "AKIA", "accesskey": "s",
      "credentials": {"env": {"key": "K"}}},
     'workers[0].credentials: expected either "credentials" or the old "accesskeyid" and '
     '"accesskey", found both'),
    ({"type": "cloud", "provider": "ec2", "sizeid": "t3.micro"},
     'workers[0].image: expected a value (required for type "cloud")'),
    ({**CLOUD, "imagid": "ami-2"}, 'found unknown key "imagid" (did you mean "image"?)'),
    ({**CLOUD, "publickey": 7}, "workers[0].publickey: expected a non-empty string, found 7"),
])
def test_bad_entries_with_old_keys(entry, message):
    assert message in error(entry)


def test_old_names_satisfy_required_keys():
    entry = {"type": "cloud", "provider": "dummy", "imageid": "1", "sizeid": "1"}
    (spec,) = parse_config({"workers": [entry]}).workers
    assert spec.options["image"] == "1" and spec.options["size"] == "1"


def test_one_error_lists_every_problem_of_every_entry(tmp_path):
    path = tmp_path / "pydron.conf"
    path.write_text(json.dumps({
        "workers": [
            {"type": "threads", "count": 0},
            {"type": "ssh", "hostnme": "gpu1", "cores": "8"},
            {"type": "cloud", "provider": "ec2", "imageid": "ami-1", "sise": "t3.micro",
             "idle_timeout": -1},
            {"type": "multicores"},
        ],
        "max_retry": 2, "window": 0}))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    lines = str(info.value).splitlines()
    cloud_keys = config._quoted(["type", *config.WORKER_TYPES["cloud"].keys])
    assert lines == [f"{path}: {line}" for line in [
        f"top level: expected only the keys {config._quoted(config._TOP_LEVEL)}, found unknown "
        'key "max_retry" (did you mean "max_retries"?)',
        "workers[0].count: expected an integer from 1 to 1024, found 0",
        'workers[1]: expected only the keys "cores", "host_key", "hostname", "key_filename", '
        '"known_hosts", "password", "port", "python", "required", "tmp_dir", "type", '
        '"username" for type "ssh", found unknown key "hostnme" (did you mean "hostname"?)',
        'workers[1].cores: expected an integer from 1 to 1024, found "8"',
        'workers[1].hostname: expected a value (required for type "ssh"), found nothing '
        "(the key is missing)",
        f"workers[2]: expected only the keys {cloud_keys} "
        'for type "cloud", found unknown key "sise" (did you mean "size"?)',
        "workers[2].idle_timeout: expected a number of seconds from 0 to 2592000 (30 days), "
        "found -1",
        'workers[2].size: expected a value (required for type "cloud"), found nothing '
        "(the key is missing)",
        'workers[3].type: expected one of "cloud", "dask", "inline", "multicore", "sge", "slurm", '
        '"ssh", "threads", found "multicores" (did you mean "multicore"?)',
        "window: expected an integer from 1 to 1000000, found 0",
    ]]
    problems = info.value.problems
    assert len(problems) == len(lines)
    assert problems[1] == config.ConfigProblem(str(path), "workers[0].count",
                                               "an integer from 1 to 1024", "0")


def test_no_warning_for_a_file_that_is_refused(caplog):
    caplog.set_level(logging.INFO, logger="pydron.config")
    with pytest.raises(ConfigError):
        parse_config({"workers": [{**ORIGINAL_SSH, "cores": 0}]})
    assert caplog.records == []
