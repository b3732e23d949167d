"""Cloud entries written as the original Pydron documented them (``"provider":
"ec2_us_east"``, ``accesskeyid``, ``accesskey``, ``imageid``, ``sizeid``, ``publickey``,
``privatekey``, ``tmp_dir``, ``count``, ``username``) provision instances and run calls
on them: on EC2 (libcloud's real EC2 driver against the local moto server, which imports
the public key as a key pair), on libcloud's Dummy driver, and on a provider whose driver
imports key pairs and installs them on its instances -- there, logging in works only
because the public key was uploaded.

moto's instance addresses are fake; its "instances" are reached at the test sshd (the pool's
``address_of``), as test_cloud.py does.
"""
from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import threading
from pathlib import Path

import pytest
from libcloud.compute.base import NodeDriver
from libcloud.compute.drivers.dummy import DummyNodeDriver

import pydron.backend as backend
import pydron.config as config
from pydron.backend.launchers import cloud_provider as cloud
from pydron.backend.cloudpool import CloudPool
from pydron.config import load_config
from realhosts import SSH_KEYGEN
from test_sshpool import spread

ACCESS_KEY_WARNING = "a secret access key is written in the configuration"


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    cloud.reset_drivers()
    monkeypatch.setattr(config, "_warned", set())
    yield
    cloud.reset_drivers()


def _original_entry(sshd, **extra) -> dict:
    """A cloud entry in the original documentation's words (its secrets made up); port and
    python point at the test sshd, which a real image would not need."""
    return {"type": "cloud", "username": "root", "provider": "ec2_us_east",
            "accesskeyid": "testing", "accesskey": "testing",
            "imageid": "ami-03cf127a", "sizeid": "t2.micro",
            "publickey": sshd.key_filename + ".pub", "privatekey": sshd.key_filename,
            "tmp_dir": "/tmp", "data_ports": "10000-10010", "count": 2,
            "port": sshd.port, "python": sshd.python, **extra}


def _write(tmp_path: Path, entry: dict) -> Path:
    path = tmp_path / "pydron.conf"
    path.write_text(json.dumps({"workers": [entry]}))
    path.chmod(0o600)
    return path


@pytest.fixture
def cloud_pool_factory(monkeypatch):
    """Make the shared pool's cloud pools with these keyword arguments (``address_of``,
    ``poll``); the pool in use is returned by ``run``, the configuration restored after."""
    previous = backend._config
    options: dict = {}

    def group(specs, conf):
        return CloudPool(specs, max_retries=conf.max_retries, **options)

    monkeypatch.setitem(backend.GROUP_FACTORIES, "cloud", group)

    def use(path: Path, **kwargs) -> CloudPool:
        options.clear()
        options.update(kwargs)
        backend.configure(str(path))
        return backend.get_pool()  # type: ignore[return-value]
    yield use
    backend.configure(previous)


# --------------------------------------------------------------------------- ec2 (moto)


def test_the_original_ec2_entry_provisions_imports_the_key_and_runs(
        moto_server, sshd, ssh_home, tmp_path, caplog, cloud_pool_factory):
    moto_server.reset()
    entry = _original_entry(sshd, driver_options={"host": "127.0.0.1",
                                                  "port": moto_server.port, "secure": False})
    path = _write(tmp_path, entry)
    caplog.set_level(logging.INFO, logger="pydron")
    pool = cloud_pool_factory(path, poll=0.2, address_of=lambda node: ("127.0.0.1", sshd.port))
    warnings = [r.getMessage() for r in caplog.records if ACCESS_KEY_WARNING in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith(f"{path}: workers[0].accesskey: ")
    (spec,) = load_config(path).workers
    todays = cloud.entry_of(spec)
    assert todays["provider"] == "ec2" and todays["region"] == "us-east-1"
    try:
        assert isinstance(pool, CloudPool) and pool.parallelism == 2
        out = spread(6, 0.05)
        assert [r[0] for r in out] == list(range(6))
        assert {r[2] for r in out} <= set(pool.worker_pids())
        nodes = pool.nodes()
        assert len(nodes) == 2
        driver = cloud.driver_for(todays)
        assert driver.region_name == "us-east-1"
        # The public key went to EC2 as a key pair named after it; the instances have it.
        material = Path(entry["publickey"]).read_text().split()[1]
        name = "pydron-" + hashlib.sha256(material.encode()).hexdigest()[:12]
        assert name in [pair.name for pair in driver.list_key_pairs()]
        assert {n.extra["key_name"] for n in cloud.list_tagged(todays, pool.run_id)} == {name}
        assert f"imported the public key {entry['publickey']} as key pair {name!r}" in caplog.text
    finally:
        backend.configure(None)
    assert cloud.list_tagged(todays) == []

    # A second start finds the key pair there and imports nothing.
    caplog.clear()
    nodes = cloud.provision(todays, "run-again", wait_for_ssh=False, poll=0.2)
    assert f"using the existing key pair {name!r}" in caplog.text
    assert len([p for p in cloud.driver_for(todays).list_key_pairs() if p.name == name]) == 1
    cloud.destroy(nodes)


# --------------------------------------------------------------------------- dummy


def test_the_original_entry_on_the_dummy_driver_runs(sshd, ssh_home, tmp_path,
                                                      cloud_pool_factory):
    entry = _original_entry(sshd, provider="dummy")
    del entry["accesskeyid"], entry["accesskey"]  # Dummy takes no credentials
    pool = cloud_pool_factory(_write(tmp_path, entry), poll=0.1)
    try:
        assert isinstance(pool, CloudPool) and pool.parallelism == 2
        out = spread(4, 0.05)
        assert [r[0] for r in out] == list(range(4))
        assert [h["state"] for h in pool.hosts()] == ["ready", "ready"]
        todays = cloud.entry_of(load_config(_write(tmp_path, entry)).workers[0])
        assert todays["image"] == "ami-03cf127a" and todays["size"] == "t2.micro"
        assert todays["key_filename"] == sshd.key_filename
    finally:
        backend.configure(None)


class KeyedDummyDriver(DummyNodeDriver):
    """libcloud's Dummy driver as a provider with key pairs: it takes credentials, imports
    public keys, and ``create_node(..., ex_keyname=...)`` installs the named key on the new
    instance the way a cloud's init does -- here by adding it to the authorized_keys of the
    test sshd, which serves the instances' 127.0.0.N addresses; destroying the instance
    removes it again."""

    name = "Keyed dummy"
    authorized_keys: Path | None = None
    credentials_seen: list[tuple[str, str]] = []
    lock = threading.Lock()

    def __init__(self, key: str | None = None, secret: str | None = None, **kwargs) -> None:
        super().__init__(0)
        self.credentials_seen.append((key, secret))
        self.pairs: dict[str, str] = {}
        self.installed: dict[str, str] = {}

    def list_key_pairs(self):
        from libcloud.compute.base import KeyPair
        return [KeyPair(name, public_key=material, fingerprint="-", driver=self)
                for name, material in self.pairs.items()]

    def import_key_pair_from_string(self, name, key_material):
        self.pairs[name] = key_material
        return super().import_key_pair_from_string(name, key_material)

    def create_node(self, name, size, image, ex_keyname=None):
        node = super().create_node(name, size, image)
        if ex_keyname is not None:
            line = f"{self.pairs[ex_keyname].strip()} installed-for-{node.id}\n"
            with self.lock, open(self.authorized_keys, "a") as f:  # type: ignore[arg-type]
                f.write(line)
            self.installed[str(node.id)] = line
        return node

    def destroy_node(self, node):
        line = self.installed.pop(str(node.id), None)
        if line is not None:
            with self.lock:
                text = self.authorized_keys.read_text()  # type: ignore[union-attr]
                self.authorized_keys.write_text(text.replace(line, ""))  # type: ignore[union-attr]
        return super().destroy_node(node)


@pytest.fixture
def keyed_provider(ssh_keys):
    """The provider ``pydron_keyed_dummy`` (registered with libcloud), installing keys into
    the test sshd's authorized_keys; the file is restored afterwards."""
    from libcloud.compute.providers import DRIVERS, set_driver
    if "pydron_keyed_dummy" not in DRIVERS:
        set_driver("pydron_keyed_dummy", __name__, "KeyedDummyDriver")
    authorized = ssh_keys["authorized_keys"]
    before = authorized.read_text()
    KeyedDummyDriver.authorized_keys = authorized
    KeyedDummyDriver.credentials_seen = []
    yield "pydron_keyed_dummy"
    authorized.write_text(before)


def _fresh_key(directory: Path) -> Path:
    """A key pair the test sshd has never seen."""
    path = directory / "fresh_ed25519"
    subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", "pydron-fresh",
                    "-f", str(path)], check=True)
    return path


def test_a_provider_that_imports_key_pairs_gets_the_public_key(
        keyed_provider, sshd, ssh_home, tmp_path, caplog, cloud_pool_factory):
    """Logging into the instances works only because Pydron imported ``publickey`` and
    named it when creating them: the private key is one the sshd never saw before."""
    key = _fresh_key(tmp_path)
    entry = _original_entry(sshd, provider=keyed_provider, publickey=str(key) + ".pub",
                            privatekey=str(key), accesskeyid="id-1", accesskey="secret-1")
    caplog.set_level(logging.INFO, logger="pydron")
    pool = cloud_pool_factory(_write(tmp_path, entry), poll=0.1)
    try:
        out = spread(4, 0.05)
        assert [r[0] for r in out] == list(range(4))
        assert [h["state"] for h in pool.hosts()] == ["ready", "ready"]
        (driver,) = {n.driver for n in pool.nodes()}
        assert len(driver.installed) == 2
        (pair,) = driver.pairs
        assert pair.startswith("pydron-") and f"as key pair {pair!r}" in caplog.text
        # The inline credentials (accesskeyid/accesskey) reached the driver.
        assert ("id-1", "secret-1") in KeyedDummyDriver.credentials_seen
        assert ACCESS_KEY_WARNING in caplog.text and "secret-1" not in caplog.text
    finally:
        backend.configure(None)
    assert driver.installed == {}


def test_without_the_upload_the_fresh_key_is_refused(keyed_provider, sshd, ssh_home,
                                                     tmp_path):
    """The check that the test above can fail: the same entry without ``publickey`` has
    instances that do not know the key, so no host comes up."""
    from pydron.errors import WorkerLostError
    key = _fresh_key(tmp_path)
    entry = _original_entry(sshd, provider=keyed_provider, privatekey=str(key), count=1)
    del entry["publickey"]
    pool = CloudPool(load_config(_write(tmp_path, entry)).workers, poll=0.1)
    try:
        with pytest.raises(WorkerLostError) as info:
            pool.start(timeout=60)
        assert "refused key" in str(info.value)
    finally:
        pool.shutdown()


def test_a_provider_that_cannot_install_keys_is_an_error(sshd, tmp_path):
    """A public key that cannot reach the instances must stop the start with a reason, not
    create instances nobody can log into."""
    from libcloud.compute.providers import DRIVERS, set_driver
    if "pydron_keyless_dummy" not in DRIVERS:
        set_driver("pydron_keyless_dummy", __name__, "KeylessDummyDriver")
    key = _fresh_key(tmp_path)
    entry = {"provider": "pydron_keyless_dummy", "image": "1", "size": "1",
             "public_key": str(key) + ".pub", "port": sshd.port}
    with pytest.raises(cloud.CloudError) as info:
        cloud.provision(entry, "run-keyless", poll=0.1)
    assert "libcloud cannot install a public key on pydron_keyless_dummy instances" in \
        str(info.value)
    assert cloud.list_tagged(entry) == []


class KeylessDummyDriver(DummyNodeDriver):
    """A provider whose driver can neither import key pairs nor take a key at creation."""

    import_key_pair_from_string = NodeDriver.import_key_pair_from_string

    def __init__(self, **kwargs) -> None:
        super().__init__(0)


def test_an_unreadable_public_key_is_an_error(tmp_path):
    entry = {"provider": "dummy", "image": "1", "size": "1",
             "public_key": str(tmp_path / "missing.pub")}
    with pytest.raises(cloud.CloudError) as info:
        cloud.provision(entry, "run-nokey", poll=0.1)
    assert f"cannot read the public key file {tmp_path / 'missing.pub'}" in str(info.value)
    not_a_key = tmp_path / "id_ed25519"
    not_a_key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n...\n")
    with pytest.raises(cloud.CloudError) as info:
        cloud.provision({**entry, "public_key": str(not_a_key)}, "run-nokey", poll=0.1)
    assert "is not an OpenSSH public key" in str(info.value)
