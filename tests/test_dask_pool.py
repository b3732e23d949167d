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


# --------------------------------------------------------------------------- semantics


class Odd(Exception):
    """An exception whose __init__ takes other parameters than its args."""

    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"{a}-{b}")
        self.pair = (a, b)


def _inner(x: int) -> int:
    try:
        return {}[x]
    except KeyError as exc:
        raise Odd(x, x + 1) from exc


@pydron.functional
def fails(x: int) -> int:
    try:
        _inner(x)
    except Odd as exc:
        exc.add_note(f"while failing on {x}")
        raise ValueError("outer", x)  # __context__ is the Odd, whose __cause__ a KeyError


@pydron.functional
def chatty(x: int) -> int:
    print(f"hello {x} from the worker")
    print("to stderr", x, file=sys.stderr)
    warnings.warn(f"careful {x}", UserWarning)
    logging.getLogger("dasktest.chatty").warning("logged %d", x)
    return x


def one_outcome(pool, fn, *args):
    done = collect(pool, fn, [args])
    wait_until(lambda: done, timeout=60, what=f"{fn.__name__}{args}")
    return done[0]


def frames_of(exc: BaseException) -> list[tuple[str, str, int]]:
    tb = exc.__traceback__
    out = []
    while tb is not None:
        code = tb.tb_frame.f_code
        out.append((os.path.basename(code.co_filename), code.co_name, tb.tb_lineno))
        tb = tb.tb_next
    return out


@pytest.fixture(scope="module")
def multicore_pool():
    from pydron.backend.multicore import MulticorePool
    pool = MulticorePool(2)
    yield pool
    pool.shutdown()


def test_exceptions_arrive_exactly_as_on_the_multicore_pool(dask_cluster, multicore_pool):
    pool = DaskPool(dask_cluster.address)
    try:
        ok_d, on_dask = one_outcome(pool, fails, 3)
        ok_m, on_multicore = one_outcome(multicore_pool, fails, 3)
    finally:
        pool.shutdown()
    assert not ok_d and not ok_m
    assert type(on_dask) is ValueError and on_dask.args == ("outer", 3)
    assert isinstance(on_dask.__context__, Odd) and on_dask.__context__.pair == (3, 4)
    assert isinstance(on_dask.__context__.__cause__, KeyError)
    assert on_dask.__context__.__notes__ == ["while failing on 3"]
    assert exception_picture(on_dask) == exception_picture(on_multicore)
    assert frames_of(on_dask) == frames_of(on_multicore)
    assert [name for _, name, _ in frames_of(on_dask)] == ["fails"]
    assert [name for _, name, _ in frames_of(on_dask.__context__)] == ["fails", "_inner"]
    assert frames_of(on_dask.__context__) == frames_of(on_multicore.__context__)


@pydron.schedule
def fails_in_loop(n: int) -> list[int]:
    out = []
    for i in range(n):
        out.append(square(i) if i != 5 else fails(i))
    return out


def test_a_scheduled_failure_raises_as_on_the_multicore_pool(dask_conf):
    with pytest.raises(ValueError) as on_dask:
        fails_in_loop(12)
    pydron.configure({"workers": [{"type": "multicore", "cores": 2}]})
    with pytest.raises(ValueError) as on_multicore:
        fails_in_loop(12)
    assert exception_picture(on_dask.value) == exception_picture(on_multicore.value)
    assert frames_of(on_dask.value)[-2:] == frames_of(on_multicore.value)[-2:]
    assert frames_of(on_dask.value)[-1][1] == "fails"


def test_print_output_warnings_and_log_records_reach_the_caller(dask_cluster, multicore_pool,
                                                                 capsys, caplog):
    pool = DaskPool(dask_cluster.address)
    try:
        with caplog.at_level(logging.WARNING, logger="dasktest"):
            assert one_outcome(pool, chatty, 424242) == (True, 424242)
        dask_out, dask_err = capsys.readouterr()
        records = [r for r in caplog.records if r.name == "dasktest.chatty"]
        assert one_outcome(multicore_pool, chatty, 535353) == (True, 535353)
        multi_out, multi_err = capsys.readouterr()
    finally:
        pool.shutdown()
    assert dask_out == "hello 424242 from the worker\n"
    assert dask_out.replace("424242", "535353") == multi_out
    assert "to stderr 424242\n" in dask_err and "UserWarning: careful 424242" in dask_err
    assert "test_dask_pool.py" in dask_err
    # The same lines as on Pydron's own workers (the warning's line and text included).
    assert sorted(dask_err.replace("424242", "535353").splitlines()) == \
        sorted(multi_err.splitlines())
    assert len(records) == 1 and records[0].getMessage() == "logged 424242"
    assert "Dask worker" in records[0].pydron_worker and records[0].pydron_call == "chatty"
    assert records[0].lineno == chatty.__code__.co_firstlineno + 5  # the decorator's line first
