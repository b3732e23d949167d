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
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from pydron.errors import ConfigError

__all__ = [
    "Config", "WorkerSpec", "WorkerType", "WORKER_TYPES", "ENV_VAR", "SYSTEM_CONF",
    "candidate_paths", "find_config_path", "load_config", "parse_config", "default_config",
    "local_cores",
]

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
    """Raised by a check; turned into a ConfigError once file and key path are known."""

    def __init__(self, expected: str, found: str | None = None) -> None:
        super().__init__(expected)
        self.expected = expected
        self.found = found


Check = Callable[[object], object]
"""A value check: returns the (possibly normalised) value or raises ``_Invalid``."""


def _int_at_least(minimum: int) -> Check:
    def check(value: object) -> int:
        # bool is a subclass of int, but `"count": true` is surely a mistake.
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise _Invalid(f"an integer >= {minimum}")
        return value
    return check


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


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
            raise _Invalid(f"one of {_quoted(choices)}")
        return value  # type: ignore[return-value]
    return check


def _port(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise _Invalid("a port number from 1 to 65535")
    return value


def _seconds(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise _Invalid("a number of seconds >= 0")
    return value


def _strings(value: object) -> object:
    """A non-empty string or a non-empty array of them."""
    if isinstance(value, str) and value:
        return value
    if (isinstance(value, list) and value
            and all(isinstance(v, str) and v for v in value)):
        return tuple(value)
    raise _Invalid("a non-empty string or an array of them")


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _credentials(value: object) -> object:
    """Where cloud credentials come from -- never the secrets themselves: pydron.conf is
    often shared or committed, so it may only name environment variables or a file."""
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


@dataclass(frozen=True)
class WorkerType:
    """How to validate one kind of worker entry.

    ``keys`` maps every allowed key (besides ``"type"``) to its check; ``count`` derives the
    number of calls the worker runs at once from the validated keys. ``count`` is not put
    into ``WorkerSpec.options``; every other key is. ``required`` names the keys an entry
    of this type must have.
    """

    keys: Mapping[str, Check]
    count: Callable[[Mapping[str, object]], int]
    required: frozenset[str] = frozenset()


WORKER_TYPES: dict[str, WorkerType] = {
    # In-process threads: good for functional calls that release the GIL (numpy, I/O).
    "threads": WorkerType(
        keys={"count": _positive_int},
        count=lambda entry: int(entry.get("count", local_cores())),  # type: ignore[arg-type]
    ),
    # Runs each call in the caller's thread, one at a time: debugging, deterministic tests.
    "inline": WorkerType(keys={}, count=lambda entry: 1),
    # Worker processes on another host over SSH (pydron.backend.ssh): `cores` of them.
    "ssh": WorkerType(
        keys={"hostname": _string, "port": _port, "username": _string,
              "key_filename": _string, "python": _string, "tmp_dir": _string,
              "cores": _positive_int, "host_key": _one_of("known_hosts", "accept-new"),
              "known_hosts": _string, "required": _bool},
        count=lambda entry: int(entry.get("cores", 1)),  # type: ignore[call-overload]
        required=frozenset({"hostname"}),
    ),
    # Instances Pydron creates with libcloud (pydron.backend.cloud), then used as ssh hosts.
    # `count` is the number of instances here; the capacity is count * cores (use
    # pydron.backend.cloud.entry_of(spec) to get the entry back with its count).
    "cloud": WorkerType(
        keys={"provider": _string, "region": _string, "image": _string, "size": _string,
              "key_name": _string, "key_filename": _string, "security_group": _strings,
              "count": _positive_int, "cores": _positive_int, "idle_timeout": _seconds,
              "ready_timeout": _seconds, "credentials": _credentials,
              "driver_options": _scalars, "port": _port, "username": _string,
              "python": _string, "tmp_dir": _string,
              "host_key": _one_of("known_hosts", "accept-new"), "known_hosts": _string},
        count=lambda entry: (int(entry.get("count", 1))  # type: ignore[call-overload]
                             * int(entry.get("cores", 1))),  # type: ignore[call-overload]
        required=frozenset({"provider", "image", "size"}),
    ),
    # Worker processes on this machine, one call at a time each: CPU-bound Python code.
    "multicore": WorkerType(
        keys={"cores": _positive_int},
        count=lambda entry: int(entry.get("cores", local_cores())),  # type: ignore[arg-type]
    ),
}

_TOP_LEVEL: dict[str, Check] = {
    "workers": lambda value: value,  # checked in detail by _parse_workers
    "max_retries": _non_negative_int,
    "window": _positive_int,
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


def _error(source: str, path: str, expected: str, found: str) -> ConfigError:
    return ConfigError(f"{source}: {path}: expected {expected}, found {found}")


def _quoted(names: object) -> str:
    return ", ".join(f'"{n}"' for n in sorted(names))  # type: ignore[call-overload]


def _check(source: str, path: str, check: Check, value: object) -> object:
    try:
        return check(value)
    except _Invalid as bad:
        raise _error(source, path, bad.expected,
                     bad.found if bad.found is not None else _describe(value)) from None


# --------------------------------------------------------------------------- parsing


def parse_config(data: object, source: str = "<dict>") -> Config:
    """Validate an already-loaded configuration (e.g. the result of ``json.load``).

    Exposed separately from :func:`load_config` so that ``pydron.configure({...})`` checks
    a dict written in code exactly as strictly as a file. ``source`` prefixes every error.
    A missing ``workers`` key means the default workers, so that a file may set only
    ``max_retries`` or ``window``.
    """
    if not isinstance(data, Mapping):
        raise _error(source, "top level", "a JSON object", _describe(data))
    for key in data:
        if key not in _TOP_LEVEL:
            raise _error(source, "top level", f"only the keys {_quoted(_TOP_LEVEL)}",
                         f'unknown key "{key}"')

    if "workers" in data:
        workers = _parse_workers(data["workers"], source)
    else:
        workers = default_config().workers
    max_retries = 3
    if "max_retries" in data:
        max_retries = _check(source, "max_retries", _TOP_LEVEL["max_retries"],
                             data["max_retries"])  # type: ignore[assignment]
    window = None
    if "window" in data:
        window = _check(source, "window", _TOP_LEVEL["window"], data["window"])
    return Config(workers=workers, source=source, max_retries=max_retries,
                  window=window)  # type: ignore[arg-type]


def _parse_workers(value: object, source: str) -> tuple[WorkerSpec, ...]:
    if not isinstance(value, list) or not value:
        raise _error(source, "workers", "a non-empty array of worker entries",
                     _describe(value))
    return tuple(_parse_worker(entry, source, f"workers[{i}]")
                 for i, entry in enumerate(value))


def _parse_worker(entry: object, source: str, path: str) -> WorkerSpec:
    if not isinstance(entry, Mapping):
        raise _error(source, path, 'an object such as {"type": "threads"}', _describe(entry))
    if "type" not in entry:
        raise _error(source, f"{path}.type", f"a worker type ({_quoted(WORKER_TYPES)})",
                     "nothing (the key is missing)")
    kind = entry["type"]
    if not isinstance(kind, str) or kind not in WORKER_TYPES:
        raise _error(source, f"{path}.type", f"one of {_quoted(WORKER_TYPES)}", _describe(kind))
    spec = WORKER_TYPES[kind]

    checked: dict[str, object] = {}
    for key, value in entry.items():
        if key == "type":
            continue
        if key not in spec.keys:
            allowed = f"only the keys {_quoted(['type', *spec.keys])}"
            raise _error(source, path, f'{allowed} for type "{kind}"', f'unknown key "{key}"')
        checked[key] = _check(source, f"{path}.{key}", spec.keys[key], value)
    for key in sorted(spec.required - set(checked)):
        raise _error(source, f"{path}.{key}", f'a value (required for type "{kind}")',
                     "nothing (the key is missing)")

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
