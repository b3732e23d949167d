"""Cloud instances for remote workers (Apache libcloud): create, wait, tag, find, destroy.

A ``"cloud"`` entry in ``pydron.conf`` makes Pydron create ``count`` instances for a run,
wait until SSH answers on each, and then use them as ssh hosts (see
:mod:`pydron.backend.launchers.ssh_transport` and :func:`node_ssh_entry`). Instances cost money
by the hour, so the one rule here is that **no instance may outlive its purpose unnoticed**:

* every instance is tagged (``pydron-run`` = the run's id, plus ``pydron-entry`` and
  ``pydron-created``) at creation, so it can always be found again, by this process or by
  ``python -m pydron cloud list`` / ``cleanup`` after a crash or a SIGKILL;
* :func:`provision` destroys what it created when it fails or is interrupted (Ctrl-C
  included), and instances that never became ready;
* :func:`provisioned` is a context manager that also destroys them on the way out and at
  interpreter exit.

An entry with ``idle_timeout`` (seconds) keeps its instances for a later run instead:
:func:`release` tags them ``pydron-idle-since`` (the time they became idle) and starts a
reaper (:func:`start_reaper`: a detached
``python -m pydron.backend.launchers.cloud_provider reap`` process, which outlives the
program) that destroys them once idle that long; :func:`provision` first claims idle
instances of an equal entry (:func:`claim_idle`) and creates only the missing ones. A
claimed instance loses its idle tag, so the reaper spares it.

Slow starts are reported as they happen, through the ``logging`` logger
``"pydron.backend"`` and an optional ``progress(event, node, detail)`` callback (events
``starting``, ``ready``, ``failed``, ``destroyed``, ``idle``), so a person can follow
which instances are starting, ready or failed.

Credentials never have to be in ``pydron.conf``: an entry names environment variables or
a file (see :func:`driver_for`). (Files written for the original Pydron may still hold
them, as ``accesskeyid``/``accesskey``; the configuration parser turns those into the
inline form ``{"inline": {"key": ..., "secret": ...}}`` and warns.)

``public_key`` names a local public key file to install on the instances: it is imported
into the provider as a key pair (named ``key_name``, else ``pydron-<hash of the key>``)
unless a key pair of that name exists there already, for EC2 and for every other
provider whose libcloud driver can import key pairs (see :func:`key_pair_for`).
"""
from __future__ import annotations

import atexit
import configparser
import contextlib
import hashlib
import inspect
import json
import logging
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from pydron.errors import PydronError

__all__ = [
    "CloudError", "TAG_RUN", "TAG_ENTRY", "TAG_CREATED", "EVENTS", "Progress",
    "new_run_id", "entry_of", "driver_for", "reset_drivers", "provision", "provisioned", "destroy",
    "list_tagged", "cleanup", "node_address", "node_ssh_entry", "node_tags",
    "ssh_answers", "DEFAULT_READY_TIMEOUT", "TAG_IDLE", "idle_timeout_of", "can_keep_idle",
    "release", "claim_idle", "reap_idle", "start_reaper", "open_reaper_log", "key_pair_for",
]

log = logging.getLogger("pydron.backend")

TAG_RUN = "pydron-run"
"""The tag every instance Pydron creates carries: its value is the run's id."""
TAG_ENTRY = "pydron-entry"
"""A fingerprint of the entry (provider, region, image, size, key, group): a later run may
reuse only instances made from an equal entry."""
TAG_CREATED = "pydron-created"
"""Creation time, seconds since the epoch (a string, as tags are)."""
TAG_IDLE = "pydron-idle-since"
"""Set (seconds since the epoch, a string) while an instance is kept idle for a later run
(``idle_timeout``); removed when a run claims it."""

EVENTS = ("starting", "ready", "failed", "destroyed", "idle")
Progress = Callable[[str, str, str], None]
"""``progress(event, node, detail)``: ``event`` is one of :data:`EVENTS`, ``node`` the
instance's name (with its id), ``detail`` a sentence for a person."""

DEFAULT_READY_TIMEOUT = 600.0
"""Seconds an instance may take from creation until SSH answers (``ready_timeout``)."""


class CloudError(PydronError):
    """Instances cannot be created, listed or destroyed; the message says which entry and
    why (bad credentials, unknown provider, a refused request, nothing became ready)."""


# --------------------------------------------------------------------------- entries


def new_run_id() -> str:
    """A fresh run id: sortable by time, unique enough to tell concurrent runs apart."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def entry_of(spec: Any) -> dict[str, Any]:
    """The cloud entry as written, from a :class:`pydron.config.WorkerSpec` or a mapping.

    The configuration parser keeps ``count`` out of ``WorkerSpec.options`` (there it is the
    capacity, ``count * cores``); this puts the number of instances back.
    """
    options = getattr(spec, "options", None)
    if options is None:
        return dict(spec)
    entry = dict(options)
    entry["count"] = max(1, spec.count // int(entry.get("cores", 1)))
    return entry


def _fingerprint(entry: Mapping[str, Any]) -> str:
    keys = ("provider", "region", "image", "size", "key_name", "security_group")
    fields = {k: entry.get(k) for k in keys}
    if entry.get("public_key"):  # only then: entries without one keep their old fingerprint
        fields["public_key"] = entry["public_key"]
    text = json.dumps(fields, sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _where(entry: Mapping[str, Any]) -> str:
    region = entry.get("region")
    return f"{entry.get('provider')}" + (f" ({region})" if region else "")


# --------------------------------------------------------------------------- drivers


_drivers: dict[str, Any] = {}
_drivers_lock = threading.Lock()


def _credentials(entry: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments for the driver, from environment variables or a file."""
    provider = str(entry.get("provider"))
    creds = entry.get("credentials")
    if creds is None:
        if provider == "ec2":
            creds = {"env": {"key": "AWS_ACCESS_KEY_ID", "secret": "AWS_SECRET_ACCESS_KEY"}}
            if os.environ.get("AWS_SESSION_TOKEN"):
                creds["env"]["token"] = "AWS_SESSION_TOKEN"
        elif provider == "dummy":
            return {"creds": 0}
        else:
            return {}
    if "inline" in creds:  # the original Pydron's accesskeyid/accesskey, written in the file
        return dict(creds["inline"])
    if "env" in creds:
        missing = [var for var in creds["env"].values() if not os.environ.get(var)]
        if missing:
            raise CloudError(
                f"cloud entry {_where(entry)}: the environment variable(s) "
                f"{', '.join(missing)} holding its credentials are not set")
        return {arg: os.environ[var] for arg, var in creds["env"].items()}
    path = os.path.expanduser(str(creds["file"]))
    try:
        text = open(path, encoding="utf-8").read()
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise CloudError(f"cloud entry {_where(entry)}: cannot read the credentials file "
                         f"{path}: {exc.strerror or exc}") from None
    if mode & 0o077:
        log.warning("cloud credentials file %s can be read by other users (chmod 600 it)", path)
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        return data
    # Not JSON: an AWS-style credentials file ([profile] aws_access_key_id = ...).
    parser = configparser.ConfigParser()
    try:
        parser.read_string(text)
    except configparser.Error as exc:
        raise CloudError(f"cloud entry {_where(entry)}: {path} is neither a JSON object "
                         f"nor an AWS credentials file: {exc}") from None
    profile = str(creds.get("profile", "default"))
    if not parser.has_section(profile):
        raise CloudError(f"cloud entry {_where(entry)}: {path} has no profile [{profile}]")
    section = parser[profile]
    names = {"aws_access_key_id": "key", "aws_secret_access_key": "secret",
             "aws_session_token": "token"}
    found = {arg: section[name] for name, arg in names.items() if name in section}
    if "key" not in found:
        raise CloudError(f"cloud entry {_where(entry)}: profile [{profile}] of {path} has "
                         "no aws_access_key_id")
    return found


def driver_for(entry: Mapping[str, Any], *, cached: bool = True) -> Any:
    """The libcloud compute driver for an entry (one per provider, region, credentials
    and options in a process, so that in-process drivers such as Dummy keep their state).

    ``provider`` is a libcloud provider name (``"ec2"``, ``"gce"``, ``"azure_arm"``,
    ``"openstack"``, ``"dummy"``, ...); ``region`` and ``driver_options`` (e.g. ``host``,
    ``port``, ``secure`` for another endpoint) are passed to the driver. For EC2,
    ``signature_version`` defaults to ``"4"``, which every AWS region accepts; against a
    non-AWS endpoint (``driver_options.host``), the XML namespace of its answers is
    adopted, as EC2-compatible servers differ there from AWS.
    """
    from libcloud.compute.providers import get_driver

    provider = str(entry["provider"])
    kwargs = _credentials(entry)
    options = dict(entry.get("driver_options") or {})
    if provider == "ec2":
        options.setdefault("signature_version", "4")
    if entry.get("region"):
        kwargs["region"] = entry["region"]
    kwargs.update(options)
    key = json.dumps([provider, sorted(kwargs.items())], default=str)
    if cached:
        with _drivers_lock:
            if key in _drivers:
                return _drivers[key]
    try:
        cls = get_driver(provider)
    except (AttributeError, KeyError, ValueError) as exc:
        raise CloudError(f"cloud entry {_where(entry)}: libcloud has no compute provider "
                         f"{provider!r} ({exc})") from None
    try:
        driver = cls(**kwargs)
    except Exception as exc:  # each driver validates its arguments its own way
        raise CloudError(f"cloud entry {_where(entry)}: cannot create the {provider} "
                         f"driver: {type(exc).__name__}: {exc}") from None
    if provider == "ec2" and options.get("host"):
        _adopt_ec2_namespace(driver, entry)
    if cached:
        with _drivers_lock:
            driver = _drivers.setdefault(key, driver)
    return driver


def reset_drivers() -> None:
    """Forget the cached drivers (tests; a long-lived process whose credentials rotate)."""
    with _drivers_lock:
        _drivers.clear()


def _adopt_ec2_namespace(driver: Any, entry: Mapping[str, Any]) -> None:
    """libcloud reads EC2 answers in AWS's XML namespace only; an EC2-compatible server
    (moto, for one) may answer in another, and then every lookup silently finds nothing.
    Ask the endpoint once and use its namespace (libcloud keeps it in a module global)."""
    import libcloud.compute.drivers.ec2 as ec2

    try:
        body = driver.connection.request(driver.path, params={"Action": "DescribeRegions"}).body
    except Exception as exc:
        raise CloudError(f"cloud entry {_where(entry)}: the EC2 endpoint "
                         f"{entry['driver_options'].get('host')} does not answer: {exc}") from None
    match = re.search(r'xmlns="([^"]+)"', body if isinstance(body, str) else "")
    if match and match.group(1) != ec2.NAMESPACE:
        log.debug("cloud: EC2 endpoint answers in XML namespace %s", match.group(1))
        ec2.NAMESPACE = match.group(1)


def _call(entry: Mapping[str, Any], what: str, fn: Callable[..., Any], *args: Any,
          **kwargs: Any) -> Any:
    """Call the driver; its errors become CloudError naming the entry and the action."""
    try:
        return fn(*args, **kwargs)
    except CloudError:
        raise
    except Exception as exc:
        text = str(exc) or type(exc).__name__
        raise CloudError(f"cloud entry {_where(entry)}: {what} failed: {text}") from exc


# --------------------------------------------------------------------------- tags


def node_tags(node: Any) -> dict[str, str]:
    """The tags (or metadata) a node carries."""
    extra = getattr(node, "extra", None) or {}
    tags = extra.get("tags") or extra.get("metadata") or {}
    return dict(tags) if isinstance(tags, Mapping) else {}


def _gone(node: Any) -> bool:
    from libcloud.compute.types import NodeState
    status = str((getattr(node, "extra", None) or {}).get("status", "")).lower()
    return node.state == NodeState.TERMINATED or status in ("shutting-down", "terminated")


def _label(node: Any, name: str | None = None) -> str:
    shown = name or getattr(node, "name", None) or "?"
    return shown if shown == node.id else f"{shown} [{node.id}]"


def _is_ec2(driver: Any) -> bool:
    from libcloud.compute.drivers.ec2 import BaseEC2NodeDriver
    return isinstance(driver, BaseEC2NodeDriver)


def _ec2_tags(driver: Any, action: str, node: Any, tags: Mapping[str, str]) -> None:
    """EC2 ``CreateTags``/``DeleteTags`` with the 1-based indices the API documents
    (libcloud's ``ex_create_tags`` counts from 0, which AWS tolerates and other
    EC2-compatible servers, moto among them, refuse)."""
    params = {"Action": action, "ResourceId.1": node.id}
    for i, (key, value) in enumerate(tags.items(), 1):
        params[f"Tag.{i}.Key"] = key
        if value is not None:
            params[f"Tag.{i}.Value"] = value
    driver.connection.request(driver.path, params=params)


def _tag(driver: Any, node: Any, tags: Mapping[str, str], entry: Mapping[str, Any]) -> None:
    """Tag a node whose driver could not do it at creation."""
    if str(entry["provider"]) != "dummy" and _is_ec2(driver):
        _call(entry, "tagging the instance", _ec2_tags, driver, "CreateTags", node, tags)
    elif str(entry["provider"]) != "dummy" and hasattr(driver, "ex_create_tags"):
        _call(entry, "tagging the instance", driver.ex_create_tags, node, dict(tags))
    elif str(entry["provider"]) != "dummy":
        log.warning("cloud: provider %s cannot tag instances; `python -m pydron cloud` will "
                    "not find %s from another process", entry["provider"], node.id)
    # Remembered on the node object too: in-process drivers (Dummy) list these objects.
    node.extra = dict(node.extra or {})
    node.extra.setdefault("tags", {}).update(tags)


# --------------------------------------------------------------------------- create


def _image(driver: Any, entry: Mapping[str, Any]) -> Any:
    from libcloud.compute.base import NodeImage
    # Only the id is needed to create a node; listing all images (thousands on AWS) is slow.
    return NodeImage(id=str(entry["image"]), name=str(entry["image"]), driver=driver)


def _size(driver: Any, entry: Mapping[str, Any]) -> Any:
    from libcloud.compute.base import NodeSize
    want = str(entry["size"])
    try:
        for size in driver.list_sizes():
            if str(size.id) == want or size.name == want:
                return size
    except Exception as exc:  # some drivers need a location, or a request, to list sizes
        log.debug("cloud: cannot list sizes of %s: %s", entry["provider"], exc)
    return NodeSize(id=want, name=want, ram=0, disk=0, bandwidth=None, price=None,
                    driver=driver)


def _public_key(entry: Mapping[str, Any]) -> str:
    """The text (``"ssh-ed25519 AAAA... comment"``) of the entry's ``public_key`` file."""
    path = os.path.expanduser(str(entry["public_key"]))
    try:
        with open(path, encoding="ascii") as f:
            text = f.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise CloudError(f"cloud entry {_where(entry)}: cannot read the public key file "
                         f"{path}: {getattr(exc, 'strerror', None) or exc}") from None
    parts = text.split()
    if len(parts) < 2 or not parts[0].startswith(("ssh-", "ecdsa-", "sk-")):
        raise CloudError(f"cloud entry {_where(entry)}: {path} is not an OpenSSH public key "
                         '(a line such as "ssh-ed25519 AAAA... me@host"); give the .pub file')
    return text


def _can_import_keys(driver: Any) -> bool:
    from libcloud.compute.base import NodeDriver
    return type(driver).import_key_pair_from_string is not NodeDriver.import_key_pair_from_string


def _create_accepts(driver: Any, name: str) -> bool:
    try:
        return name in inspect.signature(driver.create_node).parameters
    except (TypeError, ValueError):
        return False


def _has_key_pair(driver: Any, name: str) -> bool:
    """Whether the provider has a key pair of that name (listing, not ``get_key_pair``:
    libcloud's EC2 version of the latter sends a parameter AWS ignores, and then answers
    with whichever key pair comes first)."""
    try:
        return any(pair.name == name for pair in driver.list_key_pairs())
    except NotImplementedError:
        pass
    try:
        return driver.get_key_pair(name) is not None
    except Exception:  # KeyPairDoesNotExistError, or a driver that cannot look it up
        return False


def key_pair_for(driver: Any, entry: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of ``create_node`` that put the entry's SSH key on an instance.

    With only ``key_name``, that existing key pair (``ex_keyname``, which EC2 and the
    OpenStack-like drivers take). With ``public_key`` (a local ``.pub`` file), the key is
    first imported into the provider as a key pair named ``key_name``, else
    ``pydron-<sha256 of the key>`` -- so the same key is imported once, and found again
    by later runs -- unless one of that name exists already (then it is used as it is).
    A driver that cannot import key pairs but takes ``auth`` gets the key as
    ``NodeAuthSSHKey``. libcloud's in-process ``dummy`` driver imports the key but its
    nodes take none (its test nodes accept whatever the test set up). Any other driver
    cannot install the key: that is a :class:`CloudError`, not an instance nobody can
    log into.
    """
    provider = str(entry["provider"])
    name = entry.get("key_name")
    if not entry.get("public_key"):
        if not name:
            return {}
        if provider == "ec2" or _create_accepts(driver, "ex_keyname"):
            return {"ex_keyname": str(name)}
        log.warning("cloud entry %s: its libcloud driver takes no key pair name; "
                    "key_name %r is not used", _where(entry), name)
        return {}
    material = _public_key(entry)
    if not name:
        name = "pydron-" + hashlib.sha256(material.split()[1].encode()).hexdigest()[:12]
    name = str(name)
    takes_name = provider == "ec2" or _create_accepts(driver, "ex_keyname")
    if _can_import_keys(driver) and (takes_name or provider == "dummy"):
        if _has_key_pair(driver, name):
            log.info("cloud entry %s: using the existing key pair %r", _where(entry), name)
        else:
            try:
                driver.import_key_pair_from_string(name, material)
            except Exception as exc:
                if not _has_key_pair(driver, name):  # (not imported meanwhile by another run)
                    raise CloudError(f"cloud entry {_where(entry)}: importing the public key "
                                     f"{entry['public_key']} as key pair {name!r} failed: "
                                     f"{exc or type(exc).__name__}") from exc
            log.info("cloud entry %s: imported the public key %s as key pair %r",
                     _where(entry), entry["public_key"], name)
        return {"ex_keyname": name} if takes_name else {}
    if _create_accepts(driver, "auth"):
        from libcloud.compute.base import NodeAuthSSHKey
        return {"auth": NodeAuthSSHKey(material)}
    raise CloudError(f"cloud entry {_where(entry)}: libcloud cannot install a public key on "
                     f"{provider} instances (its driver neither imports key pairs nor takes "
                     "a key when creating one); put the key into the image, or create a key "
                     'pair there and name it with "key_name"')


def _create(driver: Any, entry: Mapping[str, Any], name: str, tags: Mapping[str, str],
            key: Mapping[str, Any] | None = None) -> Any:
    provider = str(entry["provider"])
    image, size = _image(driver, entry), _size(driver, entry)
    key = dict(key if key is not None else key_pair_for(driver, entry))
    if provider == "ec2":
        kwargs: dict[str, Any] = {"ex_metadata": dict(tags)}  # tagged in the same request
        kwargs.update(key)
        groups = entry.get("security_group")
        if groups:
            groups = [groups] if isinstance(groups, str) else list(groups)
            ids = [g for g in groups if g.startswith("sg-")]
            names = [g for g in groups if not g.startswith("sg-")]
            if ids:
                kwargs["ex_security_group_ids"] = ids
            if names:
                kwargs["ex_security_groups"] = names
        node = _call(entry, "creating an instance", driver.create_node, name=name, size=size,
                     image=image, **kwargs)
        node.extra = dict(node.extra or {})
        node.extra.setdefault("tags", {}).update(tags)
        return node
    node = _call(entry, "creating an instance", driver.create_node, name=name, size=size,
                 image=image, **key)
    _tag(driver, node, {**tags, "Name": name}, entry)
    return node


def node_address(node: Any, entry: Mapping[str, Any]) -> tuple[str, int] | None:
    """Where SSH of a node is: its first public IP (else private IP) and the entry's
    ``port`` (22); None while it has no address yet."""
    ips = (list(getattr(node, "public_ips", None) or [])
           + list(getattr(node, "private_ips", None) or []))
    if not ips:
        return None
    return str(ips[0]), int(entry.get("port", 22))


def ssh_answers(host: str, port: int, timeout: float = 3.0) -> bool:
    """True if an SSH server greets us on host:port (its ``SSH-`` banner arrives).

    A TCP connect alone is not enough: cloud load balancers and half-booted images accept
    connections before sshd is there."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            return s.recv(4).startswith(b"SSH-")
    except OSError:
        return False


def _report(progress: Progress | None, event: str, node: str, detail: str) -> None:
    level = logging.WARNING if event == "failed" else logging.INFO
    log.log(level, "cloud node %s: %s: %s", node, event, detail)
    if progress is not None:
        try:
            progress(event, node, detail)
        except Exception:  # a broken progress display must not leak instances
            log.exception("cloud: progress callback failed")


def provision(entry: Any, run_id: str | None = None, *, progress: Progress | None = None,
              timeout: float | None = None, wait_for_ssh: bool = True,
              address_of: Callable[[Any], tuple[str, int] | None] | None = None,
              poll: float = 2.0) -> list[Any]:
    """Create the entry's ``count`` instances tagged with ``run_id`` and return those that
    became ready (running, and SSH answering unless ``wait_for_ssh`` is false).

    ``entry`` is a cloud entry (a mapping, or a WorkerSpec: see :func:`entry_of`).
    ``timeout`` (default: the entry's ``ready_timeout``, else
    :data:`DEFAULT_READY_TIMEOUT`) bounds the wait from creation to ready; an instance not
    ready by then is reported ``failed`` and destroyed, and so is one that stops or errs
    on its way. If none became ready, all are destroyed and :class:`CloudError` is raised.
    On any exception or interrupt (Ctrl-C) during provisioning, every instance created so
    far is destroyed before it propagates: an instance must not outlive a failed start.

    ``address_of(node)`` overrides where SSH of a node is (default :func:`node_address`),
    e.g. to reach the instances through a tunnel.

    With ``idle_timeout`` in the entry, idle instances of an equal entry are claimed first
    (:func:`claim_idle`) and only the missing ones are created.
    """
    entry = entry_of(entry)
    run_id = run_id or new_run_id()
    count = int(entry.get("count", 1))
    if timeout is None:
        timeout = float(entry.get("ready_timeout", DEFAULT_READY_TIMEOUT))
    address_of = address_of or (lambda node: node_address(node, entry))
    driver = driver_for(entry)
    tags = {TAG_RUN: run_id, TAG_ENTRY: _fingerprint(entry), TAG_CREATED: str(int(time.time()))}
    created: list[tuple[str, Any]] = []
    ready: list[Any] = []
    key: dict[str, Any] | None = None
    try:
        if idle_timeout_of(entry):
            for node in claim_idle(entry, run_id, count, progress=progress):
                created.append((node.name, node))
        for i in range(len(created), count):
            name = f"pydron-{run_id}-{i}"
            if key is None:  # once per start, and only if an instance is to be created
                key = key_pair_for(driver, entry)
            node = _create(driver, entry, name, tags, key)
            created.append((name, node))
            _report(progress, "starting", _label(node, name),
                    f"created on {_where(entry)}, waiting until it runs"
                    + (" and SSH answers" if wait_for_ssh else ""))
        ready, failed = _wait_ready(driver, entry, created, time.monotonic() + timeout,
                                    timeout, progress, address_of, wait_for_ssh, poll)
        if failed:
            gone = {node.id for node in failed}
            created = [(name, node) for name, node in created if node.id not in gone]
            destroy(failed, progress=progress)
        if not ready:
            raise CloudError(f"cloud entry {_where(entry)}: none of the {count} instance(s) "
                             f"of run {run_id} became ready")
        return ready
    except BaseException:
        # Whatever went wrong (an error, Ctrl-C): no instance of this start may survive it.
        leftovers = [node for _, node in created]
        if leftovers:
            log.warning("cloud: start of run %s failed; destroying its %d instance(s)",
                        run_id, len(leftovers))
            destroy(leftovers, progress=progress)
        raise


def _wait_ready(driver: Any, entry: Mapping[str, Any], created: list[tuple[str, Any]],
                deadline: float, timeout: float, progress: Progress | None,
                address_of: Callable[[Any], tuple[str, int] | None], wait_for_ssh: bool,
                poll: float) -> tuple[list[Any], list[Any]]:
    from libcloud.compute.types import NodeState

    names = {node.id: name for name, node in created}
    pending = {node.id: node for _, node in created}
    ready: list[Any] = []
    failed: list[Any] = []
    while pending:
        current = _refresh(driver, entry, list(pending))
        for node_id in list(pending):
            node = current.get(node_id, pending[node_id])
            node.extra = {**(pending[node_id].extra or {}), **(node.extra or {})}
            pending[node_id] = node
            label = _label(node, names[node_id])
            stopped = (NodeState.TERMINATED, NodeState.ERROR, NodeState.STOPPED)
            if node.state in stopped or _gone(node):
                _report(progress, "failed", label, f"it is {node.state} instead of running")
                failed.append(pending.pop(node_id))
                continue
            if node.state != NodeState.RUNNING:
                continue
            address = address_of(node)
            if address is None:
                continue
            if wait_for_ssh and not ssh_answers(*address):
                continue
            _report(progress, "ready", label,
                    f"running at {address[0]}:{address[1]}"
                    + (", SSH answers" if wait_for_ssh else ""))
            ready.append(pending.pop(node_id))
        if not pending:
            break
        if time.monotonic() > deadline:
            for node_id, node in list(pending.items()):
                _report(progress, "failed", _label(node, names[node_id]),
                        f"not ready within {timeout:g} s (state {node.state})")
                failed.append(pending.pop(node_id))
            break
        time.sleep(min(poll, max(0.0, deadline - time.monotonic())))
    return ready, failed


def _refresh(driver: Any, entry: Mapping[str, Any], ids: list[str]) -> dict[str, Any]:
    """The current state of the given nodes, by id."""
    try:
        if str(entry["provider"]) == "ec2":
            nodes = driver.list_nodes(ex_node_ids=ids)
        else:
            nodes = driver.list_nodes()
    except Exception as exc:  # a hiccup of the API: try again at the next poll
        log.debug("cloud: listing nodes failed: %s", exc)
        return {}
    return {node.id: node for node in nodes if node.id in ids}


# --------------------------------------------------------------------------- destroy


def destroy(nodes: Sequence[Any], *, progress: Progress | None = None) -> int:
    """Destroy nodes; returns how many went. A node whose destruction fails is reported
    (``failed``) and the others are still destroyed: one refusal must not keep the rest
    billing."""
    done = 0
    for node in nodes:
        label = _label(node, node_tags(node).get("Name"))
        try:
            ok = node.driver.destroy_node(node)
        except Exception as exc:
            _report(progress, "failed", label, f"could not destroy it: {exc or type(exc).__name__}")
            continue
        if ok is False:
            _report(progress, "failed", label, "the provider refused to destroy it")
            continue
        done += 1
        _report(progress, "destroyed", label, "destroyed")
    return done


def list_tagged(entry: Any, run_id: str | None = None) -> list[Any]:
    """Every live instance Pydron tagged that the entry's provider, region and
    credentials can see (of any run, or only of ``run_id``)."""
    entry = entry_of(entry)
    driver = driver_for(entry)
    if str(entry["provider"]) == "ec2":
        nodes = _call(entry, "listing instances", driver.list_nodes,
                      ex_filters={"tag-key": TAG_RUN})
    else:
        nodes = _call(entry, "listing instances", driver.list_nodes)
    found = []
    for node in nodes:
        tags = node_tags(node)
        if TAG_RUN in tags and (run_id is None or tags[TAG_RUN] == run_id) and not _gone(node):
            found.append(node)
    return found


def cleanup(entry: Any, run_id: str | None = None, *, progress: Progress | None = None) -> int:
    """Destroy every instance Pydron tagged (of any run, or only of ``run_id``); returns
    how many were destroyed. This is what ``python -m pydron cloud cleanup`` does."""
    return destroy(list_tagged(entry, run_id), progress=progress)


@contextlib.contextmanager
def provisioned(entry: Any, run_id: str | None = None, **kwargs: Any) -> Iterator[list[Any]]:
    """``with provisioned(entry) as nodes:`` -- :func:`provision`, and :func:`destroy` on
    the way out (normal end, error, Ctrl-C) and at interpreter exit if the block never
    ends (a daemon thread, say). A SIGKILL skips all of that: ``cloud cleanup`` is for
    that case."""
    nodes = provision(entry, run_id, **kwargs)
    destroyed = threading.Event()

    def _destroy() -> None:
        if not destroyed.is_set():
            destroyed.set()
            destroy(nodes, progress=kwargs.get("progress"))

    atexit.register(_destroy)
    try:
        yield nodes
    finally:
        atexit.unregister(_destroy)
        _destroy()


# --------------------------------------------------------------------------- idle instances


def idle_timeout_of(entry: Any) -> float | None:
    """The entry's ``idle_timeout`` in seconds, or None when its instances are destroyed at
    the end of the run (no ``idle_timeout``, or 0)."""
    value = entry_of(entry).get("idle_timeout")
    if value is None or float(value) <= 0:
        return None
    return float(value)


def can_keep_idle(entry: Any) -> bool:
    """Whether the entry's provider can carry the idle tag (EC2 and EC2-like drivers, whose
    tags other processes see; Dummy, in-process only)."""
    entry = entry_of(entry)
    if str(entry["provider"]) == "dummy":
        return True
    driver = driver_for(entry)
    return hasattr(driver, "ex_create_tags") and hasattr(driver, "ex_delete_tags")


def _untag(driver: Any, node: Any, tags: Mapping[str, str], entry: Mapping[str, Any]) -> None:
    if str(entry["provider"]) != "dummy" and _is_ec2(driver):
        _call(entry, "untagging the instance", _ec2_tags, driver, "DeleteTags", node, tags)
    elif str(entry["provider"]) != "dummy":
        _call(entry, "untagging the instance", driver.ex_delete_tags, node, dict(tags))
    node.extra = dict(node.extra or {})
    for key in tags:
        node.extra.setdefault("tags", {}).pop(key, None)


def _idle_since(node: Any) -> float | None:
    try:
        return float(node_tags(node)[TAG_IDLE])
    except (KeyError, ValueError):
        return None


def _idle_nodes(entry: Mapping[str, Any]) -> list[Any]:
    """Live idle instances Pydron made from an entry equal to this one (by fingerprint)."""
    print_ = _fingerprint(entry)
    return [node for node in list_tagged(entry)
            if node_tags(node).get(TAG_ENTRY) == print_ and _idle_since(node) is not None]


def release(nodes: Sequence[Any], entry: Any, *, progress: Progress | None = None) -> str:
    """Keep nodes idle for a later run: tag them :data:`TAG_IDLE` = now; returns that
    stamp. A node that cannot be tagged is destroyed (an untagged idle node would never
    be reaped). Start the reaper with :func:`start_reaper` afterwards."""
    entry = entry_of(entry)
    stamp = f"{time.time():.3f}"
    for node in nodes:
        try:
            _tag(node.driver, node, {TAG_IDLE: stamp}, entry)
        except Exception as exc:
            log.warning("cloud: cannot mark %s idle (%s); destroying it", _label(node), exc)
            destroy([node], progress=progress)
            continue
        _report(progress, "idle", _label(node, node_tags(node).get("Name")),
                f"kept for a later run; destroyed if idle for {idle_timeout_of(entry) or 0:g} s")
    return stamp


def claim_idle(entry: Any, run_id: str, count: int, *,
               progress: Progress | None = None) -> list[Any]:
    """Claim up to ``count`` idle instances of an equal entry for run ``run_id``: their
    idle tag is removed and their run tag becomes ``run_id``; returns them (not yet
    checked for readiness: :func:`provision` waits for them as for new ones).

    Tags are no lock: two runs starting at the same moment could both claim an instance;
    each re-reads the tags after claiming and keeps only the instances tagged with its own
    run id, which narrows that window without closing it."""
    entry = entry_of(entry)
    if count <= 0:
        return []
    try:
        candidates = _idle_nodes(entry)
    except CloudError as exc:
        log.warning("cloud: cannot look for idle instances to reuse (%s)", exc)
        return []
    candidates.sort(key=lambda n: -(_idle_since(n) or 0))  # the most recently used first
    claimed: list[Any] = []
    for node in candidates[:count]:
        try:
            _untag(node.driver, node, {TAG_IDLE: node_tags(node)[TAG_IDLE]}, entry)
            _tag(node.driver, node, {TAG_RUN: run_id}, entry)
        except CloudError as exc:
            log.warning("cloud: cannot claim idle instance %s (%s)", _label(node), exc)
            continue
        claimed.append(node)
    if claimed and str(entry["provider"]) != "dummy":
        current = _refresh(driver_for(entry), entry, [n.id for n in claimed])
        mine = []
        for node in claimed:
            now = current.get(node.id)
            if now is not None and (node_tags(now).get(TAG_RUN) != run_id or _idle_since(now)):
                log.info("cloud: idle instance %s was claimed by another run", _label(node))
                continue
            mine.append(node)
        claimed = mine
    for node in claimed:
        _report(progress, "starting", _label(node, node.name),
                f"reused (it was idle) on {_where(entry)}, checking that SSH answers")
    return claimed


def reap_idle(entry: Any, *, before: float, progress: Progress | None = None) -> int:
    """Destroy the idle instances of an equal entry that have been idle since ``before``
    (seconds since the epoch) or earlier; returns how many went. An instance claimed since
    has no idle tag, and one released again a newer one: both are spared."""
    entry = entry_of(entry)
    doomed = [n for n in _idle_nodes(entry) if (_idle_since(n) or 0) <= before]
    if doomed and str(entry["provider"]) != "dummy":
        # Look once more, right before destroying: a run may have claimed one meanwhile.
        current = _refresh(driver_for(entry), entry, [n.id for n in doomed])
        doomed = [n for n in doomed if n.id in current
                  and (_idle_since(current[n.id]) or float("inf")) <= before]
    return destroy(doomed, progress=progress) if doomed else 0


def open_reaper_log(stamp: str) -> tuple[str, int]:
    """Create the reaper's log file: ``(path, descriptor open for appending)``.

    Not under a predictable name in the shared temporary directory: another local user
    could plant a symlink there and have the reaper append to (or create) a file of their
    choosing with our rights. The file lives in a fresh directory only we can enter
    (``mkdtemp``: mode 0700, unguessable name), and is created with ``O_EXCL |
    O_NOFOLLOW`` and mode 0600, so that even a name planted in it is refused rather than
    followed."""
    import tempfile

    directory = tempfile.mkdtemp(prefix="pydron-reaper-")
    path = os.path.join(directory, f"reaper-{os.getpid()}-{stamp}.log")
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    return path, os.open(path, flags | getattr(os, "O_CLOEXEC", 0), 0o600)


def _reap_later(entry: Mapping[str, Any], since: float, after: float) -> None:
    time.sleep(max(0.0, since + after - time.time()))
    reap_idle(entry, before=since)


def start_reaper(entry: Any, stamp: str, after: float | None = None) -> Any:
    """Make sure instances released at ``stamp`` are destroyed ``after`` seconds (default:
    the entry's ``idle_timeout``) later unless a run claimed them: a detached process
    (its own session, so Ctrl-C or the end of the program does not stop it) that sleeps
    until then and calls :func:`reap_idle`. For the in-process Dummy driver, a daemon
    thread instead. Returns the process (or thread)."""
    import subprocess
    import sys

    entry = entry_of(entry)
    after = idle_timeout_of(entry) if after is None else after
    if str(entry["provider"]) == "dummy":
        thread = threading.Thread(target=_reap_later, args=(entry, float(stamp), after or 0.0),
                                  daemon=True, name="pydron-cloud-reaper")
        thread.start()
        return thread
    logfile, fd = open_reaper_log(stamp)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    with os.fdopen(fd, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pydron.backend.launchers.cloud_provider", "reap",
             "--since", stamp,
             "--after", repr(float(after or 0)), "--log", logfile],
            stdin=subprocess.PIPE, stdout=out, stderr=out, env=env,
            start_new_session=True, close_fds=True)
    # The entry goes through a pipe, not the command line (``ps`` shows that to everyone).
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(_plain(entry)).encode())
    proc.stdin.close()
    log.info("cloud: reaper process %d destroys the idle instances at %s unless reused "
             "(log: %s)", proc.pid,
             time.strftime("%H:%M:%S", time.localtime(float(stamp) + (after or 0))), logfile)
    return proc


def _plain(value: Any) -> Any:
    """An entry as plain JSON data: the configuration hands out read-only mappings (and
    tuples), which ``json`` cannot write (``default=list`` would keep only their keys)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _main(argv: Sequence[str] | None = None) -> int:
    """``python -m pydron.backend.launchers.cloud_provider reap --since STAMP --after SECONDS``
    with the entry (JSON) on stdin: the reaper process of :func:`start_reaper`."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m pydron.backend.launchers.cloud_provider")
    parser.add_argument("action", choices=["reap"])
    parser.add_argument("--since", type=float, required=True)
    parser.add_argument("--after", type=float, required=True)
    parser.add_argument("--log", help="a log file to remove when all went well")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s pydron reaper: %(message)s")
    entry = json.loads(sys.stdin.read())
    sys.stdin.close()
    time.sleep(max(0.0, args.since + args.after - time.time()))
    for attempt in range(3):
        try:
            failed: list[str] = []

            def progress(event: str, node: str, detail: str) -> None:
                if event == "failed":
                    failed.append(node)

            done = reap_idle(entry, before=args.since, progress=progress)
            log.info("destroyed %d idle instance(s)", done)
            if failed:
                log.error("could not destroy %s: run `python -m pydron cloud cleanup`",
                          ", ".join(failed))
                return 1
            if args.log and attempt == 0:  # nothing went wrong: no log to keep
                with contextlib.suppress(OSError):
                    os.unlink(args.log)
                with contextlib.suppress(OSError):  # its private directory, if empty
                    os.rmdir(os.path.dirname(args.log))
            return 0
        except CloudError as exc:
            log.error("%s (attempt %d of 3)", exc, attempt + 1)
            time.sleep(30)
    log.error("gave up: run `python -m pydron cloud cleanup` to destroy what is left")
    return 1


# --------------------------------------------------------------------------- as ssh hosts


def node_ssh_entry(node: Any, entry: Any, *, known_hosts: str | None = None,
                   address: tuple[str, int] | None = None) -> dict[str, Any]:
    """The ``"ssh"`` worker entry that reaches a provisioned node.

    The ssh side of the cloud entry (``username`` -- default ``root``, set it to the
    image's user such as ``ubuntu`` or ``ec2-user`` --, ``key_filename``, ``python``,
    ``tmp_dir``, ``cores``) carries over. A fresh instance's host key cannot be known in
    advance, so ``host_key`` defaults to ``accept-new``; give ``known_hosts`` (e.g. a
    file per run) to keep the keys of short-lived instances, whose addresses are reused by
    others, out of ``~/.ssh/known_hosts``.
    """
    entry = entry_of(entry)
    address = address or node_address(node, entry)
    if address is None:
        raise CloudError(f"cloud node {_label(node)} has no IP address")
    ssh_entry: dict[str, Any] = {
        "hostname": address[0], "port": address[1],
        "username": entry.get("username", "root"),
        "host_key": entry.get("host_key", "accept-new"),
        "cores": int(entry.get("cores", 1)),
    }
    for key in ("key_filename", "python", "tmp_dir"):
        if key in entry:
            ssh_entry[key] = entry[key]
    if known_hosts or entry.get("known_hosts"):
        ssh_entry["known_hosts"] = known_hosts or entry["known_hosts"]
    return ssh_entry


if __name__ == "__main__":
    raise SystemExit(_main())
