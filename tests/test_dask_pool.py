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


def keys_on(cluster, prefix: str | tuple[str, ...] = "") -> list[str]:
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


# --------------------------------------------------------------------------- observing


@pydron.functional
def nap_square(x: int) -> int:
    time.sleep(0.02)
    return x * x


@pydron.schedule
def nap_squares(n: int) -> int:
    out = []
    for i in range(n):
        out.append(nap_square(i))
    return sum(out)


def _line_of(text: str) -> int:
    return next(i for i, line in enumerate(Path(__file__).read_text().splitlines(), 1)
                if text in line)


def test_progress_counts_and_a_trace_on_the_dask_pool(dask_conf):
    from pydron.observe import recording
    from pydron.observe.trace import trace_document
    with recording() as rec:
        assert nap_squares(20) == sum(i * i for i in range(20))
    counts = rec.counts()
    assert (counts.submitted, counts.done, counts.failed, counts.running) == (20, 20, 0, 0)
    document = json.loads(json.dumps(trace_document(rec)))
    events = document["traceEvents"]
    calls = [e for e in events if e["ph"] == "X"]
    assert len(calls) == 20 and {e["name"] for e in calls} == {"nap_square"}
    site = f"{__file__}:{_line_of('out.append(nap_square(i))')}"
    assert {e["args"]["site"] for e in calls} == {site}
    assert all(e["args"]["run_ms"] >= 19 for e in calls)  # the sleep ran on a Dask worker
    tracks = {e["args"]["name"] for e in events if e["name"] == "thread_name"}
    assert len(tracks) == 2, tracks  # one per Dask worker


@pydron.schedule
def two_slow(seconds: float) -> list:
    return [slow(1, seconds), slow(2, seconds)]


def test_task_keys_name_the_function_and_the_call_site(dask_conf):
    from pydron.observe import recording
    seen: list[str] = []
    client = dask_conf.client()
    try:
        def look() -> list[str]:
            seen[:] = [k for keys in client.processing().values() for k in keys]
            return seen
        with recording():
            import threading
            run = threading.Thread(target=two_slow, args=(3.0,))
            run.start()
            wait_until(look, timeout=30, what="the two tasks on the workers")
            run.join()
    finally:
        client.close()
    line = _line_of("return [slow(1, seconds), slow(2, seconds)]")
    prefix = f"slow-test_dask_pool.py:{line}-"
    assert seen and all(key.startswith(prefix) and len(key) == len(prefix) + 32
                        for key in seen), seen


def _keys_while_running(cluster, start: Callable[[], object], count: int) -> list[str]:
    """The keys of the ``count`` tasks the workers process while ``start()`` runs in a
    thread of its own (its calls must take a few seconds)."""
    import threading
    seen: list[str] = []
    client = cluster.client()
    try:
        def look() -> list[str]:
            seen[:] = [k for keys in client.processing().values() for k in keys]
            return seen if len(seen) >= count else []
        run = threading.Thread(target=start)
        run.start()
        wait_until(look, timeout=30, what=f"{count} tasks on the workers")
        run.join()
    finally:
        client.close()
    return seen


def test_task_keys_name_the_call_site_with_nothing_recording(dask_conf, monkeypatch):
    """The batch run's case (no tty, no trace): @schedule's keys still name the call's
    line, the explicit API's the function's definition, and no site is left over from
    one call for the next."""
    from pydron import callsite
    from pydron.backend import recorder
    monkeypatch.setenv("PYDRON_PROGRESS", "0")
    monkeypatch.delenv("PYDRON_TRACE", raising=False)
    assert recorder.active is None
    seen = _keys_while_running(dask_conf, lambda: two_slow(3.0), 2)
    prefix = f"slow-test_dask_pool.py:{_line_of('return [slow(1, seconds), slow(2, seconds)]')}-"
    assert all(key.startswith(prefix) and len(key) == len(prefix) + 32 for key in seen), seen
    assert [x for x, _ in two_slow(0.0)] == [1, 4]
    assert callsite.peek() is None  # a run in this thread leaves no site behind

    def explicit() -> None:
        with pydron.Executor() as executor:
            futures = [executor.submit(slow, x, 3.0) for x in (1, 2)]
            assert [f.result()[0] for f in futures] == [1, 4]
    seen = _keys_while_running(dask_conf, explicit, 2)
    prefix = f"slow-test_dask_pool.py:{_line_of('def slow(x: int, seconds: float)') - 1}-"
    assert all(key.startswith(prefix) for key in seen), seen  # the definition's line
    assert recorder.active is None


# --------------------------------------------------------------------------- the cluster


@pydron.functional
def total_of(data: list[int], x: int) -> int:
    return sum(data) + x


@pydron.functional
def identity_of(data: list[int]) -> int:
    return id(data)


def test_shared_data_is_scattered_once_and_nothing_stays_after_shutdown(dask_cluster):
    data = list(range(100_000))
    pool = DaskPool(dask_cluster.address)
    handle = pydron.shared(data)
    try:
        done = collect(pool, total_of, [(handle, x) for x in range(30)])
        wait_until(lambda: len(done) == 30, timeout=60, what="30 results")
        assert [done[x] for x in range(30)] == [(True, sum(data) + x) for x in range(30)]
        assert pool.scatters == 1
        shared_keys = keys_on(dask_cluster, "pydron-shared-")
        assert len(shared_keys) == 1, shared_keys
        client = dask_cluster.client()
        try:
            assert len(client.who_has()[shared_keys[0]]) == 2  # broadcast to both workers
        finally:
            client.close()
        # One object per worker, the same for every call there (as on Pydron's workers).
        done = collect(pool, identity_of, [(handle,)] * 10)
        wait_until(lambda: len(done) == 10, timeout=60, what="10 results")
        assert len({value for _, value in done.values()}) <= 2
        done = collect(pool, slow, [(x, 0.0) for x in range(10)])
        wait_until(lambda: len(done) == 10, timeout=60, what="10 more results")
    finally:
        pool.shutdown()
    # Released when the pool shuts down; the scheduler forgets them a moment later.
    wait_until(lambda: not keys_on(dask_cluster, ("pydron-shared-", "total_of-", "slow-",
                                                  "identity_of-")),
               timeout=10, what="the run's keys to leave the scheduler")


def scopes_here() -> list[str]:
    """The runs whose namespaces this Dask worker holds (run there by ``client.run``)."""
    from pydron.backend import dask_runner
    return list(dask_runner._scopes)


def test_shutdown_drops_the_runs_namespaces_from_every_worker(dask_cluster):
    pool = DaskPool(dask_cluster.address)
    client = dask_cluster.client()
    try:
        done = collect(pool, slow, [(x, 0.1) for x in range(12)])
        wait_until(lambda: len(done) == 12, timeout=60, what="12 results")
        assert len({pid for _, (_, pid) in done.values()}) == 2  # both workers ran calls
        held = client.run(scopes_here)
        assert len(held) == 2 and all(pool._scope in scopes for scopes in held.values()), held
        pool.shutdown()
        held = client.run(scopes_here)
        assert len(held) == 2 and not any(pool._scope in s for s in held.values()), held
    finally:
        pool.shutdown()
        client.close()


def test_shutdown_does_not_raise_when_the_workers_cannot_be_told(dask_cluster):
    pool = DaskPool(dask_cluster.address)
    done = collect(pool, square, [(3,)])
    wait_until(lambda: done, timeout=30, what="a result")

    def refuse(*args, **kwargs):
        raise OSError("the scheduler went away")
    pool._client.run = refuse  # type: ignore[method-assign]
    pool.shutdown()
    assert pool._client.status == "closed"


_CLIENT_PROGRAM = """
import sys
import pydron

@pydron.functional
def cube(x):
    return x ** 3

@pydron.schedule
def cubes(n):
    out = []
    for i in range(n):
        out.append(cube(i))
    return out

G = None

def init(value):
    global G
    G = value

def read(x):
    return G, x

pydron.configure({{"workers": [{{"type": "dask", "address": {address!r}}}]}})
tag = int(sys.argv[1])
for round in range(3):
    assert cubes(60) == [i ** 3 for i in range(60)]
    assert list(pydron.map(cube, range(tag, tag + 200))) == [i ** 3 for i in range(tag, tag + 200)]
    # The initializer's global, seen by every later call of this program and no other's.
    with pydron.Pool(initializer=init, initargs=(tag,)) as pool:
        got = pool.map(read, range(20), chunksize=1)
    assert got == [(tag, x) for x in range(20)], got
print("exact", tag)
"""


def test_two_client_programs_share_the_cluster_and_both_are_exact(dask_cluster, tmp_path):
    script = tmp_path / "client_program.py"
    script.write_text(_CLIENT_PROGRAM.format(address=dask_cluster.address))
    procs = [subprocess.Popen([sys.executable, str(script), str(tag)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=dask_cluster.env(),
                              cwd=tmp_path) for tag in (1000, 2000)]
    outputs = [proc.communicate(timeout=180) for proc in procs]
    for tag, proc, (out, err) in zip((1000, 2000), procs, outputs):
        assert proc.returncode == 0, err[-3000:]
        assert out.strip() == f"exact {tag}"
    wait_until(lambda: not keys_on(dask_cluster, ("cube-", "read-", "pydron-shared-")),
               timeout=10, what="the programs' keys to leave the scheduler")


@pydron.functional
def marked(path: str, x: int, seconds: float) -> tuple[int, int]:
    """Records each run (so a test sees a rerun), sleeps."""
    with open(path, "a") as f:
        f.write(f"{x} {os.getpid()}\n")
    time.sleep(seconds)
    return x * x, os.getpid()


def test_a_worker_killed_mid_run_has_its_calls_run_again(dask_cluster, tmp_path):
    runs = tmp_path / "runs"
    pool = DaskPool(dask_cluster.address)
    client = dask_cluster.client()
    try:
        pids = client.run(os.getpid)  # the worker processes (not their nannies)
        done = collect(pool, marked, [(str(runs), x, 1.0) for x in range(8)])
        wait_until(lambda: runs.exists() and len(runs.read_text().splitlines()) >= 2,
                   timeout=30, what="both workers to start a call")
        victim = int(runs.read_text().split()[1])
        assert victim in pids.values()
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: len(done) == 8, timeout=120, what="8 results after the kill")
        assert [done[x] for x in range(8)] == [(True, (x * x, done[x][1][1])) for x in range(8)]
        lines = [line.split() for line in runs.read_text().splitlines()]
        rerun = [x for x, pid in lines if int(pid) == victim]
        assert rerun and any(x == rerun[-1] and int(pid) != victim for x, pid in lines)
        assert victim not in {value[1] for _, value in done.values()}
    finally:
        client.close()
        pool.shutdown()
    dask_cluster.client(workers=2).close()  # the nanny has restarted the worker


@pydron.functional
def suicide(x: int) -> int:
    os.kill(os.getpid(), signal.SIGKILL)
    return x


def test_a_call_that_keeps_killing_its_worker_ends_in_worker_lost_error(dask_cluster):
    pool = DaskPool(dask_cluster.address, max_retries=0)
    try:
        ok, error = one_outcome(pool, suicide, 1)
    finally:
        pool.shutdown()
    dask_cluster.client(workers=2).close()
    assert not ok and isinstance(error, WorkerLostError), error
    assert "suicide()" in str(error) and "KilledWorker" in str(error)


def test_a_worker_that_joins_mid_run_receives_calls(dask_cluster):
    pool = DaskPool(dask_cluster.address, watch_interval=0.2)
    try:
        done = collect(pool, slow, [(x, 1.0) for x in range(16)])
        dask_cluster.add_worker("w3")
        wait_until(lambda: pool.parallelism == 3, timeout=60, what="parallelism 3")
        wait_until(lambda: len(done) == 16, timeout=120, what="16 results")
        client = dask_cluster.client(workers=3)
        try:
            pids = client.run(os.getpid)
        finally:
            client.close()
        newcomer = next(pid for address, pid in pids.items()
                        if address in _addresses_named(dask_cluster, "w3"))
        assert [done[x][1][0] for x in range(16)] == [x * x for x in range(16)]
        assert newcomer in {value[1] for _, value in done.values()}
    finally:
        pool.shutdown()
        dask_cluster.stop_worker("w3")
    wait_until(lambda: _thread_count(dask_cluster) == 2, timeout=60, what="w3 to leave")


def _addresses_named(cluster, name: str) -> set[str]:
    client = cluster.client()
    try:
        workers = client.scheduler_info(n_workers=-1)["workers"]
        return {address for address, info in workers.items() if info.get("name") == name}
    finally:
        client.close()


def _thread_count(cluster) -> int:
    client = cluster.client(workers=1)
    try:
        return sum(client.nthreads().values())
    finally:
        client.close()


def test_cancelled_calls_are_released_and_never_delivered(dask_cluster):
    pool = DaskPool(dask_cluster.address)
    try:
        done: dict[int, tuple[bool, object]] = {}
        handles = [pool.submit(slow, (x, 1.5), {},
                               lambda ok, value, x=x: done.setdefault(x, (ok, value)))
                   for x in range(6)]
        wait_until(lambda: len(keys_on(dask_cluster, "slow-")) == 6, timeout=30,
                   what="the six tasks on the scheduler")
        assert all(pool.cancel(h) for h in handles[2:])  # two run, four wait: cancel those
        assert not pool.cancel(handles[2])  # once only
        wait_until(lambda: len(done) == 2, timeout=60, what="the two uncancelled results")
        time.sleep(1.0)
        assert sorted(done) == [0, 1] and done[1] == (True, (1, done[1][1][1]))
        assert len(keys_on(dask_cluster, "slow-")) <= 2
    finally:
        pool.shutdown()
    wait_until(lambda: not keys_on(dask_cluster, "slow-"), timeout=10,
               what="the run's keys to leave the scheduler")


def test_the_result_cache_wraps_the_dask_pool(dask_cluster, tmp_path):
    pydron.configure({"workers": [{"type": "dask", "address": dask_cluster.address}],
                      "cache": str(tmp_path / "cache")})
    try:
        from pydron.observe import recording
        first = [pid for _, pid in pydron.map(where, range(10))]
        with recording() as rec:
            again = [pid for _, pid in pydron.map(where, range(10))]
        assert again == first  # the same results, pids included: from the cache
        assert rec.counts().cached == 10
    finally:
        pydron.shutdown()
        pydron.configure(None)


_INTERRUPTED_PROGRAM = """
import sys, time
import pydron

@pydron.functional
def dawdle(x):
    time.sleep(3)
    return x

@pydron.schedule
def run(n):
    out = []
    for i in range(n):
        out.append(dawdle(i))
    return out

pydron.configure({{"workers": [{{"type": "dask", "address": {address!r}}}]}})
print("started", flush=True)
try:
    run(20)
except KeyboardInterrupt:
    print("interrupted", flush=True)
    raise
"""


def test_ctrl_c_leaves_nothing_on_the_cluster(dask_cluster, tmp_path):
    script = tmp_path / "interrupted.py"
    script.write_text(_INTERRUPTED_PROGRAM.format(address=dask_cluster.address))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dask_cluster.env(),
                            cwd=tmp_path)
    try:
        assert proc.stdout.readline().strip() == "started"
        wait_until(lambda: keys_on(dask_cluster, "dawdle-"), timeout=60,
                   what="the program's tasks on the scheduler")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert "interrupted" in out and "KeyboardInterrupt" in err, err[-2000:]
    assert proc.returncode != 0
    wait_until(lambda: not keys_on(dask_cluster, "dawdle-"), timeout=10,
               what="the interrupted run's keys to leave the scheduler")


def test_an_unpicklable_argument_is_named_at_submit(dask_cluster):
    import threading

    from pydron.errors import SerializationError
    pool = DaskPool(dask_cluster.address)
    try:
        with pytest.raises(SerializationError) as caught:
            pool.submit(total_of, ([1], threading.Lock()), {}, lambda ok, value: None)
    finally:
        pool.shutdown()
    assert caught.value.item == "argument 2" and "total_of()" in str(caught.value)


@pydron.functional
def doubled(array):
    return array * 2


def test_large_arrays_travel_both_ways(dask_cluster):
    numpy = pytest.importorskip("numpy")
    array = numpy.arange(1_000_000, dtype=numpy.float64)  # 8 MB: out-of-band buffers
    pool = DaskPool(dask_cluster.address)
    try:
        ok, value = one_outcome(pool, doubled, array)
        ok_shared, value_shared = one_outcome(pool, doubled, pydron.shared(array))
    finally:
        pool.shutdown()
    assert ok and ok_shared, (value, value_shared)
    assert numpy.array_equal(value, array * 2) and numpy.array_equal(value_shared, array * 2)
