"""Finding, reading and validating ``pydron.conf``.

The file is JSON so that it can be written by hand and by tools alike. It is checked
completely before anything is started: a typo in a worker entry must fail at once with a
message that names the file, the key path and what was expected, not later as an obscure
error deep inside a pool.

Search order (the first file that exists wins, nothing is merged):

1. ``$PYDRON_CONF`` -- if set (and not empty) the file must exist: a variable pointing
   nowhere is a mistake the user wants to hear about, not a silent fallback;
2. ``./pydron.conf`` -- per project;
3. ``~/pydron.conf`` -- per user;
4. ``/etc/pydron.conf`` -- per machine.

Without a file, Pydron uses every local core (see :func:`default_config`).

Worker types are described by the table :data:`WORKER_TYPES`: a new kind of worker is one
entry there (its allowed keys with their checks, and how many calls it runs at once).

Files written for the original Pydron keep working: its key names are accepted as
aliases of today's keys (``imageid`` for ``image``, ``"provider": "ec2_us_east"`` for
``"ec2"`` in ``us-east-1`` ...), and the secrets it let users write into the file (an SSH
``password``, a cloud ``accesskey``) are accepted with a warning, once per file and key,
on the ``pydron.config`` logger.
"""
from __future__ import annotations

import difflib
import importlib
import json
import logging
import math
import os
import pathlib
import re
import stat
import threading
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from pydron.errors import ConfigError

__all__ = [
    "Config", "WorkerSpec", "WorkerType", "WORKER_TYPES", "ENV_VAR", "SYSTEM_CONF",
    "ConfigProblem", "LEGACY_EC2_PROVIDERS", "SECRET_OPTIONS",
    "candidate_paths", "find_config_path", "load_config", "parse_config", "default_config",
    "local_cores",
]

_log = logging.getLogger("pydron.config")

ENV_VAR = "PYDRON_CONF"
FILE_NAME = "pydron.conf"
SYSTEM_CONF = pathlib.Path("/etc") / FILE_NAME


# --------------------------------------------------------------------------- data model


@dataclass(frozen=True)
class WorkerSpec:
    """One entry of ``workers``: a kind of worker and how many calls it runs at once.

    ``options`` holds the entry's other keys (already validated), read-only, so that a
    pool factory gets everything the user wrote without this module knowing what it means.
    """

    type: str
    count: int
    options: Mapping[str, object] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        # Frozen means frozen: a caller must not be able to change options behind our back.
        object.__setattr__(self, "options", types.MappingProxyType(dict(self.options)))

    def __repr__(self) -> str:
        # A spec ends up in logs and tracebacks: never with a password or access key in it.
        shown = {k: ("***" if k in SECRET_OPTIONS and "env" not in _keys_of(v)
                     and "file" not in _keys_of(v) else v)
                 for k, v in self.options.items()}
        return f"WorkerSpec(type={self.type!r}, count={self.count!r}, options={shown!r})"


SECRET_OPTIONS = frozenset({"password", "credentials"})
"""Option keys whose value may be a secret (``credentials`` only in its inline form, which
the original Pydron's ``accesskeyid``/``accesskey`` become): masked in ``repr``."""


def _keys_of(value: object) -> set[str]:
    return set(value) if isinstance(value, Mapping) else set()


@dataclass(frozen=True)
class Config:
    """A validated configuration.

    ``source`` says where it came from (a file path, ``"<default>"`` or ``"<dict>"``) so that
    later errors and diagnostics can point at it.
    """

    workers: tuple[WorkerSpec, ...]
    source: str
    max_retries: int = 3
    window: int | None = None
    call_timeout: float | None = None
    """Seconds a functional call may run before it is stopped (None: no limit)."""
    respawns_per_minute: int | None = None
    """Workers a pool may replace per minute (None: the pool's default for its size)."""
    master_timeout: float | None = None
    """Seconds a connected worker waits for a silent caller (None: the pool's default)."""
    max_frame: int = 1 << 30
    prefetch_bytes: int = 256 << 20
    shared_cache: int = 2 << 30
    """Bytes of shared objects each worker process keeps (least recently used out)."""
    keep_min: int = 1 << 20
    """A scheduled call's result of at least this many bytes (pickled) stays on its worker
    until something other than a functional call reads it; 0: every result comes back."""
    progress: bool | None = None
    """The progress line on stderr (None: when stderr is a terminal)."""
    trace: str | None = None
    """Where the trace file goes (``{time}`` and ``{pid}`` filled in); None: no trace."""
    cache: Mapping[str, object] | None = None
    """The result cache: ``{"path": ..., "max_size": ...}``; None: no cache."""

    @property
    def capacity(self) -> int:
        """How many calls all workers together run at once."""
        return sum(w.count for w in self.workers)


def local_cores() -> int:
    """How many cores this process may use.

    Prefers the CPU affinity mask over ``os.cpu_count()``: in a container or under
    ``taskset`` the machine may have 64 cores of which we may use 2, and starting 64
    busy threads would only add contention.
    """
    counter = getattr(os, "process_cpu_count", None)  # Python 3.13+
    if counter is not None:
        return counter() or 1
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_config() -> Config:
    """The configuration used when no ``pydron.conf`` exists: one worker process per usable
    core (processes, not threads, so that pure-Python calls run in parallel too)."""
    return Config(workers=(WorkerSpec("multicore", local_cores(), {}),), source="<default>")


# --------------------------------------------------------------------------- checks


class _Invalid(Exception):
    """Raised by a check; turned into a problem once file and key path are known.

    ``hint`` is appended to what was found, e.g. ``(did you mean "multicore"?)``."""

    def __init__(self, expected: str, found: str | None = None, hint: str = "") -> None:
        super().__init__(expected)
        self.expected = expected
        self.found = found
        self.hint = hint


Check = Callable[[object], object]
"""A value check: returns the (possibly normalised) value or raises ``_Invalid``."""


def _did_you_mean(word: object, choices: Iterable[str],
                  rename: Mapping[str, str] | None = None) -> str:
    """`` (did you mean "x"?)`` for the choice closest to a mistyped word, else ``""``.

    A typo should cost the user one glance, not a trip to the documentation; difflib's
    ratio (cutoff 0.6) finds "max_retry" -> "max_retries" but suggests nothing for words
    that merely share a letter or two. ``rename`` maps an old name to the one to suggest
    instead (so a typo of "imageid" suggests today's "image")."""
    if not isinstance(word, str):
        return ""
    found = difflib.get_close_matches(word, sorted(set(choices)), n=1, cutoff=0.6)
    if not found:
        return ""
    best = (rename or {}).get(found[0], found[0])
    return f' (did you mean "{best}"?)'


def _int_at_least(minimum: int) -> Check:
    def check(value: object) -> int:
        # bool is a subclass of int, but `"count": true` is surely a mistake.
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise _Invalid(f"an integer >= {minimum}")
        return value
    return check


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def _int_between(minimum: int, maximum: int) -> Check:
    """An integer in ``[minimum, maximum]``; the message gives the whole range, so that
    the user can fix the value in one go."""
    def check(value: object) -> int:
        if (isinstance(value, bool) or not isinstance(value, int)
                or not minimum <= value <= maximum):
            raise _Invalid(f"an integer from {minimum} to {maximum}")
        return value
    return check


MAX_RETRIES = 100
"""Upper bound of ``max_retries``: a call lost 100 times is not unlucky, and with a huge
value a call that crashes its worker respawns workers for ever instead of failing."""
MAX_LOCAL_WORKERS = 1024
"""Upper bound of ``count`` (threads) and ``cores`` (multicore) on this machine, for each
entry and for all local entries together: each is a thread or a process with its own
connection and memory, and no machine this code runs on uses more at once."""
MAX_HOST_CORES = 1024
"""Upper bound of ``cores`` of an ssh host or a cloud instance (worker processes there)."""
MAX_INSTANCES = 1000
"""Upper bound of ``count`` (instances) of a cloud entry: each one is paid for."""
MAX_WINDOW = 1_000_000
"""Upper bound of ``window`` (calls in flight): each one holds its arguments in memory."""
MAX_SECONDS = 30 * 24 * 3600.0
"""Upper bound of a duration setting (30 days): anything longer is a typo (milliseconds
for seconds, say) or "never", which is written by leaving the key out."""

_retries = _int_between(0, MAX_RETRIES)
_local_workers = _int_between(1, MAX_LOCAL_WORKERS)
_host_cores = _int_between(1, MAX_HOST_CORES)
_instances = _int_between(1, MAX_INSTANCES)
_window = _int_between(1, MAX_WINDOW)
MAX_RESPAWNS_PER_MINUTE = 10_000
"""Upper bound of ``respawns_per_minute``: more is no longer a limit."""
_respawns = _int_between(1, MAX_RESPAWNS_PER_MINUTE)
_max_frame = _int_between(8192, (1 << 32) - 1)  # wire.MIN_FRAME, MAX_FRAME_LIMIT
_prefetch_bytes = _int_between(0, 1 << 50)
_shared_cache = _int_between(0, 1 << 50)


def _string(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise _Invalid("a non-empty string")
    return value


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise _Invalid("true or false")
    return value


def _one_of(*choices: str) -> Check:
    def check(value: object) -> str:
        if value not in choices:
            raise _Invalid(f"one of {_quoted(choices)}", hint=_did_you_mean(value, choices))
        return value  # type: ignore[return-value]
    return check


def _port(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise _Invalid("a port number from 1 to 65535")
    return value


def _seconds(value: object) -> float:
    """A duration from 0 to :data:`MAX_SECONDS`. JSON as Python reads it accepts
    ``NaN`` and ``Infinity``, and ``NaN < 0`` is false: finiteness is checked explicitly."""
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or not 0 <= value <= MAX_SECONDS):
        raise _Invalid(f"a number of seconds from 0 to {MAX_SECONDS:.0f} (30 days)")
    return value


def _positive_seconds(value: object) -> float:
    """A duration that must not be 0 (a deadline of 0 s fails everything at once)."""
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or not 0 < value <= MAX_SECONDS):
        raise _Invalid(f"a number of seconds > 0 and <= {MAX_SECONDS:.0f} (30 days)")
    return value


def _strings(value: object) -> object:
    """A non-empty string or a non-empty array of them."""
    if isinstance(value, str) and value:
        return value
    if (isinstance(value, list) and value
            and all(isinstance(v, str) and v for v in value)):
        return tuple(value)
    raise _Invalid("a non-empty string or an array of them")


def _port_range(value: object) -> object:
    """The original Pydron's ``data_ports``: ``"10000-10010"``, a port, or an array of
    ports. Checked (a typo there is still a typo) although nothing uses it any more."""
    expected = 'a port range such as "10000-10010", a port number, or an array of them'
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", value)
        if match and 1 <= int(match.group(1)) <= int(match.group(2)) <= 65535:
            return value
        if value.strip().isdigit() and 0 <= int(value) <= 65535:
            return value
        raise _Invalid(expected)
    if isinstance(value, list) and value and all(
            not isinstance(v, bool) and isinstance(v, int) and 0 <= v <= 65535 for v in value):
        return tuple(value)
    if not isinstance(value, bool) and isinstance(value, int) and 0 <= value <= 65535:
        return value
    raise _Invalid(expected)


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _credentials(value: object) -> object:
    """Where cloud credentials come from -- never the secrets themselves: pydron.conf is
    often shared or committed, so it may only name environment variables or a file.
    (The original Pydron's ``accesskeyid``/``accesskey`` do hold secrets; they are
    accepted for compatibility, with a warning, and become ``{"inline": ...}`` here, a
    form that cannot be written as ``credentials`` directly.)"""
    expected = ('{"env": {"key": "ENV_VAR", ...}} or {"file": "/path"} '
                '(optionally with "profile")')
    if not isinstance(value, Mapping) or not value:
        raise _Invalid(expected)
    if "env" in value and set(value) == {"env"}:
        env = value["env"]
        if (not isinstance(env, Mapping) or not env
                or not all(isinstance(k, str) and k and isinstance(v, str)
                           and _ENV_NAME.fullmatch(v) for k, v in env.items())):
            raise _Invalid('"env": an object mapping driver arguments to the names of '
                           'environment variables, e.g. {"key": "AWS_ACCESS_KEY_ID"}')
        return types.MappingProxyType({"env": types.MappingProxyType(dict(env))})
    if "file" in value and set(value) <= {"file", "profile"}:
        if not all(isinstance(v, str) and v for v in value.values()):
            raise _Invalid('"file" (and "profile") as non-empty strings')
        return types.MappingProxyType(dict(value))
    raise _Invalid(expected)


def _scalars(value: object) -> object:
    """An object of JSON scalars (extra keyword arguments for a driver)."""
    if (not isinstance(value, Mapping)
            or not all(isinstance(v, (str, int, float, bool)) or v is None
                       for v in value.values())):
        raise _Invalid("an object whose values are strings, numbers, booleans or null")
    return types.MappingProxyType(dict(value))


# --------------------------------------------------------------------------- problems


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong in a configuration: where (``source``, ``path``), what was
    ``expected`` and what was ``found``. A :class:`ConfigError` raised by
    :func:`parse_config` carries all of them in its ``problems`` attribute."""

    source: str
    path: str
    expected: str
    found: str

    def __str__(self) -> str:
        return f"{self.source}: {self.path}: expected {self.expected}, found {self.found}"


class _Problems:
    """Every problem of one configuration, collected so that one ConfigError lists them
    all: fixing a file one error per run is tedious, and the second mistake is often
    the first one's twin."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.items: list[ConfigProblem] = []
        # Inline secrets and ignored old keys seen; reported once the file is accepted.
        self.secrets: list[tuple[str, str, str]] = []
        self.ignored: list[tuple[str, str]] = []

    def add(self, path: str, expected: str, found: str) -> None:
        self.items.append(ConfigProblem(self.source, path, expected, found))

    def check(self, path: str, check: Check, value: object) -> tuple[bool, object]:
        """``(True, checked value)``, or ``(False, None)`` with the problem recorded."""
        try:
            return True, check(value)
        except _Invalid as bad:
            found = bad.found if bad.found is not None else _describe(value)
            self.add(path, bad.expected, found + bad.hint)
            return False, None

    def raise_if_any(self) -> None:
        if self.items:
            error = ConfigError("\n".join(str(p) for p in self.items))
            error.problems = tuple(self.items)  # type: ignore[attr-defined]
            raise error


# --------------------------------------------------------------------------- worker types


@dataclass(frozen=True)
class WorkerType:
    """How to validate one kind of worker entry.

    ``keys`` maps every allowed key (besides ``"type"``) to its check; ``count`` derives the
    number of calls the worker runs at once from the validated keys. ``count`` is not put
    into ``WorkerSpec.options``; every other key is. ``required`` names the keys an entry
    of this type must have.

    The original Pydron documentation's files must keep working, so a type may also
    accept ``aliases`` (an old key name -> today's key, which gets the value),
    ``obsolete`` keys (checked, then ignored, with the reason logged) and ``secrets``
    (keys whose value is a secret written into the file: accepted, with a warning that
    says who can read it and what to use instead). ``normalise(options, path,
    problems)`` turns what remains of the old form into today's (e.g. the old
    ``"provider": "ec2_us_east"`` into ``"ec2"`` plus a region).
    """

    keys: Mapping[str, Check]
    count: Callable[[Mapping[str, object]], int]
    required: frozenset[str] = frozenset()
    aliases: Mapping[str, str] = field(default_factory=dict)
    obsolete: Mapping[str, tuple[Check, str]] = field(default_factory=dict)
    secrets: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    normalise: Callable[[dict[str, object], str, _Problems], dict[str, object]] | None = None


LEGACY_EC2_PROVIDERS: dict[str, str] = {
    "ec2_us_east": "us-east-1",
    "ec2_us_west": "us-west-1",
    "ec2_us_west_oregon": "us-west-2",
    "ec2_eu": "eu-west-1",
    "ec2_eu_west": "eu-west-1",
    "ec2_ap_southeast": "ap-southeast-1",
    "ec2_ap_southeast_2": "ap-southeast-2",
    "ec2_ap_northeast": "ap-northeast-1",
    "ec2_sa_east": "sa-east-1",
}
"""Provider names of old libcloud releases (one EC2 provider per region), as the original
Pydron documentation used them (``"provider": "ec2_us_east"``): each means today's
``"ec2"`` provider in that region. Today's libcloud knows only ``"ec2"``."""

_DATA_PORTS = ("data_ports", (_port_range, "workers now reach the caller through the SSH "
                              "connection, so no data ports are needed"))

_PASSWORD_ADVICE = ('log in with a key instead: "key_filename" (or ssh-agent), with the '
                    "public key in the host's ~/.ssh/authorized_keys")
_ACCESS_KEY_ADVICE = ('name the credentials instead of writing them: "credentials": '
                      '{"env": {"key": "AWS_ACCESS_KEY_ID", "secret": '
                      '"AWS_SECRET_ACCESS_KEY"}} or {"file": "~/.aws/credentials"}')


def _normalise_cloud(options: dict[str, object], path: str,
                     problems: _Problems) -> dict[str, object]:
    """The original Pydron's cloud keys in today's form: a per-region EC2 provider name
    becomes ``"ec2"`` plus ``region``; ``accesskeyid``/``accesskey`` become inline
    credentials (their warning is issued by the caller)."""
    provider = options.get("provider")
    if isinstance(provider, str) and provider in LEGACY_EC2_PROVIDERS:
        region = LEGACY_EC2_PROVIDERS[provider]
        if options.get("region", region) != region:
            problems.add(f"{path}.region",
                         f'"{region}" or no region (provider "{provider}" means EC2 in '
                         f"{region})", _describe(options["region"]))
        options["provider"] = "ec2"
        options["region"] = region
    key_id, secret = options.pop("accesskeyid", None), options.pop("accesskey", None)
    if key_id is not None or secret is not None:
        if "credentials" in options:
            problems.add(f"{path}.credentials",
                         'either "credentials" or the old "accesskeyid" and "accesskey"',
                         "both")
        elif key_id is None or secret is None:
            missing = "accesskeyid" if key_id is None else "accesskey"
            problems.add(f"{path}.{missing}",
                         'a value ("accesskeyid" and "accesskey" go together)',
                         "nothing (the key is missing)")
        else:
            options["credentials"] = types.MappingProxyType({
                "inline": types.MappingProxyType({"key": key_id, "secret": secret})})
    return options


_SSH_KEYS: dict[str, Check] = {
    "hostname": _string, "port": _port, "username": _string, "password": _string,
    "key_filename": _string, "python": _string, "tmp_dir": _string,
    "cores": _host_cores, "host_key": _one_of("known_hosts", "accept-new"),
    "known_hosts": _string, "required": _bool,
}

def _batch_check(module: str, key: str) -> Check:
    """The check of ``key`` in a batch scheduler's entry, from the module that reads
    the entry (``CHECKS`` of :mod:`pydron.backend.launchers.slurm_jobs`, ``sge_jobs``):
    one definition of what each key may be. Imported when a file is checked, not when
    this module is: the backend imports this module."""
    def check(value: object) -> object:
        checks = importlib.import_module(f"pydron.backend.launchers.{module}").CHECKS
        try:
            return checks[key](value)
        except ValueError as exc:
            raise _Invalid(str(exc)) from None
    return check


_SLURM_KEYS = ("jobs", "cores", "partition", "account", "qos", "time", "memory",
               "sbatch_options", "setup", "python", "address", "idle_timeout",
               "max_resubmissions", "work_dir", "allocation", "poll_interval")
_SGE_KEYS = ("jobs", "cores", "queue", "parallel_environment", "qsub_options", "time",
             "memory", "setup", "python", "address", "idle_timeout", "max_resubmissions",
             "work_dir", "poll_interval")


def _batch_count(entry: Mapping[str, object]) -> int:
    return int(entry.get("jobs", 1)) * int(entry.get("cores", 1))  # type: ignore[call-overload]


def _normalise_dask(options: dict[str, object], path: str,
                    problems: _Problems) -> dict[str, object]:
    """A dask entry names its scheduler one way: an address, or a scheduler file."""
    given = [key for key in ("address", "scheduler_file") if key in options]
    if len(given) != 1:
        problems.add(f"{path}.address" if not given else f"{path}.{given[1]}",
                     'exactly one of "address" (such as "tcp://host:8786") and '
                     '"scheduler_file" (the JSON file `dask scheduler --scheduler-file` '
                     "writes)", "both" if given else "neither")
    return options


WORKER_TYPES: dict[str, WorkerType] = {
    # In-process threads: good for functional calls that release the GIL (numpy, I/O).
    "threads": WorkerType(
        keys={"count": _local_workers},
        count=lambda entry: int(entry.get("count", local_cores())),  # type: ignore[arg-type]
    ),
    # Runs each call in the caller's thread, one at a time: debugging, deterministic tests.
    "inline": WorkerType(keys={}, count=lambda entry: 1),
    # Worker processes on another host over SSH (pydron.backend.launchers.ssh_transport): `cores`
    # of them.
    "ssh": WorkerType(
        keys=_SSH_KEYS,
        count=lambda entry: int(entry.get("cores", 1)),  # type: ignore[call-overload]
        required=frozenset({"hostname"}),
        obsolete=dict([_DATA_PORTS]),
        secrets={"password": ("a password", _PASSWORD_ADVICE)},
    ),
    # Instances Pydron creates with libcloud (pydron.backend.launchers.cloud_provider), then used
    # as ssh hosts.
    # `count` is the number of instances here; the capacity is count * cores (use
    # pydron.backend.launchers.cloud_provider.entry_of(spec) to get the entry back with its count).
    "cloud": WorkerType(
        keys={"provider": _string, "region": _string, "image": _string, "size": _string,
              "key_name": _string, "key_filename": _string, "public_key": _string,
              "security_group": _strings,
              "count": _instances, "cores": _host_cores, "idle_timeout": _seconds,
              "ready_timeout": _positive_seconds, "credentials": _credentials,
              "accesskeyid": _string, "accesskey": _string,
              "driver_options": _scalars, "port": _port, "username": _string,
              "python": _string, "tmp_dir": _string,
              "host_key": _one_of("known_hosts", "accept-new"), "known_hosts": _string},
        count=lambda entry: (int(entry.get("count", 1))  # type: ignore[call-overload]
                             * int(entry.get("cores", 1))),  # type: ignore[call-overload]
        required=frozenset({"provider", "image", "size"}),
        aliases={"imageid": "image", "sizeid": "size", "privatekey": "key_filename",
                 "publickey": "public_key"},
        obsolete=dict([_DATA_PORTS]),
        secrets={"accesskey": ("a secret access key", _ACCESS_KEY_ADVICE)},
        normalise=_normalise_cloud,
    ),
    # Workers in SLURM batch jobs (pydron.backend.slurmpool): `jobs` jobs of `cores`
    # workers, submitted while calls are queued; inside an allocation, srun steps.
    "slurm": WorkerType(keys={k: _batch_check("slurm_jobs", k) for k in _SLURM_KEYS},
                        count=_batch_count),
    # Workers in Grid Engine array jobs (pydron.backend.sgepool), the same way.
    "sge": WorkerType(keys={k: _batch_check("sge_jobs", k) for k in _SGE_KEYS},
                      count=_batch_count),
    # Tasks of an existing Dask cluster (pydron.backend.daskpool). Its size is known only
    # once connected (the pool's parallelism follows the cluster's threads); the count
    # here is the `threads` cap, or 1.
    "dask": WorkerType(
        keys={"address": _string, "scheduler_file": _string,
              "threads": _int_between(1, 1_000_000), "timeout": _positive_seconds},
        count=lambda entry: int(entry.get("threads", 1)),  # type: ignore[call-overload]
        normalise=_normalise_dask,
    ),
    # Worker processes on this machine, one call at a time each: CPU-bound Python code.
    "multicore": WorkerType(
        keys={"cores": _local_workers},
        count=lambda entry: int(entry.get("cores", local_cores())),  # type: ignore[arg-type]
    ),
}

_SIZE = re.compile(r"\s*\d+(\.\d+)?\s*([KMGT]i?B?|B)?\s*", re.IGNORECASE)


def _size(value: object) -> object:
    """Bytes: an integer, or a string such as ``"10GB"``, ``"500 MB"``, ``"1.5GiB"``."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str) and _SIZE.fullmatch(value):
        return value
    raise _Invalid('a size in bytes: an integer, or a string such as "10GB" or "500MB"')


def _cache(value: object) -> object:
    """The result cache: a folder, or ``{"path": folder, "max_size": size}``."""
    if isinstance(value, str) and value:
        return types.MappingProxyType({"path": os.path.expanduser(value), "max_size": None})
    if isinstance(value, Mapping) and isinstance(value.get("path"), str) and value["path"] \
            and set(value) <= {"path", "max_size"}:
        size = value.get("max_size")
        return types.MappingProxyType({"path": os.path.expanduser(value["path"]),
                                       "max_size": None if size is None else _size(size)})
    raise _Invalid('a folder, or {"path": folder, "max_size": size such as "10GB"}')


def _trace(value: object) -> object:
    if isinstance(value, str) and value.strip():
        return os.path.expanduser(value)
    raise _Invalid('a file name such as "trace-{time}.json"')


_TOP_LEVEL: dict[str, Check] = {
    "workers": lambda value: value,  # checked in detail by _parse_workers
    "max_retries": _retries,
    "window": _window,
    "call_timeout": _positive_seconds,  # absent: no limit
    "respawns_per_minute": _respawns,
    "master_timeout": _positive_seconds,  # absent: the pool's default (300 s)
    "max_frame": _max_frame,
    "prefetch_bytes": _prefetch_bytes,
    "shared_cache": _shared_cache,
    "keep_min": _shared_cache,
    "progress": _bool,
    "trace": _trace,
    "cache": _cache,
}


# --------------------------------------------------------------------------- messages


def _describe(value: object) -> str:
    """Render what was found: JSON for scalars, a kind plus a short excerpt for containers."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    if isinstance(value, Mapping):
        return f"an object {text}"
    if isinstance(value, (list, tuple)):
        return f"an array {text}" if value else "an empty array []"
    return text


def _quoted(names: object) -> str:
    return ", ".join(f'"{n}"' for n in sorted(names))  # type: ignore[call-overload]


_warned: set[tuple[str, str]] = set()
_warned_lock = threading.Lock()


def _once(source: str, path: str) -> bool:
    """True the first time (source, key path) is seen in this process."""
    with _warned_lock:
        if (source, path) in _warned:
            return False
        _warned.add((source, path))
        return True


def _report_secrets(problems: _Problems) -> None:
    """Warn, once per file and key, about secrets written into the configuration.

    They are accepted because the original Pydron documented them, but a pydron.conf is
    often shared, committed or backed up: whoever can read the file has the password,
    so the warning says so, and says what to use instead."""
    source = problems.source
    readable = ""
    try:
        mode = os.stat(source).st_mode
    except (OSError, ValueError):
        where = "the code or file it comes from"
    else:
        where = f"the file {source}"
        if mode & 0o044:
            readable = f" (and its mode {stat.S_IMODE(mode):o} lets other users read it)"
    for path, what, advice in problems.secrets:
        if _once(source, path):
            _log.warning("%s: %s: %s is written in the configuration, so anyone who can "
                         "read %s can read it%s; %s", source, path, what, where, readable,
                         advice)
    for path, reason in problems.ignored:
        if _once(source, path):
            _log.info("%s: %s is ignored: %s", source, path, reason)


# --------------------------------------------------------------------------- parsing


def parse_config(data: object, source: str = "<dict>") -> Config:
    """Validate an already-loaded configuration (e.g. the result of ``json.load``).

    Exposed separately from :func:`load_config` so that ``pydron.configure({...})`` checks
    a dict written in code exactly as strictly as a file. ``source`` prefixes every error.
    A missing ``workers`` key means the default workers, so that a file may set only
    ``max_retries`` or ``window``.

    Every problem is collected before anything is raised: the :class:`ConfigError` lists
    them all, one per line (``source: key path: expected ..., found ...``), and carries
    them as ``ConfigProblem`` objects in its ``problems`` attribute. A mistyped key is
    answered with the closest valid one ("did you mean ...?").
    """
    problems = _Problems(source)
    if not isinstance(data, Mapping):
        problems.add("top level", "a JSON object", _describe(data))
        problems.raise_if_any()
        raise AssertionError("unreachable")  # for type checkers
    for key in data:
        if key not in _TOP_LEVEL:
            problems.add("top level", f"only the keys {_quoted(_TOP_LEVEL)}",
                         f'unknown key "{key}"' + _did_you_mean(key, _TOP_LEVEL))

    workers = (_parse_workers(data["workers"], problems) if "workers" in data
               else default_config().workers)
    max_retries: object = 3
    if "max_retries" in data:
        max_retries = problems.check("max_retries", _TOP_LEVEL["max_retries"],
                                     data["max_retries"])[1]
    window = None
    if "window" in data:
        window = problems.check("window", _TOP_LEVEL["window"], data["window"])[1]
    sizes = {key: problems.check(key, _TOP_LEVEL[key], data[key])[1]
             for key in ("max_frame", "prefetch_bytes", "shared_cache", "keep_min")
             if key in data}
    limits = {key: problems.check(key, _TOP_LEVEL[key], data[key])[1]
              for key in ("call_timeout", "respawns_per_minute", "master_timeout")
              if key in data}
    seeing = {key: problems.check(key, _TOP_LEVEL[key], data[key])[1]
              for key in ("progress", "trace", "cache") if key in data}
    problems.raise_if_any()
    _report_secrets(problems)
    return Config(workers=workers, source=source, max_retries=max_retries,  # type: ignore[arg-type]
                  window=window, **sizes, **limits, **seeing)  # type: ignore[arg-type]


def _parse_workers(value: object, problems: _Problems) -> tuple[WorkerSpec, ...]:
    if not isinstance(value, list) or not value:
        problems.add("workers", "a non-empty array of worker entries", _describe(value))
        return ()
    specs = tuple(spec for spec in (_parse_worker(entry, f"workers[{i}]", problems)
                                    for i, entry in enumerate(value)) if spec is not None)
    # Each entry may be within bounds while many of them together are not.
    local = sum(spec.count for spec in specs if spec.type in ("threads", "multicore"))
    if local > MAX_LOCAL_WORKERS:
        problems.add("workers", f"at most {MAX_LOCAL_WORKERS} worker threads and processes "
                     'on this machine in all ("threads" count plus "multicore" cores)',
                     str(local))
    return specs


def _parse_worker(entry: object, path: str, problems: _Problems) -> WorkerSpec | None:
    """One worker entry, or None if it is too broken to say more about (its problems
    are recorded either way)."""
    if not isinstance(entry, Mapping):
        problems.add(path, 'an object such as {"type": "threads"}', _describe(entry))
        return None
    if "type" not in entry:
        found = "nothing (the key is missing)"
        for key in entry:  # {"typ": "ssh"}: say which key was surely meant as the type
            if isinstance(key, str) and _did_you_mean(key, ["type"]):
                found += f', but the unknown key "{key}" (did you mean "type"?)'
                break
        problems.add(f"{path}.type", f"a worker type ({_quoted(WORKER_TYPES)})", found)
        return None
    kind = entry["type"]
    if not isinstance(kind, str) or kind not in WORKER_TYPES:
        problems.add(f"{path}.type", f"one of {_quoted(WORKER_TYPES)}",
                     _describe(kind) + _did_you_mean(kind, WORKER_TYPES))
        return None
    spec = WORKER_TYPES[kind]

    checked: dict[str, object] = {}
    written: dict[str, str] = {}  # today's key -> the key as written in the entry
    broken = False
    for key, value in entry.items():
        if key == "type":
            continue
        new = spec.aliases.get(key, key)
        if new in spec.keys:
            if new in written:
                old, current = (key, new) if key != new else (written[new], new)
                problems.add(f"{path}.{key}",
                             f'either "{current}" or its old name "{old}", not both',
                             "both")
                broken = True
                continue
            written[new] = key
            ok, checked_value = problems.check(f"{path}.{key}", spec.keys[new], value)
            if ok:
                checked[new] = checked_value
            else:
                broken = True
            if key in spec.secrets:
                what, advice = spec.secrets[key]
                problems.secrets.append((f"{path}.{key}", what, advice))
        elif key in spec.obsolete:
            check, reason = spec.obsolete[key]
            if not problems.check(f"{path}.{key}", check, value)[0]:
                broken = True
            problems.ignored.append((f"{path}.{key}", reason))
        else:
            allowed = f"only the keys {_quoted(['type', *spec.keys])}"
            hint = _did_you_mean(key, ["type", *spec.keys, *spec.aliases, *spec.obsolete],
                                 spec.aliases)
            problems.add(path, f'{allowed} for type "{kind}"', f'unknown key "{key}"' + hint)
            broken = True
    for key in sorted(spec.required - set(written)):
        problems.add(f"{path}.{key}", f'a value (required for type "{kind}")',
                     "nothing (the key is missing)")
        broken = True
    if broken:
        return None
    if spec.normalise is not None:
        checked = spec.normalise(checked, path, problems)
    count = spec.count(checked)
    options = {k: v for k, v in checked.items() if k != "count"}
    return WorkerSpec(kind, count, options)


# --------------------------------------------------------------------------- files


def candidate_paths() -> list[pathlib.Path]:
    """The places searched for ``pydron.conf``, in order (``$PYDRON_CONF`` first if set)."""
    paths = []
    env = os.environ.get(ENV_VAR)
    if env:
        paths.append(pathlib.Path(env).expanduser().absolute())
    paths.append(pathlib.Path.cwd() / FILE_NAME)
    try:
        paths.append(pathlib.Path.home() / FILE_NAME)
    except RuntimeError:  # no home directory can be determined (rare: bare containers)
        pass
    paths.append(SYSTEM_CONF)
    return paths


def find_config_path() -> pathlib.Path | None:
    """Return the configuration file that applies, or None if there is none.

    Raises ConfigError if ``$PYDRON_CONF`` names a file that does not exist: the user asked
    for that file explicitly, so quietly using another one would hide the mistake.
    """
    env = os.environ.get(ENV_VAR)
    if env:
        path = pathlib.Path(env).expanduser().absolute()
        if not path.exists():
            raise ConfigError(f"{path}: ${ENV_VAR} names this file, but it does not exist")
        return path
    for path in candidate_paths():
        if path.exists():
            return path
    return None


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read and validate a configuration file.

    With ``path=None`` the file is discovered (see :func:`find_config_path`); if none
    exists the result is :func:`default_config`. An explicit path must exist.
    """
    if path is None:
        found = find_config_path()
        if found is None:
            return default_config()
        path = found
    source = str(path)
    try:
        text = pathlib.Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{source}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: cannot read the file: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{source}: line {exc.lineno}, column {exc.colno}: "
                          f"invalid JSON: {exc.msg}") from None
    return parse_config(data, source)
