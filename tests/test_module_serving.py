"""The user's own modules that a worker cannot import are served by the caller (the
master) on demand: real worker processes, real TCP, a real module folder that is on the
caller's sys.path but not on the workers'."""
from __future__ import annotations

import os
import sys
import textwrap
import traceback
import uuid

import pytest

import pydron.backend as backend
from pydron.backend.engine.module_server import lookup

MODULE = '''
import os
import sys

from pydron import functional, schedule

from {pkg}.sub import cube


@functional
def square(x):
    return x * x, os.getpid(), __file__


@functional
def where_from(x):
    return [p for p in sys.path if p == {folder!r}]


@functional
def fail(x):
    raise ValueError(f"bad value {{x}}")  # the line a traceback shows


@functional
def needs_missing(x):
    import {missing}
    return x


@schedule
def squares(n):
    out = []
    for i in range(n):
        out.append(square(i))
    return out


@schedule
def cubes(n):
    out = []
    for i in range(n):
        out.append(cube(i))
    return out


@schedule
def probe(n):
    out = []
    for i in range(n):
        out.append(where_from(i))
    return out


@schedule
def failing(x):
    return fail(x)


@schedule
def missing(x):
    return needs_missing(x)
'''

SUB = '''
import os

from pydron import functional

from . import helpers


@functional
def cube(x):
    return helpers.times(x, x * x), os.getpid(), __name__
'''


def _user_code(folder, tag: str) -> dict[str, str]:
    """Write a module and a package with a submodule into ``folder``; their names."""
    names = {"mod": f"usermod_{tag}", "pkg": f"userpkg_{tag}",
             "missing": f"pydron_nowhere_{tag}"}
    pkg = folder / names["pkg"]
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "helpers.py").write_text("def times(a, b):\n    return a * b\n")
    (pkg / "sub.py").write_text(textwrap.dedent(SUB))
    (folder / f"{names['mod']}.py").write_text(
        MODULE.format(pkg=names["pkg"], missing=names["missing"], folder=str(folder)))
    return names


@pytest.fixture
def configured():
    """configure(...) for one test, its workers started at once; the previous
    configuration comes back afterwards."""
    previous = backend._config

    def use(workers: list[dict]) -> object:
        backend.configure({"workers": workers})
        started = backend.get_pool()
        started.start(timeout=60)
        return started
    yield use
    backend.configure(previous)


@pytest.fixture
def workers(configured):
    """A 2-worker multicore pool whose workers started before the user's folder was on
    sys.path (``user`` comes after it): they cannot import the user's modules themselves."""
    return configured([{"type": "multicore", "cores": 2}])


@pytest.fixture
def user(tmp_path, monkeypatch):
    """The user's module, imported in the caller from a folder only the caller has."""
    tag = uuid.uuid4().hex[:8]
    folder = tmp_path / "project"
    folder.mkdir()
    names = _user_code(folder, tag)
    monkeypatch.syspath_prepend(str(folder))
    import importlib
    module = importlib.import_module(names["mod"])
    yield module
    for name in list(sys.modules):
        if tag in name:
            del sys.modules[name]


def test_a_function_of_a_module_the_worker_lacks_runs_there(workers, user):
    results = user.squares(6)
    assert [r[0] for r in results] == [i * i for i in range(6)]
    pids = {r[1] for r in results}
    assert os.getpid() not in pids and pids <= set(workers.worker_pids())
    assert {r[2] for r in results} == {user.__file__}  # the master's file name
    # ... and the workers really could not import it: their sys.path lacks the folder.
    assert user.probe(4) == [[]] * 4


def test_a_submodule_of_a_package_with_a_relative_import(workers, user):
    results = user.cubes(5)
    assert [r[0] for r in results] == [i ** 3 for i in range(5)]
    assert os.getpid() not in {r[1] for r in results}
    assert {r[2] for r in results} == {user.cube.__module__}


def test_a_traceback_shows_the_users_file_and_line(workers, user):
    with pytest.raises(ValueError, match="bad value 7") as info:
        user.failing(7)
    assert info.value.__cause__ is None  # the worker's frames are frames, not a cause
    text = "".join(traceback.format_tb(info.value.__traceback__))
    assert user.__file__ in text
    assert "the line a traceback shows" in text


def test_a_module_that_exists_nowhere_is_named(workers, user):
    name = user.needs_missing.__code__.co_names[0]
    with pytest.raises(ModuleNotFoundError, match=name):
        user.missing(1)


def test_the_master_serves_only_plain_source_modules(user):
    served = lookup(user.__name__)
    assert served["found"] and not served["is_package"]
    assert served["filename"] == user.__file__ and "def square" in served["source"]
    package = lookup(user.cube.__module__.rpartition(".")[0])
    assert package["found"] and package["is_package"]
    for refused in ("__main__", "_socket", "sys", "pydron_nowhere_at_all", "no such",
                    "pydron_nowhere_at_all.sub", "../etc"):
        assert lookup(refused) == {"found": False}, refused


def test_a_remote_worker_gets_the_module_from_the_caller(sshd, ssh_home, configured, user):
    from conftest_hosts import pin_host
    pin_host(ssh_home, sshd)
    remote = configured([{"type": "ssh", **sshd.entry(cores=1)}])
    results = user.squares(3) + user.cubes(3)
    assert [r[0] for r in results] == [0, 1, 4, 0, 1, 8]
    assert {r[1] for r in results} <= set(remote.worker_pids()) - {os.getpid()}
    assert user.probe(1) == [[]]
