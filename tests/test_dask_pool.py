"""The dask pool against a real Dask cluster (``dask scheduler`` and two ``dask worker``
processes, one thread each; see conftest_dask.py): functional calls run as Dask tasks
with Pydron's semantics -- exact answers on every API, exceptions and output as on
Pydron's own workers, lost workers' calls run again, workers that join get calls, shared
objects scattered once, and nothing left on the cluster after the run."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest

import pydron
from diffcheck import exception_picture
from pydron.backend.daskpool import DaskPool
from pydron.errors import ConfigError, WorkerLostError

REPO = Path(__file__).resolve().parent.parent


def wait_until(check: Callable[[], object], timeout: float = 30.0, what: str = "") -> object:
    """``check()``'s first true value, polled every 0.1 s; fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or check}")
        time.sleep(0.1)


def collect(pool, fn, arguments) -> dict[int, tuple[bool, object]]:
    """Submit ``fn(*arguments[i])`` for each i; a dict that fills with (ok, value)."""
    done: dict[int, tuple[bool, object]] = {}
    for i, args in enumerate(arguments):
        pool.submit(fn, tuple(args), {}, lambda ok, value, i=i: done.setdefault(i, (ok, value)))
    return done


def keys_on(cluster, prefix: str = "") -> list[str]:
    """The keys the scheduler holds (from a fresh client), those starting with prefix."""
    client = cluster.client()
    try:
        held = set(client.who_has())
        for keys in client.has_what().values():
            held.update(keys)
        return sorted(str(k) for k in held if str(k).startswith(prefix))
    finally:
        client.close()


@pydron.functional
def square(x: int) -> int:
    return x * x


@pydron.functional
def where(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


@pydron.functional
def slow(x: int, seconds: float) -> tuple[int, int]:
    time.sleep(seconds)
    return x * x, os.getpid()


@pydron.schedule
def scheduled_sum(n: int) -> int:
    total = 0
    for i in range(n):
        total += square(i)
    return total


@pytest.fixture
def dask_conf(dask_cluster):
    """pydron configured for the session's cluster; the process-wide pool shut down after."""
    pydron.configure({"workers": [{"type": "dask", "address": dask_cluster.address}]})
    yield dask_cluster
    pydron.shutdown()
    pydron.configure(None)


# --------------------------------------------------------------------------- answers


def test_every_api_gets_the_exact_answer_on_dask(dask_conf):
    assert scheduled_sum(40) == sum(x * x for x in range(40))
    with pydron.Executor() as executor:
        assert list(executor.map(square, range(25))) == [x * x for x in range(25)]
        assert executor.submit(square, 12).result() == 144
    assert list(pydron.map(square, range(300))) == [x * x for x in range(300)]
    assert sorted(pydron.map(square, iter(range(50)), ordered=False)) == [x * x for x in range(50)]
    with pydron.Pool() as pool:
        assert pool.map(square, range(30)) == [x * x for x in range(30)]
        assert pool.apply(square, (9,)) == 81
    pids = {pid for _, pid in pydron.map(where, range(40))}
    assert len(pids) == 2 and os.getpid() not in pids, pids  # both Dask workers, not here


def test_parallelism_is_the_clusters_threads(dask_cluster):
    pool = DaskPool(dask_cluster.address)
    try:
        assert pool.parallelism == 2
    finally:
        pool.shutdown()
    pool = DaskPool(dask_cluster.address, threads=1)
    try:
        assert pool.parallelism == 1
        done = collect(pool, slow, [(x, 0.2) for x in range(4)])
        began = time.monotonic()
        wait_until(lambda: len(done) == 4, timeout=60, what="4 results")
        assert time.monotonic() - began >= 0.7  # one at a time: the cap holds
        assert sorted(v[0] for _, v in done.values()) == [0, 1, 4, 9]
    finally:
        pool.shutdown()


def test_an_unreachable_scheduler_is_named_with_its_key(tmp_path):
    with pytest.raises(ConfigError) as caught:
        DaskPool("tcp://127.0.0.1:9", timeout=2)
    assert "tcp://127.0.0.1:9" in str(caught.value) and '"address"' in str(caught.value)
    missing = str(tmp_path / "nope.json")
    with pytest.raises(ConfigError) as caught:
        DaskPool(scheduler_file=missing, timeout=2)
    assert missing in str(caught.value) and '"scheduler_file"' in str(caught.value)
